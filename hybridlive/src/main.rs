//! `hybridlive`: the one binary of Hybrid Live (DESIGN §9). Reads configuration from the
//! environment and flags, installs tracing and signal handlers, and hands over to the
//! libraries.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

mod admin;
mod dev;
mod replay;
mod workers;

use projections::Source;
use workers::{ReadStoreArgs, RealTimeArgs};

/// The event-sourced social backend.
#[derive(Debug, Parser)]
#[command(name = "hybridlive", version, about)]
struct Cli {
    /// PostgreSQL holding the event store.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/hybridlive",
        global = true
    )]
    database_url: String,

    /// Connections in the PostgreSQL pool.
    #[arg(
        long,
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 32,
        global = true
    )]
    database_max_connections: u32,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Applies pending schema migrations, then exits. Run it before starting services;
    /// concurrent runs are safe (they serialise on an advisory lock).
    Migrate {
        /// Create the database first if it does not exist.
        #[arg(long)]
        create_database: bool,
        /// Also creates the CQL keyspace/tables and MongoDB indexes when configured.
        #[command(flatten)]
        stores: ReadStoreArgs,
    },
    /// Serves the HTTP API. Refuses to start with the development JWT secret.
    Serve(ServeArgs),
    /// Everything in one process for local development: the HTTP API (the development JWT
    /// secret is allowed), every projection (fed by the PostgreSQL log), the relay when
    /// KAFKA_BROKERS is set and, with --print-events, the committed log as JSON lines.
    Dev {
        #[command(flatten)]
        serve: ServeArgs,
        /// Kafka for the relay, which `dev` runs only when this is set.
        #[arg(long, env = "KAFKA_BROKERS")]
        kafka_brokers: Option<String>,
        #[command(flatten)]
        kafka: KafkaTopicArgs,
        #[command(flatten)]
        relay: RelayArgs,
        /// Print every committed event, in the order projections read them, to stdout.
        #[arg(long)]
        print_events: bool,
        #[command(flatten)]
        realtime: RealTimeArgs,
    },
    /// The outbox relay: publishes every committed event to Kafka, in the log's gap-free
    /// order. Run several for availability: exactly one is active at a time.
    Relay {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        relay: RelayArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Projection workers: build the read models from Kafka (when KAFKA_BROKERS is set) or
    /// from the PostgreSQL log. Names: timeline, content, onboarding, or all.
    Project {
        /// Projections to run.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        stores: ReadStoreArgs,
        /// Kafka to consume the relay's topics from; the PostgreSQL log when unset.
        #[arg(long, env = "KAFKA_BROKERS")]
        kafka_brokers: Option<String>,
        /// The longest a consumer's fetch waits at the broker for records, in ms.
        #[arg(long, env = "KAFKA_FETCH_WAIT_MS", default_value_t = 100)]
        kafka_fetch_wait_ms: u64,
        /// Consume only the topics of these stream types (comma-separated, e.g.
        /// `comment,like`); default: every topic each projection reads. Splits a
        /// projection's topics across worker pools (the tests use it to consume them in an
        /// adversarial order).
        #[arg(long, env = "KAFKA_STREAM_TYPES", value_delimiter = ',')]
        kafka_stream_types: Vec<String>,
        /// The name of the relay publishing the topics (its RELAY_NAME): its checkpoint
        /// bounds the projections' checkpoints, what X-Min-Position waits on.
        #[arg(long, env = "RELAY_NAME", default_value = "relay")]
        relay_name: String,
        #[command(flatten)]
        kafka: KafkaTopicArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
        #[command(flatten)]
        realtime: RealTimeArgs,
    },
    /// Dead-lettered events of the projections.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Checks the immutable log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// For analysts: `replay <model>` rebuilds a read model (timeline, content, analytics)
    /// from the log into fresh tables and swaps them in, resumably; `replay export` writes
    /// the log for use in other tools.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Replay {
        #[command(subcommand)]
        command: Option<ReplayCommand>,
        #[command(flatten)]
        rebuild: replay::ReplayArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ReplayCommand {
    /// Writes the events matching the audit filters to stdout, one JSON object per line, in
    /// log order, as stored (payloads at their recorded `schema_version`, hash in hex):
    /// those settled when it starts. Ends with the cursor a later export continues from, on
    /// stderr.
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
        format: ExportFormat,
        #[arg(long)]
        stream_type: Option<String>,
        /// Only together with --stream-type.
        #[arg(long, requires = "stream_type")]
        stream_id: Option<String>,
        #[arg(long)]
        event_type: Option<String>,
        #[arg(long)]
        correlation_id: Option<String>,
        /// e.g. `user:<uuid>`.
        #[arg(long)]
        actor: Option<String>,
        /// Recorded at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Recorded before this time (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Where to continue: the cursor an earlier export printed (or the API's
        /// `next_cursor`), or an integer N for only the events after global position N.
        #[arg(long, default_value = "0")]
        after_position: store::AuditCursor,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// Newline-delimited JSON.
    Ndjson,
}

#[derive(Debug, Args)]
struct RedisArgs {
    /// Redis (refresh tokens, rate limits, read-model caches).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Prefix of every Redis key this deployment writes.
    #[arg(long, env = "REDIS_PREFIX", default_value = "hl:")]
    redis_prefix: String,
    /// Longest wait for a Redis answer before the command fails, milliseconds.
    #[arg(long, env = "REDIS_RESPONSE_TIMEOUT_MS", default_value_t = 2000)]
    redis_response_timeout_ms: u64,
}

impl RedisArgs {
    async fn connect(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        api::connect_redis(
            &self.redis_url,
            Duration::from_millis(self.redis_response_timeout_ms),
        )
        .await
        .context("connecting to REDIS_URL")
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    stores: ReadStoreArgs,
    /// Longest wait of a query for its X-Min-Position, milliseconds.
    #[arg(long, env = "MIN_POSITION_WAIT_MS", default_value_t = 2000)]
    min_position_wait_ms: u64,
    /// HS256 secret of access tokens, at least 32 bytes. Required by `serve`.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Access token lifetime, seconds.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 900)]
    access_token_ttl_secs: u64,
    /// Refresh token lifetime, seconds.
    #[arg(long, env = "REFRESH_TOKEN_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    refresh_token_ttl_secs: u64,
    /// Largest accepted request body, bytes.
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    body_limit_bytes: usize,
    /// Snapshot aggregates every this many versions (0 = never).
    #[arg(long, env = "SNAPSHOT_EVERY", default_value_t = 100)]
    snapshot_every: u64,
    /// Requests per minute per client IP on /v1 (0 = no limit).
    #[arg(long, env = "RATE_LIMIT_PER_IP", default_value_t = 1200)]
    rate_limit_per_ip: u32,
    /// Requests per minute per authenticated user on /v1 (0 = no limit).
    #[arg(long, env = "RATE_LIMIT_PER_USER", default_value_t = 600)]
    rate_limit_per_user: u32,
    /// POST /v1/auth/* requests per minute per client IP (0 = no limit).
    #[arg(long, env = "RATE_LIMIT_AUTH_PER_IP", default_value_t = 30)]
    rate_limit_auth_per_ip: u32,
    /// Seal the log (chain every stream's head into a global checkpoint) every this many
    /// seconds (0 = never).
    #[arg(long, env = "SEAL_INTERVAL_SECS", default_value_t = 60)]
    seal_interval_secs: u64,
}

#[derive(Debug, Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    #[command(flatten)]
    topics: KafkaTopicArgs,
}

#[derive(Debug, Args)]
struct KafkaTopicArgs {
    /// Prefix of every topic name; an event goes to `<prefix><stream_type>`.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "hl.")]
    kafka_topic_prefix: String,
    /// Partitions of the topics the relay creates.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 6)]
    kafka_topic_partitions: i32,
    /// Replication factor of the topics the relay creates.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    kafka_replication_factor: i32,
    /// Whether the relay creates its topics; `false` where they are managed outside the
    /// application (they must then exist, or the broker create them on first use).
    #[arg(long, env = "KAFKA_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    kafka_create_topics: bool,
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// The relay's checkpoint and lease name; relays of one name share one active instance.
    #[arg(long, env = "RELAY_NAME", default_value = "relay")]
    relay_name: String,
    /// Events per published batch (one checkpoint write each).
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 1000)]
    relay_batch_size: u32,
    /// Fallback poll of the log, milliseconds (appends wake the relay at once).
    #[arg(long, env = "RELAY_POLL_MS", default_value_t = 1000)]
    relay_poll_ms: u64,
    /// How often a standby relay tries to take over, milliseconds.
    #[arg(long, env = "RELAY_STANDBY_MS", default_value_t = 500)]
    relay_standby_ms: u64,
}

/// Where a worker process (`relay`) serves `/metrics` and `/healthz`.
#[derive(Debug, Args)]
struct MetricsArgs {
    /// Address of the worker's `/metrics` and `/healthz`; none when unset.
    #[arg(long, env = "METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

impl RelayArgs {
    fn settings(&self, brokers: String, topics: &KafkaTopicArgs) -> relay::RelaySettings {
        relay::RelaySettings {
            brokers,
            topic_prefix: topics.kafka_topic_prefix.clone(),
            topic_partitions: topics.kafka_topic_partitions,
            topic_replication: topics.kafka_replication_factor,
            create_topics: topics.kafka_create_topics,
            name: self.relay_name.clone(),
            batch_size: self.relay_batch_size,
            poll_interval: Duration::from_millis(self.relay_poll_ms),
            standby_interval: Duration::from_millis(self.relay_standby_ms),
            producer_properties: Vec::new(),
        }
    }
}

// Parsed once per process: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Lists dead letters (one JSON object per line), in log order.
    List {
        /// Only this projection's.
        #[arg(long)]
        projection: Option<String>,
    },
    /// Applies a projection's dead letters again (after the cause was fixed); removes those
    /// that succeed. Exits 1 when some are still dead.
    Retry {
        /// The projection (timeline, content, onboarding).
        #[arg(long)]
        projection: String,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        stores: ReadStoreArgs,
        #[command(flatten)]
        realtime: RealTimeArgs,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Grants a role (admin, auditor, analyst) to a user, by id or username.
    GrantRole { user: String, role: String },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recomputes the hash chain of every event in a range of positions and checks the
    /// seals ending in it; prints the result as JSON and exits 1 when the log was altered.
    Verify {
        #[arg(long, default_value_t = 0)]
        from_position: i64,
        #[arg(long, default_value_t = i64::MAX)]
        to_position: i64,
    },
    /// Seals the log now (what `serve` does every SEAL_INTERVAL_SECS); prints each new seal
    /// as a JSON line.
    Seal {
        /// Longest wait for running write transactions, seconds; exits 1 when exceeded.
        #[arg(long, default_value_t = 30)]
        settle_secs: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Migrate {
            create_database,
            stores,
        } => {
            migrate(&cli.database_url, create_database).await?;
            let pool = connect(&cli.database_url, 2).await?;
            stores.migrate(&pool).await
        }
        Command::Serve(args) => {
            let pool = connect(&cli.database_url, cli.database_max_connections).await?;
            serve(args, pool, false).await
        }
        Command::Relay {
            kafka,
            relay,
            metrics,
        } => {
            let pool = connect(&cli.database_url, 4).await?;
            let settings = relay.settings(kafka.kafka_brokers, &kafka.topics);
            let stop = CancellationToken::new();
            tokio::spawn(cancel_on_signal(stop.clone()));
            if let Some(addr) = metrics.metrics_addr {
                serve_metrics(addr, stop.clone()).await?;
            }
            spawn_holdback_gauge(pool.clone());
            relay::Relay::new(pool, settings).run(stop).await;
            Ok(())
        }
        Command::Dev {
            serve: args,
            print_events,
            kafka_brokers,
            kafka,
            relay,
            realtime,
        } => {
            let pool = connect(&cli.database_url, cli.database_max_connections).await?;
            let stop = CancellationToken::new();
            let redis = args.redis.connect().await?;
            let models = args
                .stores
                .read_models(&pool, redis.clone(), &args.redis.redis_prefix)
                .await?;
            let workers = {
                let workers = realtime.workers(
                    &pool,
                    models,
                    args.stores.timeline_settings(),
                    redis,
                    &args.redis.redis_prefix,
                )?;
                let stop = stop.clone();
                tokio::spawn(
                    async move { workers.run(&["all".to_owned()], &Source::Log, &stop).await },
                )
            };
            let relay = kafka_brokers.map(|brokers| {
                let relay = relay::Relay::new(pool.clone(), relay.settings(brokers, &kafka));
                let stop = stop.clone();
                tokio::spawn(async move { relay.run(stop).await })
            });
            if print_events {
                let follower = pool.clone();
                tokio::spawn(async move {
                    if let Err(error) = dev::print_events(follower).await {
                        tracing::error!(error = format!("{error:#}"), "Event printer stopped.");
                    }
                });
            }
            let served = serve(args, pool, true).await;
            stop.cancel();
            if let Some(relay) = relay {
                relay.await.context("the relay task panicked")?;
            }
            workers.await.context("the projection workers panicked")??;
            served
        }
        Command::Project {
            names,
            redis,
            stores,
            kafka_brokers,
            kafka_fetch_wait_ms,
            kafka_stream_types,
            relay_name,
            kafka,
            metrics,
            realtime,
        } => {
            let pool = connect(&cli.database_url, 8).await?;
            let connection = redis.connect().await?;
            let models = stores
                .read_models(&pool, connection.clone(), &redis.redis_prefix)
                .await?;
            let source = match kafka_brokers {
                Some(brokers) => Source::Kafka {
                    brokers,
                    topic_prefix: kafka.kafka_topic_prefix,
                    replication: kafka.kafka_replication_factor,
                    fetch_wait: Duration::from_millis(kafka_fetch_wait_ms),
                    only: kafka_stream_types,
                    relay: relay_name,
                },
                None => Source::Log,
            };
            let stop = CancellationToken::new();
            tokio::spawn(cancel_on_signal(stop.clone()));
            if let Some(addr) = metrics.metrics_addr {
                serve_metrics(addr, stop.clone()).await?;
            }
            spawn_holdback_gauge(pool.clone());
            realtime
                .workers(
                    &pool,
                    models,
                    stores.timeline_settings(),
                    connection,
                    &redis.redis_prefix,
                )?
                .run(&names, &source, &stop)
                .await?;
            Ok(())
        }
        Command::Dlq {
            command:
                DlqCommand::Retry {
                    projection,
                    redis,
                    stores,
                    realtime,
                },
        } => {
            let pool = connect(&cli.database_url, 2).await?;
            let connection = redis.connect().await?;
            let models = stores
                .read_models(&pool, connection.clone(), &redis.redis_prefix)
                .await?;
            let (retried, still_dead) = realtime
                .workers(
                    &pool,
                    models,
                    stores.timeline_settings(),
                    connection,
                    &redis.redis_prefix,
                )?
                .retry_dead_letters(&projection)
                .await?;
            println!(
                "{}",
                serde_json::json!({"projection": projection, "retried": retried, "still_dead": still_dead})
            );
            if still_dead > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Dlq {
            command: DlqCommand::List { projection },
        } => {
            let pool = connect(&cli.database_url, 1).await?;
            let letters = projections::DeadLetters::new(pool)
                .list(projection.as_deref())
                .await
                .context("reading dead_letters")?;
            for letter in letters {
                let line = serde_json::json!({
                    "projection": letter.projection,
                    "event_id": letter.event_id,
                    "global_position": letter.global_position,
                    "attempts": letter.attempts,
                    "error": letter.error,
                });
                println!("{line}");
            }
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::GrantRole { user, role },
        } => {
            let pool = connect(&cli.database_url, 2).await?;
            admin::grant_role(pool, &user, &role).await
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    from_position,
                    to_position,
                },
        } => verify(&cli.database_url, from_position, to_position).await,
        Command::Audit {
            command: AuditCommand::Seal { settle_secs },
        } => seal(&cli.database_url, Duration::from_secs(settle_secs)).await,
        Command::Replay {
            command: None,
            rebuild,
        } => replay::run(rebuild, &cli.database_url).await,
        Command::Replay {
            command:
                Some(ReplayCommand::Export {
                    format: ExportFormat::Ndjson,
                    stream_type,
                    stream_id,
                    event_type,
                    correlation_id,
                    actor,
                    from,
                    to,
                    after_position,
                }),
            ..
        } => {
            let filter = store::audit::AuditFilter {
                stream_type,
                stream_id,
                event_type,
                correlation_id,
                actor,
                from,
                to,
            };
            export(&cli.database_url, &filter, after_position).await
        }
    }
}

async fn connect(database_url: &str, max_connections: u32) -> anyhow::Result<sqlx::PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await
        .context("connecting to DATABASE_URL")
}

async fn serve(args: ServeArgs, pool: sqlx::PgPool, dev: bool) -> anyhow::Result<()> {
    let jwt_secret = match args.jwt_secret {
        Some(secret) => secret.into_bytes(),
        None if dev => auth::jwt::DEV_SECRET.to_vec(),
        None => anyhow::bail!("JWT_SECRET is required (at least 32 random bytes); only `hybridlive dev` may run without it"),
    };
    if !dev {
        auth::jwt::check_secret(&jwt_secret).context("JWT_SECRET is not safe to use")?;
    }
    let redis = args.redis.connect().await?;
    let read = args
        .stores
        .read_models(&pool, redis.clone(), &args.redis.redis_prefix)
        .await?;
    let settings = api::Settings {
        http_addr: args.http_addr,
        jwt_secret,
        access_ttl: Duration::from_secs(args.access_token_ttl_secs),
        refresh_ttl: Duration::from_secs(args.refresh_token_ttl_secs),
        body_limit: args.body_limit_bytes,
        redis_prefix: args.redis.redis_prefix,
        redis_url: args.redis.redis_url,
        hub: api::live::HubSettings::default(),
        min_position_wait: Duration::from_millis(args.min_position_wait_ms),
        rate_limits: api::rate_limit::RateLimits {
            per_ip: args.rate_limit_per_ip,
            per_user: args.rate_limit_per_user,
            auth_per_ip: args.rate_limit_auth_per_ip,
        },
        commands: commands::Settings {
            snapshot_every: args.snapshot_every,
            ..commands::Settings::default()
        },
    };
    spawn_holdback_gauge(pool.clone());
    let sealer = CancellationToken::new();
    if args.seal_interval_secs > 0 {
        let interval = Duration::from_secs(args.seal_interval_secs);
        tokio::spawn(store::Sealer::new(pool.clone()).run(interval, sealer.clone()));
    }
    let app = api::App::build_with(settings, pool, redis, read)
        .await
        .context("binding HTTP_ADDR")?;
    tracing::info!(addr = %app.local_addr()?, dev, "Serving the HTTP API.");
    let served = app
        .run_until_stopped(shutdown_signal())
        .await
        .context("serving HTTP");
    sealer.cancel();
    served?;
    tracing::info!("Stopped.");
    Ok(())
}

/// Ctrl-C or SIGTERM: stop accepting, drain in-flight requests.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("Shutting down: draining in-flight work.");
}

/// Serves `/metrics` and `/healthz` on `addr` until `stop`.
async fn serve_metrics(addr: SocketAddr, stop: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding METRICS_ADDR {addr}"))?;
    // The bound address: port 0 in METRICS_ADDR picks a free one.
    let addr = listener
        .local_addr()
        .context("reading the metrics address")?;
    // Built here, not in the task: it installs the process's recorder, and a metric
    // recorded before that is lost (the relay's `relay_active`, a projection's first
    // applied events).
    let router = api::metrics_router();
    tracing::info!(%addr, "Serving /metrics.");
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "The metrics endpoint failed.");
        }
    });
    Ok(())
}

/// Keeps `eventstore_reader_holdback_seconds` current (every 5 s): how long the oldest
/// open write transaction has held every log reader back (DESIGN §3).
fn spawn_holdback_gauge(pool: sqlx::PgPool) {
    tokio::spawn(async move {
        let reader = store::LogReader::new(pool);
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            if let Err(error) = reader.holdback().await {
                tracing::debug!(%error, "Reading the log readers' holdback failed.");
            }
        }
    });
}

async fn cancel_on_signal(stop: CancellationToken) {
    shutdown_signal().await;
    stop.cancel();
}

async fn verify(database_url: &str, from: i64, to: i64) -> anyhow::Result<()> {
    let store = store::PgEventStore::new(connect(database_url, 1).await?);
    let verification = store
        .verify_log(from, to)
        .await
        .context("verifying the log")?;
    println!("{}", serde_json::to_string(&verification)?);
    if !verification.ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Pages through the audit listing (one page in memory at a time) to stdout, up to the
/// watermark read at the start, so the export ends under any write load.
async fn export(
    database_url: &str,
    filter: &store::audit::AuditFilter,
    after: store::AuditCursor,
) -> anyhow::Result<()> {
    let pool = connect(database_url, 1).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (exported, after) = ::replay::export::export(&pool, filter, after, &mut out)
        .await
        .context("exporting the log")?;
    eprintln!("Exported {exported} events. Continue with --after-position {after}");
    Ok(())
}

async fn seal(database_url: &str, settle: Duration) -> anyhow::Result<()> {
    let sealer = store::Sealer::new(connect(database_url, 1).await?);
    match sealer.seal_now(settle).await.context("sealing the log")? {
        store::SealOutcome::Sealed(seals) => {
            for seal in seals {
                println!("{}", serde_json::to_string(&seal)?);
            }
            Ok(())
        }
        store::SealOutcome::UpToDate => {
            eprintln!("The log is already sealed up to its last position.");
            Ok(())
        }
        store::SealOutcome::Unsettled => {
            anyhow::bail!("a write transaction was still running after {settle:?}; try again")
        }
    }
}

async fn migrate(database_url: &str, create_database: bool) -> anyhow::Result<()> {
    use sqlx::migrate::MigrateDatabase;
    if create_database
        && !sqlx::Postgres::database_exists(database_url)
            .await
            .context("checking whether the database exists")?
    {
        sqlx::Postgres::create_database(database_url)
            .await
            .context("creating the database")?;
        tracing::info!("Created the database.");
    }
    let pool = connect(database_url, 1).await?;
    let before = applied(&pool).await?;
    store::MIGRATOR
        .run(&pool)
        .await
        .context("applying migrations")?;
    let after = applied(&pool).await?;
    tracing::info!(
        applied = after - before,
        total = after,
        "Database schema is up to date."
    );
    Ok(())
}

async fn applied(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .context("reading the migration table")?;
    if !exists {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .context("reading the migration table")
}
