//! The SSE gateway's fan-out (DESIGN §7): every API instance subscribes to the live
//! channels on Redis Pub/Sub, so an event reaches the connection whichever instance holds
//! it; the capped Redis Stream behind each channel serves `Last-Event-ID` resumes.
//!
//! One [`Hub`] per process holds one Pub/Sub connection (`PSUBSCRIBE <prefix>live:{*}`) and
//! a `tokio::sync::broadcast` sender per channel that has connections here; a message for a
//! channel nobody here watches is dropped at once. A broadcast never waits for a receiver:
//! a connection that falls more than [`HubSettings::buffer`] events behind is closed (its
//! client reconnects with `Last-Event-ID` and resumes from the stream), so a slow client
//! never delays the others.
//!
//! When the Pub/Sub connection drops, the hub reconnects with backoff and then tells every
//! connection to re-read its channel's stream after the last id it sent: messages published
//! while the hub was away are not lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use projections::live::{self, LiveMessage};
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;

/// A Redis Stream id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64, pub u64);

impl StreamId {
    /// Parses `<ms>-<seq>` (or `<ms>`).
    pub fn parse(text: &str) -> Option<StreamId> {
        let text = text.trim();
        match text.split_once('-') {
            Some((ms, seq)) => Some(StreamId(ms.parse().ok()?, seq.parse().ok()?)),
            None => Some(StreamId(text.parse().ok()?, 0)),
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// What a connection receives from the hub.
#[derive(Debug, Clone)]
pub enum HubEvent {
    Message(Arc<LiveMessage>),
    /// The hub was disconnected from Redis: re-read the stream after the last id sent.
    Resync,
}

/// Tuning of the hub.
#[derive(Debug, Clone, Copy)]
pub struct HubSettings {
    /// Events a connection may fall behind before it is closed.
    pub buffer: usize,
    /// Heartbeat interval of SSE connections (a comment line).
    pub heartbeat: Duration,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            buffer: 256,
            heartbeat: Duration::from_secs(15),
        }
    }
}

/// What a resume found in a channel's stream.
#[derive(Debug)]
pub enum Resume {
    /// The entries after the given id (possibly none).
    Entries(Vec<LiveMessage>),
    /// Entries after the given id were trimmed away (or the stream expired): the client must
    /// reload. Carries the stream's last id to continue from.
    Gap(StreamId),
}

/// The process's Pub/Sub fan-out; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    settings: HubSettings,
    redis: ConnectionManager,
    channels: Mutex<HashMap<String, broadcast::Sender<HubEvent>>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Cancelled when the server shuts down: every SSE connection ends, so the graceful
    /// shutdown does not wait for them forever.
    closing: tokio_util::sync::CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock() {
            if let Some(task) = task.take() {
                task.abort();
            }
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("prefix", &self.inner.prefix)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// KEYS: the stream. ARGV: the id to resume after, max entries. Returns
/// `{exists, max_deleted_id, first_id, last_id, entries…}`.
const RESUME: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local deleted, first, last = '0-0', '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
  if info[i] == 'recorded-first-entry-id' then first = info[i + 1] end
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
return {1, deleted, first, last, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
";

/// KEYS: the stream. Returns its last generated id, or nil when it does not exist.
const LAST_ID: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return info[i + 1] end
end
return false
";

impl Hub {
    /// Starts the hub's subscriber task on `client` (Pub/Sub needs its own connection);
    /// `redis` serves stream reads.
    pub fn start(
        client: redis::Client,
        redis: ConnectionManager,
        prefix: &str,
        settings: HubSettings,
    ) -> Hub {
        let inner = Arc::new(Inner {
            prefix: prefix.to_owned(),
            settings,
            redis,
            channels: Mutex::new(HashMap::new()),
            task: Mutex::new(None),
            closing: tokio_util::sync::CancellationToken::new(),
        });
        let task = tokio::spawn(subscribe(client, Arc::downgrade(&inner)));
        if let Ok(mut slot) = inner.task.lock() {
            *slot = Some(task.abort_handle());
        }
        Hub { inner }
    }

    pub fn settings(&self) -> HubSettings {
        self.inner.settings
    }

    /// Ends every SSE connection of this process (graceful shutdown).
    pub fn close(&self) {
        self.inner.closing.cancel();
    }

    /// Completes when [`Hub::close`] was called.
    pub async fn closed(&self) {
        self.inner.closing.cancelled().await;
    }

    /// Receives `channel`'s events from now on (until the receiver is dropped).
    pub fn watch(&self, channel: &str) -> broadcast::Receiver<HubEvent> {
        let mut channels = lock(&self.inner.channels);
        // Drop senders whose connections are all gone, so the map stays as small as the
        // set of channels watched here.
        if channels.len() > 64 && channels.len().is_power_of_two() {
            channels.retain(|_, sender| sender.receiver_count() > 0);
        }
        channels
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(self.inner.settings.buffer).0)
            .subscribe()
    }

    /// Forgets `channel` when its last connection here is gone.
    pub fn unwatch(&self, channel: &str) {
        let mut channels = lock(&self.inner.channels);
        if channels
            .get(channel)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            channels.remove(channel);
        }
    }

    /// The entries of `channel`'s stream after `after` (at most `limit`), or a gap.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn resume(
        &self,
        channel: &str,
        after: StreamId,
        limit: usize,
    ) -> redis::RedisResult<Resume> {
        let key = live::stream_key(&self.inner.prefix, channel);
        let reply: Vec<redis::Value> = redis::Script::new(RESUME)
            .key(&key)
            .arg(after.to_string())
            .arg(limit)
            .invoke_async(&mut self.inner.redis.clone())
            .await?;
        let mut reply = reply.into_iter();
        let exists: i64 = redis::from_redis_value(reply.next().unwrap_or(redis::Value::Int(0)))?;
        if exists == 0 {
            // Nothing was ever kept, or all of it expired: only a client that never saw an
            // event can be sure it missed nothing.
            return Ok(if after == StreamId::default() {
                Resume::Entries(Vec::new())
            } else {
                Resume::Gap(StreamId::default())
            });
        }
        let mut id = || -> redis::RedisResult<StreamId> {
            let id: String = redis::from_redis_value(reply.next().unwrap_or(redis::Value::Nil))?;
            Ok(StreamId::parse(&id).unwrap_or_default())
        };
        let (deleted, first, last) = (id()?, id()?, id()?);
        // Trimming deletes from the front and records the newest id it deleted: anything
        // deleted after `after` was missed. An `after` older than the stream's first entry
        // that trimming does not account for belongs to an earlier, expired stream; one newer
        // than the last entry was never ours.
        let trimmed_unseen = deleted > after;
        let earlier_stream = after != StreamId::default() && after < first && deleted < after;
        if trimmed_unseen || earlier_stream || after > last {
            return Ok(Resume::Gap(last));
        }
        let entries: Vec<(String, HashMap<String, String>)> =
            redis::from_redis_value(reply.next().unwrap_or(redis::Value::Array(Vec::new())))?;
        Ok(Resume::Entries(
            entries
                .into_iter()
                .map(|(id, mut fields)| LiveMessage {
                    id,
                    event: fields.remove("event").unwrap_or_default(),
                    data: fields.remove("data").unwrap_or_default(),
                })
                .collect(),
        ))
    }

    /// The id of the newest entry ever added to `channel`'s stream (`0-0` for none).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn last_id(&self, channel: &str) -> redis::RedisResult<StreamId> {
        let key = live::stream_key(&self.inner.prefix, channel);
        let last: Option<String> = redis::Script::new(LAST_ID)
            .key(&key)
            .invoke_async(&mut self.inner.redis.clone())
            .await?;
        Ok(last.and_then(|id| StreamId::parse(&id)).unwrap_or_default())
    }

    /// The entry holding `user_channel`'s onboarding outcome, if there is one.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn outcome(&self, user_channel: &str) -> redis::RedisResult<Option<LiveMessage>> {
        let mut redis = self.inner.redis.clone();
        let id: Option<String> = redis::cmd("GET")
            .arg(live::outcome_key(&self.inner.prefix, user_channel))
            .query_async(&mut redis)
            .await?;
        let Some(id) = id else {
            return Ok(None);
        };
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(live::stream_key(&self.inner.prefix, user_channel))
            .arg(&id)
            .arg(&id)
            .query_async(&mut redis)
            .await?;
        Ok(entries
            .into_iter()
            .next()
            .map(|(id, mut fields)| LiveMessage {
                id,
                event: fields.remove("event").unwrap_or_default(),
                data: fields.remove("data").unwrap_or_default(),
            }))
    }

    fn deliver(&self, channel: &str, message: LiveMessage) {
        let channels = lock(&self.inner.channels);
        if let Some(sender) = channels.get(channel) {
            // An error only means nobody watches any more.
            let _ = sender.send(HubEvent::Message(Arc::new(message)));
        }
    }

    fn resync_all(&self) {
        for sender in lock(&self.inner.channels).values() {
            let _ = sender.send(HubEvent::Resync);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map stays consistent even if a holder panicked: every operation is one call.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The subscriber loop: (re)connects, subscribes, forwards; exits when the hub is gone.
async fn subscribe(client: redis::Client, hub: Weak<Inner>) {
    let mut failures = 0u32;
    loop {
        let Some(prefix) = hub.upgrade().map(|inner| inner.prefix.clone()) else {
            return;
        };
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(live::pattern(&prefix)).await?;
            redis::RedisResult::Ok(pubsub)
        }
        .await;
        let pubsub = match connected {
            Ok(pubsub) => pubsub,
            Err(error) => {
                failures += 1;
                let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tracing::warn!(%error, retry_in_ms = backoff.as_millis(), "Live hub cannot subscribe to Redis; retrying.");
                metrics::gauge!("sse_hub_connected").set(0.0);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        metrics::gauge!("sse_hub_connected").set(1.0);
        if failures > 0 {
            tracing::info!("Live hub subscribed again.");
        }
        // Whatever was published while the hub was not subscribed is in the streams.
        match hub.upgrade() {
            Some(inner) => Hub { inner }.resync_all(),
            None => return,
        }
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let Some(inner) = hub.upgrade() else {
                return;
            };
            let hub = Hub { inner };
            let Some(channel) = live::channel_of(&prefix, message.get_channel_name()) else {
                continue;
            };
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            match serde_json::from_str::<LiveMessage>(&payload) {
                Ok(live) => hub.deliver(channel, live),
                Err(error) => tracing::warn!(%error, "Live hub received a message it cannot read."),
            }
        }
        metrics::gauge!("sse_hub_connected").set(0.0);
        tracing::warn!("Live hub lost its Redis Pub/Sub connection; reconnecting.");
        // Counts as the first failure: the next connect logs its success.
        failures = 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_as_redis_orders_them() {
        let parse = |s| StreamId::parse(s).unwrap_or_default();
        assert!(parse("1700000000000-1") > parse("1700000000000-0"));
        assert!(parse("1700000000001-0") > parse("1700000000000-9"));
        assert!(parse("999-0") < parse("1000-0"));
        assert_eq!(parse("42"), StreamId(42, 0));
        assert_eq!(StreamId::parse("x-1"), None);
        assert_eq!(parse("5-6").to_string(), "5-6");
    }
}
