//! `/v1/analytics/…` for role `analyst` (or `admin`): signups and activity per day and the
//! most liked posts, read from the analytics model (`projections::analytics`, schema
//! `analytics`), which `hybridlive replay analytics` builds. Days are UTC; every figure is
//! as of the model's `as_of` (null until it was first built).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Days, NaiveDate, Utc};
use projections::analytics::{self, AnalyticsProjection};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::audit::{invalid, query};
use crate::error::ApiError;
use crate::extract::Principal;
use crate::state::AppState;

/// The role these routes need (`admin` also passes).
pub const ROLE: &str = "analyst";

/// Days a range covers by default (ending today) and at most.
pub const DEFAULT_DAYS: u64 = 30;
pub const MAX_DAYS: u64 = 366;

/// Most liked posts listed by default and at most.
pub const DEFAULT_TOP: u32 = 10;
pub const MAX_TOP: u32 = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/analytics/signups", get(signups))
        .route("/v1/analytics/activity", get(activity))
        .route("/v1/analytics/top-posts", get(top_posts))
}

/// `from` and `to`, as strings so bad values get our own 400 `invalid_filter`; an unknown
/// parameter is refused too.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeParams {
    from: Option<String>,
    to: Option<String>,
}

fn date(name: &str, raw: Option<&str>) -> Result<Option<NaiveDate>, ApiError> {
    raw.map(|raw| {
        NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .ok()
            .filter(|_| raw.len() == 10)
            .ok_or_else(|| invalid(format!("{name} must be a date like 2026-12-01")))
    })
    .transpose()
}

impl RangeParams {
    /// Both days inclusive: `to` defaults to today (UTC), `from` to 29 days before `to`.
    fn range(&self, today: NaiveDate) -> Result<(NaiveDate, NaiveDate), ApiError> {
        let to = date("to", self.to.as_deref())?.unwrap_or(today);
        let from = match date("from", self.from.as_deref())? {
            Some(from) => from,
            None => to
                .checked_sub_days(Days::new(DEFAULT_DAYS - 1))
                .ok_or_else(|| invalid("to is too early"))?,
        };
        if from > to {
            return Err(invalid("from must not be after to"));
        }
        let too_long = from
            .checked_add_days(Days::new(MAX_DAYS))
            .is_some_and(|end| end <= to);
        if too_long {
            return Err(invalid(format!("the range covers at most {MAX_DAYS} days")));
        }
        Ok((from, to))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopParams {
    limit: Option<String>,
}

impl TopParams {
    fn limit(&self) -> Result<u32, ApiError> {
        match &self.limit {
            None => Ok(DEFAULT_TOP),
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_TOP).contains(n))
                .ok_or_else(|| invalid(format!("limit must be an integer from 1 to {MAX_TOP}"))),
        }
    }
}

/// How far the model is built.
#[derive(Debug, Serialize, ToSchema)]
pub struct AsOf {
    /// The highest global position among the events applied.
    pub global_position: i64,
    /// The newest `recorded_at` among them.
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignupDay {
    pub day: NaiveDate,
    /// Users registered that day whose registration stands.
    pub signups: i64,
    /// Users registered that day whose registration was rolled back since (onboarding
    /// failed); not counted in `signups`.
    pub rolled_back: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignupsReport {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Every day from `from` to `to`, in order, zeros included.
    pub days: Vec<SignupDay>,
    /// Null until the model was first built.
    pub as_of: Option<AsOf>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityDay {
    pub day: NaiveDate,
    /// Posts published that day (deleted since or not).
    pub posts: i64,
    /// Posts deleted that day.
    pub posts_deleted: i64,
    /// Likes given that day (`post.liked` events; taken back since or not).
    pub likes: i64,
    /// Likes taken back that day (`post.unliked` events).
    pub unlikes: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityReport {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Every day from `from` to `to`, in order, zeros included.
    pub days: Vec<ActivityDay>,
    pub as_of: Option<AsOf>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopPostView {
    pub post_id: Uuid,
    pub author_id: Uuid,
    pub title: String,
    /// The day it was published (UTC).
    pub published_on: NaiveDate,
    /// Users who like it now.
    pub like_count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopPostsReport {
    /// Live posts that someone likes, most liked first (ties: smaller post id first).
    pub items: Vec<TopPostView>,
    pub as_of: Option<AsOf>,
}

async fn as_of(model: &AnalyticsProjection) -> Result<Option<AsOf>, ApiError> {
    Ok(model.built().await?.map(|built| AsOf {
        global_position: built.global_position,
        recorded_at: built.recorded_at,
    }))
}

/// Signups per UTC day: registrations that stand, and those rolled back since.
#[utoipa::path(get, path = "/v1/analytics/signups", tag = "analytics", security(("bearer" = [])),
    params(("from" = Option<String>, Query, format = Date, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", description = "first day, YYYY-MM-DD; default: 29 days before `to`"),
           ("to" = Option<String>, Query, format = Date, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", description = "last day, YYYY-MM-DD; default: today (UTC). At most 366 days in all")),
    responses((status = 200, body = SignupsReport), (status = 400, body = crate::error::ErrorBody, description = "invalid_filter"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody, description = "not an analyst or admin")))]
pub async fn signups(
    State(state): State<AppState>,
    principal: Principal,
    params: Result<Query<RangeParams>, QueryRejection>,
) -> Result<Json<SignupsReport>, ApiError> {
    principal.require_role(ROLE)?;
    let (from, to) = query(params)?.range(Utc::now().date_naive())?;
    let model = AnalyticsProjection::live(state.pool.clone());
    let days = model.daily_signups(from, to).await?;
    Ok(Json(SignupsReport {
        from,
        to,
        days: days
            .into_iter()
            .map(|d| SignupDay {
                day: d.day,
                signups: d.signups,
                rolled_back: d.rolled_back,
            })
            .collect(),
        as_of: as_of(&model).await?,
    }))
}

/// Posts and likes per UTC day: what happened that day (later deletions and unlikes do not
/// change a past day).
#[utoipa::path(get, path = "/v1/analytics/activity", tag = "analytics", security(("bearer" = [])),
    params(("from" = Option<String>, Query, format = Date, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", description = "first day, YYYY-MM-DD; default: 29 days before `to`"),
           ("to" = Option<String>, Query, format = Date, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", description = "last day, YYYY-MM-DD; default: today (UTC). At most 366 days in all")),
    responses((status = 200, body = ActivityReport), (status = 400, body = crate::error::ErrorBody, description = "invalid_filter"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody, description = "not an analyst or admin")))]
pub async fn activity(
    State(state): State<AppState>,
    principal: Principal,
    params: Result<Query<RangeParams>, QueryRejection>,
) -> Result<Json<ActivityReport>, ApiError> {
    principal.require_role(ROLE)?;
    let (from, to) = query(params)?.range(Utc::now().date_naive())?;
    let model = AnalyticsProjection::live(state.pool.clone());
    let days = model.daily_activity(from, to).await?;
    Ok(Json(ActivityReport {
        from,
        to,
        days: days
            .into_iter()
            .map(|d| ActivityDay {
                day: d.day,
                posts: d.posts,
                posts_deleted: d.posts_deleted,
                likes: d.likes,
                unlikes: d.unlikes,
            })
            .collect(),
        as_of: as_of(&model).await?,
    }))
}

/// The live posts most users like now.
#[utoipa::path(get, path = "/v1/analytics/top-posts", tag = "analytics", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1–100, default 10")),
    responses((status = 200, body = TopPostsReport), (status = 400, body = crate::error::ErrorBody, description = "invalid_filter"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody, description = "not an analyst or admin")))]
pub async fn top_posts(
    State(state): State<AppState>,
    principal: Principal,
    params: Result<Query<TopParams>, QueryRejection>,
) -> Result<Json<TopPostsReport>, ApiError> {
    principal.require_role(ROLE)?;
    let limit = query(params)?.limit()?;
    let model = AnalyticsProjection::live(state.pool.clone());
    let posts = model.top_posts(limit).await?;
    Ok(Json(TopPostsReport {
        items: posts
            .into_iter()
            .map(|p: analytics::TopPost| TopPostView {
                post_id: p.post_id,
                author_id: p.author_id,
                title: p.title,
                published_on: p.day,
                like_count: p.like_count,
            })
            .collect(),
        as_of: as_of(&model).await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(raw: &str) -> NaiveDate {
        NaiveDate::parse_from_str(raw, "%Y-%m-%d").unwrap_or_default()
    }

    fn range(from: Option<&str>, to: Option<&str>) -> Result<(NaiveDate, NaiveDate), String> {
        RangeParams {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
        }
        .range(day("2026-12-31"))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_range_defaults_to_the_last_thirty_days_and_covers_at_most_366() {
        assert_eq!(
            range(None, None),
            Ok((day("2026-12-02"), day("2026-12-31")))
        );
        assert_eq!(
            range(None, Some("2026-03-01")),
            Ok((day("2026-01-31"), day("2026-03-01")))
        );
        assert_eq!(
            range(Some("2025-12-31"), Some("2026-12-31")),
            Ok((day("2025-12-31"), day("2026-12-31"))),
            "366 days"
        );
        assert!(
            range(Some("2025-12-30"), Some("2026-12-31")).is_err(),
            "367 days"
        );
        assert!(range(Some("2026-12-02"), Some("2026-12-01")).is_err());
        assert_eq!(
            range(Some("2026-12-01"), Some("2026-12-01")),
            Ok((day("2026-12-01"), day("2026-12-01")))
        );
    }

    #[test]
    fn only_full_dates_are_accepted() {
        for bad in [
            "2026-1-05",
            "2026-02-30",
            "01/02/2026",
            "2026-12-01T00:00:00Z",
            "",
            "today",
        ] {
            assert!(range(Some(bad), None).is_err(), "{bad:?}");
            assert!(range(None, Some(bad)).is_err(), "{bad:?}");
        }
    }
}
