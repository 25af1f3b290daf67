//! The OpenAPI 3 document, generated from the handlers' annotations, at `/openapi.json`, and
//! interactive docs (Swagger UI, served from the binary: no CDN) at `/docs`.

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::routes::{
    accounts, analytics, audit, auth, conversations, demo, feed, notifications, ops, posts,
    presence, social, stream, two_factor,
};
use crate::state::AppState;

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Hybrid Live API", description = "Commands, queries, auth and operations of Hybrid Live. Errors always have the body {\"error\": {\"code\", \"message\", \"request_id\"}}."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::me, auth::erase_me,
        auth::sessions, auth::end_session,
        accounts::verify_email, accounts::request_reset, accounts::confirm_reset,
        two_factor::start, two_factor::confirm, two_factor::turn_off,
        notifications::list, notifications::mark_read,
        social::follow, social::unfollow, social::profile, social::search, social::by_username,
        social::followers, social::following,
        posts::publish, posts::delete_post, posts::add_comment, posts::like, posts::unlike,
        posts::get_post, posts::list_comments, feed::feed, feed::posts_by,
        conversations::start, conversations::send, conversations::mark_read,
        conversations::inbox, conversations::history,
        presence::presence, presence::history,
        stream::user_stream, stream::post_stream,
        ops::healthz, ops::readyz, ops::metrics,
        demo::index, demo::script, demo::stylesheet,
        audit::list_events, audit::stream_history, audit::verify, audit::export,
        analytics::signups, analytics::activity, analytics::top_posts,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub fn routes() -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}
