//! Route groups, one module each, and what command routes share.

pub mod accounts;
pub mod analytics;
pub mod audit;
pub mod auth;
pub mod conversations;
pub mod demo;
pub mod feed;
pub mod notifications;
pub mod ops;
pub mod posts;
pub mod presence;
pub mod social;
pub mod stream;
pub mod two_factor;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use commands::{CommandContext, Executed};
use event_schemas::Metadata;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::CommandMeta;

/// `Debug` that prints only the type's name: for bodies holding passwords, codes or tokens.
macro_rules! opaque_debug {
    ($($t:ty),* $(,)?) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), " { .. }"))
            }
        }
    )*};
}
pub(crate) use opaque_debug;

pub const GLOBAL_POSITION: HeaderName = HeaderName::from_static("x-global-position");

/// The metadata every event of this request carries: the request id doubles as the
/// correlation id, the caller is the actor.
pub fn context(
    meta: &CommandMeta,
    actor: Option<Uuid>,
    expected_version: Option<u64>,
) -> CommandContext {
    CommandContext {
        metadata: Metadata {
            correlation_id: Some(meta.request_id.0.clone()),
            causation_id: None,
            actor: actor.map(|id| format!("user:{id}")),
            request_id: Some(meta.request_id.0.clone()),
            traceparent: None,
        },
        command_id: meta.command_id.clone(),
        expected_version,
        new_stream: false,
    }
}

/// [`context`] for a command on an aggregate whose id this request just minted.
pub fn new_stream_context(meta: &CommandMeta, actor: Option<Uuid>) -> CommandContext {
    CommandContext {
        new_stream: true,
        ..context(meta, actor, None)
    }
}

/// `ETag: "<version>"` and `x-global-position` of a command's result.
pub fn command_headers(executed: &Executed) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", executed.version)) {
        headers.insert(axum::http::header::ETAG, etag);
    }
    headers.insert(
        GLOBAL_POSITION,
        HeaderValue::from(executed.last_position.unwrap_or(0)),
    );
    headers
}

/// A path id: anything that is not a UUID cannot name an existing resource.
pub fn parse_id(raw: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(what))
}
