//! The emailed links: verify an address, reset a forgotten password.
//!
//! The emailer (`projections::email`) sends the links; their tokens are MACs of the person
//! and the request, stored nowhere ([`auth::account_token`]). The `User` aggregate decides
//! whether a reset token still works: only for its open request, before it expires, once.

use auth::account_token::Purpose;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use domain::user::{UserCommand, EMAIL_CLAIM};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{CommandMeta, JsonBody};
use crate::state::AppState;

/// Reset emails per address per hour; more requests are answered alike and send nothing.
pub const RESETS_PER_ADDRESS_PER_HOUR: u64 = 3;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/verify-email", post(verify_email))
        .route("/v1/auth/password-reset", post(request_reset))
        .route("/v1/auth/password-reset/confirm", post(confirm_reset))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The token of the emailed link.
    #[schema(max_length = 100)]
    pub token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    #[schema(
        max_length = 254,
        pattern = r"^[^@\s\x00-\x1f\x7f]+@([^@\s\x00-\x1f\x7f.]+\.)+[^@\s\x00-\x1f\x7f.]+$"
    )]
    pub email: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirmRequest {
    #[schema(max_length = 100)]
    pub token: String,
    /// 10–128 characters, not a common password, not containing the username.
    #[schema(min_length = 10, max_length = 128)]
    pub new_password: String,
}

// Tokens and passwords never print.
crate::routes::opaque_debug!(TokenRequest, ResetConfirmRequest);

/// Confirm the address the link was sent to. Following it again is fine.
#[utoipa::path(post, path = "/v1/auth/verify-email", tag = "auth", request_body = TokenRequest,
    responses((status = 204, description = "the address is verified"),
              (status = 400, body = crate::error::ErrorBody, description = "invalid_token")))]
pub async fn verify_email(
    State(state): State<AppState>,
    meta: CommandMeta,
    JsonBody(body): JsonBody<TokenRequest>,
) -> Result<StatusCode, ApiError> {
    let tokens = &state.account_tokens;
    let user_id = tokens
        .person(Purpose::VerifyEmail, &body.token)
        .ok_or(ApiError::InvalidToken)?;
    let id = user_id.to_string();
    let user = state.write.users.store().load(&id).await?.aggregate;
    // The token is bound to the address: one sent to an address the account no longer has
    // does not verify the new one.
    if !user.is_active()
        || tokens
            .open(Purpose::VerifyEmail, &body.token, user.email())
            .is_none()
    {
        return Err(ApiError::InvalidToken);
    }
    let ctx = crate::routes::context(&meta, Some(user_id), None);
    state
        .write
        .users
        .execute(&id, UserCommand::VerifyEmail, &ctx)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ask for a password reset link. The answer is the same, after the same work, whether an
/// account has this address or not; at most 3 emails per address and hour go out.
#[utoipa::path(post, path = "/v1/auth/password-reset", tag = "auth", request_body = ResetRequest,
    responses((status = 202, description = "if an account has this address, a link is on its way"),
              (status = 422, body = crate::error::ErrorBody, description = "invalid_email"),
              (status = 429, body = crate::error::ErrorBody, description = "rate_limited (per client IP)")))]
pub async fn request_reset(
    State(state): State<AppState>,
    meta: CommandMeta,
    JsonBody(body): JsonBody<ResetRequest>,
) -> Result<StatusCode, ApiError> {
    let email = domain::user::normalise_email(&body.email)
        .ok_or_else(|| ApiError::rule("invalid_email", "email must look like name@example.com"))?;
    let holder = store::claims::holder(&state.pool, &[(EMAIL_CLAIM, &email)])
        .await
        .map_err(crate::error::domain_errors::store)?;
    // The rest runs after the answer, so that its time tells nothing either.
    if let Some(stream_id) = holder {
        tokio::spawn(async move {
            if let Err(error) = open_reset(&state, &meta, &email, &stream_id).await {
                tracing::warn!(%error, "A password reset request was not recorded.");
            }
        });
    }
    Ok(StatusCode::ACCEPTED)
}

async fn open_reset(
    state: &AppState,
    meta: &CommandMeta,
    email: &str,
    stream_id: &str,
) -> Result<(), ApiError> {
    if !address_allowance(state, email).await {
        metrics::counter!("api_password_resets_refused_total").increment(1);
        return Ok(());
    }
    let user_id = Uuid::parse_str(stream_id).map_err(ApiError::internal)?;
    let expires_at = Utc::now()
        + chrono::Duration::from_std(state.password_reset_ttl).map_err(ApiError::internal)?;
    let ctx = crate::routes::context(meta, Some(user_id), None);
    let command = UserCommand::RequestPasswordReset {
        request_id: Uuid::new_v4(),
        expires_at,
    };
    state.write.users.execute(stream_id, command, &ctx).await?;
    Ok(())
}

/// Whether `email` may get another reset email this hour (one Redis counter per address
/// and hour; if Redis is down, yes — the per-IP limit still holds).
async fn address_allowance(state: &AppState, email: &str) -> bool {
    let hour = Utc::now().timestamp() / 3600;
    let key = format!("{}rl:reset:{email}:{hour}", state.redis_prefix);
    let mut redis = state.redis.clone();
    let counted: redis::RedisResult<(u64,)> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(&key)
        .arg(0)
        .arg("EX")
        .arg(3600)
        .arg("NX")
        .ignore()
        .incr(&key, 1)
        .query_async(&mut redis)
        .await;
    match counted {
        Ok((count,)) => count <= RESETS_PER_ADDRESS_PER_HOUR,
        Err(error) => {
            tracing::warn!(%error, "Reset limiter unavailable; letting the request through.");
            true
        }
    }
}

/// Set a new password with the emailed link. Every login of the person ends.
#[utoipa::path(post, path = "/v1/auth/password-reset/confirm", tag = "auth", request_body = ResetConfirmRequest,
    responses((status = 204, description = "the password is changed and every session revoked"),
              (status = 400, body = crate::error::ErrorBody, description = "invalid_token: used, expired, replaced by a newer request, or not genuine"),
              (status = 422, body = crate::error::ErrorBody, description = "weak_password")))]
pub async fn confirm_reset(
    State(state): State<AppState>,
    meta: CommandMeta,
    JsonBody(body): JsonBody<ResetConfirmRequest>,
) -> Result<StatusCode, ApiError> {
    let opened = state
        .account_tokens
        .open(Purpose::ResetPassword, &body.token, "")
        .ok_or(ApiError::InvalidToken)?;
    let id = opened.user_id.to_string();
    let user = state.write.users.store().load(&id).await?.aggregate;
    if !user.is_active() || !user.reset_open(opened.nonce, Utc::now()) {
        return Err(ApiError::InvalidToken);
    }
    auth::password::check_password_strength(&body.new_password, user.username(), user.email())
        .map_err(|weak| ApiError::rule("weak_password", weak))?;
    let password_hash = auth::password::hash_password_async(body.new_password)
        .await
        .map_err(ApiError::internal)?
        .into();
    // Every login ends before the password changes: if Redis fails, nothing changed and the
    // link still works; if the change then fails (the link used meanwhile), the person was
    // only logged out.
    state
        .refresh
        .revoke_all(opened.user_id)
        .await
        .map_err(crate::routes::auth::refresh_unavailable)?;
    let ctx = crate::routes::context(&meta, Some(opened.user_id), None);
    let command = UserCommand::ResetPassword {
        request_id: opened.nonce,
        now: Utc::now(),
        password_hash,
    };
    state.write.users.execute(&id, command, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}
