//! `/v1/auth/*` and `/v1/me`: registration, login, token refresh and logout.
//!
//! Login reads the `User` aggregate (the write model), not a read model, so a user can log in
//! the moment registration returned. An unknown login and a wrong password get the same
//! answer after the same Argon2 work.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::onboarding::OnboardingStatus;
use domain::user::{
    User, UserCommand, UserStatus, EMAIL_CLAIM, PASSWORD_CREDENTIAL, USERNAME_CLAIM,
};
use event_schemas::stream_type;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{CommandMeta, JsonBody, Principal};
use crate::routes::{command_headers, new_stream_context};
use crate::state::AppState;

// Passwords and tokens never print.
crate::routes::opaque_debug!(
    RegisterRequest,
    LoginRequest,
    EraseRequest,
    RefreshRequest,
    TokenResponse
);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/me", get(me).delete(erase_me))
        .route("/v1/me/sessions", get(sessions))
        .route(
            "/v1/me/sessions/{session_id}",
            axum::routing::delete(end_session),
        )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3–30 characters of `[a-z0-9_]`.
    #[schema(min_length = 3, max_length = 30, pattern = r"^[a-z0-9_]+$")]
    pub username: String,
    #[schema(
        max_length = 254,
        pattern = r"^[^@\s\x00-\x1f\x7f]+@([^@\s\x00-\x1f\x7f.]+\.)+[^@\s\x00-\x1f\x7f.]+$"
    )]
    pub email: String,
    /// 10–128 characters, not a common password, not containing the username.
    #[schema(min_length = 10, max_length = 128)]
    pub password: String,
    /// 1–50 characters once trimmed; the username when absent.
    #[schema(min_length = 1, max_length = 50, pattern = r"^[^\x00]*$")]
    pub display_name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username or email.
    pub login: String,
    pub password: String,
    /// With two-factor login on: a current code of the app, or a recovery code.
    pub otp: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    /// The caller's password, again.
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// A fresh token pair.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub user_id: Uuid,
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeResponse {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
    pub email: String,
    /// Whether the person followed the link emailed to `email`.
    pub email_verified: bool,
    /// Whether logging in needs a second factor.
    pub two_factor: bool,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// `pending`, `completed` or `failed`.
    pub onboarding: &'static str,
}

/// Register a user and log them in.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = TokenResponse), (status = 409, body = crate::error::ErrorBody, description = "username_taken, email_taken"),
              (status = 422, body = crate::error::ErrorBody, description = "invalid_username, invalid_email, invalid_display_name, weak_password")))]
pub async fn register(
    State(state): State<AppState>,
    meta: CommandMeta,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    // Cheap checks first: hashing costs tens of milliseconds of CPU.
    if !domain::user::is_valid_username(&body.username) {
        return Err(ApiError::rule(
            "invalid_username",
            "username must be 3 to 30 characters of a-z, 0-9 and _",
        ));
    }
    let email = domain::user::normalise_email(&body.email)
        .ok_or_else(|| ApiError::rule("invalid_email", "email must look like name@example.com"))?;
    auth::password::check_password_strength(&body.password, &body.username, &email)
        .map_err(|weak| ApiError::rule("weak_password", weak))?;
    ensure_available(&state, &body.username, &email).await?;

    let password_hash = auth::password::hash_password_async(body.password)
        .await
        .map_err(ApiError::internal)?
        .into();
    let user_id = meta.mint_id("user");
    let command = UserCommand::RegisterUser {
        user_id,
        username: body.username,
        email,
        display_name: body.display_name,
        password_hash,
    };
    let ctx = new_stream_context(&meta, Some(user_id));
    let executed = state
        .write
        .users
        .execute(&user_id.to_string(), command, &ctx)
        .await?;
    let tokens = issue_tokens(&state, user_id, Vec::new(), &headers).await?;
    let mut headers = command_headers(&executed);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/users/{user_id}")) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(tokens)))
}

/// Early, friendly refusal of a taken name; the claim in the append stays the real guard.
async fn ensure_available(state: &AppState, username: &str, email: &str) -> Result<(), ApiError> {
    let taken = store::claims::taken(
        &state.pool,
        &[(USERNAME_CLAIM, username), (EMAIL_CLAIM, email)],
    )
    .await
    .map_err(crate::error::domain_errors::store)?;
    if taken.iter().any(|s| s == USERNAME_CLAIM) {
        return Err(ApiError::UsernameTaken);
    }
    if taken.iter().any(|s| s == EMAIL_CLAIM) {
        return Err(ApiError::EmailTaken);
    }
    Ok(())
}

/// The request's `User-Agent`, for the login's session ("" when absent or not text).
fn user_agent(headers: &HeaderMap) -> &str {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn issue_tokens(
    state: &AppState,
    user_id: Uuid,
    roles: Vec<String>,
    headers: &HeaderMap,
) -> Result<TokenResponse, ApiError> {
    let (access_token, expires_in) = state
        .jwt
        .issue(user_id, &roles)
        .map_err(ApiError::internal)?;
    let refresh_token = state
        .refresh
        .issue(user_id, user_agent(headers))
        .await
        .map_err(refresh_unavailable)?;
    Ok(TokenResponse {
        user_id,
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in,
    })
}

pub fn refresh_unavailable(error: auth::refresh::RefreshError) -> ApiError {
    match error {
        auth::refresh::RefreshError::Unavailable(_) => ApiError::Unavailable(error.to_string()),
        other => ApiError::internal(other),
    }
}

/// The registered, active user a login names, with their password hash, if any.
async fn find_user(
    state: &AppState,
    login: &str,
) -> Result<Option<(User, SecretString)>, ApiError> {
    // No username or address holds NUL, and PostgreSQL text cannot: nobody, not a 500.
    if login.contains('\0') {
        return Ok(None);
    }
    // Email claims hold the address lowercased (`domain::user`).
    let email = login.to_lowercase();
    let stream_id = store::claims::holder(
        &state.pool,
        &[(USERNAME_CLAIM, login), (EMAIL_CLAIM, &email)],
    )
    .await
    .map_err(crate::error::domain_errors::store)?;
    let Some(stream_id) = stream_id else {
        return Ok(None);
    };
    let user = state.write.users.store().load(&stream_id).await?.aggregate;
    if !user.is_active() {
        return Ok(None);
    }
    let hash = store::credentials::secret(
        &state.pool,
        stream_type::USER,
        &stream_id,
        PASSWORD_CREDENTIAL,
    )
    .await
    .map_err(crate::error::domain_errors::store)?;
    Ok(hash.map(|hash| (user, hash)))
}

/// Log in with username or email.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = crate::error::ErrorBody, description = "invalid_credentials; with two-factor login on, otp_required (no `otp`) or invalid_otp")))]
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let found = find_user(&state, &body.login).await?;
    let (user, hash) = found.unzip();
    let hash = hash.map(|hash| hash.expose_secret().to_owned());
    // Unknown users get the same Argon2 work as wrong passwords.
    let valid = auth::password::verify_password_async(body.password, hash)
        .await
        .map_err(ApiError::internal)?;
    match user {
        Some(user) if valid => {
            if user.two_factor() {
                let otp = body.otp.as_deref().ok_or(ApiError::OtpRequired)?;
                if !crate::routes::two_factor::second_factor_ok(&state, user.user_id(), otp).await?
                {
                    return Err(ApiError::InvalidOtp);
                }
            }
            let roles = user.roles().iter().cloned().collect();
            Ok(Json(
                issue_tokens(&state, user.user_id(), roles, &headers).await?,
            ))
        }
        _ => Err(ApiError::InvalidCredentials),
    }
}

/// Trade a refresh token for a new pair (the old one stops working; reusing it revokes the
/// whole login).
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = crate::error::ErrorBody, description = "invalid_refresh_token")))]
pub async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    use auth::refresh::RefreshError;
    let rotated = state
        .refresh
        .rotate(&body.refresh_token)
        .await
        .map_err(|e| match e {
            RefreshError::Invalid | RefreshError::Reused => ApiError::InvalidRefreshToken,
            other => refresh_unavailable(other),
        })?;
    let user = state
        .write
        .users
        .store()
        .load(&rotated.user_id.to_string())
        .await?
        .aggregate;
    if !user.is_active() {
        state
            .refresh
            .revoke(&rotated.token)
            .await
            .map_err(refresh_unavailable)?;
        return Err(ApiError::InvalidRefreshToken);
    }
    let roles: Vec<String> = user.roles().iter().cloned().collect();
    let (access_token, expires_in) = state
        .jwt
        .issue(user.user_id(), &roles)
        .map_err(ApiError::internal)?;
    Ok(Json(TokenResponse {
        user_id: user.user_id(),
        access_token,
        refresh_token: rotated.token,
        token_type: "Bearer",
        expires_in,
    }))
}

/// Revoke a refresh token and every token of its login. Always 204.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshRequest, responses((status = 204)))]
pub async fn logout(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    state
        .refresh
        .revoke(&body.refresh_token)
        .await
        .map_err(refresh_unavailable)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Erase the caller's account and personal data, for good (DESIGN §8a): their data key is
/// destroyed, so their profile, posts and comments can no longer be read anywhere, in the
/// log included; they can no longer log in, and their username and email are free again.
#[utoipa::path(delete, path = "/v1/me", tag = "auth", security(("bearer" = [])), request_body = EraseRequest,
    responses((status = 204, description = "erased"),
              (status = 401, body = crate::error::ErrorBody, description = "unauthorized, invalid_credentials (wrong password)")))]
pub async fn erase_me(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    JsonBody(body): JsonBody<EraseRequest>,
) -> Result<StatusCode, ApiError> {
    let id = principal.user_id.to_string();
    let hash = store::credentials::secret(&state.pool, stream_type::USER, &id, PASSWORD_CREDENTIAL)
        .await
        .map_err(crate::error::domain_errors::store)?
        .map(|hash| hash.expose_secret().to_owned());
    let valid = auth::password::verify_password_async(body.password, hash)
        .await
        .map_err(ApiError::internal)?;
    if !valid {
        return Err(ApiError::InvalidCredentials);
    }
    let ctx = crate::routes::context(&meta, Some(principal.user_id), None);
    state
        .write
        .users
        .execute(&id, UserCommand::Erase, &ctx)
        .await?;
    // The person is erased once the command committed, and their token no longer works: a
    // failure here is the operator's to mend (`admin erase-user` repeats it), not theirs.
    if let Err(error) = projections::analytics::forget_author(&state.pool, principal.user_id).await
    {
        tracing::error!(user_id = %principal.user_id, %error,
            "Erased, but the analytics titles were not forgotten: run `hybridlive admin erase-user`.");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account.
#[utoipa::path(get, path = "/v1/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = crate::error::ErrorBody)))]
pub async fn me(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<(HeaderMap, Json<MeResponse>), ApiError> {
    let id = principal.user_id.to_string();
    let loaded = state.write.users.store().load(&id).await?;
    let user = loaded.aggregate;
    // A rolled-back registration still answers, so its client can see `"failed"`.
    if user.status() == UserStatus::Unregistered {
        return Err(ApiError::NotFound("user"));
    }
    let onboarding = state.write.onboarding.store().load(&id).await?.aggregate;
    let created_at: DateTime<Utc> = store::log::stream_started_at(&state.pool, "user", &id)
        .await
        .map_err(crate::error::domain_errors::store)?
        .ok_or(ApiError::NotFound("user"))?;
    let mut headers = HeaderMap::new();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", loaded.version)) {
        headers.insert(header::ETAG, etag);
    }
    Ok((
        headers,
        Json(MeResponse {
            user_id: user.user_id(),
            username: user.username().to_owned(),
            display_name: user.display_name().to_owned(),
            email: user.email().to_owned(),
            email_verified: user.email_verified(),
            two_factor: user.two_factor(),
            roles: user.roles().iter().cloned().collect(),
            created_at,
            onboarding: match onboarding.status() {
                OnboardingStatus::Pending => "pending",
                OnboardingStatus::Completed => "completed",
                OnboardingStatus::Failed => "failed",
            },
        }),
    ))
}

/// One login of the caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// The login (its refresh-token family).
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    /// The last refresh (the login itself until the first).
    pub last_used_at: DateTime<Utc>,
    /// The `User-Agent` of the login request (at most 256 bytes).
    pub user_agent: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// Newest first.
    pub items: Vec<SessionView>,
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The caller's live logins (each a refresh-token family), newest first.
#[utoipa::path(get, path = "/v1/me/sessions", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = SessionList), (status = 401, body = crate::error::ErrorBody)))]
pub async fn sessions(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<SessionList>, ApiError> {
    let listed = state
        .refresh
        .sessions(principal.user_id)
        .await
        .map_err(refresh_unavailable)?;
    Ok(Json(SessionList {
        items: listed
            .into_iter()
            .map(|s| SessionView {
                id: s.id,
                created_at: at(s.created_ms),
                last_used_at: at(s.last_used_ms),
                user_agent: s.user_agent,
            })
            .collect(),
    }))
}

/// End one of the caller's logins: every refresh token of it stops working (access tokens
/// already issued live out their few minutes).
#[utoipa::path(delete, path = "/v1/me/sessions/{session_id}", tag = "auth", security(("bearer" = [])),
    params(("session_id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody, description = "no such live login of the caller")))]
pub async fn end_session(
    State(state): State<AppState>,
    principal: Principal,
    axum::extract::Path(session_id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    let session = crate::routes::parse_id(&session_id, "session")?;
    if state
        .refresh
        .revoke_session(principal.user_id, session)
        .await
        .map_err(refresh_unavailable)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("session"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_with_secrets_print_none_of_them() {
        let login = LoginRequest {
            login: "ada".to_owned(),
            password: "hunter2-hunter2".to_owned(),
            otp: Some("123456".to_owned()),
        };
        let tokens = TokenResponse {
            user_id: Uuid::nil(),
            access_token: "access-secret".to_owned(),
            refresh_token: "refresh-secret".to_owned(),
            token_type: "Bearer",
            expires_in: 1,
        };
        let printed = format!("{login:?} {tokens:?}");
        for secret in ["hunter2", "123456", "access-secret", "refresh-secret"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }
}
