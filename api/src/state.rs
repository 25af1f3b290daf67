//! What every handler shares.

use std::sync::Arc;

use auth::jwt::JwtKeys;
use auth::refresh::RefreshTokens;
use commands::WriteSide;
use sqlx::PgPool;

/// Cheap to clone: everything inside is shared.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub redis: redis::aio::ConnectionManager,
    pub write: Arc<WriteSide>,
    pub jwt: Arc<JwtKeys>,
    pub refresh: RefreshTokens,
    /// The tokens of emailed links (made by the emailer with the same secret).
    pub account_tokens: auth::account_token::AccountTokens,
    /// How long a reset link works.
    pub password_reset_ttl: std::time::Duration,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Largest accepted request body, bytes.
    pub body_limit: usize,
    /// Prefix of every Redis key this instance writes.
    pub redis_prefix: String,
    pub rate_limits: crate::rate_limit::RateLimits,
    /// The read models the query routes serve.
    pub read: projections::ReadModels,
    /// Longest wait for `X-Min-Position` before answering 503 `read_model_behind`.
    pub min_position_wait: std::time::Duration,
    /// The SSE fan-out of this process.
    pub hub: crate::live::Hub,
    /// Who holds a stream here, shared with the other instances.
    pub presence: real_time::presence::Presence,
}
