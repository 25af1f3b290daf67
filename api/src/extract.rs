//! Extractors: strict JSON bodies, the authenticated principal, `If-Match`.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::state::AppState;

/// A JSON body parsed strictly: `Content-Type: application/json` required, syntax errors are
/// `malformed_json`, unknown fields, missing fields and wrong types are `invalid_request`
/// (body types use `deny_unknown_fields`), and the body limit layer answers 413 first.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::InvalidRequest("could not read the request body".to_owned())
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Classifies serde_json's errors: its messages name the offending field or position and
/// never contain server internals, so they are safe to return.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::InvalidRequest(e.to_string()),
        _ => ApiError::MalformedJson(e.to_string()),
    })
}

/// The authenticated caller, from `Authorization: Bearer <access token>`.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: uuid::Uuid,
    pub roles: Vec<String>,
}

impl Principal {
    /// # Errors
    /// [`ApiError::Forbidden`] unless the caller holds `role` (or `admin`).
    pub fn require_role(&self, role: &str) -> Result<(), ApiError> {
        if self.roles.iter().any(|r| r == role || r == "admin") {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let claims = state.jwt.verify(token.trim()).map_err(|error| {
            tracing::debug!(%error, "Access token refused.");
            ApiError::Unauthorized
        })?;
        // A token outlives its account's erasure by up to its lifetime: refused at once.
        if store::keys::is_erased(&state.pool, claims.sub)
            .await
            .map_err(crate::error::domain_errors::store)?
        {
            return Err(ApiError::Unauthorized);
        }
        Ok(Principal {
            user_id: claims.sub,
            roles: claims.roles,
        })
    }
}

/// `If-Match: "<version>"`: the version the client decided on.
#[derive(Debug, Clone, Copy)]
pub struct IfMatch(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = value.to_str().map_err(|_| ApiError::InvalidIfMatch)?.trim();
        let unquoted = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
        unquoted
            .parse()
            .map(|v| IfMatch(Some(v)))
            .map_err(|_| ApiError::InvalidIfMatch)
    }
}

/// What a command handler needs to know about the request: its id (the events' correlation
/// id) and, under an `Idempotency-Key`, the command id derived from it.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    pub request_id: RequestId,
    pub command_id: Option<String>,
}

impl CommandMeta {
    /// A new id for a resource this command creates: derived from the command id when there
    /// is one (so a re-run after a crash addresses the same aggregate), else a fresh UUIDv7.
    pub fn mint_id(&self, what: &str) -> uuid::Uuid {
        match &self.command_id {
            Some(command) => {
                let namespace = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, command.as_bytes());
                uuid::Uuid::new_v5(&namespace, what.as_bytes())
            }
            None => uuid::Uuid::now_v7(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CommandMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(CommandMeta {
            request_id: parts
                .extensions
                .get::<RequestId>()
                .cloned()
                .unwrap_or_else(|| RequestId(uuid::Uuid::now_v7().to_string())),
            command_id: parts
                .extensions
                .get::<crate::idempotency::CommandId>()
                .map(|c| c.0.clone()),
        })
    }
}

/// `X-Min-Position: <global_position>`: the query must reflect the log up to that position
/// (a command response's `x-global-position`).
#[derive(Debug, Clone, Copy)]
pub struct MinPosition(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for MinPosition {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(raw) = parts.headers.get("x-min-position") else {
            return Ok(MinPosition(None));
        };
        raw.to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|p| *p >= 0)
            .map(|p| MinPosition(Some(p)))
            .ok_or_else(|| {
                ApiError::InvalidRequest(
                    "X-Min-Position must be a global position (a non-negative integer)".to_owned(),
                )
            })
    }
}
