//! `bench chat`: messaging and presence, lite profile.
//!
//! 1. **Message delivery across two instances**: instance A (the API and every projection,
//!    as `hybridlive dev`) and instance B (the API alone, the same Redis keys and token
//!    secret) run in this process, each on a runtime of its own. `--pairs` one-to-one
//!    conversations; each recipient holds `GET /v1/stream` on B, each sender posts
//!    `POST /v1/conversations/{id}/messages` to A, open loop at a steady `--rate` messages
//!    per second in all for `--seconds` (the send times are fixed in advance; a send that
//!    waits for a free client slot is late and counted as such, never dropped). Delivery:
//!    from the moment a message was due to be sent to the moment its `message` event was
//!    read on the recipient's stream — the HTTP command, the append, the `messaging`
//!    projection, Redis, B's hub and the socket.
//!    Peer: **Redis Pub/Sub alone** at the same rate on the same machine (PUBLISH of the
//!    send time, read by a subscriber): the transport floor every fan-out through Redis has.
//! 2. **Presence heartbeat cost**: `--presence-connections` people held online by one
//!    instance's `real_time::presence::Presence` (what a user stream holds), on a private
//!    Redis started for the measurement (so nothing else counts), for `--presence-seconds`
//!    after the first heartbeat: Redis commands per second (`INFO commandstats`, scripts'
//!    inner commands included), Lua scripts per second, and Redis CPU per second.
//!    Peer: **a key per connection** — the usual design, one `SET presence:<user> <instance>
//!    EX <ttl>` per connection per heartbeat, pipelined — on the same Redis, the same
//!    number of people, the same heartbeat and window.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use uuid::Uuid;

use crate::server::{Server, ServerOptions};
use crate::setup::BenchDatabase;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ChatLoad {
    pub pairs: usize,
    pub rate: u32,
    pub seconds: u64,
    pub presence_connections: usize,
    pub presence_seconds: u64,
    pub redis_url: String,
}

/// The cost of one presence design over the window.
#[derive(Debug, Clone, Copy)]
pub struct PresenceCost {
    pub commands_per_s: f64,
    pub scripts_per_s: f64,
    pub cpu_ms_per_s: f64,
}

/// What was measured.
#[derive(Debug)]
pub struct ChatResult {
    pub delivery: Histogram<u64>,
    /// From the moment a message was due to its `201`: the write side's share.
    pub answered: Histogram<u64>,
    pub sent: u64,
    pub late_sends: u64,
    pub failed_sends: u64,
    pub delivered: u64,
    pub send_seconds: f64,
    pub pubsub: Histogram<u64>,
    pub presence: PresenceCost,
    pub key_per_connection: PresenceCost,
}

/// Client slots for sending: a send due while all are busy waits (and is counted late).
const IN_FLIGHT: usize = 256;

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating a histogram")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Runs both phases.
///
/// # Errors
/// When a server, Redis or a request fails.
pub async fn run(db: &BenchDatabase, load: &ChatLoad) -> anyhow::Result<ChatResult> {
    let options = |projections| ServerOptions {
        pool_size: 32,
        threads: 0,
        redis_url: load.redis_url.clone(),
        projections,
    };
    let a = Server::start(db, &options(true)).await?;
    let b = Server::start_beside(db, &options(false), &a).await?;
    let delivered = delivery(&a, &b, load).await;
    b.stop();
    a.stop();
    let mut result = delivered?;
    result.pubsub = pubsub(&load.redis_url, load.rate, load.seconds).await?;
    let (presence, key_per_connection) = presence_costs(load).await?;
    result.presence = presence;
    result.key_per_connection = key_per_connection;
    Ok(result)
}

#[derive(Debug, serde::Deserialize)]
struct Tokens {
    user_id: Uuid,
    access_token: String,
}

async fn register(http: &reqwest::Client, base: &str, username: String) -> anyhow::Result<Tokens> {
    let response = http
        .post(format!("{base}/v1/auth/register"))
        .json(&serde_json::json!({
            "username": username,
            "email": format!("{username}@bench.example"),
            "password": "correct horse battery staple",
        }))
        .send()
        .await?;
    ensure!(
        response.status() == 201,
        "registering: HTTP {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// Phase 1 (the Pub/Sub histogram and presence costs are filled in by [`run`]).
async fn delivery(a: &Server, b: &Server, load: &ChatLoad) -> anyhow::Result<ChatResult> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()?;
    let run = Uuid::new_v4().simple().to_string();
    eprintln!("chat: registering {} people", load.pairs * 2);
    let people: Vec<Tokens> = futures::stream::iter(0..load.pairs * 2)
        .map(|i| register(&http, &a.base, format!("c{}_{i}", &run[..8])))
        .buffered(8)
        .try_collect()
        .await?;
    let mut conversations = Vec::new();
    for pair in people.chunks(2) {
        let response = http
            .post(format!("{}/v1/conversations", a.base))
            .bearer_auth(&pair[0].access_token)
            .json(&serde_json::json!({ "members": [pair[1].user_id] }))
            .send()
            .await?;
        ensure!(
            response.status() == 201,
            "starting a conversation: HTTP {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await?;
        let id = body["conversation_id"]
            .as_str()
            .context("a conversation id")?
            .to_owned();
        conversations.push((id, pair[0].access_token.clone()));
    }
    // Every recipient's stream, on B. Received: message body (its sequence) → read time.
    let received: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let mut streams = Vec::new();
    for pair in people.chunks(2) {
        let response = http
            .get(format!("{}/v1/stream", b.base))
            .bearer_auth(&pair[1].access_token)
            .send()
            .await?;
        ensure!(
            response.status() == 200,
            "opening a stream: HTTP {}",
            response.status()
        );
        let received = received.clone();
        streams.push(tokio::spawn(read_messages(response, received)));
    }
    eprintln!(
        "chat: {} messages/s for {} s over {} conversations, sent to A, read on B",
        load.rate, load.seconds, load.pairs
    );
    let total = u64::from(load.rate) * load.seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(load.rate));
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let due_at: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let (late, failed) = (
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let answered = Arc::new(Mutex::new(histogram()?));
    let start = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = tokio::task::JoinSet::new();
    for seq in 0..total {
        ticker.tick().await;
        let due = now_us();
        due_at
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(seq, due);
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                late.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                slots.clone().acquire_owned().await?
            }
        };
        let (id, token) =
            conversations[usize::try_from(seq).unwrap_or(0) % conversations.len()].clone();
        let (http, base, failed) = (http.clone(), a.base.clone(), failed.clone());
        let answered = answered.clone();
        sends.spawn(async move {
            let sent = http
                .post(format!("{base}/v1/conversations/{id}/messages"))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "body": seq.to_string() }))
                .send()
                .await;
            if matches!(&sent, Ok(response) if response.status() == 201) {
                if let Ok(mut answered) = answered.lock() {
                    let _ = answered.record(now_us().saturating_sub(due).max(1));
                }
            } else {
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    while sends.join_next().await.is_some() {}
    let send_seconds = start.elapsed().as_secs_f64();
    // The last ones in flight through the projection.
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    while Instant::now() < deadline {
        let got = received.lock().map(|r| r.len()).unwrap_or(0) as u64;
        if got + failed >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for stream in streams {
        stream.abort();
    }
    let mut delivery = histogram()?;
    let received = received
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let due_at = due_at
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    for (seq, read) in &received {
        if let Some(due) = due_at.get(seq) {
            delivery.record(read.saturating_sub(*due).max(1))?;
        }
    }
    let answered = answered
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    Ok(ChatResult {
        delivered: delivery.len(),
        delivery,
        answered,
        sent: total,
        late_sends: late.load(std::sync::atomic::Ordering::Relaxed),
        failed_sends: failed,
        send_seconds,
        pubsub: histogram()?,
        presence: PresenceCost {
            commands_per_s: 0.0,
            scripts_per_s: 0.0,
            cpu_ms_per_s: 0.0,
        },
        key_per_connection: PresenceCost {
            commands_per_s: 0.0,
            scripts_per_s: 0.0,
            cpu_ms_per_s: 0.0,
        },
    })
}

/// Reads a user stream, recording when each `message` event (its body a sequence number)
/// arrived.
async fn read_messages(mut response: reqwest::Response, received: Arc<Mutex<HashMap<u64, u64>>>) {
    let mut buffer = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let read = now_us();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if !block.lines().any(|l| l == "event: message") {
                continue;
            }
            let data = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<String>();
            let seq = serde_json::from_str::<serde_json::Value>(&data)
                .ok()
                .and_then(|v| v["body"].as_str().and_then(|b| b.parse::<u64>().ok()));
            if let (Some(seq), Ok(mut received)) = (seq, received.lock()) {
                received.entry(seq).or_insert(read);
            }
        }
    }
}

/// The peer of phase 1: PUBLISH of the send time at `rate` for `seconds`, read by a
/// subscriber on its own connection.
async fn pubsub(redis_url: &str, rate: u32, seconds: u64) -> anyhow::Result<Histogram<u64>> {
    let client = redis::Client::open(redis_url)?;
    let channel = format!("bench:pubsub:{}", Uuid::new_v4().simple());
    let mut subscriber = client.get_async_pubsub().await?;
    subscriber.subscribe(&channel).await?;
    let mut publisher = client.get_multiplexed_async_connection().await?;
    let total = u64::from(rate) * seconds;
    let reading = tokio::spawn(async move {
        let mut latencies = histogram()?;
        let mut messages = subscriber.on_message();
        while latencies.len() < total {
            let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_secs(10), messages.next()).await
            else {
                break;
            };
            let sent: u64 = message.get_payload()?;
            latencies.record(now_us().saturating_sub(sent).max(1))?;
        }
        anyhow::Ok(latencies)
    });
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    for _ in 0..total {
        ticker.tick().await;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(now_us())
            .query_async(&mut publisher)
            .await?;
    }
    reading.await?
}

/// A redis-server of our own on a free port, for a measurement nothing else touches.
struct PrivateRedis {
    child: Child,
    url: String,
}

impl PrivateRedis {
    async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (scripts/services.sh installs it)")?;
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str())?;
        for _ in 0..100 {
            if client.get_multiplexed_async_connection().await.is_ok() {
                return Ok(Self { child, url });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the private redis-server did not answer")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Commands executed (every `cmdstat_*` but `info` itself, a script's inner commands
/// included), scripts run, and CPU seconds of the server so far.
async fn redis_counters(
    connection: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<(f64, f64, f64)> {
    let info: String = redis::cmd("INFO")
        .arg("all")
        .query_async(connection)
        .await?;
    let mut commands = 0.0;
    let mut scripts = 0.0;
    let mut cpu = 0.0;
    for line in info.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let (name, stats) = rest.split_once(':').unwrap_or((rest, ""));
            if name == "info" {
                continue;
            }
            let calls: f64 = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            commands += calls;
            if matches!(name, "evalsha" | "eval") {
                scripts += calls;
            }
        } else if let Some(v) = line
            .strip_prefix("used_cpu_sys:")
            .or_else(|| line.strip_prefix("used_cpu_user:"))
        {
            cpu += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok((commands, scripts, cpu))
}

/// A sink that stores nothing: the heartbeats' cost alone.
#[derive(Debug)]
struct Discard;

#[async_trait::async_trait]
impl real_time::presence::PresenceSink for Discard {
    async fn record(&self, _: Uuid, _: bool, _: chrono::DateTime<chrono::Utc>) {}
    async fn announce(&self, _: Uuid, _: bool, _: Option<chrono::DateTime<chrono::Utc>>) {}
}

/// Phase 2: ours, then the key-per-connection peer, on a private Redis.
async fn presence_costs(load: &ChatLoad) -> anyhow::Result<(PresenceCost, PresenceCost)> {
    let redis = PrivateRedis::start().await?;
    let client = redis::Client::open(redis.url.as_str())?;
    let mut counters = client.get_multiplexed_async_connection().await?;
    let settings = real_time::presence::PresenceSettings::default();
    let window = Duration::from_secs(load.presence_seconds);
    let people: Vec<Uuid> = (0..load.presence_connections)
        .map(|_| Uuid::new_v4())
        .collect();

    eprintln!("chat: presence of {} people, ours", people.len());
    let manager = redis::aio::ConnectionManager::new(client.clone()).await?;
    let presence =
        real_time::presence::Presence::new(manager, "bench:", settings, Arc::new(Discard));
    let mut held = Vec::with_capacity(people.len());
    for user in &people {
        let (online, claimed) = presence.connect(*user).await;
        claimed?;
        held.push(online);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let (presence, stop) = (presence.clone(), stop.clone());
        async move { presence.run(&stop).await }
    });
    tokio::time::sleep(settings.heartbeat).await;
    let ours = measure(&mut counters, window).await?;
    stop.cancel();
    running.await?;
    drop(held);

    eprintln!(
        "chat: presence of {} people, a key per connection",
        people.len()
    );
    let mut peer = client.get_multiplexed_async_connection().await?;
    let ttl = settings.ttl.as_secs();
    let instance = Uuid::new_v4().to_string();
    let heartbeat = settings.heartbeat;
    let stop = tokio_util::sync::CancellationToken::new();
    let beating = tokio::spawn({
        let stop = stop.clone();
        let people = people.clone();
        async move {
            let mut ticker = tokio::time::interval(heartbeat);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = stop.cancelled() => return anyhow::Ok(()),
                }
                for chunk in people.chunks(500) {
                    let mut pipe = redis::pipe();
                    for user in chunk {
                        pipe.set_ex(format!("presence:{user}"), &instance, ttl)
                            .ignore();
                    }
                    let () = pipe.query_async(&mut peer).await?;
                }
            }
        }
    });
    tokio::time::sleep(heartbeat).await;
    let naive = measure(&mut counters, window).await?;
    stop.cancel();
    beating.await??;
    Ok((ours, naive))
}

/// The counters' growth per second over `window`.
async fn measure(
    connection: &mut redis::aio::MultiplexedConnection,
    window: Duration,
) -> anyhow::Result<PresenceCost> {
    let (c0, r0, cpu0) = redis_counters(connection).await?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let (c1, r1, cpu1) = redis_counters(connection).await?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(PresenceCost {
        commands_per_s: (c1 - c0) / seconds,
        scripts_per_s: (r1 - r0) / seconds,
        cpu_ms_per_s: (cpu1 - cpu0) * 1000.0 / seconds,
    })
}
