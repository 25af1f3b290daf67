//! `/v1/me/2fa`: two-factor login with an authenticator app (TOTP, RFC 6238) and recovery
//! codes.
//!
//! Turning it on takes two steps: the seed offered (`POST /v1/me/2fa`) is kept as a pending
//! credential, and only a code made from it (`POST /v1/me/2fa/confirm`) turns two-factor
//! login on — the event `user.two_factor_enabled`, with the seed and the recovery codes'
//! hashes stored as credentials in its transaction (DESIGN §8a). Each TOTP step and each
//! recovery code is accepted once (`store::credentials::use_once`).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use domain::user::{
    UserCommand, RECOVERY_CODES_CREDENTIAL, TOTP_CREDENTIAL, TOTP_PENDING_CREDENTIAL,
};
use event_schemas::stream_type;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{domain_errors, ApiError};
use crate::extract::{CommandMeta, JsonBody, Principal};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/me/2fa", post(start).delete(turn_off))
        .route("/v1/me/2fa/confirm", post(confirm))
}

/// A seed to add to an authenticator app.
#[derive(Serialize, ToSchema)]
pub struct TwoFactorSetup {
    /// Base32, as apps take it typed in.
    pub secret: String,
    /// `otpauth://totp/…`, as apps take it from a QR code.
    pub otpauth_uri: String,
}

/// Shown once: each works once in place of a code.
#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// A current code of the app (six digits), or, to turn it off, a recovery code.
    #[schema(max_length = 64)]
    pub code: String,
}

// Secrets never print.
crate::routes::opaque_debug!(TwoFactorSetup, RecoveryCodes, CodeRequest);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn credential(
    state: &AppState,
    user_id: Uuid,
    kind: &str,
) -> Result<Option<secrecy::SecretString>, ApiError> {
    store::credentials::secret(&state.pool, stream_type::USER, &user_id.to_string(), kind)
        .await
        .map_err(domain_errors::store)
}

async fn use_once(
    state: &AppState,
    user_id: Uuid,
    kind: &str,
    used: &str,
) -> Result<bool, ApiError> {
    store::credentials::use_once(
        &state.pool,
        stream_type::USER,
        &user_id.to_string(),
        kind,
        used,
    )
    .await
    .map_err(domain_errors::store)
}

/// Whether `code` is a current TOTP code or an unused recovery code of `user_id`; either is
/// used up by this call.
pub async fn second_factor_ok(
    state: &AppState,
    user_id: Uuid,
    code: &str,
) -> Result<bool, ApiError> {
    if code.len() > 64 {
        return Ok(false);
    }
    if let Some(seed) = credential(state, user_id, TOTP_CREDENTIAL).await? {
        if let Some(step) = auth::totp::check_code(&seed, code, now_secs()) {
            return use_once(state, user_id, TOTP_CREDENTIAL, &step.to_string()).await;
        }
    }
    if let Some(hashes) = credential(state, user_id, RECOVERY_CODES_CREDENTIAL).await? {
        if let Some(hash) = auth::totp::recovery_code_hash(&hashes, code) {
            return use_once(state, user_id, RECOVERY_CODES_CREDENTIAL, &hash).await;
        }
    }
    Ok(false)
}

/// Start turning two-factor login on: a new seed, which works once confirmed with a code.
/// Asking again replaces the seed offered.
#[utoipa::path(post, operation_id = "start_two_factor", path = "/v1/me/2fa", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = TwoFactorSetup),
              (status = 401, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody, description = "two_factor_on")))]
pub async fn start(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<TwoFactorSetup>, ApiError> {
    let id = principal.user_id.to_string();
    let user = state.write.users.store().load(&id).await?.aggregate;
    if !user.is_active() {
        return Err(ApiError::NotFound("user"));
    }
    if user.two_factor() {
        return Err(ApiError::TwoFactorOn);
    }
    let seed = auth::totp::new_seed();
    let otpauth_uri = auth::totp::otpauth_uri(&seed, user.username())
        .ok_or_else(|| ApiError::internal("a new seed made no otpauth URI"))?;
    store::credentials::put(
        &state.pool,
        stream_type::USER,
        &id,
        TOTP_PENDING_CREDENTIAL,
        &seed,
    )
    .await
    .map_err(domain_errors::store)?;
    Ok(Json(TwoFactorSetup {
        secret: secrecy::ExposeSecret::expose_secret(&seed).to_owned(),
        otpauth_uri,
    }))
}

/// Turn two-factor login on with a code of the seed offered; answers the recovery codes.
#[utoipa::path(post, path = "/v1/me/2fa/confirm", tag = "auth", security(("bearer" = [])),
    request_body = CodeRequest,
    responses((status = 200, body = RecoveryCodes),
              (status = 401, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody, description = "two_factor_on"),
              (status = 422, body = crate::error::ErrorBody, description = "invalid_code (not a current code of the seed offered), two_factor_not_started")))]
pub async fn confirm(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    JsonBody(body): JsonBody<CodeRequest>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let user_id = principal.user_id;
    let id = user_id.to_string();
    let user = state.write.users.store().load(&id).await?.aggregate;
    if user.two_factor() {
        return Err(ApiError::TwoFactorOn);
    }
    let seed = credential(&state, user_id, TOTP_PENDING_CREDENTIAL)
        .await?
        .ok_or_else(|| {
            ApiError::rule(
                "two_factor_not_started",
                "ask for a seed first (POST /v1/me/2fa)",
            )
        })?;
    let step = auth::totp::check_code(&seed, &body.code, now_secs())
        .ok_or_else(|| ApiError::rule("invalid_code", "not a current code of the seed offered"))?;
    let (codes, hashes) = auth::totp::new_recovery_codes();
    let ctx = crate::routes::context(&meta, Some(user_id), None);
    let command = UserCommand::EnableTwoFactor {
        seed,
        recovery_code_hashes: hashes,
    };
    state.write.users.execute(&id, command, &ctx).await?;
    // The confirming code does not log in a second time.
    use_once(&state, user_id, TOTP_CREDENTIAL, &step.to_string()).await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}

/// Turn two-factor login off, with a current code or a recovery code.
#[utoipa::path(delete, path = "/v1/me/2fa", tag = "auth", security(("bearer" = [])),
    request_body = CodeRequest,
    responses((status = 204),
              (status = 401, body = crate::error::ErrorBody, description = "unauthorized, invalid_otp"),
              (status = 409, body = crate::error::ErrorBody, description = "two_factor_off")))]
pub async fn turn_off(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    JsonBody(body): JsonBody<CodeRequest>,
) -> Result<StatusCode, ApiError> {
    let user_id = principal.user_id;
    let id = user_id.to_string();
    let user = state.write.users.store().load(&id).await?.aggregate;
    if !user.two_factor() {
        return Err(ApiError::TwoFactorOff);
    }
    if !second_factor_ok(&state, user_id, &body.code).await? {
        return Err(ApiError::InvalidOtp);
    }
    let ctx = crate::routes::context(&meta, Some(user_id), None);
    state
        .write
        .users
        .execute(&id, UserCommand::DisableTwoFactor, &ctx)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
