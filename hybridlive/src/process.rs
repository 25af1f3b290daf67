//! What every subcommand shares: the PostgreSQL and Redis connections, the signals that
//! stop a process, and a worker's `/metrics` endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// The event store's PostgreSQL, for every subcommand.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL holding the event store.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/hybridlive",
        hide_env_values = true,
        value_parser = secret,
        global = true
    )]
    pub database_url: SecretString,
    /// Most connections in the process's PostgreSQL pool (opened as needed).
    #[arg(
        long,
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 32,
        global = true
    )]
    pub database_max_connections: u32,
    /// Key-encryption key (32 random bytes in base64, e.g. `openssl rand -base64 32`): wraps
    /// the people's data keys, which seal their personal data in the log. Required by every
    /// subcommand that writes or reads personal data; `dev` uses a published development key.
    #[arg(
        long,
        env = "KEY_ENCRYPTION_KEY",
        hide_env_values = true,
        value_parser = secret,
        global = true
    )]
    pub key_encryption_key: Option<SecretString>,
    /// During a rotation of the key-encryption key: the previous one, which still unwraps
    /// the data keys `admin rewrap-keys` has not yet wrapped under the new one.
    #[arg(
        long,
        env = "KEY_ENCRYPTION_KEY_PREVIOUS",
        hide_env_values = true,
        value_parser = secret,
        global = true
    )]
    pub key_encryption_key_previous: Option<SecretString>,
}

/// What a subcommand needs of the key-encryption key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// It seals or opens personal data: `KEY_ENCRYPTION_KEY` must be set, and not to the
    /// development key.
    Required,
    /// `dev`: the development key when unset.
    Development,
    /// It never opens personal data (`migrate`, `relay`, `audit`): used when set.
    Optional,
}

impl DatabaseArgs {
    /// Installs the process's key-encryption keys (`store::keys`) as `keys` asks.
    pub fn install_keys(&self, keys: Keys) -> anyhow::Result<()> {
        let current = match (&self.key_encryption_key, keys) {
            (Some(key), _) => store::keys::Kek::from_base64(key).context("KEY_ENCRYPTION_KEY")?,
            (None, Keys::Development) => store::keys::Kek::from_base64(&SecretString::from(
                store::keys::DEV_KEY_ENCRYPTION_KEY,
            ))?,
            (None, Keys::Optional) => return Ok(()),
            (None, Keys::Required) => anyhow::bail!(
                "KEY_ENCRYPTION_KEY is required (32 random bytes in base64, e.g. `openssl rand \
                 -base64 32`); only `hybridlive dev` may run without it"
            ),
        };
        if keys == Keys::Required && current.is_development_key() {
            anyhow::bail!("KEY_ENCRYPTION_KEY is the published development key; only `hybridlive dev` may use it");
        }
        let previous = self
            .key_encryption_key_previous
            .as_ref()
            .map(store::keys::Kek::from_base64)
            .transpose()
            .context("KEY_ENCRYPTION_KEY_PREVIOUS")?;
        store::keys::install(current, previous)?;
        Ok(())
    }

    /// A pool of at most `DATABASE_MAX_CONNECTIONS` connections.
    pub async fn connect(&self) -> anyhow::Result<sqlx::PgPool> {
        PgPoolOptions::new()
            .max_connections(self.database_max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(self.database_url.expose_secret())
            .await
            .context("connecting to DATABASE_URL")
    }
}

#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis (refresh tokens, rate limits, read-model caches).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        value_parser = secret
    )]
    pub redis_url: SecretString,
    /// Prefix of every Redis key this deployment writes.
    #[arg(long, env = "REDIS_PREFIX", default_value = "hl:")]
    pub redis_prefix: String,
    /// Longest wait for a Redis answer before the command fails, milliseconds.
    #[arg(long, env = "REDIS_RESPONSE_TIMEOUT_MS", default_value_t = 2000)]
    redis_response_timeout_ms: u64,
}

impl RedisArgs {
    pub async fn connect(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        api::connect_redis(
            self.redis_url.expose_secret(),
            Duration::from_millis(self.redis_response_timeout_ms),
        )
        .await
        .context("connecting to REDIS_URL")
    }
}

/// Where a worker process (`relay`) serves `/metrics` and `/healthz`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Address of the worker's `/metrics` and `/healthz`; none when unset.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// Ctrl-C or SIGTERM: stop accepting, drain in-flight requests.
pub async fn shutdown_signal() {
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
pub async fn serve_metrics(addr: SocketAddr, stop: CancellationToken) -> anyhow::Result<()> {
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
pub fn spawn_holdback_gauge(pool: sqlx::PgPool) {
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

pub async fn cancel_on_signal(stop: CancellationToken) {
    shutdown_signal().await;
    stop.cancel();
}

/// The write side's settings, for every process that appends (the API, and the
/// registration saga in the projection workers).
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Snapshot aggregates every this many versions (0 = never).
    #[arg(long, env = "SNAPSHOT_EVERY", default_value_t = 100)]
    snapshot_every: u64,
}

impl WriteArgs {
    pub fn settings(&self) -> commands::Settings {
        commands::Settings {
            snapshot_every: self.snapshot_every,
            ..commands::Settings::default()
        }
    }
}

/// A flag or variable that may hold a password or a key, for clap: kept in a type that
/// never prints (`Debug` shows `[REDACTED]`).
#[allow(clippy::unnecessary_wraps)]
pub fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(value.into())
}
