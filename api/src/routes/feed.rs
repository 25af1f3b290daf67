//! `GET /v1/feed`: the caller's home feed, and what every query route shares (paging
//! parameters, the `X-Min-Position` wait).

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{MinPosition, Principal};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/feed", get(feed))
        .route("/v1/users/{user_id}/posts", get(posts_by))
}

/// Largest and default page size of every list route.
pub const MAX_LIMIT: usize = 100;
pub const DEFAULT_LIMIT: usize = 20;

/// `limit` and a cursor, as strings so that bad values get our own 400.
#[derive(Debug, Deserialize)]
pub struct PageParams {
    pub limit: Option<String>,
    pub cursor: Option<String>,
    pub before: Option<String>,
}

impl PageParams {
    /// `limit` in 1..=100 (default 20).
    ///
    /// # Errors
    /// 400 `invalid_request` for anything else.
    pub fn limit(&self) -> Result<usize, ApiError> {
        match &self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::InvalidRequest(format!(
                        "limit must be an integer from 1 to {MAX_LIMIT}"
                    ))
                }),
        }
    }

    /// The cursor (`cursor`, or `before` on comment lists): an opaque position returned
    /// as `next_cursor`.
    ///
    /// # Errors
    /// 400 `invalid_request` when it is not one we issued.
    pub fn cursor(&self) -> Result<Option<i64>, ApiError> {
        match self.cursor.as_ref().or(self.before.as_ref()) {
            None => Ok(None),
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|p| *p > 0)
                .map(Some)
                .ok_or_else(|| ApiError::InvalidRequest("invalid cursor".to_owned())),
        }
    }
}

/// Waits (bounded) until `projections` have applied the log up to `min`; 503
/// `read_model_behind` with `Retry-After` when they have not in time.
///
/// # Errors
/// 422 `unknown_position` past the end of the log; 503 when the wait ran out or the
/// database failed.
pub async fn caught_up(
    state: &AppState,
    min: MinPosition,
    projections: &[&str],
) -> Result<(), ApiError> {
    let Some(position) = min.0 else {
        return Ok(());
    };
    // A position past the end of the log was never returned by this server (a command's
    // position is committed before it is answered): waiting for it would only time out.
    let end = store::PgEventStore::new(state.pool.clone())
        .log_end()
        .await
        .map_err(crate::error::domain_errors::store)?;
    if position > end {
        return Err(ApiError::rule(
            "unknown_position",
            format!("X-Min-Position {position} is past the end of the log: send an x-global-position this server returned"),
        ));
    }
    let reached = projections::query::wait_caught_up(
        &state.pool,
        projections,
        position,
        state.min_position_wait,
    )
    .await
    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if reached {
        // The write may be in a generation a replay swapped in less than a second ago:
        // read the one the pointer names now, not the one this instance last looked at.
        state
            .read
            .timelines
            .follow_generation()
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        state
            .read
            .content
            .follow_generation()
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok(())
    } else {
        Err(ApiError::ReadModelBehind(position))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeedItem {
    pub post_id: Uuid,
    pub author_id: Uuid,
    pub title: String,
    /// The body as plain text, at most 280 characters.
    pub preview: String,
    pub like_count: i64,
    pub comment_count: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    pub items: Vec<FeedItem>,
    /// Pass as `cursor` for the next (older) page; null at the end.
    pub next_cursor: Option<String>,
}

/// The caller's home feed: posts of the people they follow and their own, newest first.
#[utoipa::path(get, path = "/v1/feed", tag = "feed", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
           ("cursor" = Option<String>, Query, pattern = r"^[1-9][0-9]{0,17}$", description = "`next_cursor` of the previous page"),
           ("X-Min-Position" = Option<i64>, Header, description = "Wait until the feed reflects this global position")),
    responses((status = 200, body = FeedPage), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody, description = "read_model_behind")))]
pub async fn feed(
    State(state): State<AppState>,
    principal: Principal,
    min: MinPosition,
    Query(params): Query<PageParams>,
) -> Result<Json<FeedPage>, ApiError> {
    let limit = params.limit()?;
    let cursor = params.cursor()?;
    caught_up(&state, min, &["timeline", "content"]).await?;
    let page = state.read.feed(principal.user_id, cursor, limit).await?;
    Ok(Json(feed_page(page)))
}

/// A person's own posts, newest first (public, like profiles).
#[utoipa::path(get, path = "/v1/users/{user_id}/posts", tag = "feed",
    params(("user_id" = uuid::Uuid, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
           ("cursor" = Option<String>, Query, pattern = r"^[1-9][0-9]{0,17}$", description = "`next_cursor` of the previous page"),
           ("X-Min-Position" = Option<i64>, Header, description = "Wait until the posts reflect this global position")),
    responses((status = 200, body = FeedPage), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody, description = "no such person")))]
pub async fn posts_by(
    State(state): State<AppState>,
    min: MinPosition,
    Path(user_id): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Json<FeedPage>, ApiError> {
    let author = crate::routes::parse_id(&user_id, "user")?;
    let limit = params.limit()?;
    let cursor = params.cursor()?;
    caught_up(&state, min, &["timeline", "content"]).await?;
    if projections::People::new(state.pool.clone())
        .by_ids(&[author])
        .await?
        .is_empty()
    {
        return Err(ApiError::NotFound("user"));
    }
    let page = state.read.posts_by(author, cursor, limit).await?;
    Ok(Json(feed_page(page)))
}

fn feed_page(page: projections::query::Page<projections::query::FeedItem>) -> FeedPage {
    FeedPage {
        items: page
            .items
            .into_iter()
            .map(|i| FeedItem {
                post_id: i.post_id,
                author_id: i.author_id,
                title: i.title,
                preview: i.preview,
                like_count: i.like_count,
                comment_count: i.comment_count,
                created_at: i.created_at,
            })
            .collect(),
        next_cursor: page.next_cursor.map(|p| p.to_string()),
    }
}
