//! The demo page at `GET /`: register, watch the onboarding saga finish over
//! SSE, then a live feed and post view. Plain HTML, CSS and JavaScript embedded in the
//! binary with `include_str!` — no build step, no CDN — and served with a Content Security
//! Policy that allows nothing but this origin (the page's scripts and styles live in their
//! own files; post bodies are sanitised HTML and may show images from `https:`).

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const APP_CSS: &str = include_str!("../../static/app.css");

const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; \
     img-src 'self' data: https:; style-src 'self'; script-src 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(stylesheet))
}

/// A static file's response: its type, revalidated on every load (the binary is the
/// version), under the page's Content Security Policy.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers: [(HeaderName, HeaderValue); 4] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    (headers, body)
}

/// The demo page.
#[utoipa::path(get, path = "/", tag = "demo",
    responses((status = 200, content_type = "text/html", description = "the demo page")))]
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The demo page's script.
#[utoipa::path(get, path = "/app.js", tag = "demo",
    responses((status = 200, content_type = "text/javascript")))]
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// The demo page's stylesheet.
#[utoipa::path(get, path = "/app.css", tag = "demo",
    responses((status = 200, content_type = "text/css")))]
pub async fn stylesheet() -> impl IntoResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}
