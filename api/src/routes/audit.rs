//! `/v1/audit/…` for role `auditor` (or `admin`): the immutable log, filtered and paged with
//! a cursor that never passes an event that can still commit, one stream's history, a
//! streamed NDJSON export and verification (the hash chain and the seals), all read straight
//! from the event store (`store::audit`).

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use store::{AuditCursor, AuditFilter, AuditLog, PgEventStore};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::Principal;
use crate::state::AppState;

/// The role these routes need (`admin` also passes).
pub const ROLE: &str = "auditor";

/// Positions one `GET /v1/audit/verify` checks at most, so it ends well within the 30 s
/// request timeout; a longer range is answered for its first part with
/// `next_from_position`, where the client continues.
pub const MAX_VERIFY_RANGE: i64 = 100_000;

/// Longest text filter value (stream ids are at most 200 characters).
const MAX_FILTER_LEN: usize = 200;

/// The export's `next_cursor`: known before the first line, since the export lists what was
/// settled when it started.
pub const NEXT_CURSOR_HEADER: HeaderName = HeaderName::from_static("x-next-cursor");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/events", get(list_events))
        .route(
            "/v1/audit/streams/{stream_type}/{stream_id}",
            get(stream_history),
        )
        .route("/v1/audit/verify", get(verify))
        .route("/v1/audit/export", get(export))
}

/// The query string of the listing and the export, as strings so bad values get our own
/// 400 `invalid_filter`; an unknown parameter is refused too (a typo would otherwise
/// silently widen the result).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    stream_type: Option<String>,
    stream_id: Option<String>,
    event_type: Option<String>,
    correlation_id: Option<String>,
    actor: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after_position: Option<String>,
    limit: Option<String>,
}

/// A 400 `invalid_filter` (the analytics routes answer bad parameters with it too).
pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidFilter(message.into())
}

/// The query string, or a 400 `invalid_filter`: serde's message names the parameter and
/// never server internals.
pub(crate) fn query<T>(params: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    params
        .map(|Query(params)| params)
        .map_err(|rejection| invalid(rejection.body_text()))
}

impl AuditParams {
    fn filter(&self) -> Result<AuditFilter, ApiError> {
        let text = |name: &str, value: &Option<String>| match value {
            // PostgreSQL text cannot hold NUL: refused here rather than failing the query.
            Some(v) if v.is_empty() || v.chars().count() > MAX_FILTER_LEN || v.contains('\0') => {
                Err(invalid(format!(
                    "{name} must be 1 to {MAX_FILTER_LEN} characters, without NUL"
                )))
            }
            other => Ok(other.clone()),
        };
        let time = |name: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|raw| {
                    DateTime::parse_from_rfc3339(raw)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|_| {
                            invalid(format!(
                                "{name} must be an RFC 3339 time like 2026-11-23T10:00:00Z \
                                 (a + in an offset must be sent as %2B)"
                            ))
                        })
                })
                .transpose()
        };
        let filter = AuditFilter {
            stream_type: text("stream_type", &self.stream_type)?,
            stream_id: text("stream_id", &self.stream_id)?,
            event_type: text("event_type", &self.event_type)?,
            correlation_id: text("correlation_id", &self.correlation_id)?,
            actor: text("actor", &self.actor)?,
            from: time("from", &self.from)?,
            to: time("to", &self.to)?,
        };
        if filter.stream_id.is_some() && filter.stream_type.is_none() {
            return Err(invalid("stream_id needs stream_type"));
        }
        if let (Some(from), Some(to)) = (filter.from, filter.to) {
            if from >= to {
                return Err(invalid("from must be before to"));
            }
        }
        Ok(filter)
    }

    /// A `next_cursor` token, or a plain position `N`: only events with `global_position > N`.
    fn after_position(&self) -> Result<AuditCursor, ApiError> {
        match &self.after_position {
            None => Ok(AuditCursor::START),
            Some(raw) => raw
                .parse()
                .map_err(|e| invalid(format!("after_position: {e}"))),
        }
    }

    fn limit(&self) -> Result<u32, ApiError> {
        match &self.limit {
            None => Ok(store::audit::DEFAULT_PAGE),
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=store::audit::MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    invalid(format!(
                        "limit must be an integer from 1 to {}",
                        store::audit::MAX_PAGE
                    ))
                }),
        }
    }
}

/// An event as stored, for auditors.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventView {
    pub global_position: i64,
    pub event_id: Uuid,
    pub stream_type: String,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// `correlation_id`, `causation_id`, `actor`, `request_id`.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
    /// sha256(previous event's hash in its stream ‖ canonical form of this event), hex.
    pub hash: String,
    /// Fields of `payload` shown as `"[redacted]"`: secrets an old version of the event held
    /// (the password hash of `user.registered` v1 and v2). The hash covers the stored value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<&'static str>,
    /// Personal fields stored sealed with their person's data key, shown opened — or as
    /// `"[erased]"` once the person is erased. The hash covers the sealed form.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub opened: Vec<&'static str>,
}

impl From<store::AuditEvent> for AuditEventView {
    fn from(e: store::AuditEvent) -> Self {
        Self {
            global_position: e.global_position,
            event_id: e.event_id,
            stream_type: e.stream_type,
            stream_id: e.stream_id,
            stream_version: e.stream_version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            payload: e.payload,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
            hash: e.hash,
            redacted: e.redacted,
            opened: e.opened,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventPage {
    pub items: Vec<AuditEventView>,
    /// Opaque; pass as `after_position` for the next page. Never null: when the listing has
    /// caught up it stands at the watermark, and polling with it later shows each event
    /// settled since exactly once. It keeps the floor of a plain-integer `after_position`.
    pub next_cursor: String,
    /// More events follow at once; false: caught up, poll later with `next_cursor`.
    pub has_more: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamHistory {
    pub items: Vec<AuditEventView>,
}

/// Events of the log matching every given filter, in the log's read order (transaction id,
/// then position: a stream's events in version order). Events of write transactions still
/// running (or younger than the oldest running one) appear once they are settled, so a
/// cursor never passes an event that can still commit: a client that pages until
/// `has_more` is false and then keeps polling with `next_cursor` sees every matching event
/// exactly once.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", security(("bearer" = [])),
    params(("stream_type" = Option<String>, Query, min_length = 1, max_length = 200, pattern = r"^[^\x00]+$"), ("stream_id" = Option<String>, Query, min_length = 1, max_length = 200, pattern = r"^[^\x00]+$", description = "needs stream_type"),
           ("event_type" = Option<String>, Query, min_length = 1, max_length = 200, pattern = r"^[^\x00]+$"), ("correlation_id" = Option<String>, Query, min_length = 1, max_length = 200, pattern = r"^[^\x00]+$", description = "metadata.correlation_id: the x-request-id of the command"),
           ("actor" = Option<String>, Query, min_length = 1, max_length = 200, pattern = r"^[^\x00]+$", description = "metadata.actor, e.g. user:<uuid>"),
           ("from" = Option<String>, Query, format = DateTime, description = "recorded_at ≥ from, RFC 3339"),
           ("to" = Option<String>, Query, format = DateTime, description = "recorded_at < to, RFC 3339"),
           ("after_position" = Option<String>, Query, pattern = r"^([0-9]{1,18}|v1\.[0-9]{1,19}\.[0-9]{1,18}\.[0-9]{1,18})$", description = "`next_cursor` of the previous page, or a non-negative integer N: only events with global_position > N (on every later page too)"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1–1000, default 100")),
    responses((status = 200, body = AuditEventPage), (status = 400, body = crate::error::ErrorBody, description = "invalid_filter"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn list_events(
    State(state): State<AppState>,
    principal: Principal,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditEventPage>, ApiError> {
    principal.require_role(ROLE)?;
    let params = query(params)?;
    let filter = params.filter()?;
    let page = AuditLog::new(state.pool.clone())
        .list(&filter, params.after_position()?, params.limit()?)
        .await?;
    Ok(Json(AuditEventPage {
        items: page.items.into_iter().map(AuditEventView::from).collect(),
        next_cursor: page.next_cursor.to_string(),
        has_more: page.has_more,
    }))
}

/// The whole history of one stream, in version order.
#[utoipa::path(get, path = "/v1/audit/streams/{stream_type}/{stream_id}", tag = "audit", security(("bearer" = [])),
    params(("stream_type" = String, Path), ("stream_id" = String, Path)),
    responses((status = 200, body = StreamHistory), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn stream_history(
    State(state): State<AppState>,
    principal: Principal,
    Path((stream_type, stream_id)): Path<(String, String)>,
) -> Result<Json<StreamHistory>, ApiError> {
    principal.require_role(ROLE)?;
    let events = AuditLog::new(state.pool.clone())
        .stream(&stream_type, &stream_id)
        .await?;
    if events.is_empty() {
        return Err(ApiError::NotFound("stream"));
    }
    Ok(Json(StreamHistory {
        items: events.into_iter().map(AuditEventView::from).collect(),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyParams {
    from_position: Option<String>,
    to_position: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyReport {
    pub ok: bool,
    /// Events whose hash was recomputed.
    pub checked: u64,
    /// Seals (ending in the range) whose chain and stream heads were checked.
    pub seals_checked: u64,
    /// The first altered event, the event after a missing one, or the position of a sealed
    /// stream head that is missing or altered.
    pub first_bad_position: Option<i64>,
    pub reason: Option<String>,
    /// The range checked (at most 100 000 positions per request).
    pub from_position: i64,
    pub to_position: i64,
    /// Where to continue when the range asked for was longer than one request checks.
    pub next_from_position: Option<i64>,
}

fn position(name: &str, raw: Option<&String>) -> Result<Option<i64>, ApiError> {
    raw.map(|raw| {
        raw.parse::<i64>()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| invalid(format!("{name} must be a non-negative integer")))
    })
    .transpose()
}

/// Recomputes the hash chain of the range and checks the seals ending in it. One request
/// checks at most 100 000 positions; continue from `next_from_position`.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    params(("from_position" = Option<i64>, Query, minimum = 0, description = "default 1"),
           ("to_position" = Option<i64>, Query, minimum = 0, description = "default and at most from_position + 99 999")),
    responses((status = 200, body = VerifyReport, description = "ok is false when the log was altered"),
              (status = 400, body = crate::error::ErrorBody, description = "invalid_filter"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    principal: Principal,
    params: Result<Query<VerifyParams>, QueryRejection>,
) -> Result<Json<VerifyReport>, ApiError> {
    principal.require_role(ROLE)?;
    let params = query(params)?;
    let from = position("from_position", params.from_position.as_ref())?
        .unwrap_or(1)
        .max(1);
    let last_allowed = from.saturating_add(MAX_VERIFY_RANGE - 1);
    let asked_to = position("to_position", params.to_position.as_ref())?.unwrap_or(i64::MAX);
    if asked_to < from {
        return Err(invalid("to_position must not be before from_position"));
    }
    let to = asked_to.min(last_allowed);
    let store = PgEventStore::new(state.pool.clone());
    let verification = store.verify_log(from, to).await?;
    let more = verification.ok && to < asked_to && to < store.log_end().await?;
    Ok(Json(VerifyReport {
        ok: verification.ok,
        checked: verification.checked,
        seals_checked: verification.seals_checked,
        first_bad_position: verification.first_bad_position,
        reason: verification.reason,
        from_position: from,
        to_position: to,
        next_from_position: more.then(|| to + 1),
    }))
}

/// Every event matching the filters (as `GET /v1/audit/events`, without `limit`) that was
/// settled when the export started, as NDJSON, one event per line, streamed page by page.
/// The `x-next-cursor` header is where the listing or a later export continues.
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", security(("bearer" = [])),
    params(("stream_type" = Option<String>, Query, min_length = 1, max_length = 200, pattern = r"^[^\x00]+$"), ("stream_id" = Option<String>, Query, min_length = 1, max_length = 200, pattern = r"^[^\x00]+$"),
           ("event_type" = Option<String>, Query, min_length = 1, max_length = 200, pattern = r"^[^\x00]+$"), ("correlation_id" = Option<String>, Query, min_length = 1, max_length = 200, pattern = r"^[^\x00]+$"),
           ("actor" = Option<String>, Query, min_length = 1, max_length = 200, pattern = r"^[^\x00]+$"), ("from" = Option<String>, Query, format = DateTime), ("to" = Option<String>, Query, format = DateTime),
           ("after_position" = Option<String>, Query, pattern = r"^([0-9]{1,18}|v1\.[0-9]{1,19}\.[0-9]{1,18}\.[0-9]{1,18})$", description = "a `next_cursor`, or a non-negative integer N: only events with global_position > N")),
    responses((status = 200, content_type = "application/x-ndjson", body = AuditEventView, description = "one event per line",
               headers(("x-next-cursor" = String, description = "`after_position` that continues after this export"))),
              (status = 400, body = crate::error::ErrorBody, description = "invalid_filter"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn export(
    State(state): State<AppState>,
    principal: Principal,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    principal.require_role(ROLE)?;
    let params = query(params)?;
    if params.limit.is_some() {
        return Err(invalid(
            "the export has no limit: narrow it with the filters or after_position",
        ));
    }
    let filter = params.filter()?;
    let after = params.after_position()?;
    let log = AuditLog::new(state.pool.clone());
    // Pinned, so the export is a fixed set of events, ends under any write load, and its
    // next cursor is known before the body.
    let watermark = log.watermark().await?;
    let next_cursor = after.caught_up(watermark).to_string();
    // One page in memory at a time; the state is the next page's cursor (None: done).
    let pages = futures::stream::try_unfold(Some(after), move |cursor| {
        let log = log.clone();
        let filter = filter.clone();
        async move {
            let Some(after) = cursor else {
                return Ok(None);
            };
            let page = log
                .list_below(&filter, after, store::audit::MAX_PAGE, watermark)
                .await
                .map_err(|error| {
                    // The status is sent already: the client sees a cut-off body.
                    tracing::error!(%error, "Audit export failed mid-stream.");
                    std::io::Error::other("audit export failed")
                })?;
            let mut lines = Vec::with_capacity(page.items.len() * 512);
            for event in page.items {
                serde_json::to_writer(&mut lines, &AuditEventView::from(event))
                    .map_err(std::io::Error::other)?;
                lines.push(b'\n');
            }
            let next = page.has_more.then_some(page.next_cursor);
            Ok::<_, std::io::Error>(Some((Bytes::from(lines), next)))
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (NEXT_CURSOR_HEADER, next_cursor),
        ],
        Body::from_stream(pages),
    )
        .into_response())
}
