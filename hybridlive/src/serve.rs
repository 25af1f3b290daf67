//! `hybridlive serve`: the HTTP API (the `api` crate) with its settings.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use tokio_util::sync::CancellationToken;

use crate::process::{self, DatabaseArgs, RedisArgs, WriteArgs};
use crate::workers::ReadStoreArgs;

/// Serves the HTTP API; refuses to start with the development JWT secret.
pub async fn run(args: ServeArgs, database: &DatabaseArgs) -> anyhow::Result<()> {
    serve(args, database.connect().await?, false).await
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub stores: ReadStoreArgs,
    /// Longest wait of a query for its X-Min-Position, milliseconds.
    #[arg(long, env = "MIN_POSITION_WAIT_MS", default_value_t = 2000)]
    min_position_wait_ms: u64,
    /// HS256 secret of access tokens, at least 32 bytes. Required by `serve`.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, value_parser = process::secret)]
    jwt_secret: Option<SecretString>,
    /// Access token lifetime, seconds.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 900)]
    access_token_ttl_secs: u64,
    /// Refresh token lifetime, seconds.
    #[arg(long, env = "REFRESH_TOKEN_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    refresh_token_ttl_secs: u64,
    /// How long an emailed password reset link works, seconds.
    #[arg(long, env = "PASSWORD_RESET_TTL_SECS", default_value_t = 30 * 60,
          value_parser = clap::value_parser!(u64).range(60..=86_400))]
    password_reset_ttl_secs: u64,
    /// Largest accepted request body, bytes.
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    body_limit_bytes: usize,
    #[command(flatten)]
    pub write: WriteArgs,
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

pub async fn serve(args: ServeArgs, pool: sqlx::PgPool, dev: bool) -> anyhow::Result<()> {
    let jwt_secret: SecretSlice<u8> = match args.jwt_secret {
        Some(secret) => secret.expose_secret().as_bytes().to_vec().into(),
        None if dev => auth::jwt::DEV_SECRET.to_vec().into(),
        None => anyhow::bail!("JWT_SECRET is required (at least 32 random bytes); only `hybridlive dev` may run without it"),
    };
    if !dev {
        auth::jwt::check_secret(jwt_secret.expose_secret())
            .context("JWT_SECRET is not safe to use")?;
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
        password_reset_ttl: Duration::from_secs(args.password_reset_ttl_secs),
        body_limit: args.body_limit_bytes,
        redis_prefix: args.redis.redis_prefix,
        redis_url: args.redis.redis_url,
        hub: api::live::HubSettings::default(),
        presence: args.stores.presence_settings(),
        min_position_wait: Duration::from_millis(args.min_position_wait_ms),
        rate_limits: api::rate_limit::RateLimits {
            per_ip: args.rate_limit_per_ip,
            per_user: args.rate_limit_per_user,
            auth_per_ip: args.rate_limit_auth_per_ip,
        },
        commands: args.write.settings(),
    };
    process::spawn_holdback_gauge(pool.clone());
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
        .run_until_stopped(process::shutdown_signal())
        .await
        .context("serving HTTP");
    sealer.cancel();
    served?;
    tracing::info!("Stopped.");
    Ok(())
}
