//! `/v1/users/…`: public profiles, finding people by name, and the follow graph (whose
//! stream is the follower's).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::{Json, Router};
use domain::social_graph::SocialGraphCommand;
use projections::timeline::Direction;

use crate::error::ApiError;
use crate::extract::{CommandMeta, IfMatch, MinPosition, Principal};
use crate::routes::feed::caught_up;
use crate::routes::{command_headers, context, parse_id};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users/search", get(search))
        .route("/v1/users/by-username/{username}", get(by_username))
        .route("/v1/users/{user_id}", get(profile))
        .route("/v1/users/{user_id}/followers", get(followers))
        .route("/v1/users/{user_id}/following", get(following))
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

/// `?q=` and `limit` of a search.
#[derive(Debug, serde::Deserialize)]
pub struct SearchParams {
    pub q: Option<String>,
    pub limit: Option<String>,
}

/// One person a search found.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PersonView {
    pub user_id: uuid::Uuid,
    pub username: String,
    pub display_name: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SearchResults {
    pub items: Vec<PersonView>,
}

/// Find people by username or display name: prefixes and near misses (typos), best
/// first — the exact username, then prefixes, then by similarity. Case-insensitive.
#[utoipa::path(get, path = "/v1/users/search", tag = "social",
    params(("q" = String, Query, min_length = 1, max_length = 64, pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", description = "1–64 characters, not only spaces, without NUL"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
           ("X-Min-Position" = Option<i64>, Header, description = "Wait until the search reflects this global position")),
    responses((status = 200, body = SearchResults),
              (status = 400, body = crate::error::ErrorBody, description = "invalid_request: no `q`, or a bad limit")))]
pub async fn search(
    State(state): State<AppState>,
    min: MinPosition,
    Query(params): Query<SearchParams>,
) -> Result<Json<SearchResults>, ApiError> {
    caught_up(&state, min, &[projections::PeopleProjection::NAME]).await?;
    let q = params.q.as_deref().map(str::trim).unwrap_or_default();
    // PostgreSQL text cannot hold NUL: refused here rather than failing the query.
    if q.is_empty() || q.chars().count() > projections::people::MAX_QUERY || q.contains('\0') {
        return Err(ApiError::InvalidRequest(format!(
            "q must be 1 to {} characters, without NUL",
            projections::people::MAX_QUERY
        )));
    }
    let limit = crate::routes::feed::PageParams {
        limit: params.limit,
        cursor: None,
        before: None,
    }
    .limit()?;
    let found = projections::People::new(state.pool.clone())
        .search(q, u32::try_from(limit).unwrap_or(u32::MAX))
        .await?;
    Ok(Json(SearchResults {
        items: found
            .into_iter()
            .map(|p| PersonView {
                user_id: p.user_id,
                username: p.username,
                display_name: p.display_name,
            })
            .collect(),
    }))
}

/// A page of people and the cursor of the next one.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PeoplePage {
    pub items: Vec<PersonView>,
    /// `cursor` of the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// `limit` and `cursor` of a list of people.
#[derive(Debug, serde::Deserialize)]
pub struct PeopleParams {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// Who follows the user, page by page (in a stable order of ids, not by time).
#[utoipa::path(get, path = "/v1/users/{user_id}/followers", tag = "social",
    params(("user_id" = uuid::Uuid, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
           ("cursor" = Option<uuid::Uuid>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, body = PeoplePage), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn followers(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    Query(params): Query<PeopleParams>,
) -> Result<Json<PeoplePage>, ApiError> {
    follows(&state, &user_id, params, Direction::Followers).await
}

/// Whom the user follows, page by page (in a stable order of ids, not by time).
#[utoipa::path(get, path = "/v1/users/{user_id}/following", tag = "social",
    params(("user_id" = uuid::Uuid, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
           ("cursor" = Option<uuid::Uuid>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, body = PeoplePage), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn following(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    Query(params): Query<PeopleParams>,
) -> Result<Json<PeoplePage>, ApiError> {
    follows(&state, &user_id, params, Direction::Following).await
}

async fn follows(
    state: &AppState,
    user_id: &str,
    params: PeopleParams,
    direction: Direction,
) -> Result<Json<PeoplePage>, ApiError> {
    let id = parse_id(user_id, "user")?;
    let limit = crate::routes::feed::PageParams {
        limit: params.limit,
        cursor: None,
        before: None,
    }
    .limit()?;
    let after = match params.cursor.as_deref() {
        None => uuid::Uuid::nil(),
        Some(raw) => raw.parse().map_err(|_| {
            ApiError::InvalidRequest("cursor must be a `next_cursor` of this list".to_owned())
        })?,
    };
    let people = projections::People::new(state.pool.clone());
    if people.by_ids(&[id]).await?.is_empty() {
        return Err(ApiError::NotFound("user"));
    }
    let page = state
        .read
        .timelines
        .follows_page(id, direction, after, limit)
        .await?;
    let next_cursor = (page.len() == limit)
        .then(|| page.last().map(ToString::to_string))
        .flatten();
    // Someone erased (or not yet found by search) is left out of the page.
    let items = people
        .by_ids(&page)
        .await?
        .into_iter()
        .map(|p| PersonView {
            user_id: p.user_id,
            username: p.username,
            display_name: p.display_name,
        })
        .collect();
    Ok(Json(PeoplePage { items, next_cursor }))
}

/// The public profile of the person who holds `username`.
#[utoipa::path(get, path = "/v1/users/by-username/{username}", tag = "social",
    params(("username" = String, Path), ("X-Min-Position" = Option<i64>, Header, description = "Wait until the profile reflects this global position")),
    responses((status = 200, body = PublicProfile), (status = 404, body = crate::error::ErrorBody)))]
pub async fn by_username(
    State(state): State<AppState>,
    min: MinPosition,
    Path(username): Path<String>,
) -> Result<Json<PublicProfile>, ApiError> {
    caught_up(
        &state,
        min,
        &[projections::PeopleProjection::NAME, "timeline", "content"],
    )
    .await?;
    // No username holds NUL, and PostgreSQL text cannot: nobody, not a 503.
    if username.contains('\0') {
        return Err(ApiError::NotFound("user"));
    }
    let person = projections::People::new(state.pool.clone())
        .by_username(&username)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    profile_of(&state, person.user_id).await.map(Json)
}

/// The public profile of `id`, from the read models.
async fn profile_of(state: &AppState, id: uuid::Uuid) -> Result<PublicProfile, ApiError> {
    let (profile, counts) = state
        .read
        .profile(id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(PublicProfile {
        user_id: profile.user_id,
        username: profile.username,
        display_name: profile.display_name,
        followers: counts.followers,
        following: counts.following,
    })
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
    profile_of(&state, id).await.map(Json)
}
