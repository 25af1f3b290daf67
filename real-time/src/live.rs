//! Live updates for SSE clients (DESIGN §7): what projections publish, and where.
//!
//! A *channel* is `user:<id>` (a user's own stream) or `post:<id>` (viewers of a post). Each
//! channel has a capped Redis Stream (the resume buffer behind `Last-Event-ID`) and a Redis
//! Pub/Sub channel of the same name (the fan-out to every API instance). One Lua script adds
//! the entry and publishes it, so an instance never sees a message that is not in the stream,
//! and messages of one channel are published in stream-id order.
//!
//! Keys (`<prefix>` is the deployment's Redis prefix; the hash tag keeps a channel's keys in
//! one Redis Cluster slot):
//! - `<prefix>live:{<channel>}`: the stream (the newest `retention_entries`, expires
//!   `retention` after its last entry) and the Pub/Sub channel;
//! - `<prefix>live:{<channel>}:sent:<event id>`: "this event was pushed" (delivery from the
//!   log is at least once; a redelivered event must not be pushed twice);
//! - `<prefix>live:{<channel>}:outcome`: the stream id of the user's onboarding outcome, so
//!   a client that connects late still gets it;
//! - `<prefix>live:likes`: like counts waiting for the next aggregated `likes` push.
//!
//! Pub/Sub messages are JSON [`LiveMessage`]s. Publishing is a side effect: replays build
//! their projections without a [`LivePublisher`].

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use crate::{unavailable, undeliverable, LiveResult};

/// The event a person's own stream ends with when they are erased.
pub const ACCOUNT_ERASED: &str = "account_erased";

/// `user:<id>`.
pub fn user_channel(user: Uuid) -> String {
    format!("user:{user}")
}

/// `post:<id>`.
pub fn post_channel(post: Uuid) -> String {
    format!("post:{post}")
}

/// What travels over Pub/Sub: one stream entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveMessage {
    /// The stream id (`<ms>-<seq>`): the SSE `id:`.
    pub id: String,
    /// The SSE event name (`comment_added`, `likes`, …).
    pub event: String,
    /// The SSE data, JSON text.
    pub data: String,
}

/// Retention and pacing of live updates.
#[derive(Debug, Clone, Copy)]
pub struct LiveSettings {
    /// Entries kept per channel for `Last-Event-ID` resume (`LIVE_RETENTION_ENTRIES`).
    pub retention_entries: u32,
    /// A channel's stream expires this long after its last entry.
    pub retention: Duration,
    /// Like counts of a post are pushed at most this often (`LIKES_PUSH_INTERVAL_MS`).
    pub likes_interval: Duration,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            retention_entries: 1000,
            retention: Duration::from_secs(24 * 3600),
            likes_interval: Duration::from_secs(2),
        }
    }
}

/// Lua: appends one entry to a channel's stream, keeps the newest `cap` entries and
/// publishes it. Old entries go by XDEL, not XADD MAXLEN: only XDEL advances the stream's
/// `max-deleted-entry-id`, which is how a resume knows it asked for something trimmed.
const APPEND: &str = r"
local function append(key, event, data, cap, ttl)
  local id = redis.call('XADD', key, '*', 'event', event, 'data', data)
  local excess = redis.call('XLEN', key) - tonumber(cap)
  if excess > 0 then
    for _, entry in ipairs(redis.call('XRANGE', key, '-', '+', 'COUNT', excess)) do
      redis.call('XDEL', key, entry[1])
    end
  end
  redis.call('EXPIRE', key, ttl)
  redis.call('PUBLISH', key, cjson.encode({id = id, event = event, data = data}))
  return id
end
";

/// KEYS: stream, sent marker (or the stream again: no de-duplication), outcome marker (or
/// the stream again: none). ARGV: event, data, maxlen, ttl seconds, dedupe?, outcome?.
/// Returns the new entry's id, or false when the event was pushed before.
const PUBLISH: &str = r"
if ARGV[5] == '1' and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[4]) then
  return false
end
local id = append(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if ARGV[6] == '1' then redis.call('SET', KEYS[3], id, 'EX', ARGV[4]) end
return id
";

/// KEYS: streams. ARGV: event, data, maxlen, ttl seconds. [`PUBLISH`] without guards, for
/// many channels at once (a post fanned out to its author's followers).
const PUBLISH_MANY: &str = r"
for i = 1, #KEYS do append(KEYS[i], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) end
return #KEYS
";

/// KEYS: streams. ARGV: text. Deletes every entry whose data contains the text (plain, not
/// a pattern); returns how many.
const RETRACT: &str = r"
local deleted = 0
for i = 1, #KEYS do
  for _, entry in ipairs(redis.call('XRANGE', KEYS[i], '-', '+')) do
    local fields = entry[2]
    for f = 1, #fields, 2 do
      if fields[f] == 'data' and string.find(fields[f + 1], ARGV[1], 1, true) then
        deleted = deleted + redis.call('XDEL', KEYS[i], entry[1])
      end
    end
  end
end
return deleted
";

/// Takes every pending like count at once: HGETALL then DEL.
const TAKE_LIKES: &str = r"
local pending = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return pending
";

/// The most stream keys [`LivePublisher::push_many_in_order`] sends in one round trip.
pub const KEYS_PER_ROUND_TRIP: usize = 5000;

/// Publishes live updates; cheap to clone.
#[derive(Clone)]
pub struct LivePublisher {
    redis: ConnectionManager,
    prefix: String,
    settings: LiveSettings,
    publish: Script,
    publish_many: Script,
    take_likes: Script,
    retract: Script,
}

impl std::fmt::Debug for LivePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePublisher")
            .field("prefix", &self.prefix)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// How one push is guarded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Push {
    /// Push at most once for this event id (the projection may apply an event twice).
    pub once_for: Option<Uuid>,
    /// Remember the entry as the user's onboarding outcome.
    pub outcome: bool,
}

impl LivePublisher {
    pub fn new(redis: ConnectionManager, prefix: &str, settings: LiveSettings) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            settings,
            publish: Script::new(&format!("{APPEND}{PUBLISH}")),
            publish_many: Script::new(&format!("{APPEND}{PUBLISH_MANY}")),
            take_likes: Script::new(TAKE_LIKES),
            retract: Script::new(RETRACT),
        }
    }

    pub fn settings(&self) -> LiveSettings {
        self.settings
    }

    /// Adds `event` with `data` to `channel`'s stream and publishes it; returns the entry's
    /// id, or `None` when `push.once_for` was pushed before.
    ///
    /// # Errors
    /// Redis unreachable (transient).
    pub async fn push(
        &self,
        channel: &str,
        event: &str,
        data: &impl Serialize,
        push: Push,
    ) -> LiveResult<Option<String>> {
        let stream = stream_key(&self.prefix, channel);
        let sent = match push.once_for {
            Some(id) => format!("{stream}:sent:{id}"),
            None => stream.clone(),
        };
        let outcome = if push.outcome {
            outcome_key(&self.prefix, channel)
        } else {
            stream.clone()
        };
        let span = telemetry::when_exporting(|| {
            tracing::info_span!("live push", otel.kind = "producer", channel, event)
        });
        let id: Option<String> = self
            .publish
            .key(&stream)
            .key(sent)
            .key(outcome)
            .arg(event)
            .arg(serde_json::to_string(data).map_err(undeliverable)?)
            .arg(self.settings.retention_entries)
            .arg(self.settings.retention.as_secs().max(1))
            .arg(if push.once_for.is_some() { "1" } else { "0" })
            .arg(if push.outcome { "1" } else { "0" })
            .invoke_async(&mut self.redis.clone())
            .instrument(span)
            .await
            .map_err(unavailable)?;
        if id.is_some() {
            metrics::counter!("live_published_total", "event" => event.to_owned()).increment(1);
        }
        Ok(id)
    }

    /// Pushes the same `event` to many channels, without de-duplication (a redelivered
    /// event pushes again; clients key such items by their id), 500 channels per script.
    ///
    /// # Errors
    /// Redis unreachable (transient).
    pub async fn push_many(
        &self,
        channels: impl IntoIterator<Item = String>,
        event: &str,
        data: &impl Serialize,
    ) -> LiveResult<()> {
        let data = serde_json::to_string(data).map_err(undeliverable)?;
        let keys: Vec<String> = channels
            .into_iter()
            .map(|channel| stream_key(&self.prefix, &channel))
            .collect();
        let span = telemetry::when_exporting(|| {
            tracing::info_span!(
                "live push",
                otel.kind = "producer",
                channels = keys.len(),
                event
            )
        });
        for chunk in keys.chunks(500) {
            let mut invocation = self.publish_many.prepare_invoke();
            for key in chunk {
                invocation.key(key);
            }
            let _: i64 = invocation
                .arg(event)
                .arg(&data)
                .arg(self.settings.retention_entries)
                .arg(self.settings.retention.as_secs().max(1))
                .invoke_async(&mut self.redis.clone())
                .instrument(span.clone())
                .await
                .map_err(unavailable)?;
            metrics::counter!("live_published_total", "event" => event.to_owned())
                .increment(chunk.len() as u64);
        }
        Ok(())
    }

    /// Pushes each of `pushes` — the same `event` with its own data to its own channels —
    /// as [`Self::push_many`] would, in their order, in one round trip per up to
    /// [`KEYS_PER_ROUND_TRIP`] channels: a batch's posts reach each follower's stream in
    /// the order they were published, without a round trip each.
    ///
    /// # Errors
    /// Redis unreachable (transient).
    pub async fn push_many_in_order<T: Serialize>(
        &self,
        event: &str,
        pushes: impl IntoIterator<Item = (Vec<String>, T)>,
    ) -> LiveResult<()> {
        let span = telemetry::when_exporting(|| {
            tracing::info_span!("live push", otel.kind = "producer", event)
        });
        // The script is loaded first in each pipeline: a pipeline does not load it on
        // NOSCRIPT.
        let pipeline = || {
            let mut pipe = redis::pipe();
            pipe.load_script(&self.publish_many).ignore();
            pipe
        };
        let (mut pipe, mut keys) = (pipeline(), 0);
        for (channels, data) in pushes {
            let data = serde_json::to_string(&data).map_err(undeliverable)?;
            for chunk in channels.chunks(500) {
                if keys > 0 && keys + chunk.len() > KEYS_PER_ROUND_TRIP {
                    self.send_pushes(&pipe, keys, event, &span).await?;
                    (pipe, keys) = (pipeline(), 0);
                }
                let mut invocation = self.publish_many.prepare_invoke();
                for channel in chunk {
                    invocation.key(stream_key(&self.prefix, channel));
                }
                invocation
                    .arg(event)
                    .arg(&data)
                    .arg(self.settings.retention_entries)
                    .arg(self.settings.retention.as_secs().max(1));
                pipe.invoke_script(&invocation).ignore();
                keys += chunk.len();
            }
        }
        if keys > 0 {
            self.send_pushes(&pipe, keys, event, &span).await?;
        }
        Ok(())
    }

    /// Sends a pipeline of [`Self::push_many_in_order`] that pushes to `keys` streams.
    async fn send_pushes(
        &self,
        pipe: &redis::Pipeline,
        keys: usize,
        event: &str,
        span: &tracing::Span,
    ) -> LiveResult<()> {
        let () = pipe
            .query_async(&mut self.redis.clone())
            .instrument(span.clone())
            .await
            .map_err(unavailable)?;
        metrics::counter!("live_published_total", "event" => event.to_owned())
            .increment(keys as u64);
        Ok(())
    }

    /// Ends an erased person's live stream: pushes `account_erased` to their connections
    /// (which close after it), then deletes their channel's stream and outcome.
    ///
    /// # Errors
    /// Redis unreachable (transient).
    pub async fn close_erased(&self, user: Uuid) -> LiveResult<()> {
        let own = user_channel(user);
        let data = serde_json::json!({ "user_id": user });
        self.push(&own, ACCOUNT_ERASED, &data, Push::default())
            .await?;
        let _: i64 = redis::cmd("DEL")
            .arg(stream_key(&self.prefix, &own))
            .arg(outcome_key(&self.prefix, &own))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Deletes from `channels` every entry an erased person wrote (`"author_id"` is
    /// theirs), so that no `Last-Event-ID` resume replays it. Clients that already received
    /// an entry keep it.
    ///
    /// # Errors
    /// Redis unreachable (transient).
    pub async fn retract(&self, channels: &[String], author: Uuid) -> LiveResult<()> {
        let needle = format!("\"author_id\":\"{author}\"");
        let keys: Vec<String> = channels
            .iter()
            .map(|channel| stream_key(&self.prefix, channel))
            .collect();
        for chunk in keys.chunks(100) {
            let mut invocation = self.retract.prepare_invoke();
            for key in chunk {
                invocation.key(key);
            }
            let _: i64 = invocation
                .arg(&needle)
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// Records `post`'s like count for the next aggregated `likes` push; the last count
    /// recorded before a push wins.
    ///
    /// # Errors
    /// Redis unreachable (transient).
    pub async fn likes_changed(&self, post: Uuid, like_count: i64) -> LiveResult<()> {
        // The trace of a like ends here: the push itself carries many likes at once.
        let span = telemetry::when_exporting(|| {
            tracing::info_span!(
                "live push",
                otel.kind = "producer",
                event = "likes",
                live.aggregated = true
            )
        });
        let _: () = redis::cmd("HSET")
            .arg(likes_key(&self.prefix))
            .arg(post.to_string())
            .arg(like_count)
            .query_async(&mut self.redis.clone())
            .instrument(span)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Pushes `likes` for every post whose count changed since the last call; returns how
    /// many. Taking the counts is atomic, so several callers never push one change twice.
    ///
    /// # Errors
    /// Redis unreachable (transient).
    pub async fn flush_likes(&self) -> LiveResult<usize> {
        let pending: Vec<(String, i64)> = self
            .take_likes
            .key(likes_key(&self.prefix))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        let mut pushed = 0;
        for (post, like_count) in pending {
            let Ok(post) = post.parse::<Uuid>() else {
                continue;
            };
            let data = serde_json::json!({ "post_id": post, "like_count": like_count });
            self.push(&post_channel(post), "likes", &data, Push::default())
                .await?;
            pushed += 1;
        }
        Ok(pushed)
    }

    /// Calls [`LivePublisher::flush_likes`] every `likes_interval` until `stop`.
    pub async fn run_likes(&self, stop: &tokio_util::sync::CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.likes_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            if let Err(error) = self.flush_likes().await {
                tracing::warn!(%error, "Pushing like counts failed; will retry.");
            }
        }
    }
}

/// The stream key (and Pub/Sub channel) of `channel`.
pub fn stream_key(prefix: &str, channel: &str) -> String {
    format!("{prefix}live:{{{channel}}}")
}

/// The key holding the stream id of a user's onboarding outcome.
pub fn outcome_key(prefix: &str, channel: &str) -> String {
    format!("{}:outcome", stream_key(prefix, channel))
}

/// The Pub/Sub pattern matching every channel of `prefix`.
pub fn pattern(prefix: &str) -> String {
    format!("{prefix}live:{{*}}")
}

/// The channel a Pub/Sub channel name (a stream key) belongs to.
pub fn channel_of<'a>(prefix: &str, stream_key: &'a str) -> Option<&'a str> {
    stream_key
        .strip_prefix(prefix)?
        .strip_prefix("live:{")?
        .strip_suffix('}')
}

fn likes_key(prefix: &str) -> String {
    format!("{prefix}live:likes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_key_names_its_channel_back() {
        let key = stream_key("hl:", "user:42");
        assert_eq!(key, "hl:live:{user:42}");
        assert_eq!(channel_of("hl:", &key), Some("user:42"));
        assert_eq!(channel_of("other:", &key), None);
        assert_eq!(channel_of("hl:", "hl:live:likes"), None);
        assert_eq!(pattern("hl:"), "hl:live:{*}");
    }
}
