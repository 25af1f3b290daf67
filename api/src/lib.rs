//! The HTTP API of Hybrid Live (`shared/API.md`): axum routes that turn requests into
//! commands on `commands::WriteSide`, authentication, and the operations endpoints.
//!
//! Layering (DESIGN §2): thin — parse, authorise, call the command layer, map the result;
//! every business rule stays in `domain`. Uses `commands` and `auth` for the write side, the
//! read models' queries (`projections`, built without Kafka or the production drivers) and
//! `store`'s functions (claims, the audit listing), never SQL of its own in its routes.
//! Never depends on Kafka. Used by the binary (`serve`, `dev`), the end-to-end tests and
//! `bench`.
//!
//! Invariants:
//! - every error response has the body `{"error": {"code", "message", "request_id"}}` with a
//!   stable code from the one table in [`error`]; no internal error text is ever sent;
//! - every response carries `x-request-id`; it becomes the correlation id of the events a
//!   command appends;
//! - command responses carry the aggregate's version (`ETag`, and `version` in bodies) and
//!   `x-global-position` (0 when the command changed nothing);
//! - bodies are strict JSON (unknown fields → 400) under a size limit (→ 413).
//!
//! Layout:
//! - `error`: [`error::ApiError`], the status/code table, the error envelope middleware;
//! - `request_id`: `x-request-id`;
//! - `idempotency`: `Idempotency-Key` on commands;
//! - `rate_limit`: Redis-backed limits per IP, per user and on the credential endpoints;
//! - `extract`: strict JSON, the authenticated [`extract::Principal`], `If-Match`;
//! - `routes`: `auth`, `social`, `posts`, `feed`, `stream`, `ops`, `demo` route groups
//!   (queries are served from `projections::ReadModels`, waiting for `X-Min-Position` when
//!   asked; `demo` is the page at `/`), `audit` (role `auditor`), which reads the event
//!   store itself, and `analytics` (role `analyst`), which reads the replay-built
//!   `projections::analytics` model;
//! - `live`: the SSE fan-out ([`live::Hub`]: Redis Pub/Sub to this instance's connections,
//!   resume from the channel streams); the SSE routes are `routes::stream`;
//! - `openapi`: the OpenAPI document;
//! - `state`: [`state::AppState`].

pub mod error;
pub mod extract;
pub mod idempotency;
pub mod live;
pub mod openapi;
pub mod presence;
pub mod rate_limit;
pub mod request_id;
pub mod routes;
pub mod state;

use secrecy::{ExposeSecret, SecretSlice, SecretString};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub use state::AppState;

/// What the API needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http_addr: SocketAddr,
    /// HS256 secret of access tokens (never printed).
    pub jwt_secret: SecretSlice<u8>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// How long an emailed password reset link works.
    pub password_reset_ttl: Duration,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Prefix of every Redis key this instance writes.
    pub redis_prefix: String,
    pub rate_limits: rate_limit::RateLimits,
    pub commands: commands::Settings,
    /// Longest wait of a query for `X-Min-Position` (`MIN_POSITION_WAIT_MS`).
    pub min_position_wait: Duration,
    /// Redis for the SSE fan-out's Pub/Sub connection (`REDIS_URL`; it may hold a
    /// password: never printed).
    pub redis_url: SecretString,
    pub hub: live::HubSettings,
    pub presence: real_time::presence::PresenceSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            jwt_secret: auth::jwt::DEV_SECRET.to_vec().into(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            password_reset_ttl: Duration::from_secs(30 * 60),
            body_limit: 64 * 1024,
            redis_prefix: "hl:".to_owned(),
            rate_limits: rate_limit::RateLimits::default(),
            commands: commands::Settings::default(),
            min_position_wait: Duration::from_secs(2),
            redis_url: "redis://127.0.0.1:6379".into(),
            hub: live::HubSettings::default(),
            presence: real_time::presence::PresenceSettings::default(),
        }
    }
}

/// A bound, ready-to-run API server.
#[derive(Debug)]
pub struct App {
    listener: tokio::net::TcpListener,
    router: Router,
    hub: live::Hub,
    /// Stops this instance's presence heartbeats and sweeps.
    presence_stop: tokio_util::sync::CancellationToken,
}

/// Upper bounds, in seconds, of the `http_request_duration_seconds` buckets: from a cached
/// query (a few ms) to the longest `X-Min-Position` wait and beyond.
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder (metrics has one global recorder per process).
/// `http_request_duration_seconds` is exported as a histogram (`_bucket`, `_sum`,
/// `_count`), not as a summary: buckets add up across instances, so a dashboard can take
/// `histogram_quantile` over every `serve` process; per-process quantiles cannot be.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            // Refused only for an empty bucket list, which the constant is not.
            let builder = builder
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".to_owned()),
                    HTTP_DURATION_BUCKETS,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours stays unused.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Opens the multiplexed Redis connection every part of a process shares. A command waits at
/// most `response_timeout` for its answer (redis-rs defaults to 500 ms, which a reconnect
/// storm of thousands of SSE clients on a busy machine exceeds without Redis being down).
///
/// # Errors
/// `url` is not a Redis URL, or Redis is unreachable.
pub async fn connect_redis(
    url: &str,
    response_timeout: Duration,
) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(2)));
    redis::aio::ConnectionManager::new_with_config(redis::Client::open(url)?, config).await
}

/// `/metrics` (Prometheus text) and `/healthz` alone, for worker processes without the API
/// (`hybridlive relay`).
pub fn metrics_router() -> Router {
    let handle = metrics_handle();
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let body = handle.render();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        body,
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
}

impl App {
    /// Binds `settings.http_addr` (port 0 picks a free port) and wires the routes, serving
    /// queries from the lite read models (PostgreSQL and Redis).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn build(
        settings: Settings,
        pool: sqlx::PgPool,
        redis: redis::aio::ConnectionManager,
    ) -> std::io::Result<App> {
        let read =
            projections::ReadModels::lite(pool.clone(), redis.clone(), &settings.redis_prefix);
        Self::build_with(settings, pool, redis, read).await
    }

    /// [`App::build`] with the read models given (ScyllaDB / MongoDB in the full profile).
    ///
    /// # Errors
    /// When the address cannot be bound or `redis_url` is not a Redis URL.
    pub async fn build_with(
        settings: Settings,
        pool: sqlx::PgPool,
        redis: redis::aio::ConnectionManager,
        read: projections::ReadModels,
    ) -> std::io::Result<App> {
        // The recorder first: what is recorded before it is installed is lost (the hub's
        // subscriber sets `sse_hub_connected` as soon as it is subscribed).
        let metrics = metrics_handle();
        routes::stream::register_metrics();
        projections::query::register_metrics();
        let client = redis::Client::open(settings.redis_url.expose_secret())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let hub = live::Hub::start(client, redis.clone(), &settings.redis_prefix, settings.hub);
        let feed = presence::PresenceFeed {
            history: read.presence.clone(),
            timelines: read.timelines.clone(),
            live: projections::LivePublisher::new(
                redis.clone(),
                &settings.redis_prefix,
                projections::LiveSettings::default(),
            ),
        };
        let presence = real_time::presence::Presence::new(
            redis.clone(),
            &settings.redis_prefix,
            settings.presence,
            Arc::new(feed),
        );
        let presence_stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let (presence, stop) = (presence.clone(), presence_stop.clone());
            async move { presence.run(&stop).await }
        });
        let state = AppState {
            hub: hub.clone(),
            presence,
            read,
            min_position_wait: settings.min_position_wait,
            write: Arc::new(commands::WriteSide::new(pool.clone(), settings.commands)),
            jwt: Arc::new(auth::jwt::JwtKeys::new(
                settings.jwt_secret.expose_secret(),
                settings.access_ttl,
                "hybridlive",
            )),
            password_reset_ttl: settings.password_reset_ttl,
            account_tokens: auth::account_token::AccountTokens::new(
                settings.jwt_secret.expose_secret(),
            ),
            refresh: auth::refresh::RefreshTokens::new(
                redis.clone(),
                format!("{}auth:", settings.redis_prefix),
                settings.refresh_ttl,
            ),
            pool,
            redis,
            metrics,
            body_limit: settings.body_limit,
            redis_prefix: settings.redis_prefix,
            rate_limits: settings.rate_limits,
        };
        let router = router(state, settings.body_limit);
        let listener = tokio::net::TcpListener::bind(settings.http_addr).await?;
        Ok(App {
            listener,
            router,
            hub,
            presence_stop,
        })
    }

    /// The bound address (tests bind port 0 and read the port here).
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then closes the SSE connections and drains
    /// in-flight requests.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            self.presence_stop.cancel();
            self.hub.close();
        })
        .await
    }
}

/// Every route with its middleware, outermost last.
pub fn router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .merge(routes::auth::routes())
        .merge(routes::accounts::routes())
        .merge(routes::two_factor::routes())
        .merge(routes::notifications::routes())
        .merge(routes::social::routes())
        .merge(routes::posts::routes())
        .merge(routes::conversations::routes())
        .merge(routes::presence::routes())
        .merge(routes::feed::routes())
        .merge(routes::stream::routes())
        .merge(routes::ops::routes())
        .merge(routes::demo::routes())
        .merge(routes::audit::routes())
        .merge(routes::analytics::routes())
        .merge(openapi::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotency,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit,
        ))
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(axum::middleware::from_fn(routes::ops::record_metrics))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(error::envelope))
        .layer(axum::middleware::from_fn(request_id::assign))
}

#[cfg(test)]
mod settings_tests {
    /// Settings are printed at startup or while debugging: the JWT secret and the Redis
    /// URL (which may hold a password) show as `[REDACTED]`.
    #[test]
    fn settings_never_print_their_secrets() {
        let secret = b"jwt-secret-1-jwt-secret-1-jwt-secret-1".to_vec();
        let settings = super::Settings {
            jwt_secret: secret.clone().into(),
            redis_url: "redis://:redis-password-2@cache:6379".into(),
            ..super::Settings::default()
        };
        let printed = format!("{settings:?}");
        // Neither as text nor as the list of its bytes (how a `Vec<u8>` prints).
        let bytes = format!("{secret:?}");
        assert!(!printed.contains(&bytes[..bytes.len() - 1]), "{printed}");
        assert!(!printed.contains("jwt-secret-1"), "{printed}");
        assert!(!printed.contains("redis-password-2"), "{printed}");
    }
}
