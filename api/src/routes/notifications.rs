//! `/v1/notifications`: who followed you, who liked and who commented on your posts,
//! grouped per post and kind; read marks. Live: `notification` on `GET /v1/stream`.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::user::UserCommand;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{CommandMeta, JsonBody, MinPosition, Principal};
use crate::routes::feed::{caught_up, PageParams};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/notifications", get(list))
        .route("/v1/notifications/read", post(mark_read))
}

/// Someone in a group.
#[derive(Debug, Serialize, ToSchema)]
pub struct Actor {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
}

/// A group: "ada and 12 others liked your post".
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationView {
    /// Opaque; the newest act's log position. `POST /v1/notifications/read` takes it.
    pub id: String,
    /// `follow`, `like` or `comment`.
    pub kind: String,
    /// The post liked or commented on; null for follows.
    pub post_id: Option<Uuid>,
    /// The newest first, at most 3 (people since erased are left out).
    pub actors: Vec<Actor>,
    /// Distinct people in the group.
    pub count: i64,
    pub latest_at: DateTime<Utc>,
    pub read: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    /// Newest first.
    pub items: Vec<NotificationView>,
    /// Unread groups (at most 100).
    pub unread: i64,
    /// Pass as `before` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
// Not `ReadRequest` in the document: the conversations' one has that name.
#[schema(as = NotificationsReadRequest)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// The `id` of the newest notification read: it and every older one are read.
    #[schema(pattern = r"^[1-9][0-9]{0,17}$")]
    pub up_to: String,
}

/// The caller's notifications, newest group first.
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications", security(("bearer" = [])),
    params(("before" = Option<String>, Query, pattern = r"^[1-9][0-9]{0,17}$", description = "a `next_cursor`"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
           ("X-Min-Position" = Option<i64>, Header, description = "Wait until the notifications reflect this global position")),
    responses((status = 200, body = NotificationPage),
              (status = 400, body = crate::error::ErrorBody, description = "invalid_request: a bad limit or cursor"),
              (status = 401, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    min: MinPosition,
    Query(params): Query<PageParams>,
) -> Result<Json<NotificationPage>, ApiError> {
    let limit = params.limit()?;
    let before = params.cursor()?;
    caught_up(&state, min, &[projections::NotificationsProjection::NAME]).await?;
    let page = projections::Notifications::new(state.pool.clone())
        .page(
            principal.user_id,
            before,
            u32::try_from(limit).unwrap_or(u32::MAX),
        )
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let mut ids: Vec<Uuid> = page
        .items
        .iter()
        .flat_map(|g| g.actors.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let people = projections::People::new(state.pool.clone())
        .by_ids(&ids)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let next_cursor = (page.items.len() == limit)
        .then(|| page.items.last().map(|g| g.latest.to_string()))
        .flatten();
    let items = page
        .items
        .into_iter()
        .map(|group| NotificationView {
            id: group.latest.to_string(),
            kind: group.kind,
            post_id: group.post_id,
            actors: group
                .actors
                .iter()
                .filter_map(|id| people.iter().find(|p| p.user_id == *id))
                .map(|p| Actor {
                    user_id: p.user_id,
                    username: p.username.clone(),
                    display_name: p.display_name.clone(),
                })
                .collect(),
            count: group.count,
            latest_at: group.latest_at,
            read: group.read,
        })
        .collect();
    Ok(Json(NotificationPage {
        items,
        unread: page.unread,
        next_cursor,
    }))
}

/// Mark the caller's notifications read, up to and including `up_to`. Marks never go back.
#[utoipa::path(post, operation_id = "mark_notifications_read", path = "/v1/notifications/read", tag = "notifications", security(("bearer" = [])),
    request_body = ReadRequest,
    responses((status = 204),
              (status = 400, body = crate::error::ErrorBody, description = "invalid_request: `up_to` is not a notification id"),
              (status = 401, body = crate::error::ErrorBody)))]
pub async fn mark_read(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    JsonBody(body): JsonBody<ReadRequest>,
) -> Result<(StatusCode, axum::http::HeaderMap), ApiError> {
    let up_to = body
        .up_to
        .parse::<i64>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::InvalidRequest("up_to must be a notification id".to_owned()))?;
    let ctx = crate::routes::context(&meta, Some(principal.user_id), None);
    let executed = state
        .write
        .users
        .execute(
            &principal.user_id.to_string(),
            UserCommand::MarkNotificationsRead { up_to },
            &ctx,
        )
        .await?;
    Ok((
        StatusCode::NO_CONTENT,
        crate::routes::command_headers(&executed),
    ))
}
