//! `/v1/posts*`: publishing and deleting posts, comments, likes.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use domain::comment::CommentCommand;
use domain::like::{like_stream_id, LikeCommand};
use domain::post::PostCommand;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{CommandMeta, IfMatch, JsonBody, MinPosition, Principal};
use crate::routes::feed::{caught_up, PageParams};
use crate::routes::{command_headers, context, new_stream_context, parse_id};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/posts", post(publish))
        .route("/v1/posts/{post_id}", get(get_post).delete(delete_post))
        .route(
            "/v1/posts/{post_id}/comments",
            post(add_comment).get(list_comments),
        )
        .route("/v1/posts/{post_id}/like", put(like).delete(unlike))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// 1–200 characters (trimmed).
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\x00]*$")]
    pub title: String,
    /// 1–20000 characters of markdown.
    #[schema(min_length = 1, max_length = 20000, pattern = r"^[^\x00]*$")]
    pub body_markdown: String,
    /// Up to 10 absolute http(s) URLs of at most 2048 characters.
    #[serde(default)]
    #[schema(max_items = 10)]
    pub media: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishResponse {
    pub post_id: Uuid,
    pub version: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentRequest {
    /// 1–2000 characters (trimmed).
    #[schema(min_length = 1, max_length = 2000, pattern = r"^[^\x00]*$")]
    pub body: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommentResponse {
    pub comment_id: Uuid,
}

/// Publish a post.
#[utoipa::path(post, path = "/v1/posts", tag = "posts", security(("bearer" = [])), request_body = PublishRequest,
    responses((status = 201, body = PublishResponse), (status = 422, body = crate::error::ErrorBody, description = "invalid_title, invalid_body, invalid_media")))]
pub async fn publish(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    JsonBody(body): JsonBody<PublishRequest>,
) -> Result<(StatusCode, HeaderMap, Json<PublishResponse>), ApiError> {
    let post_id = meta.mint_id("post");
    let command = PostCommand::PublishPost {
        post_id,
        author_id: principal.user_id,
        title: body.title,
        body_markdown: body.body_markdown,
        media: body.media,
    };
    let ctx = new_stream_context(&meta, Some(principal.user_id));
    let executed = state
        .write
        .posts
        .execute(&post_id.to_string(), command, &ctx)
        .await?;
    let mut headers = command_headers(&executed);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/posts/{post_id}")) {
        headers.insert(header::LOCATION, location);
    }
    let version = executed.version;
    Ok((
        StatusCode::CREATED,
        headers,
        Json(PublishResponse { post_id, version }),
    ))
}

/// Delete a post (author only; idempotent).
#[utoipa::path(delete, path = "/v1/posts/{post_id}", tag = "posts", security(("bearer" = [])),
    params(("post_id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody, description = "version_conflict")))]
pub async fn delete_post(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    IfMatch(expected): IfMatch,
    Path(post_id): Path<String>,
) -> Result<(StatusCode, HeaderMap), ApiError> {
    parse_id(&post_id, "post")?;
    let command = PostCommand::DeletePost {
        actor_id: principal.user_id,
    };
    let ctx = context(&meta, Some(principal.user_id), expected);
    let executed = state.write.posts.execute(&post_id, command, &ctx).await?;
    Ok((StatusCode::NO_CONTENT, command_headers(&executed)))
}

/// 404 unless the post exists and is not deleted.
async fn live_post(state: &AppState, post_id: &str) -> Result<Uuid, ApiError> {
    let id = parse_id(post_id, "post")?;
    let post = state.write.posts.store().load(post_id).await?.aggregate;
    if post.is_live() {
        Ok(id)
    } else {
        Err(ApiError::NotFound("post"))
    }
}

/// Comment on a post.
#[utoipa::path(post, path = "/v1/posts/{post_id}/comments", tag = "posts", security(("bearer" = [])),
    params(("post_id" = Uuid, Path)), request_body = CommentRequest,
    responses((status = 201, body = CommentResponse), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody, description = "invalid_body")))]
pub async fn add_comment(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    Path(post_id): Path<String>,
    JsonBody(body): JsonBody<CommentRequest>,
) -> Result<(StatusCode, HeaderMap, Json<CommentResponse>), ApiError> {
    let post_id = live_post(&state, &post_id).await?;
    let comment_id = meta.mint_id("comment");
    let command = CommentCommand::AddComment {
        comment_id,
        post_id,
        author_id: principal.user_id,
        body: body.body,
    };
    let ctx = new_stream_context(&meta, Some(principal.user_id));
    let executed = state
        .write
        .comments
        .execute(&comment_id.to_string(), command, &ctx)
        .await?;
    Ok((
        StatusCode::CREATED,
        command_headers(&executed),
        Json(CommentResponse { comment_id }),
    ))
}

/// Like a post (idempotent: one like per user).
#[utoipa::path(put, path = "/v1/posts/{post_id}/like", tag = "posts", security(("bearer" = [])),
    params(("post_id" = Uuid, Path)), responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn like(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    Path(post_id): Path<String>,
) -> Result<(StatusCode, HeaderMap), ApiError> {
    let post_id = live_post(&state, &post_id).await?;
    let command = LikeCommand::LikePost {
        post_id,
        user_id: principal.user_id,
    };
    let ctx = context(&meta, Some(principal.user_id), None);
    let stream = like_stream_id(post_id, principal.user_id);
    let executed = state.write.likes.execute(&stream, command, &ctx).await?;
    Ok((StatusCode::NO_CONTENT, command_headers(&executed)))
}

/// Take a like back (idempotent).
#[utoipa::path(delete, path = "/v1/posts/{post_id}/like", tag = "posts", security(("bearer" = [])),
    params(("post_id" = Uuid, Path)), responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn unlike(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    Path(post_id): Path<String>,
) -> Result<(StatusCode, HeaderMap), ApiError> {
    let post_id = parse_id(&post_id, "post")?;
    let command = LikeCommand::UnlikePost {
        post_id,
        user_id: principal.user_id,
    };
    let ctx = context(&meta, Some(principal.user_id), None);
    let stream = like_stream_id(post_id, principal.user_id);
    let executed = state.write.likes.execute(&stream, command, &ctx).await?;
    Ok((StatusCode::NO_CONTENT, command_headers(&executed)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PostView {
    pub post_id: Uuid,
    pub author_id: Uuid,
    pub title: String,
    pub body_markdown: String,
    /// `body_markdown` rendered to HTML and sanitised (no scripts, handlers or
    /// `javascript:` links).
    pub body_html: String,
    pub media: Vec<String>,
    pub like_count: i64,
    pub comment_count: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Read a post.
#[utoipa::path(get, path = "/v1/posts/{post_id}", tag = "posts",
    params(("post_id" = Uuid, Path), ("X-Min-Position" = Option<i64>, Header, description = "Wait until the post reflects this global position")),
    responses((status = 200, body = PostView), (status = 404, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody, description = "read_model_behind")))]
pub async fn get_post(
    State(state): State<AppState>,
    min: MinPosition,
    Path(post_id): Path<String>,
) -> Result<Json<PostView>, ApiError> {
    let id = parse_id(&post_id, "post")?;
    caught_up(&state, min, &["content"]).await?;
    let post = state
        .read
        .post(id)
        .await?
        .ok_or(ApiError::NotFound("post"))?;
    Ok(Json(PostView {
        post_id: post.post_id,
        author_id: post.author_id,
        title: post.title,
        body_markdown: post.body_markdown,
        body_html: post.body_html,
        media: post.media,
        like_count: post.like_count,
        comment_count: post.comment_count,
        created_at: post.created_at,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommentView {
    pub comment_id: Uuid,
    pub author_id: Uuid,
    pub body: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommentPage {
    pub items: Vec<CommentView>,
    /// Pass as `before` for the next (older) page; null at the end.
    pub next_cursor: Option<String>,
}

/// A post's comments, newest first.
#[utoipa::path(get, path = "/v1/posts/{post_id}/comments", tag = "posts",
    params(("post_id" = Uuid, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
           ("before" = Option<String>, Query, pattern = r"^[1-9][0-9]{0,17}$", description = "`next_cursor` of the previous page"),
           ("X-Min-Position" = Option<i64>, Header, description = "Wait until the list reflects this global position")),
    responses((status = 200, body = CommentPage), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn list_comments(
    State(state): State<AppState>,
    min: MinPosition,
    Path(post_id): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Json<CommentPage>, ApiError> {
    let id = parse_id(&post_id, "post")?;
    let limit = params.limit()?;
    let before = params.cursor()?;
    caught_up(&state, min, &["content"]).await?;
    let page = state
        .read
        .comments(id, before, limit)
        .await?
        .ok_or(ApiError::NotFound("post"))?;
    Ok(Json(CommentPage {
        items: page
            .items
            .into_iter()
            .map(|c| CommentView {
                comment_id: c.comment_id,
                author_id: c.author_id,
                body: c.body,
                created_at: c.created_at,
            })
            .collect(),
        next_cursor: page.next_cursor.map(|p| p.to_string()),
    }))
}
