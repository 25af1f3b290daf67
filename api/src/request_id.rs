//! Request ids and the request's span: every response carries `x-request-id`, echoing a
//! client-supplied one; the id becomes the correlation id of the events a command appends.
//! A W3C `traceparent` header makes the request's span part of the caller's trace.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

pub const HEADER: &str = "x-request-id";

/// The id of the current request, as a request extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Takes the client's `x-request-id` when it is sane (≤ 128 visible ASCII characters), else
/// mints a UUIDv7; stores it for handlers and echoes it on the response.
pub async fn assign(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned);
    request.extensions_mut().insert(RequestId(id.clone()));
    // The request's span, named after its route (a layer of the router runs once the route
    // is matched), continues the caller's trace when it sent a W3C `traceparent`.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    telemetry::continue_trace(
        &span,
        request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}
