//! `Idempotency-Key` on commands (API.md): a retry with the same key and body gets the first
//! response and appends nothing; the same key with another body is `422
//! idempotency_key_reused`; a retry while the first request still runs is `409
//! idempotency_key_in_use`.
//!
//! Keys are scoped by caller (the access token's subject, or `anonymous`), method and path,
//! and kept for 24 hours. The key also becomes the command id, so the events a keyed command
//! appends have ids derived from it and server-minted ids (post, comment, user) are derived
//! from it too: if the process dies between the append and storing the response, the
//! abandoned key is taken over after [`ABANDONED_AFTER`] and the re-run addresses the same
//! aggregate instead of creating a second one.

use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::{domain_errors, ApiError, ErrorInfo};
use crate::state::AppState;

pub const HEADER: &str = "idempotency-key";
/// A first request that has not finished after this long is presumed dead.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(60);
/// Headers of the first response that a replay repeats.
const REPLAYED_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::ETAG,
    header::LOCATION,
    HeaderName::from_static("x-global-position"),
];

/// Where a stored error response keeps its code and message.
const ERROR_KEY: &str = "__error";

/// The key of the current request, for handlers (see [`crate::extract::CommandMeta`]).
#[derive(Debug, Clone)]
pub struct CommandId(pub String);

/// The middleware. Requests without the header, and reads, pass straight through.
pub async fn idempotency(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    ) {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get(HEADER) else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            k.to_owned()
        }
        _ => return ApiError::InvalidIdempotencyKey.into_response(),
    };
    match keyed(state, key, request, next).await {
        Ok(response) | Err(response) => response,
    }
}

async fn keyed(
    state: AppState,
    key: String,
    request: Request,
    next: Next,
) -> Result<Response, Response> {
    let caller = caller(&state, request.headers());
    let scope = format!("{caller} {} {}", request.method(), request.uri().path());
    let (mut parts, body) = request.into_parts();
    let bytes = to_bytes(body, state.body_limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge.into_response())?;
    let request_hash = Sha256::digest(&bytes).to_vec();
    let command_id = Sha256::digest(format!("{scope}\n{key}").as_bytes());
    parts.extensions.insert(CommandId(hex(&command_id[..16])));

    if !claim(&state, &scope, &key, &request_hash).await? {
        let stored = stored(&state, &scope, &key).await?;
        let Some(stored) = stored else {
            // Expired and removed between our insert attempt and the read: try once more.
            if !claim(&state, &scope, &key, &request_hash).await? {
                return Err(ApiError::IdempotencyKeyInUse.into_response());
            }
            return Ok(run_and_store(
                &state,
                &scope,
                &key,
                Request::from_parts(parts, Body::from(bytes)),
                next,
            )
            .await);
        };
        if stored.request_hash != request_hash {
            return Err(ApiError::IdempotencyKeyReused.into_response());
        }
        match stored.status {
            Some(status) => return Ok(replay(status, stored.headers, stored.body)),
            None if !take_over(&state, &scope, &key).await? => {
                return Err(ApiError::IdempotencyKeyInUse.into_response())
            }
            None => {}
        }
    }
    Ok(run_and_store(
        &state,
        &scope,
        &key,
        Request::from_parts(parts, Body::from(bytes)),
        next,
    )
    .await)
}

/// The access token's subject, when the token is valid; otherwise the handler will refuse
/// the request anyway, and `anonymous` is the scope of unauthenticated commands.
fn caller(state: &AppState, headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| state.jwt.verify(token.trim()).ok())
        .map_or_else(|| "anonymous".to_owned(), |claims| claims.sub.to_string())
}

fn db_error(error: sqlx::Error) -> Response {
    domain_errors::store(error.into()).into_response()
}

/// Inserts the pending row; false when the key exists (and has not expired).
async fn claim(
    state: &AppState,
    scope: &str,
    key: &str,
    request_hash: &[u8],
) -> Result<bool, Response> {
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys AS k (scope, key, request_hash) VALUES ($1, $2, $3) \
         ON CONFLICT (scope, key) DO UPDATE \
            SET request_hash = EXCLUDED.request_hash, status = NULL, headers = NULL, body = NULL, created_at = now() \
          WHERE k.created_at < now() - interval '24 hours' \
         RETURNING true",
    )
    .bind(scope)
    .bind(key)
    .bind(request_hash)
    .fetch_optional(&state.pool)
    .await
    .map_err(db_error)?;
    Ok(inserted.is_some())
}

struct Stored {
    request_hash: Vec<u8>,
    status: Option<i16>,
    headers: Option<serde_json::Value>,
    body: Option<Vec<u8>>,
}

async fn stored(state: &AppState, scope: &str, key: &str) -> Result<Option<Stored>, Response> {
    type Row = (
        Vec<u8>,
        Option<i16>,
        Option<serde_json::Value>,
        Option<Vec<u8>>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT request_hash, status, headers, body FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(&state.pool)
    .await
    .map_err(db_error)?;
    Ok(row.map(|(request_hash, status, headers, body)| Stored {
        request_hash,
        status,
        headers,
        body,
    }))
}

/// Takes over a first request that died without a response.
async fn take_over(state: &AppState, scope: &str, key: &str) -> Result<bool, Response> {
    let taken: Option<bool> = sqlx::query_scalar(
        "UPDATE idempotency_keys SET created_at = now() \
          WHERE scope = $1 AND key = $2 AND status IS NULL AND created_at < now() - make_interval(secs => $3) \
         RETURNING true",
    )
    .bind(scope)
    .bind(key)
    .bind(ABANDONED_AFTER.as_secs_f64())
    .fetch_optional(&state.pool)
    .await
    .map_err(db_error)?;
    Ok(taken.is_some())
}

/// Runs the handler and keeps its response; a 5xx is not kept, so the client may retry.
async fn run_and_store(
    state: &AppState,
    scope: &str,
    key: &str,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let result = if parts.status.is_server_error() {
        sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .execute(&state.pool)
            .await
    } else {
        let mut headers: serde_json::Map<String, serde_json::Value> = REPLAYED_HEADERS
            .iter()
            .filter_map(|name| {
                let value = parts.headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), serde_json::Value::from(value)))
            })
            .collect();
        // Errors are rendered (with the request id) by the envelope outside this layer, so
        // keep the error itself and let a replay be rendered afresh.
        if let Some(info) = parts.extensions.get::<ErrorInfo>() {
            headers.insert(
                ERROR_KEY.to_owned(),
                serde_json::json!({ "code": info.code, "message": info.message }),
            );
        }
        sqlx::query("UPDATE idempotency_keys SET status = $3, headers = $4, body = $5 WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .bind(i16::try_from(parts.status.as_u16()).unwrap_or(500))
            .bind(serde_json::Value::Object(headers))
            .bind(bytes.as_ref())
            .execute(&state.pool)
            .await
    };
    if let Err(error) = result {
        // The response stands; a retry will find the key pending and take it over later.
        tracing::warn!(%error, "Idempotency record not stored.");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(status: i16, headers: Option<serde_json::Value>, body: Option<Vec<u8>>) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Bytes::from(body.unwrap_or_default())).into_response();
    if let Some(serde_json::Value::Object(mut headers)) = headers {
        if let Some(error) = headers.remove(ERROR_KEY) {
            response.extensions_mut().insert(ErrorInfo {
                code: error["code"].as_str().unwrap_or("error").to_owned(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
                detail: None,
            });
        }
        for (name, value) in headers {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::from_str),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
