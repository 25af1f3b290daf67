//! `/v1/users/{user_id}/follow`: the follow graph. The stream is the follower's.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::{Json, Router};
use domain::social_graph::SocialGraphCommand;

use crate::error::ApiError;
use crate::extract::{CommandMeta, IfMatch, MinPosition, Principal};
use crate::routes::feed::caught_up;
use crate::routes::{command_headers, context, parse_id};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users/{user_id}", get(profile))
        .route("/v1/users/{user_id}/follow", put(follow).delete(unfollow))
}

/// Follow a user (idempotent).
#[utoipa::path(put, path = "/v1/users/{user_id}/follow", tag = "social", security(("bearer" = [])),
    params(("user_id" = uuid::Uuid, Path, description = "The user to follow")),
    responses((status = 204, description = "Following; `ETag` is the caller's social-graph version"),
              (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody, description = "cannot_follow_self")))]
pub async fn follow(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    IfMatch(expected): IfMatch,
    Path(user_id): Path<String>,
) -> Result<(StatusCode, HeaderMap), ApiError> {
    let followee_id = parse_id(&user_id, "user")?;
    if followee_id != principal.user_id {
        let followee = state.write.users.store().load(&user_id).await?.aggregate;
        if !followee.is_active() {
            return Err(ApiError::NotFound("user"));
        }
    }
    let command = SocialGraphCommand::Follow {
        follower_id: principal.user_id,
        followee_id,
    };
    let ctx = context(&meta, Some(principal.user_id), expected);
    let executed = state
        .write
        .social
        .execute(&principal.user_id.to_string(), command, &ctx)
        .await?;
    Ok((StatusCode::NO_CONTENT, command_headers(&executed)))
}

/// Stop following a user (idempotent).
#[utoipa::path(delete, path = "/v1/users/{user_id}/follow", tag = "social", security(("bearer" = [])),
    params(("user_id" = uuid::Uuid, Path, description = "The user to unfollow")),
    responses((status = 204)))]
pub async fn unfollow(
    State(state): State<AppState>,
    principal: Principal,
    meta: CommandMeta,
    IfMatch(expected): IfMatch,
    Path(user_id): Path<String>,
) -> Result<(StatusCode, HeaderMap), ApiError> {
    let followee_id = parse_id(&user_id, "user")?;
    let command = SocialGraphCommand::Unfollow {
        follower_id: principal.user_id,
        followee_id,
    };
    let ctx = context(&meta, Some(principal.user_id), expected);
    let executed = state
        .write
        .social
        .execute(&principal.user_id.to_string(), command, &ctx)
        .await?;
    Ok((StatusCode::NO_CONTENT, command_headers(&executed)))
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PublicProfile {
    pub user_id: uuid::Uuid,
    pub username: String,
    pub display_name: String,
    pub followers: u64,
    pub following: u64,
}

/// A user's public profile with follower counts.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "social",
    params(("user_id" = uuid::Uuid, Path), ("X-Min-Position" = Option<i64>, Header, description = "Wait until the profile reflects this global position")),
    responses((status = 200, body = PublicProfile), (status = 404, body = crate::error::ErrorBody)))]
pub async fn profile(
    State(state): State<AppState>,
    min: MinPosition,
    Path(user_id): Path<String>,
) -> Result<Json<PublicProfile>, ApiError> {
    let id = parse_id(&user_id, "user")?;
    caught_up(&state, min, &["timeline", "content"]).await?;
    let (profile, counts) = state
        .read
        .profile(id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(PublicProfile {
        user_id: profile.user_id,
        username: profile.username,
        display_name: profile.display_name,
        followers: counts.followers,
        following: counts.following,
    }))
}
