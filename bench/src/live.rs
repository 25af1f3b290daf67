//! `bench live`: real time, lite profile, in three phases against the API with
//! every projection running (the in-process server of `server`, as `hybridlive dev`):
//!
//! 1. **register → `onboarding_completed`**: `--registrations` users register over HTTP,
//!    `--concurrency` at a time; each opens its SSE stream (`GET /v1/stream`) right after the
//!    `201` and waits for `onboarding_completed`. Latency: from sending the registration to
//!    reading the event — the saga's whole path (append, both downstream projections, the
//!    Redis step, the onboarding aggregate, the `onboarding` projection, Pub/Sub, the hub).
//! 2. **idle connections**: `--connections` SSE connections to one post's stream, opened by
//!    `--client-processes` child processes (`bench live-clients`; the per-process file limit
//!    holds for clients too). Memory per connection: the growth of this process's resident
//!    set (the server runs here; the clients do not) divided by the connections, after they
//!    all answered and sat idle for a second.
//! 3. **broadcast delivery**: `--broadcasts` events pushed to that post's channel through
//!    `LivePublisher::push` (what the projections call), each carrying its send time; every
//!    client records when it read each one. Delivery: read time minus send time, over every
//!    (event, connection) pair — Redis Pub/Sub to the hub to every connection's socket to
//!    the client reading it. All processes share the machine's clock.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::server::{Server, ServerOptions};
use crate::setup::BenchDatabase;

/// What to measure.
#[derive(Debug, Clone)]
pub struct LiveLoad {
    pub registrations: usize,
    pub concurrency: usize,
    pub connections: usize,
    pub client_processes: usize,
    pub broadcasts: usize,
    pub redis_url: String,
}

/// What was measured.
#[derive(Debug)]
pub struct LiveResult {
    pub onboarding: Histogram<u64>,
    pub onboarding_failures: usize,
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub delivery: Histogram<u64>,
    pub deliveries_expected: u64,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating a histogram")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// This process's resident set, KiB.
fn rss_kib() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// Runs the three phases.
///
/// # Errors
/// When the server, a client process or a request fails.
pub async fn run(db: &BenchDatabase, load: &LiveLoad) -> anyhow::Result<LiveResult> {
    let server = Server::start(
        db,
        &ServerOptions {
            pool_size: 32,
            threads: 0,
            redis_url: load.redis_url.clone(),
            projections: true,
        },
    )
    .await?;
    let measured = phases(&server, load).await;
    server.stop();
    measured
}

async fn phases(server: &Server, load: &LiveLoad) -> anyhow::Result<LiveResult> {
    let http = reqwest::Client::new();
    eprintln!(
        "live: {} registrations, {} at a time",
        load.registrations, load.concurrency
    );
    let outcomes: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..load.registrations)
        .map(|i| onboard(&http, &server.base, i))
        .buffer_unordered(load.concurrency)
        .collect()
        .await;
    let mut onboarding = histogram()?;
    let mut onboarding_failures = 0;
    for outcome in outcomes {
        match outcome {
            Ok(latency) => {
                onboarding.record(
                    u64::try_from(latency.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                )?;
            }
            Err(error) => {
                if onboarding_failures == 0 {
                    eprintln!("live: first onboarding failure: {error:#}");
                }
                onboarding_failures += 1;
            }
        }
    }

    // A post for every connection to watch.
    let owner = register(&http, &server.base, "live_owner").await?;
    let post = publish(&http, &server.base, &owner.1).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{}/v1/posts/{post}", server.base))
        .bearer_auth(&owner.1)
        .send()
        .await?
        .status()
        != 200
    {
        if Instant::now() > deadline {
            bail!("the post never became readable");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = rss_kib()?;
    eprintln!(
        "live: opening {} SSE connections from {} processes",
        load.connections, load.client_processes
    );
    let addr = server.base.trim_start_matches("http://").to_owned();
    let path = format!("/v1/posts/{post}/stream?access_token={}", owner.1);
    let mut clients = Vec::new();
    let per = load.connections.div_ceil(load.client_processes.max(1));
    let mut left = load.connections;
    while left > 0 {
        let count = per.min(left);
        clients.push(ClientProcess::spawn(&addr, &path, count)?);
        left -= count;
    }
    for client in &mut clients {
        client.wait_ready()?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_kib = rss_kib()?;

    eprintln!("live: {} broadcasts", load.broadcasts);
    let redis = redis::aio::ConnectionManager::new(
        redis::Client::open(load.redis_url.as_str()).context("parsing the Redis URL")?,
    )
    .await
    .context("connecting to Redis")?;
    let publisher = projections::LivePublisher::new(
        redis,
        &server.redis_prefix,
        projections::LiveSettings::default(),
    );
    let channel = projections::live::post_channel(post);
    for _ in 0..load.broadcasts {
        let data = serde_json::json!({ "sent_us": now_us() });
        publisher
            .push(&channel, "bench", &data, projections::live::Push::default())
            .await
            .context("pushing a broadcast")?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut delivery = histogram()?;
    for client in clients {
        for latency in client.report()? {
            delivery.record(latency.max(1))?;
        }
    }
    Ok(LiveResult {
        onboarding,
        onboarding_failures,
        connections: load.connections,
        rss_before_kib,
        rss_after_kib,
        delivery,
        deliveries_expected: (load.connections * load.broadcasts) as u64,
    })
}

async fn register(
    http: &reqwest::Client,
    base: &str,
    username: &str,
) -> anyhow::Result<(Uuid, String)> {
    let response = http
        .post(format!("{base}/v1/auth/register"))
        .json(&serde_json::json!({
            "username": username,
            "email": format!("{username}@bench.example"),
            "password": "correct horse battery staple",
        }))
        .send()
        .await
        .context("registering")?;
    if response.status() != 201 {
        bail!("registering {username}: {}", response.status());
    }
    let body: serde_json::Value = response.json().await?;
    let id = body["user_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("user_id")?;
    let token = body["access_token"]
        .as_str()
        .context("access_token")?
        .to_owned();
    Ok((id, token))
}

async fn publish(http: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<Uuid> {
    let response = http
        .post(format!("{base}/v1/posts"))
        .bearer_auth(token)
        .json(&serde_json::json!({"title": "Watched", "body_markdown": "by everyone"}))
        .send()
        .await?;
    if response.status() != 201 {
        bail!("publishing: {}", response.status());
    }
    let body: serde_json::Value = response.json().await?;
    body["post_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("post_id")
}

/// One registration, timed until its stream delivers `onboarding_completed`.
async fn onboard(http: &reqwest::Client, base: &str, i: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let username = format!("live_{i}_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let (_, token) = register(http, base, &username).await?;
    let mut response = http
        .get(format!("{base}/v1/stream"))
        .bearer_auth(&token)
        .send()
        .await
        .context("opening the stream")?;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if text.contains("event: onboarding_completed") {
            return Ok(started.elapsed());
        }
        if text.contains("event: onboarding_failed") {
            bail!("onboarding failed: {text}");
        }
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) => bail!("the stream ended"),
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => bail!("no onboarding_completed within 30 s"),
        }
    }
}

/// A `bench live-clients` child process.
struct ClientProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ClientProcess {
    fn spawn(addr: &str, path: &str, count: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe().context("finding this binary")?)
            .args(["live-clients", "--addr", addr, "--path", path, "--count"])
            .arg(count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a client process")?;
        let stdin = child.stdin.take().context("client stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("client stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("a client process ended early");
        }
        Ok(line.trim().to_owned())
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let line = self.line()?;
        if !line.starts_with("ready") {
            bail!("a client process said {line:?}");
        }
        Ok(())
    }

    /// Tells the process to stop; its delivery latencies, microseconds.
    fn report(mut self) -> anyhow::Result<Vec<u64>> {
        writeln!(self.stdin, "report")?;
        let line = self.line()?;
        let _ = self.child.wait();
        serde_json::from_str(&line).context("reading a client report")
    }
}

/// The child side: `count` SSE connections to `addr` `path`; prints `ready` once all
/// answered, then, on `report` from stdin, the latencies of every `bench` event as JSON.
///
/// # Errors
/// When a connection fails.
pub async fn clients(addr: &str, path: &str, count: usize) -> anyhow::Result<()> {
    {
        let latencies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
        let (ready_tx, mut ready_rx) =
            tokio::sync::mpsc::channel::<anyhow::Result<()>>(count.max(1));
        // Clients arrive in waves, as after a deploy: at most this many handshakes at once
        // per process.
        let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        for _ in 0..count {
            let (addr, path) = (addr.to_owned(), path.to_owned());
            let (ready, latencies) = (ready_tx.clone(), latencies.clone());
            let permit = handshakes.clone().acquire_owned().await?;
            tokio::spawn(async move {
                if let Err(error) = connection(&addr, &path, permit, &ready, &latencies).await {
                    let _ = ready.send(Err(error)).await;
                }
            });
        }
        for _ in 0..count {
            ready_rx.recv().await.context("client tasks ended")??;
        }
        println!("ready {count}");
        std::io::stdout().flush()?;
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut command = String::new();
        stdin.read_line(&mut command).await?;
        let report = latencies.lock().map(|l| l.clone()).unwrap_or_default();
        println!("{}", serde_json::to_string(&report)?);
        std::io::stdout().flush()?;
        Ok(())
    }
}

/// SSE handshakes one client process has in flight at most.
const HANDSHAKES: usize = 64;

async fn connection(
    addr: &str,
    path: &str,
    handshake: tokio::sync::OwnedSemaphorePermit,
    ready: &tokio::sync::mpsc::Sender<anyhow::Result<()>>,
    latencies: &std::sync::Mutex<Vec<u64>>,
) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .context("connecting")?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let status = lines.next_line().await?.context("no status line")?;
    if !status.contains(" 200 ") {
        bail!("the stream answered {status}");
    }
    drop(handshake);
    let _ = ready.send(Ok(())).await;
    let mut bench_event = false;
    while let Some(line) = lines.next_line().await? {
        if line == "event: bench" {
            bench_event = true;
        } else if let (true, Some(data)) = (bench_event, line.strip_prefix("data: ")) {
            let received = now_us();
            let sent: serde_json::Value = serde_json::from_str(data)?;
            let sent = sent["sent_us"].as_u64().unwrap_or(received);
            if let Ok(mut latencies) = latencies.lock() {
                latencies.push(received.saturating_sub(sent));
            }
            bench_event = false;
        }
    }
    Ok(())
}
