//! Presence: a person is online while they hold at least one `GET /v1/stream` connection
//! on any API instance. Shared between instances through Redis with expiring heartbeats,
//! never through the event log.
//!
//! # In Redis (under `<prefix>presence:`)
//!
//! - `online`, a sorted set: each online person, scored with the time (ms) their presence
//!   lapses unless an instance renews it — the latest lapse among the instances holding
//!   them;
//! - `conn:<user>`, a set: the instances holding the person;
//! - `instance:<id>`: present while the instance lives (renewed by its heartbeats, expiring
//!   after the ttl);
//! - `seen:<user>`: when the person was last seen (ms), kept for the retention;
//! - `pushed:<user>` and `due`: the throttle of the `presence` pushes (below).
//!
//! Every change is one Lua script, so the instance whose script moves a person in or out of
//! `online` is the one that sees the transition, exactly once, whatever the others do:
//!
//! - a connection, when it is the person's first on this instance, and every
//!   [`PresenceSettings::heartbeat`] for every person held here (one script per
//!   [`CLAIM_BATCH`] people: three commands — the instance key, one `ZMSCORE`, one
//!   variadic `ZADD GT` — whatever the batch's size): claims them until now +
//!   [`PresenceSettings::ttl`]; a person not in `online` (or only with a lapsed score)
//!   comes online, and this instance joins their `conn`;
//! - the close of the person's last connection here: this instance leaves their `conn`
//!   (with any instance whose key expired); with no live instance left the person goes
//!   offline now;
//! - every instance sweeps `online` each [`SWEEP_EVERY`]: a lapsed person (their
//!   instances died, SIGKILL included, or lost Redis) goes offline, as of the first
//!   heartbeat their instances missed. With the defaults a person is offline at most `ttl` + one sweep (≈ 21 s)
//!   after the last instance holding them died.
//!
//! Each transition goes to the [`PresenceSink`]: the API stores it as history and tells
//! the person's mutual followers. Pushes are throttled per person: at most one per
//! [`PresenceSettings::push_interval`]; a transition inside the interval is marked due at
//! its end (`due`, scored with the time), when one instance's sweep pushes the state the
//! person is in then — so followers always end with the current state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::Script;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often every instance sweeps lapsed people and due pushes.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// People swept or pushed per script run.
const SWEEP_BATCH: usize = 500;

/// People claimed per script run (a variadic `ZADD` of this many members).
pub const CLAIM_BATCH: usize = 500;

/// Timing of presence.
#[derive(Debug, Clone, Copy)]
pub struct PresenceSettings {
    /// An instance's claim on a person lapses this long after its last heartbeat.
    pub ttl: Duration,
    /// How often an instance renews its claims.
    pub heartbeat: Duration,
    /// At most one `presence` push per person this often.
    pub push_interval: Duration,
    /// How long `last_seen` is kept.
    pub retention: Duration,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(20),
            heartbeat: Duration::from_secs(5),
            push_interval: Duration::from_secs(5),
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Where transitions go (implemented by the API: history and pushes).
#[async_trait::async_trait]
pub trait PresenceSink: Send + Sync + std::fmt::Debug {
    /// `user` went online (`true`) or offline at `at`: store it.
    async fn record(&self, user: Uuid, online: bool, at: DateTime<Utc>);
    /// Tell those who may see it that `user` is now `online`, last seen at `last_seen`.
    async fn announce(&self, user: Uuid, online: bool, last_seen: Option<DateTime<Utc>>);
}

/// KEYS: online, this instance's key. ARGV: now, lapse, instance, conn key prefix, ttl ms,
/// "join" (this instance's first stream of the users: it joins their `conn` whatever
/// their state) or "renew", then users. Returns, for each user who came online, the user and the lapse of a
/// presence that had run out unswept ("" when there was none).
const CLAIM: &str = r"
redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
local users = {}
for i = 7, #ARGV do users[#users + 1] = ARGV[i] end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(users))
local came = {}
local scored = {}
for i, user in ipairs(users) do
  local old = scores[i]
  local lapsed = not old or tonumber(old) < tonumber(ARGV[1])
  if lapsed or ARGV[6] == 'join' then redis.call('SADD', ARGV[4] .. user, ARGV[3]) end
  if lapsed then
    table.insert(came, user)
    table.insert(came, old or '')
  end
  scored[#scored + 1] = ARGV[2]
  scored[#scored + 1] = user
end
redis.call('ZADD', KEYS[1], 'GT', unpack(scored))
return came
";

/// KEYS: online, conn, seen. ARGV: now, instance, user, seen ttl ms, instance key prefix.
/// Returns 1 when the user went offline.
const RELEASE: &str = r"
redis.call('SREM', KEYS[2], ARGV[2])
for _, other in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[5] .. other) == 0 then redis.call('SREM', KEYS[2], other) end
end
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
if redis.call('ZREM', KEYS[1], ARGV[3]) == 1 then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[4])
  return 1
end
return 0
";

/// KEYS: online. ARGV: now, conn key prefix, seen key prefix, ttl - heartbeat ms, seen ttl
/// ms, batch. Returns, for each user who went offline, the user and the first heartbeat
/// their instances missed.
const SWEEP: &str = r"
local gone = {}
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[6])
for i = 1, #lapsed, 2 do
  local user = lapsed[i]
  redis.call('DEL', ARGV[2] .. user)
  redis.call('ZREM', KEYS[1], user)
  local seen = tonumber(lapsed[i + 1]) - tonumber(ARGV[4])
  redis.call('SET', ARGV[3] .. user, seen, 'PX', ARGV[5])
  table.insert(gone, user)
  table.insert(gone, tostring(seen))
end
return gone
";

/// KEYS: pushed, due. ARGV: now, interval ms, user.
/// Returns 1 when the push may go now; else marks it due at the interval's end.
const THROTTLE: &str = r"
if redis.call('SET', KEYS[1], '1', 'PX', ARGV[2], 'NX') then return 1 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then ttl = 0 end
redis.call('ZADD', KEYS[2], 'NX', tonumber(ARGV[1]) + ttl, ARGV[3])
return 0
";

/// KEYS: due. ARGV: now, pushed key prefix, interval ms, batch.
/// Takes the pushes due now, and opens a new interval for each.
const DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[4])
for _, user in ipairs(due) do
  redis.call('ZREM', KEYS[1], user)
  redis.call('SET', ARGV[2] .. user, '1', 'PX', ARGV[3])
end
return due
";

/// One process's side of presence: the people it holds streams of, and the loop that
/// renews its claims and sweeps.
#[derive(Clone)]
pub struct Presence {
    redis: ConnectionManager,
    prefix: String,
    instance: String,
    settings: PresenceSettings,
    sink: Arc<dyn PresenceSink>,
    /// Open streams per person here.
    local: Arc<Mutex<HashMap<Uuid, usize>>>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    claim: Script,
    release: Script,
    sweep: Script,
    throttle: Script,
    due: Script,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("prefix", &self.prefix)
            .field("instance", &self.instance)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Held while a stream is open; dropping it closes the person's presence here when it was
/// their last stream on this instance.
#[derive(Debug)]
pub struct Online {
    presence: Presence,
    user: Uuid,
}

impl Drop for Online {
    fn drop(&mut self) {
        let last = {
            let mut local = self
                .presence
                .local
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match local.get_mut(&self.user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => {
                    local.remove(&self.user);
                    true
                }
            }
        };
        if last {
            let (presence, user) = (self.presence.clone(), self.user);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { presence.release(user).await });
            }
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl Presence {
    pub fn new(
        redis: ConnectionManager,
        prefix: &str,
        settings: PresenceSettings,
        sink: Arc<dyn PresenceSink>,
    ) -> Self {
        Self {
            redis,
            prefix: format!("{prefix}presence:"),
            instance: Uuid::new_v4().to_string(),
            settings,
            sink,
            local: Arc::default(),
            scripts: Arc::new(Scripts {
                claim: Script::new(CLAIM),
                release: Script::new(RELEASE),
                sweep: Script::new(SWEEP),
                throttle: Script::new(THROTTLE),
                due: Script::new(DUE),
            }),
        }
    }

    /// When a presence that lapses at `lapse` went: at the first heartbeat its instance
    /// missed (it lived past the last one, and died before the next), so always after the
    /// presence began.
    fn missed(&self, lapse: i64) -> i64 {
        lapse - millis(self.settings.ttl) + millis(self.settings.heartbeat)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A stream of `user` opened here: they are online until the guard is dropped.
    ///
    /// # Errors
    /// When Redis fails (the stream may go on; the next heartbeat claims the person).
    pub async fn connect(&self, user: Uuid) -> (Online, redis::RedisResult<()>) {
        let first = {
            let mut local = self
                .local
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = local.entry(user).or_insert(0);
            *count += 1;
            *count == 1
        };
        let guard = Online {
            presence: self.clone(),
            user,
        };
        let claimed = if first {
            self.claim(&[user], true).await
        } else {
            Ok(())
        };
        (guard, claimed)
    }

    /// Whether `user` is online now, and when they were last seen (now, when online).
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn status(&self, user: Uuid) -> redis::RedisResult<(bool, Option<DateTime<Utc>>)> {
        let mut redis = self.redis.clone();
        let (lapse, seen): (Option<i64>, Option<i64>) = redis::pipe()
            .zscore(self.key("online"), user.to_string())
            .get(self.key(&format!("seen:{user}")))
            .query_async(&mut redis)
            .await?;
        let now = now_ms();
        Ok(match lapse {
            Some(lapse) if lapse > now => (true, Some(at(now))),
            // Lapsed, not swept yet: gone as of the last heartbeat, as the sweep will say.
            Some(lapse) => (false, Some(at(self.missed(lapse)))),
            None => (false, seen.map(at)),
        })
    }

    /// Claims `users` for this instance until now + ttl (`join`: its first stream of them);
    /// announces those who came online.
    async fn claim(&self, users: &[Uuid], join: bool) -> redis::RedisResult<()> {
        if users.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let ttl = millis(self.settings.ttl);
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(self.key("online"))
            .key(self.key(&format!("instance:{}", self.instance)))
            .arg(now)
            .arg(now + ttl)
            .arg(&self.instance)
            .arg(self.key("conn:"))
            .arg(ttl)
            .arg(if join { "join" } else { "renew" });
        for user in users {
            invocation.arg(user.to_string());
        }
        let came: Vec<String> = invocation.invoke_async(&mut self.redis.clone()).await?;
        for pair in came.chunks(2) {
            let Some(user) = pair.first().and_then(|u| Uuid::parse_str(u).ok()) else {
                continue;
            };
            // A presence that ran out unswept (this instance stalled past the ttl): it
            // was an absence, recorded as one.
            if let Some(lapse) = pair.get(1).and_then(|l| l.parse::<i64>().ok()) {
                self.sink.record(user, false, at(self.missed(lapse))).await;
            }
            self.transition(user, true, at(now)).await;
        }
        Ok(())
    }

    /// Drops this instance's claim on `user` (their last stream here closed).
    async fn release(&self, user: Uuid) {
        if self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&user)
        {
            return; // A new stream opened meanwhile.
        }
        let now = now_ms();
        let released: redis::RedisResult<i64> = self
            .scripts
            .release
            .key(self.key("online"))
            .key(self.key(&format!("conn:{user}")))
            .key(self.key(&format!("seen:{user}")))
            .arg(now)
            .arg(&self.instance)
            .arg(user.to_string())
            .arg(millis(self.settings.retention))
            .arg(self.key("instance:"))
            .invoke_async(&mut self.redis.clone())
            .await;
        match released {
            Ok(1) => self.transition(user, false, at(now)).await,
            Ok(_) => {}
            // The claim lapses by itself; the sweep then sees the person go.
            Err(error) => tracing::warn!(%error, %user, "Releasing a presence failed."),
        }
    }

    /// Records a transition and announces it, throttled.
    async fn transition(&self, user: Uuid, online: bool, at_: DateTime<Utc>) {
        metrics::counter!("presence_transitions_total", "to" => if online { "online" } else { "offline" })
            .increment(1);
        self.sink.record(user, online, at_).await;
        let now_pushable: redis::RedisResult<i64> = self
            .scripts
            .throttle
            .key(self.key(&format!("pushed:{user}")))
            .key(self.key("due"))
            .arg(now_ms())
            .arg(millis(self.settings.push_interval))
            .arg(user.to_string())
            .invoke_async(&mut self.redis.clone())
            .await;
        match now_pushable {
            // Stored before this returns (a crash right after must not lose it); telling
            // followers (a read of the person's follows, pushes) runs in a task of its own,
            // so a stream's first connection waits for neither.
            Ok(1) => {
                let sink = self.sink.clone();
                tokio::spawn(async move { sink.announce(user, online, Some(at_)).await });
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, %user, "Throttling a presence push failed."),
        }
    }

    /// Renews every claim of this instance.
    async fn heartbeat(&self) -> redis::RedisResult<()> {
        let users: Vec<Uuid> = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        for chunk in users.chunks(CLAIM_BATCH) {
            self.claim(chunk, false).await?;
        }
        Ok(())
    }

    /// Takes lapsed people offline and sends the pushes that are due.
    async fn sweep(&self) -> redis::RedisResult<()> {
        let now = now_ms();
        let gone: Vec<String> = self
            .scripts
            .sweep
            .key(self.key("online"))
            .arg(now)
            .arg(self.key("conn:"))
            .arg(self.key("seen:"))
            .arg(millis(self.settings.ttl) - millis(self.settings.heartbeat))
            .arg(millis(self.settings.retention))
            .arg(SWEEP_BATCH)
            .invoke_async(&mut self.redis.clone())
            .await?;
        for pair in gone.chunks(2) {
            if let (Some(user), Some(seen)) = (
                pair.first().and_then(|u| Uuid::parse_str(u).ok()),
                pair.get(1).and_then(|s| s.parse::<i64>().ok()),
            ) {
                self.transition(user, false, at(seen)).await;
            }
        }
        let due: Vec<String> = self
            .scripts
            .due
            .key(self.key("due"))
            .arg(now)
            .arg(self.key("pushed:"))
            .arg(millis(self.settings.push_interval))
            .arg(SWEEP_BATCH)
            .invoke_async(&mut self.redis.clone())
            .await?;
        for user in due.iter().filter_map(|u| Uuid::parse_str(u).ok()) {
            let (online, seen) = self.status(user).await?;
            self.sink.announce(user, online, seen).await;
        }
        Ok(())
    }

    /// Renews claims every heartbeat and sweeps every [`SWEEP_EVERY`] until `stop`.
    pub async fn run(&self, stop: &CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        loop {
            let result = tokio::select! {
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = sweep.tick() => self.sweep().await,
                () = stop.cancelled() => return,
            };
            if let Err(error) = result {
                tracing::warn!(%error, "Presence heartbeat or sweep failed; trying again.");
            }
        }
    }
}
