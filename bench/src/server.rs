//! The API under benchmark, on a Tokio runtime and thread of its own (its own worker
//! threads, pool and Redis connection), so the clients on the main runtime share the
//! machine's cores with it as a load generator and a server on one host do. Built exactly
//! as `hybridlive serve` wires it, on port 0, with a fresh secret and Redis prefix; with
//! `projections`, also every projection fed by the log, as `hybridlive dev` runs them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::setup::BenchDatabase;

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub pool_size: u32,
    /// Worker threads of the server's runtime (0: one per core).
    pub threads: usize,
    pub redis_url: String,
    /// Also run every projection (lite read models).
    pub projections: bool,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    pub base: String,
    pub redis_prefix: String,
    /// The secret its access tokens are signed with.
    pub jwt_secret: String,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Starts the server thread: its runtime builds the pool, the Redis connection and the
    /// API (so that their sockets are driven by it), starts the projections if asked,
    /// reports the address, then serves until stopped.
    ///
    /// # Errors
    /// When the runtime, the pool, Redis or the listener cannot be set up.
    pub async fn start(db: &BenchDatabase, options: &ServerOptions) -> anyhow::Result<Self> {
        let prefix = format!("bench:{}:", Uuid::new_v4().simple());
        let secret = format!("bench-{}-{}", Uuid::new_v4(), Uuid::new_v4());
        Self::start_with(db, options, prefix, secret).await
    }

    /// Another instance beside `other`: the same Redis keys and token secret, so a client
    /// of one is a client of the other (as two replicas behind a load balancer).
    ///
    /// # Errors
    /// As [`Server::start`].
    pub async fn start_beside(
        db: &BenchDatabase,
        options: &ServerOptions,
        other: &Server,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            db,
            options,
            other.redis_prefix.clone(),
            other.jwt_secret.clone(),
        )
        .await
    }

    async fn start_with(
        db: &BenchDatabase,
        options: &ServerOptions,
        redis_prefix: String,
        jwt_secret: String,
    ) -> anyhow::Result<Self> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if options.threads > 0 {
            builder.worker_threads(options.threads);
        }
        let runtime = builder
            .thread_name("api")
            .enable_all()
            .build()
            .context("building the server's runtime")?;
        let (db, options) = (db.clone(), options.clone());
        let (prefix, secret) = (redis_prefix.clone(), jwt_secret.clone());
        let (ready, bound) = tokio::sync::oneshot::channel::<anyhow::Result<SocketAddr>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("api-server".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let (app, workers) = match build(&db, &options, &prefix, &secret).await {
                        Ok(built) => built,
                        Err(error) => {
                            let _ = ready.send(Err(error));
                            return;
                        }
                    };
                    let cancel = CancellationToken::new();
                    let projecting = workers.map(|workers| {
                        let cancel = cancel.clone();
                        tokio::spawn(async move {
                            workers
                                .run(&["all".to_owned()], &projections::Source::Log, &cancel)
                                .await
                        })
                    });
                    let _ = ready.send(app.local_addr().context("the API's address"));
                    let served = app
                        .run_until_stopped(async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(error) = served {
                        eprintln!("the API server failed: {error}");
                    }
                    cancel.cancel();
                    if let Some(task) = projecting {
                        match task.await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => eprintln!("the projection workers failed: {error}"),
                            Err(error) => eprintln!("the projection workers panicked: {error}"),
                        }
                    }
                });
            })
            .context("starting the server thread")?;
        let addr = bound.await.context("the server thread ended early")??;
        Ok(Self {
            base: format!("http://{addr}"),
            redis_prefix,
            jwt_secret,
            stop,
            thread,
        })
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            eprintln!("the API server thread panicked");
        }
    }
}

async fn build(
    db: &BenchDatabase,
    options: &ServerOptions,
    redis_prefix: &str,
    jwt_secret: &str,
) -> anyhow::Result<(api::App, Option<projections::Workers>)> {
    let pool = db.pool(options.pool_size, None).await?;
    let redis = api::connect_redis(&options.redis_url, Duration::from_secs(2))
        .await
        .context("connecting to Redis")?;
    let settings = api::Settings {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        jwt_secret: jwt_secret.as_bytes().to_vec().into(),
        redis_prefix: redis_prefix.to_owned(),
        // The benchmark's clients are a few users on one IP, far above any sane limit.
        rate_limits: api::rate_limit::RateLimits::OFF,
        // The setup may take long on a loaded machine; the tokens must outlive the run.
        access_ttl: Duration::from_secs(3600),
        redis_url: options.redis_url.clone().into(),
        ..api::Settings::default()
    };
    let read = projections::ReadModels::lite(pool.clone(), redis.clone(), redis_prefix);
    let workers = options.projections.then(|| {
        workers::real_time(
            &pool,
            read.clone(),
            projections::TimelineSettings::default(),
            redis.clone(),
            redis_prefix,
            workers::RealTimeSettings::default(),
        )
    });
    let app = api::App::build_with(settings, pool, redis, read)
        .await
        .context("binding the API")?;
    Ok((app, workers))
}
