//! The OpenAPI 3 document, generated from the handlers' annotations, at `/openapi.json`, and
//! interactive docs (Swagger UI, served from the binary: no CDN) at `/docs`.
//!
//! Handlers document what is theirs (their success, their rules' codes). What an operation
//! answers because of its shape — a JSON body (400, 413, 415), a bearer token (401), a path
//! id (404), `X-Min-Position` (400, 503), being a command (`Idempotency-Key`: 400, 409,
//! 422), being under `/v1` (429, 503) — is added here by [`SharedResponses`], from the same
//! middleware and extractors that answer it, so no handler can forget one. [`Links`] tells
//! clients (and the stateful fuzzer) how one operation's result feeds the next.

use axum::Router;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{HttpMethod, Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, Response, ResponseBuilder};
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
    modifiers(&BearerAuth, &SharedResponses, &Links),
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

/// An error response: the shared body, and which codes it carries.
fn error_response(codes: &str) -> Response {
    ResponseBuilder::new()
        .description(codes)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// Adds `codes` to the response for `status`, or the response itself.
fn add_error(operation: &mut Operation, status: &str, codes: &str) {
    match operation.responses.responses.get_mut(status) {
        Some(RefOr::T(response)) => {
            let described = response.description.clone();
            for code in codes.split(", ") {
                if !response.description.contains(code) {
                    response.description = if response.description.is_empty() {
                        code.to_owned()
                    } else {
                        format!("{}, {code}", response.description)
                    };
                }
            }
            if response.content.is_empty() {
                *response = ResponseBuilder::new()
                    .description(if described.is_empty() {
                        codes.to_owned()
                    } else {
                        response.description.clone()
                    })
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build();
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            operation
                .responses
                .responses
                .insert(status.to_owned(), RefOr::T(error_response(codes)));
        }
    }
}

fn retry_after(operation: &mut Operation, status: &str) {
    if let Some(RefOr::T(response)) = operation.responses.responses.get_mut(status) {
        response.headers.insert(
            "Retry-After".to_owned(),
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                )
                .description(Some("seconds to wait before retrying"))
                .build(),
        );
    }
}

fn string_schema(pattern: &str, min: usize, max: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(min))
        .max_length(Some(max))
}

/// The responses (and request headers) an operation has because of its shape.
#[derive(Debug)]
struct SharedResponses;

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                (HttpMethod::Get, &mut item.get),
                (HttpMethod::Post, &mut item.post),
                (HttpMethod::Put, &mut item.put),
                (HttpMethod::Delete, &mut item.delete),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation.as_mut() {
                    shared_responses(path, &method, operation);
                }
            }
        }
    }
}

fn shared_responses(path: &str, method: &HttpMethod, operation: &mut Operation) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    let has_path_id = parameters
        .iter()
        .any(|p| p.parameter_in == ParameterIn::Path);
    let mut waits = false;
    for parameter in parameters.iter_mut() {
        match (&parameter.parameter_in, parameter.name.as_str()) {
            // What `extract::MinPosition` accepts: a global position.
            (ParameterIn::Header, "X-Min-Position") => {
                waits = true;
                parameter.schema = Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                        .minimum(Some(0))
                        .into(),
                );
            }
            // What `routes::stream` accepts: an id it sent (`<ms>-<seq>`).
            (ParameterIn::Header, "Last-Event-ID") => {
                parameter.schema = Some(string_schema("^[0-9]{1,20}-[0-9]{1,20}$", 3, 41).into());
            }
            _ => {}
        }
    }
    let command = !matches!(method, HttpMethod::Get);
    if command {
        // What `idempotency` accepts: 1 to 200 visible ASCII characters.
        parameters.push(
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "A retry with the same key and body answers the first response and changes nothing (kept 24 h)",
                ))
                .schema(Some(string_schema("^[!-~]+$", 1, 200)))
                .build(),
        );
    }
    if parameters.is_empty() {
        operation.parameters = None;
    }
    let body = operation.request_body.is_some();
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let v1 = path.starts_with("/v1/");

    if body {
        add_error(operation, "400", "malformed_json, invalid_request");
        add_error(operation, "413", "payload_too_large");
        add_error(operation, "415", "unsupported_media_type");
    }
    if waits {
        add_error(operation, "400", "invalid_request");
        add_error(operation, "422", "unknown_position");
        add_error(operation, "503", "read_model_behind");
        retry_after(operation, "503");
    }
    if command {
        add_error(operation, "400", "invalid_idempotency_key");
        add_error(operation, "409", "idempotency_key_in_use");
        retry_after(operation, "409");
        add_error(operation, "422", "idempotency_key_reused");
    }
    if secured {
        add_error(operation, "401", "unauthorized");
        if let Some(RefOr::T(response)) = operation.responses.responses.get_mut("401") {
            response.headers.insert(
                "WWW-Authenticate".to_owned(),
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .build(),
            );
        }
    }
    if has_path_id {
        add_error(operation, "404", "not_found");
    }
    if v1 {
        add_error(operation, "429", "rate_limited");
        retry_after(operation, "429");
        add_error(operation, "503", "unavailable");
        retry_after(operation, "503");
    }
}

/// How one operation's result addresses the next, as OpenAPI links: clients follow them, and
/// the fuzzer's stateful phase walks register → publish → comment / like → read with them.
/// Reads after a command pass its `x-global-position` as `X-Min-Position`, the way API.md
/// tells a client to read its own write.
#[derive(Debug)]
struct Links;

/// (from operation, its status, link name, to operation, parameters).
type LinkRow = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const POSITION: &str = "$response.header.x-global-position";
const LINKS: &[LinkRow] = &[
    (
        "register",
        "201",
        "profile",
        "profile",
        &[
            ("path.user_id", "$response.body#/user_id"),
            ("header.X-Min-Position", POSITION),
        ],
    ),
    (
        "register",
        "201",
        "posts",
        "posts_by",
        &[
            ("path.user_id", "$response.body#/user_id"),
            ("header.X-Min-Position", POSITION),
        ],
    ),
    (
        "register",
        "201",
        "follow",
        "follow",
        &[("path.user_id", "$response.body#/user_id")],
    ),
    (
        "register",
        "201",
        "unfollow",
        "unfollow",
        &[("path.user_id", "$response.body#/user_id")],
    ),
    (
        "register",
        "201",
        "followers",
        "followers",
        &[("path.user_id", "$response.body#/user_id")],
    ),
    (
        "register",
        "201",
        "presence",
        "presence",
        &[("path.user_id", "$response.body#/user_id")],
    ),
    (
        "register",
        "201",
        "start_conversation",
        "start_conversation",
        &[("body", "{\"members\": [\"$response.body#/user_id\"]}")],
    ),
    (
        "publish",
        "201",
        "read",
        "get_post",
        &[
            ("path.post_id", "$response.body#/post_id"),
            ("header.X-Min-Position", POSITION),
        ],
    ),
    (
        "publish",
        "201",
        "comment",
        "add_comment",
        &[("path.post_id", "$response.body#/post_id")],
    ),
    (
        "publish",
        "201",
        "comments",
        "list_comments",
        &[
            ("path.post_id", "$response.body#/post_id"),
            ("header.X-Min-Position", POSITION),
        ],
    ),
    (
        "publish",
        "201",
        "like",
        "like",
        &[("path.post_id", "$response.body#/post_id")],
    ),
    (
        "publish",
        "201",
        "unlike",
        "unlike",
        &[("path.post_id", "$response.body#/post_id")],
    ),
    (
        "publish",
        "201",
        "delete",
        "delete_post",
        &[("path.post_id", "$response.body#/post_id")],
    ),
    (
        "add_comment",
        "201",
        "comments",
        "list_comments",
        &[
            ("path.post_id", "$request.path.post_id"),
            ("header.X-Min-Position", POSITION),
        ],
    ),
    (
        "like",
        "204",
        "read",
        "get_post",
        &[
            ("path.post_id", "$request.path.post_id"),
            ("header.X-Min-Position", POSITION),
        ],
    ),
    (
        "delete_post",
        "204",
        "read",
        "get_post",
        &[
            ("path.post_id", "$request.path.post_id"),
            ("header.X-Min-Position", POSITION),
        ],
    ),
    (
        "start_conversation",
        "201",
        "send",
        "send_message",
        &[("path.conversation_id", "$response.body#/conversation_id")],
    ),
    (
        "start_conversation",
        "201",
        "history",
        "conversation_history",
        &[("path.conversation_id", "$response.body#/conversation_id")],
    ),
    (
        "send_message",
        "201",
        "history",
        "conversation_history",
        &[
            ("path.conversation_id", "$request.path.conversation_id"),
            ("header.X-Min-Position", POSITION),
        ],
    ),
    (
        "send_message",
        "201",
        "read",
        "mark_conversation_read",
        &[
            ("path.conversation_id", "$request.path.conversation_id"),
            ("body", "{\"up_to\": \"$response.body#/message_id\"}"),
        ],
    ),
];

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let id = operation.operation_id.clone().unwrap_or_default();
                for (from, status, name, to, parameters) in LINKS {
                    if *from != id {
                        continue;
                    }
                    let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status)
                    else {
                        continue;
                    };
                    let mut link = LinkBuilder::new().operation_id(*to);
                    for (parameter, expression) in *parameters {
                        if *parameter == "body" {
                            let body: serde_json::Value =
                                serde_json::from_str(expression).unwrap_or_default();
                            link = link.request_body(Some(body));
                        } else {
                            link = link.parameter(*parameter, *expression);
                        }
                    }
                    response
                        .links
                        .insert((*name).to_owned(), RefOr::T(link.build()));
                }
            }
        }
    }
}

/// The document as served. utoipa 5 writes a link's fields in snake case (`operation_id`,
/// `request_body`); OpenAPI names them `operationId` and `requestBody`.
pub fn document() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let paths = document.get_mut("paths").and_then(|p| p.as_object_mut());
    for operation in paths
        .into_iter()
        .flat_map(|p| p.values_mut())
        .filter_map(|i| i.as_object_mut())
        .flat_map(|i| i.values_mut())
    {
        let responses = operation
            .get_mut("responses")
            .and_then(|r| r.as_object_mut());
        for response in responses.into_iter().flat_map(|r| r.values_mut()) {
            let links = response.get_mut("links").and_then(|l| l.as_object_mut());
            for link in links
                .into_iter()
                .flat_map(|l| l.values_mut())
                .filter_map(|l| l.as_object_mut())
            {
                for (snake, camel) in [
                    ("operation_id", "operationId"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(value) = link.remove(snake) {
                        link.insert(camel.to_owned(), value);
                    }
                }
            }
        }
    }
    document
}

pub fn routes() -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", document()))
}
