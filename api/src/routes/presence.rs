//! `GET /v1/users/{id}/presence` and `…/presence/history`: who is online, and when they
//! were. A person's presence is theirs and their mutual followers' to see; anyone else
//! gets 404, as for a person who does not exist.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use projections::presence::{Transition, MAX_SPAN_DAYS};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::Principal;
use crate::routes::parse_id;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users/{user_id}/presence", get(presence))
        .route("/v1/users/{user_id}/presence/history", get(history))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceView {
    pub online: bool,
    /// Now when online; else the end of the last presence, if one is remembered.
    pub last_seen: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionView {
    /// `online` or `offline`.
    pub status: &'static str,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceHistoryPage {
    /// Oldest first.
    pub items: Vec<TransitionView>,
}

#[derive(Debug, Deserialize)]
pub struct HistorySpan {
    /// RFC 3339; default `to` minus 24 hours.
    pub from: Option<String>,
    /// RFC 3339, exclusive; default now. At most 31 days after `from`.
    pub to: Option<String>,
}

/// The user, when the caller may see their presence; else 404.
async fn visible(state: &AppState, viewer: Uuid, raw: &str) -> Result<Uuid, ApiError> {
    let user = parse_id(raw, "user")?;
    if crate::presence::may_see(state.read.timelines.as_ref(), viewer, user).await? {
        Ok(user)
    } else {
        Err(ApiError::NotFound("user"))
    }
}

fn instant(raw: Option<&String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|raw| {
        DateTime::parse_from_rfc3339(raw)
            .map(|at| at.to_utc())
            .map_err(|_| ApiError::InvalidRequest(format!("{name} must be an RFC 3339 time")))
    })
    .transpose()
}

/// Whether a person is online, and when they were last seen.
#[utoipa::path(get, path = "/v1/users/{user_id}/presence", tag = "presence", security(("bearer" = [])),
    params(("user_id" = Uuid, Path)),
    responses((status = 200, body = PresenceView),
              (status = 404, body = crate::error::ErrorBody, description = "no such person, or not one whose presence the caller may see")))]
pub async fn presence(
    State(state): State<AppState>,
    principal: Principal,
    Path(user_id): Path<String>,
) -> Result<Json<PresenceView>, ApiError> {
    let user = visible(&state, principal.user_id, &user_id).await?;
    let (online, last_seen) = state
        .presence
        .status(user)
        .await
        .map_err(|e| ApiError::Unavailable(format!("redis: {e}")))?;
    Ok(Json(PresenceView { online, last_seen }))
}

/// A person's presence transitions in a span of at most 31 days, oldest first.
#[utoipa::path(get, operation_id = "presence_history", path = "/v1/users/{user_id}/presence/history", tag = "presence", security(("bearer" = [])),
    params(("user_id" = Uuid, Path),
           ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339; default `to` minus 24 hours"),
           ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive; default now; at most 31 days after `from`")),
    responses((status = 200, body = PresenceHistoryPage),
              (status = 400, body = crate::error::ErrorBody, description = "invalid_request: a time that is not RFC 3339, `from` not before `to`, or a span over 31 days"),
              (status = 404, body = crate::error::ErrorBody, description = "no such person, or not one whose presence the caller may see")))]
pub async fn history(
    State(state): State<AppState>,
    principal: Principal,
    Path(user_id): Path<String>,
    Query(span): Query<HistorySpan>,
) -> Result<Json<PresenceHistoryPage>, ApiError> {
    let user = visible(&state, principal.user_id, &user_id).await?;
    let to = instant(span.to.as_ref(), "to")?.unwrap_or_else(Utc::now);
    let from = instant(span.from.as_ref(), "from")?.unwrap_or(to - TimeDelta::days(1));
    if from >= to {
        return Err(ApiError::InvalidRequest(
            "`from` must be before `to`".into(),
        ));
    }
    if to - from > TimeDelta::days(MAX_SPAN_DAYS) {
        return Err(ApiError::InvalidRequest(format!(
            "the span may cover at most {MAX_SPAN_DAYS} days"
        )));
    }
    let items = state.read.presence.history(user, from, to).await?;
    Ok(Json(PresenceHistoryPage {
        items: items
            .into_iter()
            .map(|Transition { online, at }| TransitionView {
                status: if online { "online" } else { "offline" },
                at,
            })
            .collect(),
    }))
}
