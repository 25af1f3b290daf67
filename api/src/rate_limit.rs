//! Redis-backed rate limits (DESIGN §8), shared by every API instance: fixed one-minute
//! windows counted per client IP, per authenticated user, and — stricter, against password
//! guessing and sign-up floods — per client IP on the credential endpoints
//! (`POST /v1/auth/*`). Over a limit: `429 rate_limited` with `Retry-After` (seconds to the
//! next window).
//!
//! Each counter is one key `<prefix>rl:<kind>:<who>:<window>`, created with a TTL and
//! incremented in one `MULTI` (so a counter never outlives its window, and every key stands
//! alone, as a Redis Cluster needs). When Redis cannot be reached the request is let through
//! and `api_rate_limit_unavailable_total` counts it: refusing every request because the
//! limiter is down would turn a Redis outage into an API outage.
//!
//! The client IP is the TCP peer: behind a proxy, limit at the proxy (or set the per-IP
//! limits to 0) — `X-Forwarded-For` is not trusted.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

const WINDOW_SECS: u64 = 60;

/// Requests allowed per minute; 0 switches a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Every `/v1` request, per client IP.
    pub per_ip: u32,
    /// Every `/v1` request with a valid access token, per user.
    pub per_user: u32,
    /// `POST /v1/auth/*` (register, login, refresh, logout), per client IP.
    pub auth_per_ip: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_ip: 1200,
            per_user: 600,
            auth_per_ip: 30,
        }
    }
}

impl RateLimits {
    /// No limits at all.
    pub const OFF: Self = Self {
        per_ip: 0,
        per_user: 0,
        auth_per_ip: 0,
    };
}

/// The middleware: counts the request against every limit that applies to it.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !path.starts_with("/v1/") {
        return next.run(request).await;
    }
    let limits = state.rate_limits;
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let window = now / WINDOW_SECS;
    let prefix = format!("{}rl:", state.redis_prefix);

    let mut counters: Vec<(String, u32)> = Vec::with_capacity(3);
    if let Some(ip) = ip {
        if limits.per_ip > 0 {
            counters.push((format!("{prefix}ip:{ip}:{window}"), limits.per_ip));
        }
        if limits.auth_per_ip > 0
            && request.method() == Method::POST
            && path.starts_with("/v1/auth/")
        {
            counters.push((format!("{prefix}auth:{ip}:{window}"), limits.auth_per_ip));
        }
    }
    if limits.per_user > 0 {
        if let Some(user) = bearer_user(&state, request.headers()) {
            counters.push((format!("{prefix}user:{user}:{window}"), limits.per_user));
        }
    }
    if counters.is_empty() {
        return next.run(request).await;
    }

    match count(&state, &counters).await {
        Ok(counts) => {
            let over = counters
                .iter()
                .zip(&counts)
                .any(|((_, allowed), seen)| *seen > u64::from(*allowed));
            if over {
                metrics::counter!("api_rate_limited_total").increment(1);
                return ApiError::RateLimited {
                    retry_after_secs: WINDOW_SECS - now % WINDOW_SECS,
                }
                .into_response();
            }
        }
        Err(error) => {
            metrics::counter!("api_rate_limit_unavailable_total").increment(1);
            tracing::warn!(%error, "Rate limiter unavailable; letting the request through.");
        }
    }
    next.run(request).await
}

/// The user of a valid bearer token, if any (an invalid one is the handler's 401 to give).
fn bearer_user(state: &AppState, headers: &HeaderMap) -> Option<uuid::Uuid> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| state.jwt.verify(token.trim()).ok())
        .map(|claims| claims.sub)
}

/// Increments every counter (creating it with the window's TTL), returning the new counts.
async fn count(state: &AppState, counters: &[(String, u32)]) -> redis::RedisResult<Vec<u64>> {
    let increments = counters.iter().map(|(key, _)| {
        let mut redis = state.redis.clone();
        async move {
            let (count,): (u64,) = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(key)
                .arg(0)
                .arg("EX")
                .arg(WINDOW_SECS)
                .arg("NX")
                .ignore()
                .incr(key, 1)
                .query_async(&mut redis)
                .await?;
            Ok::<u64, redis::RedisError>(count)
        }
    });
    futures::future::try_join_all(increments).await
}
