//! The SSE routes (API.md "Real time"): `GET /v1/stream` (the caller's own events) and
//! `GET /v1/posts/{post_id}/stream` (a post's comments and like counts).
//!
//! A connection first watches its channel on the [`Hub`], then sends what it must catch up
//! on — the stream entries after `Last-Event-ID`, or `reset` when they are gone; with no
//! `Last-Event-ID` on the user stream, the onboarding outcome if there is one — and then the
//! live events. Every event carries its stream id as `id:`; an event at or below the last
//! id sent is skipped, so the catch-up and the live fan-out never deliver one twice.
//! Heartbeats are comment lines. `X-Accel-Buffering: no` keeps proxies from buffering.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use projections::live::{post_channel, user_channel, LiveMessage};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::error::ApiError;
use crate::live::{Hub, HubEvent, Resume, StreamId};
use crate::routes::parse_id;
use crate::state::AppState;

/// Entries read from the stream at once on a catch-up; a full batch is followed by the next.
const CATCH_UP_LIMIT: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/stream", get(user_stream))
        .route("/v1/posts/{post_id}/stream", get(post_stream))
}

/// `?access_token=` for `EventSource`, which cannot set headers.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    access_token: Option<String>,
}

/// The caller's user id, from `Authorization: Bearer` or `?access_token=`; an erased
/// person's token is refused, as by every route.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query: &StreamQuery,
) -> Result<uuid::Uuid, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query.access_token.as_deref())
        .ok_or(ApiError::Unauthorized)?;
    let claims = state.jwt.verify(token.trim()).map_err(|error| {
        tracing::debug!(%error, "Stream token refused.");
        ApiError::Unauthorized
    })?;
    if store::keys::is_erased(&state.pool, claims.sub)
        .await
        .map_err(crate::error::domain_errors::store)?
    {
        return Err(ApiError::Unauthorized);
    }
    Ok(claims.sub)
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<StreamId>, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(StreamId::parse)
            .map(Some)
            .ok_or(ApiError::InvalidLastEventId),
    }
}

#[utoipa::path(get, path = "/v1/stream", tag = "real time",
    params(("access_token" = Option<String>, Query, description = "the access token, for EventSource"),
           ("Last-Event-ID" = Option<String>, Header, description = "resume after this event")),
    responses((status = 200, description = "text/event-stream: onboarding_completed, onboarding_failed, feed_item, message, conversation_read, presence, reset, account_erased (the last: the person was erased)"),
              (status = 401, body = crate::error::ErrorBody)))]
pub async fn user_stream(
    State(state): State<AppState>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, &query).await?;
    let last = last_event_id(&headers)?;
    let (online, claimed) = state.presence.connect(user).await;
    if let Err(error) = claimed {
        // The stream works without it; the next heartbeat claims the person.
        tracing::warn!(%error, %user, "Recording a presence failed.");
    }
    let channel = user_channel(user);
    let hub = state.hub.clone();
    let rx = hub.watch(&channel);
    let (caught_up, last) = match last {
        Some(after) => catch_up(&hub, &channel, after).await?,
        None => {
            // Live from the stream's end as of now (read after watching: whatever the hub
            // delivers at or below it was published before). A client that connects late
            // still learns how its onboarding ended: the outcome, if older, goes first.
            let last = hub.last_id(&channel).await.map_err(unavailable)?;
            let outcome = hub.outcome(&channel).await.map_err(unavailable)?;
            let backlog = outcome
                .filter(|m| StreamId::parse(&m.id).is_some_and(|id| id <= last))
                .map(|m| Pending {
                    message: m,
                    forced: true,
                });
            (CaughtUp::all(backlog.into_iter().collect()), last)
        }
    };
    Ok(respond(hub, channel, rx, caught_up, last, Some(online)))
}

#[utoipa::path(get, path = "/v1/posts/{post_id}/stream", tag = "real time",
    params(("post_id" = String, Path), ("access_token" = Option<String>, Query),
           ("Last-Event-ID" = Option<String>, Header)),
    responses((status = 200, description = "text/event-stream: comment_added, likes, reset"),
              (status = 401, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn post_stream(
    State(state): State<AppState>,
    Path(post_id): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers, &query).await?;
    let post = parse_id(&post_id, "post")?;
    let last = last_event_id(&headers)?;
    if state.read.post(post).await?.is_none() {
        return Err(ApiError::NotFound("post"));
    }
    let channel = post_channel(post);
    let hub = state.hub.clone();
    let rx = hub.watch(&channel);
    let (caught_up, last) = match last {
        Some(after) => catch_up(&hub, &channel, after).await?,
        None => (
            CaughtUp::all(VecDeque::new()),
            hub.last_id(&channel).await.map_err(unavailable)?,
        ),
    };
    Ok(respond(hub, channel, rx, caught_up, last, None))
}

fn unavailable(error: redis::RedisError) -> ApiError {
    ApiError::Unavailable(format!("redis: {error}"))
}

/// The first entries after `after`, or a `reset` when some are gone.
async fn catch_up(
    hub: &Hub,
    channel: &str,
    after: StreamId,
) -> Result<(CaughtUp, StreamId), ApiError> {
    let resumed = hub
        .resume(channel, after, CATCH_UP_LIMIT)
        .await
        .map_err(unavailable)?;
    Ok((pending(resumed), after))
}

/// Events to send before the live ones.
struct CaughtUp {
    backlog: VecDeque<Pending>,
    /// The stream may hold more after the backlog: read on when it is sent.
    more: bool,
}

impl CaughtUp {
    fn all(backlog: VecDeque<Pending>) -> Self {
        Self {
            backlog,
            more: false,
        }
    }
}

/// A resume's entries, or the `reset` that replaces them, as pending events.
fn pending(resumed: Resume) -> CaughtUp {
    match resumed {
        Resume::Entries(entries) => CaughtUp {
            more: entries.len() >= CATCH_UP_LIMIT,
            backlog: entries
                .into_iter()
                .map(|message| Pending {
                    message,
                    forced: false,
                })
                .collect(),
        },
        Resume::Gap(last) => {
            metrics::counter!("sse_resets_total").increment(1);
            // Carries the stream's last id, so the client's next resume starts there.
            let reset = LiveMessage {
                id: last.to_string(),
                event: "reset".to_owned(),
                data: "{}".to_owned(),
            };
            CaughtUp::all(VecDeque::from([Pending {
                message: reset,
                forced: true,
            }]))
        }
    }
}

/// An event waiting to be sent. A forced one (a `reset`, a late onboarding outcome) is sent
/// even though its id is not above the last id sent.
struct Pending {
    message: LiveMessage,
    forced: bool,
}

/// One connection's state between events.
struct Connection {
    hub: Hub,
    channel: String,
    rx: tokio::sync::broadcast::Receiver<HubEvent>,
    backlog: VecDeque<Pending>,
    /// The stream holds entries after the backlog that were not read yet.
    more: bool,
    last: StreamId,
    /// The person was erased: `account_erased` was sent, the connection ends.
    ended: bool,
    _gauge: ConnectionGauge,
    /// A user stream keeps its person online while it is open.
    _online: Option<real_time::presence::Online>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The receiver is dropped after this body; unwatch sees it still counted unless
        // replaced first.
        let (_, rx) = tokio::sync::broadcast::channel(1);
        drop(std::mem::replace(&mut self.rx, rx));
        self.hub.unwatch(&self.channel);
    }
}

/// Registers this module's series at zero, so that an instance without a connection yet
/// exports `0` (the dashboard and the alerts see a value, not an absent series).
pub fn register_metrics() {
    metrics::gauge!("sse_connections").increment(0.0);
    for counter in [
        "sse_connections_opened_total",
        "sse_events_sent_total",
        "sse_resets_total",
        "sse_slow_clients_dropped_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
}

/// `sse_connections` while a connection is open.
struct ConnectionGauge;

impl ConnectionGauge {
    fn open() -> Self {
        metrics::gauge!("sse_connections").increment(1.0);
        metrics::counter!("sse_connections_opened_total").increment(1);
        ConnectionGauge
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!("sse_connections").decrement(1.0);
    }
}

fn respond(
    hub: Hub,
    channel: String,
    rx: tokio::sync::broadcast::Receiver<HubEvent>,
    caught_up: CaughtUp,
    last: StreamId,
    online: Option<real_time::presence::Online>,
) -> Response {
    let heartbeat = hub.settings().heartbeat;
    let connection = Connection {
        hub,
        channel,
        rx,
        backlog: caught_up.backlog,
        more: caught_up.more,
        last,
        ended: false,
        _gauge: ConnectionGauge::open(),
        _online: online,
    };
    let mut response = Sse::new(events(connection))
        .keep_alive(KeepAlive::new().interval(heartbeat))
        .into_response();
    let headers = response.headers_mut();
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn events(connection: Connection) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    futures::stream::unfold(connection, |mut c| async move {
        next(&mut c).await.map(|event| (Ok(event), c))
    })
}

/// The next event to send; `None` ends the connection.
async fn next(c: &mut Connection) -> Option<Event> {
    loop {
        if c.ended {
            return None;
        }
        if let Some(Pending { message, forced }) = c.backlog.pop_front() {
            let id = StreamId::parse(&message.id)?;
            if id <= c.last && !forced {
                continue;
            }
            c.last = c.last.max(id);
            c.ended = message.event == projections::live::ACCOUNT_ERASED;
            metrics::counter!("sse_events_sent_total").increment(1);
            return Some(
                Event::default()
                    .id(message.id)
                    .event(message.event)
                    .data(message.data),
            );
        }
        if c.more && !resync(c).await {
            return None;
        }
        if !c.backlog.is_empty() {
            continue;
        }
        let received = tokio::select! {
            received = c.rx.recv() => received,
            () = c.hub.closed() => return None,
        };
        match received {
            Ok(HubEvent::Message(message)) => c.backlog.push_back(Pending {
                message: (*message).clone(),
                forced: false,
            }),
            Ok(HubEvent::Resync) => {
                if !resync(c).await {
                    return None;
                }
            }
            Err(RecvError::Lagged(skipped)) => {
                // Too slow: close; the client resumes from the stream with Last-Event-ID.
                metrics::counter!("sse_slow_clients_dropped_total").increment(1);
                tracing::debug!(skipped, "SSE client too slow; closing its connection.");
                return None;
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

/// Reads the stream after the last id sent into the backlog; false when Redis kept failing
/// (the connection closes and the client resumes with `Last-Event-ID`). Retries briefly:
/// right after Redis came back, the shared connection's first command may still fail
/// while it reconnects.
async fn resync(c: &mut Connection) -> bool {
    let mut attempt = 0;
    loop {
        match c.hub.resume(&c.channel, c.last, CATCH_UP_LIMIT).await {
            Ok(resumed) => {
                let caught_up = pending(resumed);
                c.backlog.extend(caught_up.backlog);
                c.more = caught_up.more;
                return true;
            }
            Err(error) if attempt < 4 => {
                attempt += 1;
                tracing::debug!(%error, attempt, "SSE catch-up failed; retrying.");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(error) => {
                tracing::warn!(%error, "SSE catch-up failed; closing the connection.");
                return false;
            }
        }
    }
}
