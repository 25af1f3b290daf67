//! The API's one error type and the one table from error to status and stable `code`.
//!
//! Handlers return [`ApiError`]; its response carries the error as an extension, and the
//! [`envelope`] middleware (which knows the request id) writes the body API.md promises:
//! `{"error": {"code", "message", "request_id"}}`. The same middleware gives responses the
//! framework produced itself (unknown route, wrong method, body too large) the same shape,
//! and logs every error once. Internal detail is logged, never sent.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::request_id::RequestId;

/// Every way a request can fail, as clients see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// A query filter (audit listings, analytics ranges) with a value it cannot take.
    #[error("{0}")]
    InvalidFilter(String),
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("If-Match must be a quoted version number, like \"3\"")]
    InvalidIfMatch,
    #[error("Idempotency-Key must be 1 to 200 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("Last-Event-ID must be an event id this server sent, like 1700000000000-0")]
    InvalidLastEventId,
    #[error("missing or invalid access token")]
    Unauthorized,
    #[error("invalid login or password")]
    InvalidCredentials,
    #[error("the refresh token is invalid, expired, revoked or was already used")]
    InvalidRefreshToken,
    #[error("the link's token is invalid, expired or already used")]
    InvalidToken,
    #[error(
        "this account logs in with a second factor: send `otp`, a current code or a recovery code"
    )]
    OtpRequired,
    #[error("invalid login, password or second-factor code")]
    InvalidOtp,
    #[error("two-factor login is already on")]
    TwoFactorOn,
    #[error("two-factor login is off")]
    TwoFactorOff,
    #[error("you are not allowed to do this")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("username is already taken")]
    UsernameTaken,
    #[error("email is already taken")]
    EmailTaken,
    #[error("the resource is at version {actual}, not {expected}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyKeyInUse,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    /// Valid JSON that breaks a rule: `code` names the rule.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the read models have not caught up with X-Min-Position {0} yet; retry")]
    ReadModelBehind(i64),
    #[error("the service is temporarily unavailable")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 422 with its rule's code.
    pub fn rule(code: &'static str, message: impl ToString) -> Self {
        Self::Unprocessable {
            code,
            message: message.to_string(),
        }
    }

    /// Any unexpected failure: logged with its detail, answered without it.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }

    /// The exhaustive table: status and stable code of each error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Self::MalformedJson(_) => (S::BAD_REQUEST, "malformed_json"),
            Self::InvalidRequest(_) => (S::BAD_REQUEST, "invalid_request"),
            Self::InvalidFilter(_) => (S::BAD_REQUEST, "invalid_filter"),
            Self::UnsupportedMediaType => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::PayloadTooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::InvalidIfMatch => (S::BAD_REQUEST, "invalid_if_match"),
            Self::InvalidIdempotencyKey => (S::BAD_REQUEST, "invalid_idempotency_key"),
            Self::InvalidLastEventId => (S::BAD_REQUEST, "invalid_last_event_id"),
            Self::Unauthorized => (S::UNAUTHORIZED, "unauthorized"),
            Self::InvalidCredentials => (S::UNAUTHORIZED, "invalid_credentials"),
            Self::InvalidRefreshToken => (S::UNAUTHORIZED, "invalid_refresh_token"),
            Self::InvalidToken => (S::BAD_REQUEST, "invalid_token"),
            Self::OtpRequired => (S::UNAUTHORIZED, "otp_required"),
            Self::InvalidOtp => (S::UNAUTHORIZED, "invalid_otp"),
            Self::TwoFactorOn => (S::CONFLICT, "two_factor_on"),
            Self::TwoFactorOff => (S::CONFLICT, "two_factor_off"),
            Self::Forbidden => (S::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (S::NOT_FOUND, "not_found"),
            Self::UsernameTaken => (S::CONFLICT, "username_taken"),
            Self::EmailTaken => (S::CONFLICT, "email_taken"),
            Self::VersionConflict { .. } => (S::CONFLICT, "version_conflict"),
            Self::IdempotencyKeyInUse => (S::CONFLICT, "idempotency_key_in_use"),
            Self::IdempotencyKeyReused => (S::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            Self::Unprocessable { code, .. } => (S::UNPROCESSABLE_ENTITY, code),
            Self::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limited"),
            Self::ReadModelBehind(_) => (S::SERVICE_UNAVAILABLE, "read_model_behind"),
            Self::Unavailable(_) => (S::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// What the client may read; the detail of 5xx errors stays in the logs.
    fn public_message(&self) -> String {
        match self {
            Self::Unavailable(_) => "the service is temporarily unavailable".to_owned(),
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

/// The error half of a response, left for [`envelope`] to render.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    /// Logged, never sent.
    pub detail: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let detail = match &self {
            Self::Internal(detail) | Self::Unavailable(detail) => Some(detail.clone()),
            _ => None,
        };
        let mut response = status.into_response();
        if matches!(self, Self::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::RateLimited { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if matches!(
            self,
            Self::IdempotencyKeyInUse | Self::Unavailable(_) | Self::ReadModelBehind(_)
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(ErrorInfo {
            code: code.to_owned(),
            message: self.public_message(),
            detail,
        });
        response
    }
}

/// The error body of API.md.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case; clients branch on it.
    pub code: String,
    /// For humans; may change.
    pub message: String,
    pub request_id: String,
}

/// Renders every error response in the one shape, with the request id, and logs it once.
pub async fn envelope(request: Request, next: Next) -> Response {
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let info = match response.extensions().get::<ErrorInfo>() {
        Some(info) => info.clone(),
        None => framework_error(status),
    };
    if status.is_server_error() {
        tracing::error!(%request_id, %method, %path, status = status.as_u16(), code = %info.code, detail = info.detail.as_deref().unwrap_or(""), "Request failed.");
    } else {
        tracing::info!(%request_id, %method, %path, status = status.as_u16(), code = %info.code, "Request refused.");
    }
    let (mut parts, _) = response.into_parts();
    let body = ErrorBody {
        error: ErrorDetail {
            code: info.code,
            message: info.message,
            request_id,
        },
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// Codes for the error responses axum and tower-http produce on their own.
fn framework_error(status: StatusCode) -> ErrorInfo {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "method not allowed on this resource")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "request body must be JSON (Content-Type: application/json)",
        ),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
        StatusCode::BAD_REQUEST => ("bad_request", "bad request"),
        s if s.is_server_error() => ("internal_error", "internal error"),
        _ => ("error", "request failed"),
    };
    ErrorInfo {
        code: code.to_owned(),
        message: message.to_owned(),
        detail: None,
    }
}

/// Domain rejections and command failures, mapped once for all routes.
pub mod domain_errors {
    use commands::CommandError;
    use domain::comment::CommentError;
    use domain::conversation::ConversationError;
    use domain::like::LikeError;
    use domain::post::PostError;
    use domain::social_graph::SocialGraphError;
    use domain::user::UserError;
    use store::StoreError;

    use super::ApiError;

    /// A store failure: unreachable database → 503, anything else → 500.
    pub fn store(error: StoreError) -> ApiError {
        match &error {
            StoreError::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed,
            ) => ApiError::Unavailable(error.to_string()),
            _ => ApiError::internal(error),
        }
    }

    fn command<E: std::error::Error>(
        error: CommandError<E>,
        rejected: impl FnOnce(E) -> ApiError,
    ) -> ApiError {
        match error {
            CommandError::Rejected(e) => rejected(e),
            CommandError::Conflict { expected, actual } => {
                ApiError::VersionConflict { expected, actual }
            }
            CommandError::Store(e) => store(e),
        }
    }

    impl From<CommandError<UserError>> for ApiError {
        fn from(error: CommandError<UserError>) -> Self {
            command(error, |e| match e {
                UserError::InvalidUsername => ApiError::rule("invalid_username", e),
                UserError::InvalidEmail => ApiError::rule("invalid_email", e),
                UserError::InvalidDisplayName => ApiError::rule("invalid_display_name", e),
                UserError::UnknownRole => ApiError::rule("unknown_role", e),
                UserError::UsernameTaken => ApiError::UsernameTaken,
                UserError::EmailTaken => ApiError::EmailTaken,
                UserError::NotRegistered | UserError::RolledBack | UserError::Erased => {
                    ApiError::NotFound("user")
                }
                UserError::ResetClosed => ApiError::InvalidToken,
                UserError::TwoFactorOn => ApiError::TwoFactorOn,
                UserError::TwoFactorOff => ApiError::TwoFactorOff,
                UserError::EmptyPasswordHash | UserError::AlreadyRegistered => {
                    ApiError::internal(e)
                }
            })
        }
    }

    impl From<CommandError<PostError>> for ApiError {
        fn from(error: CommandError<PostError>) -> Self {
            command(error, |e| match e {
                PostError::InvalidTitle => ApiError::rule("invalid_title", e),
                PostError::InvalidBody => ApiError::rule("invalid_body", e),
                PostError::InvalidMedia => ApiError::rule("invalid_media", e),
                PostError::NotFound => ApiError::NotFound("post"),
                PostError::NotAuthor => ApiError::Forbidden,
                PostError::AlreadyPublished => ApiError::rule("already_exists", e),
            })
        }
    }

    impl From<CommandError<ConversationError>> for ApiError {
        fn from(error: CommandError<ConversationError>) -> Self {
            command(error, |e| match e {
                ConversationError::InvalidMembers => ApiError::rule("invalid_members", e),
                ConversationError::InvalidTitle => ApiError::rule("invalid_title", e),
                ConversationError::InvalidBody => ApiError::rule("invalid_body", e),
                ConversationError::NotFound | ConversationError::NotMember => {
                    ApiError::NotFound("conversation")
                }
                ConversationError::AlreadyStarted | ConversationError::DirectExists => {
                    ApiError::internal(e)
                }
            })
        }
    }

    impl From<CommandError<CommentError>> for ApiError {
        fn from(error: CommandError<CommentError>) -> Self {
            command(error, |e| match e {
                CommentError::InvalidBody => ApiError::rule("invalid_body", e),
                CommentError::AlreadyAdded => ApiError::internal(e),
            })
        }
    }

    impl From<CommandError<SocialGraphError>> for ApiError {
        fn from(error: CommandError<SocialGraphError>) -> Self {
            command(error, |e| match e {
                SocialGraphError::CannotFollowSelf => ApiError::rule("cannot_follow_self", e),
            })
        }
    }

    impl From<CommandError<LikeError>> for ApiError {
        fn from(error: CommandError<LikeError>) -> Self {
            command(error, |e| match e {})
        }
    }

    impl From<projections::ReadModelError> for ApiError {
        fn from(error: projections::ReadModelError) -> Self {
            ApiError::Unavailable(error.to_string())
        }
    }

    impl From<StoreError> for ApiError {
        fn from(error: StoreError) -> Self {
            store(error)
        }
    }
}
