//! `bench`: Hybrid Live's benchmarks, each against a named peer in the same run (the
//! commands and the figures: the README's "Performance" and `docs/performance.md`). A binary
//! beside the workspace's crates: it may use all of them, and nothing uses it.
//!
//! `bench appends` measures, in one run against one fresh database:
//!
//! - **Single-event command appends**: C concurrent clients, each issuing one
//!   `UserCommand::UpdateProfile` (with a fresh display name, so every command appends exactly
//!   one event) to a user picked uniformly at random from N registered users, for
//!   `--seconds`. Four scenarios:
//!   1. `hybridlive (commands::CommandHandler)`: our command path (load snapshot + later
//!      events → decide → one-statement append);
//!   2. `hybridlive via cqrs_es::CqrsFramework`: our `commands::AggregateStore` under cqrs-es's
//!      own framework;
//!   3. `postgres-es via cqrs_es::CqrsFramework`: cqrs-es's reference PostgreSQL store, set
//!      up with its own `postgres_snapshot_cqrs` and its own table DDL;
//!   4. `raw INSERT+COMMIT (1 row)`: a single-row INSERT of the same JSON payload in an
//!      autocommit transaction, the ceiling for one durable write per operation.
//! - **Batch appends**: each client appends `--batch-size` events per operation to a stream
//!   of its own: our `PgEventStore::append` (one statement), postgres-es's
//!   `PostgresEventRepository::persist` (what `CqrsFramework` runs to commit that many events;
//!   one INSERT per event in one transaction) and a raw multi-row INSERT.
//!
//! Throughput counts successful operations per second; latency is each operation's wall
//! time from the client's call to its answer, p50 and p99 from an HDR histogram.
//!
//! Why the comparison is fair: every scenario runs on the same server, database, machine and
//! build; uses the same aggregate (`domain::user::User`) and the same commands; gets its own
//! pool of exactly C connections, opened before timing starts; writes N streams it
//! registered itself (registration is untimed); starts every slice after `VACUUM ANALYZE`
//! and `CHECKPOINT`, so none pays for another's dirty pages, and after an untimed warm-up,
//! so statements are prepared; and makes one attempt per operation, a version conflict being
//! counted, not retried (cqrs-es's framework never retries, so our handler gets one attempt
//! too). The scenarios take turns in `--rounds` slices, in reverse order every other round,
//! so that a change in the machine's background load falls on all of them alike.
//! Both aggregate stores snapshot every `--snapshot-every` events. What differs is the store
//! itself, and that is the point: ours also keeps a stream row with its lock, a global
//! position, a per-stream hash chain and the commit-order columns its readers need, which
//! postgres-es does not (see `migrations/`).
//!
//! Everything lives in one fresh database (`--database-name`, dropped at the end unless
//! `--keep`): our schema from `store::MIGRATOR`, postgres-es's `events` and `snapshots` in
//! schema `postgres_es` (the names clash with ours; `pg_` prefixes are reserved), and
//! `raw_inserts`. Results are printed as markdown on stdout (progress goes to stderr);
//! `--json FILE` writes them as JSON too.
//!
//! `bench http` measures the command API over real HTTP (publish posts, register users); see
//! the `http` module. `bench relay` measures the outbox relay against Kafka; see `relay`.
//! `bench lag` measures projection lag — commit acknowledged to the writer → applied by the
//! `timeline` and `content` projections — at a fixed append rate; see `lag`.
//! `bench replay` rebuilds read models from a 1M-event log; see `rebuild`.
//!
//! `bench feed` measures the read side over real HTTP, lite profile: the API with
//! every projection running next to it, on a runtime of their own; C closed-loop clients
//! read home feeds of 50 items (`GET /v1/feed?limit=50`) with a warm cache, then again right
//! after the post cache was flushed; and the time from a post's `201` until the timeline
//! projection has written it into all 10 000 followers' timelines (fan-out on write). Users,
//! follows and posts are created over HTTP before timing; the fan-out author's followers
//! are synthetic `social.followed` events appended to the store. See the `feed` module.
//!
//! Layout:
//! - `http`: the HTTP benchmark: the API on a runtime of its own, its clients and phases;
//! - `lag`: the projection-lag benchmark: the social app's writes, the projections wrapped
//!   to time each apply, on the log or the Kafka source;
//! - `feed`: the feed benchmark: the API and the projections, the setup, the readers and
//!   the fan-out measurement;
//! - `scenarios`: the seven scenarios, their setup and their clients;
//! - `runner`: the closed-loop driver of C clients and its HDR measurement;
//! - `server`: the API (and, for `feed`, the projections) on a runtime of its own;
//! - `setup`: the benchmark database: creation, settling between slices, drop;
//! - `report`: the markdown table and the JSON.

mod chat;
mod feed;
mod http;
mod lag;
mod live;
mod rebuild;
mod relay;
mod report;
mod runner;
mod scenarios;
mod server;
mod setup;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::report::Report;
use crate::scenarios::{Kind, Load, Scenario};
use crate::setup::BenchDatabase;

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Benchmarks of the Hybrid Live write side.")]
struct Cli {
    /// Seal personal data with a key-encryption key of the benchmark's (as `serve` does
    /// with KEY_ENCRYPTION_KEY); without it, events are stored in the clear.
    #[arg(long, global = true)]
    seal: bool,
    #[command(subcommand)]
    command: Command,
}

/// How to run this benchmark again, as the reports print it: `--seal` when it sealed.
fn invocation() -> &'static str {
    if store::keys::installed().is_some() {
        "cargo run --release -p bench -- --seal"
    } else {
        "cargo run --release -p bench --"
    }
}

/// The benchmark's key-encryption key (`--seal`); its value does not matter.
const BENCH_KEY_ENCRYPTION_KEY: &str = "aHlicmlkbGl2ZSBiZW5jaG1hcmsga2V5IDAwMDAwMDA=";

#[derive(Debug, Subcommand)]
enum Command {
    /// Single-event command appends and batch appends: ours vs postgres-es vs raw INSERTs.
    Appends(AppendsArgs),
    /// The command API over HTTP: publish-post commands/s and registrations/s, p50/p99.
    Http(HttpArgs),
    /// The outbox relay against Kafka: append → acknowledged latency at a fixed rate, and
    /// the events/s it drains a backlog at.
    Relay(RelayArgs),
    /// Projection lag (lite): single-event appends of a social app at a fixed rate, each
    /// timed from its commit to the end of its apply by `timeline` and `content`, p50/p99.
    Lag(LagArgs),
    /// The read side over HTTP (lite profile): feed reads/s and p50/p99/p99.9, warm and after
    /// a cache flush, and fan-out on write to many followers.
    Feed(FeedArgs),
    /// Real time (lite): register → `onboarding_completed` p50/p99, idle SSE connections one
    /// instance holds with the memory each costs, and delivery of a broadcast to all of them.
    Live(LiveArgs),
    /// Replay (lite): a log of about 1M events rebuilt into the timeline and the content
    /// models, events/s; and the NDJSON export of the log, events/s.
    Replay(ReplayArgs),
    /// Messaging and presence (lite): message sent → delivered on the other member's stream
    /// across two API instances at a steady rate, p50/p99, against Redis Pub/Sub alone; and
    /// the Redis cost of presence heartbeats against a key per connection.
    Chat(ChatArgs),
    /// Internal: the SSE client side of `bench live`, run as child processes.
    #[command(hide = true)]
    LiveClients(LiveClientsArgs),
}

#[derive(Debug, Args)]
struct LiveArgs {
    /// Users registered, each timed until its stream says `onboarding_completed`.
    #[arg(long, default_value_t = 500)]
    registrations: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Idle SSE connections held by the server (its file limit is `ulimit -n`).
    #[arg(long, default_value_t = 19_000)]
    connections: usize,
    /// Processes the client connections are spread over (each has its own file limit).
    #[arg(long, default_value_t = 4)]
    client_processes: usize,
    /// Events broadcast to every connection, 250 ms apart.
    #[arg(long, default_value_t = 20)]
    broadcasts: usize,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[command(flatten)]
    server: ServerArgs,
    /// The benchmark database, dropped and created anew, and dropped at the end.
    #[arg(long, default_value = "hybridlive_bench_live")]
    database_name: String,
}

#[derive(Debug, Args)]
struct ChatArgs {
    /// One-to-one conversations; each recipient holds a stream on the second instance.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Messages per second, in all, sent at a steady rate.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// People held online for the heartbeat cost.
    #[arg(long, default_value_t = 10_000)]
    presence_connections: usize,
    /// Seconds the heartbeat cost is measured over.
    #[arg(long, default_value_t = 30)]
    presence_seconds: u64,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[command(flatten)]
    server: ServerArgs,
    /// The benchmark database, dropped and created anew, and dropped at the end.
    #[arg(long, default_value = "hybridlive_bench_chat")]
    database_name: String,
}

#[derive(Debug, Args)]
struct LiveClientsArgs {
    /// The server's `host:port`.
    #[arg(long)]
    addr: String,
    /// The stream's path and query.
    #[arg(long)]
    path: String,
    /// Connections to open.
    #[arg(long)]
    count: usize,
}

#[derive(Debug, Args)]
struct FeedArgs {
    /// Users whose feeds are read (each follows every author).
    #[arg(long, default_value_t = 50)]
    readers: usize,
    /// Users who publish the posts the feeds hold.
    #[arg(long, default_value_t = 20)]
    authors: usize,
    /// Posts each author publishes; authors × posts must be at least 50, a full feed page.
    #[arg(long, default_value_t = 10)]
    posts_per_author: usize,
    /// Concurrent clients C reading feeds (client i reads reader i mod readers's feed).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Measured seconds of feed reads with a warm cache.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Untimed warm-up seconds before the warm-cache phase.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Measured seconds of feed reads right after the post cache was flushed (no warm-up).
    #[arg(long, default_value_t = 5)]
    cold_seconds: u64,
    /// Followers of the fan-out author (at most the default `FANOUT_MAX_FOLLOWERS`, so that
    /// posts are fanned out on write).
    #[arg(long, default_value_t = 10_000)]
    followers: usize,
    /// Posts the fan-out author publishes, one at a time.
    #[arg(long, default_value_t = 5)]
    fanout_rounds: usize,
    /// Connections in the server's PostgreSQL pool, shared by the API and the projections.
    #[arg(long, default_value_t = 32)]
    pool_size: u32,
    /// Worker threads of the server's runtime (0: one per core).
    #[arg(long, default_value_t = 0)]
    server_threads: usize,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[command(flatten)]
    server: ServerArgs,
    /// The benchmark database, dropped and created anew, and dropped at the end.
    #[arg(long, default_value = "hybridlive_bench_feed")]
    database_name: String,
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Single-event appends per second in the latency phase.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Events in the backlog the throughput phase drains.
    #[arg(long, default_value_t = 200_000)]
    backlog: usize,
    /// The relay's batch size (`RELAY_BATCH_SIZE`).
    #[arg(long, default_value_t = 1000)]
    batch_size: u32,
    /// Then drain the whole log again into librdkafka's in-memory mock broker (no disk,
    /// no replication): the relay's own ceiling, beside the real broker's figure.
    #[arg(long)]
    mock_broker: bool,
    #[command(flatten)]
    server: ServerArgs,
    /// The benchmark database, dropped and created anew, and dropped at the end.
    #[arg(long, default_value = "hybridlive_bench_relay")]
    database_name: String,
}

#[derive(Debug, Args)]
struct LagArgs {
    /// Single-event appends per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of appends.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Users registered before timing (at least 10).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Users each of them follows, before timing.
    #[arg(long, default_value_t = 20)]
    follows_per_user: usize,
    /// Also measure with the projections fed by Kafka (the relay in this process), on a
    /// fresh database of its own, after the log source.
    #[arg(long)]
    kafka: bool,
    /// Also measure the log source with each event applied alone (no set-wise batches),
    /// on a fresh database of its own, after the log source: the baseline.
    #[arg(long)]
    baseline: bool,
    /// Kafka bootstrap servers (with `--kafka`).
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[command(flatten)]
    server: ServerArgs,
    /// The benchmark database, dropped and created anew, and dropped at the end.
    #[arg(long, default_value = "hybridlive_bench_lag")]
    database_name: String,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Events in the synthetic log (about; whole users).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per replay batch.
    #[arg(long, default_value_t = 20_000)]
    batch_size: u32,
    /// Also replays the whole log event by event, for comparison (12× slower at 100k
    /// events here).
    #[arg(long)]
    baseline: bool,
    /// Set-wise replays of each model, one after another on the same log (each from
    /// scratch): the spread between runs without generating the log again.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Keeps the benchmark database (and its log) at the end, and replays the log a run
    /// with the same --events kept instead of appending it again: for comparing two
    /// builds on one log. Drop it with `dropdb hybridlive_bench_replay`.
    #[arg(long)]
    keep_log: bool,
    #[command(flatten)]
    server: ServerArgs,
    /// The benchmark database, dropped and created anew, and dropped at the end (unless
    /// --keep-log).
    #[arg(long, default_value = "hybridlive_bench_replay")]
    database_name: String,
}

/// The PostgreSQL server a benchmark runs on.
#[derive(Debug, Args)]
struct ServerArgs {
    /// A database on the server to benchmark; only used to create the benchmark database.
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
}

#[derive(Debug, Args)]
struct HttpArgs {
    /// Concurrent clients C publishing posts.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Concurrent clients registering users (each registration hashes a password).
    #[arg(long, default_value_t = 4)]
    register_clients: usize,
    /// Measured seconds of the publish phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Measured seconds of the registration phase.
    #[arg(long, default_value_t = 10)]
    register_seconds: u64,
    /// Untimed warm-up seconds before each phase.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Connections in the API's PostgreSQL pool (`DATABASE_MAX_CONNECTIONS`).
    #[arg(long, default_value_t = 32)]
    pool_size: u32,
    /// Worker threads of the API server's runtime (0: one per core).
    #[arg(long, default_value_t = 0)]
    server_threads: usize,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[command(flatten)]
    server: ServerArgs,
    /// The benchmark database, dropped and created anew, and dropped at the end.
    #[arg(long, default_value = "hybridlive_bench_http")]
    database_name: String,
    /// Installs the telemetry `hybridlive serve` installs (`RUST_LOG`, default
    /// `info,sqlx=warn`; `LOG_FORMAT`; spans exported when `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is set) instead of the benchmark's warnings-only logs: the cost of the request
    /// spans and logs, against a run without it.
    #[arg(long)]
    telemetry: bool,
}

#[derive(Debug, Args)]
struct AppendsArgs {
    /// Concurrent clients C (and connections in each scenario's pool).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Streams N the single-event scenarios spread their commands over.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Untimed warm-up seconds before every measured slice.
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// Slices each scenario's measured time is cut into; the scenarios take turns, in
    /// reverse order every other round, so that a drift in the machine's load (another
    /// process, autovacuum, a checkpoint) falls on all of them alike.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Events per append in the batch scenarios.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Snapshot interval, in events, of both aggregate stores.
    #[arg(long, default_value_t = 100)]
    snapshot_every: usize,
    #[command(flatten)]
    server: ServerArgs,
    /// The benchmark database, dropped and created anew.
    #[arg(long, default_value = "hybridlive_bench")]
    database_name: String,
    /// Keep the benchmark database after the run.
    #[arg(long)]
    keep: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

impl AppendsArgs {
    fn load(&self) -> anyhow::Result<Load> {
        if self.clients == 0 || self.streams == 0 || self.batch_size == 0 {
            bail!("--clients, --streams and --batch-size must be at least 1");
        }
        if self.snapshot_every == 0 || self.seconds == 0 || self.rounds == 0 {
            bail!("--snapshot-every, --seconds and --rounds must be at least 1");
        }
        Ok(Load {
            clients: self.clients,
            streams: self.streams,
            warmup: Duration::from_secs(self.warmup_seconds),
            duration: Duration::from_secs(self.seconds),
            rounds: self.rounds,
            snapshot_every: self.snapshot_every,
            batch_size: self.batch_size,
        })
    }

    /// The command that repeats this run, every parameter spelled out (the URL left out, as
    /// it may hold a password).
    fn command(&self) -> String {
        format!(
            "{bench} appends --clients {} --streams {} --seconds {} \
             --rounds {} --warmup-seconds {} --batch-size {} --snapshot-every {}",
            self.clients,
            self.streams,
            self.seconds,
            self.rounds,
            self.warmup_seconds,
            self.batch_size,
            self.snapshot_every,
            bench = invocation()
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `http --telemetry`: the subscriber `hybridlive serve` installs, so that its request
    // spans and logs cost what they cost there.
    let _telemetry = match &cli.command {
        Command::Http(args) if args.telemetry => Some(
            telemetry::init("hybridlive-bench-http", "info,sqlx=warn")
                .map_err(anyhow::Error::msg)?,
        ),
        _ => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error")),
                )
                .with_writer(std::io::stderr)
                .init();
            None
        }
    };
    if cli.seal {
        store::keys::install(
            store::keys::Kek::from_base64(&BENCH_KEY_ENCRYPTION_KEY.into())?,
            None,
        )?;
    }
    match cli.command {
        Command::Appends(args) => appends(args).await,
        Command::Http(args) => http_bench(args).await,
        Command::Relay(args) => relay_bench(args).await,
        Command::Lag(args) => lag_bench(args).await,
        Command::Feed(args) => feed_bench(args).await,
        Command::Live(args) => live_bench(args).await,
        Command::Chat(args) => chat_bench(args).await,
        Command::Replay(args) => replay_bench(args).await,
        Command::LiveClients(args) => live::clients(&args.addr, &args.path, args.count).await,
    }
}

async fn chat_bench(args: ChatArgs) -> anyhow::Result<()> {
    if args.pairs == 0 || args.rate == 0 || args.seconds == 0 || args.presence_seconds == 0 {
        bail!("--pairs, --rate, --seconds and --presence-seconds must be at least 1");
    }
    let load = chat::ChatLoad {
        pairs: args.pairs,
        rate: args.rate,
        seconds: args.seconds,
        presence_connections: args.presence_connections,
        presence_seconds: args.presence_seconds,
        redis_url: args.redis_url.clone(),
    };
    let db = BenchDatabase::create(&args.server.database_url, &args.database_name).await?;
    let measured = chat::run(&db, &load).await;
    let dropped = db.drop_database().await;
    let r = measured?;
    dropped?;
    let cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    println!(
        "`{bench} chat --pairs {} --rate {} --seconds {} --presence-connections {} \
         --presence-seconds {}` ({cores} cores; both API instances, the projections and the \
         clients in this process)\n",
        args.pairs,
        args.rate,
        args.seconds,
        args.presence_connections,
        args.presence_seconds,
        bench = invocation()
    );
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("| delivery | n | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| message sent to instance A → `message` read on instance B ({} of {} delivered, {} sends failed, {} late; sent over {:.1} s) | {} | {:.1} | {:.1} | {:.1} |",
        r.delivered,
        r.sent,
        r.failed_sends,
        r.late_sends,
        r.send_seconds,
        r.delivery.len(),
        ms(&r.delivery, 0.5),
        ms(&r.delivery, 0.99),
        r.delivery.max() as f64 / 1000.0
    );
    println!(
        "| of which: message sent → its `201` from instance A | {} | {:.1} | {:.1} | {:.1} |",
        r.answered.len(),
        ms(&r.answered, 0.5),
        ms(&r.answered, 0.99),
        r.answered.max() as f64 / 1000.0
    );
    println!(
        "| peer: Redis Pub/Sub alone, PUBLISH → subscriber | {} | {:.2} | {:.2} | {:.2} |",
        r.pubsub.len(),
        ms(&r.pubsub, 0.5),
        ms(&r.pubsub, 0.99),
        r.pubsub.max() as f64 / 1000.0
    );
    println!(
        "\np99 ratio, ours / Pub/Sub alone: {:.0}×.\n",
        ms(&r.delivery, 0.99) / ms(&r.pubsub, 0.99).max(0.001)
    );
    println!(
        "| presence of {} people, heartbeat every 5 s | Redis commands/s | Lua scripts/s | Redis CPU ms/s |",
        args.presence_connections
    );
    println!("|---|---:|---:|---:|");
    for (name, cost) in [
        ("ours (`real_time::presence`)", r.presence),
        (
            "peer: a key per connection (`SET … EX`, pipelined)",
            r.key_per_connection,
        ),
    ] {
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} |",
            cost.commands_per_s, cost.scripts_per_s, cost.cpu_ms_per_s
        );
    }
    println!(
        "\nRatios, ours / a key per connection: commands {:.2}×, Redis CPU {:.2}×.",
        r.presence.commands_per_s / r.key_per_connection.commands_per_s.max(0.001),
        r.presence.cpu_ms_per_s / r.key_per_connection.cpu_ms_per_s.max(0.001)
    );
    Ok(())
}

async fn live_bench(args: LiveArgs) -> anyhow::Result<()> {
    if args.registrations == 0 || args.concurrency == 0 || args.client_processes == 0 {
        bail!("--registrations, --concurrency and --client-processes must be at least 1");
    }
    let load = live::LiveLoad {
        registrations: args.registrations,
        concurrency: args.concurrency,
        connections: args.connections,
        client_processes: args.client_processes,
        broadcasts: args.broadcasts,
        redis_url: args.redis_url.clone(),
    };
    let db = BenchDatabase::create(&args.server.database_url, &args.database_name).await?;
    let measured = live::run(&db, &load).await;
    let dropped = db.drop_database().await;
    let r = measured?;
    dropped?;
    let cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    println!(
        "`{bench} live --registrations {} --concurrency {} \
         --connections {} --client-processes {} --broadcasts {}` ({cores} cores; the API and \
         every projection in this process, the clients in {} others)\n",
        args.registrations,
        args.concurrency,
        args.connections,
        args.client_processes,
        args.broadcasts,
        args.client_processes,
        bench = invocation()
    );
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("| measurement | n | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| register → `onboarding_completed` ({} failed) | {} | {:.1} | {:.1} | {:.1} |",
        r.onboarding_failures,
        r.onboarding.len(),
        ms(&r.onboarding, 0.5),
        ms(&r.onboarding, 0.99),
        r.onboarding.max() as f64 / 1000.0
    );
    println!(
        "| broadcast delivery to {} connections ({} of {} deliveries seen) | {} | {:.1} | {:.1} | {:.1} |",
        r.connections,
        r.delivery.len(),
        r.deliveries_expected,
        r.delivery.len(),
        ms(&r.delivery, 0.5),
        ms(&r.delivery, 0.99),
        r.delivery.max() as f64 / 1000.0
    );
    let grown = r.rss_after_kib.saturating_sub(r.rss_before_kib);
    println!(
        "\nIdle SSE connections held: {}; resident set {} KiB → {} KiB: {:.2} KiB per connection.",
        r.connections,
        r.rss_before_kib,
        r.rss_after_kib,
        grown as f64 / r.connections.max(1) as f64
    );
    Ok(())
}

async fn feed_bench(args: FeedArgs) -> anyhow::Result<()> {
    if args.readers == 0 || args.authors == 0 || args.clients == 0 || args.pool_size == 0 {
        bail!("--readers, --authors, --clients and --pool-size must be at least 1");
    }
    if args.seconds == 0 || args.cold_seconds == 0 || args.fanout_rounds == 0 {
        bail!("--seconds, --cold-seconds and --fanout-rounds must be at least 1");
    }
    if args.authors * args.posts_per_author < feed::FEED_LIMIT {
        bail!(
            "--authors × --posts-per-author must be at least {}, a full feed page",
            feed::FEED_LIMIT
        );
    }
    let fanout_max = projections::TimelineSettings::default().fanout_max_followers;
    if args.followers == 0 || args.followers > fanout_max {
        bail!(
            "--followers must be from 1 to {fanout_max} (FANOUT_MAX_FOLLOWERS), or the \
             author's posts would be merged at read time instead of fanned out"
        );
    }
    let cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    let load = feed::FeedLoad {
        readers: args.readers,
        authors: args.authors,
        posts_per_author: args.posts_per_author,
        clients: args.clients,
        warmup: Duration::from_secs(args.warmup_seconds),
        warm: Duration::from_secs(args.seconds),
        cold: Duration::from_secs(args.cold_seconds),
        followers: args.followers,
        fanout_rounds: args.fanout_rounds,
        pool_size: args.pool_size,
        server_threads: if args.server_threads == 0 {
            cores
        } else {
            args.server_threads
        },
        redis_url: args.redis_url.clone(),
    };
    let db = BenchDatabase::create(&args.server.database_url, &args.database_name).await?;
    let server = db.facts().await?;
    let measured = feed::run(&db, &load).await;
    let dropped = db.drop_database().await;
    let result = measured?;
    println!(
        "`{bench} feed --readers {} --authors {} --posts-per-author {} \
         --clients {} --seconds {} --warmup-seconds {} --cold-seconds {} --followers {} \
         --fanout-rounds {} --pool-size {}`\n",
        args.readers,
        args.authors,
        args.posts_per_author,
        args.clients,
        args.seconds,
        args.warmup_seconds,
        args.cold_seconds,
        args.followers,
        args.fanout_rounds,
        args.pool_size,
        bench = invocation()
    );
    println!(
        "{cores} cores; PostgreSQL {} (synchronous_commit={}, shared_buffers={}); Redis; the \
         API and the projections on {} worker threads, pool {}; lite read models.\n",
        server.server_version,
        server.synchronous_commit,
        server.shared_buffers,
        load.server_threads,
        load.pool_size
    );
    println!("| phase | clients | reads/s | p50 ms | p99 ms | p99.9 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let phases = [
        (
            format!("feed reads (`GET /v1/feed?limit={}`)", feed::FEED_LIMIT),
            &result.warm,
        ),
        (
            format!(
                "feed reads after a cache flush ({} keys deleted)",
                result.flushed_keys
            ),
            &result.flushed,
        ),
    ];
    for (name, m) in phases {
        println!(
            "| {name} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            args.clients,
            m.ops_per_sec(),
            m.latency_ms(0.5),
            m.latency_ms(0.99),
            m.latency_ms(0.999),
            m.failures + m.conflicts
        );
    }
    println!(
        "\nFan-out on write: one post by an author with {} followers, into {} timelines (the \
         author's own too).\n",
        args.followers,
        args.followers + 1
    );
    println!("| round | `POST /v1/posts` ms | 201 → in every timeline, ms | 201 → checkpoint passed, ms |");
    println!("|---:|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (i, round) in result.fanout.iter().enumerate() {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            i + 1,
            ms(round.publish),
            ms(round.delivered),
            ms(round.checkpointed)
        );
    }
    let column = |f: fn(&feed::FanoutRound) -> Duration| {
        feed::median(&result.fanout.iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "| median | {:.1} | {:.1} | {:.1} |",
        ms(column(|r| r.publish)),
        ms(column(|r| r.delivered)),
        ms(column(|r| r.checkpointed))
    );
    dropped
}

async fn relay_bench(args: RelayArgs) -> anyhow::Result<()> {
    if args.rate == 0 || args.seconds == 0 || args.backlog == 0 || args.batch_size == 0 {
        bail!("--rate, --seconds, --backlog and --batch-size must be at least 1");
    }
    let load = relay::RelayLoad {
        brokers: args.kafka_brokers.clone(),
        rate: args.rate,
        duration: Duration::from_secs(args.seconds),
        backlog: args.backlog,
        batch_size: args.batch_size,
        mock_broker: args.mock_broker,
    };
    let db = BenchDatabase::create(&args.server.database_url, &args.database_name).await?;
    let server = db.facts().await?;
    let measured = relay::run(&db, &load).await;
    let dropped = db.drop_database().await;
    let result = measured?;
    println!(
        "`{bench} relay --rate {} --seconds {} --backlog {} \
         --batch-size {}{}` (broker: {})\n",
        args.rate,
        args.seconds,
        args.backlog,
        args.batch_size,
        if args.mock_broker {
            " --mock-broker"
        } else {
            ""
        },
        args.kafka_brokers,
        bench = invocation()
    );
    println!(
        "PostgreSQL {} (synchronous_commit={}).\n",
        server.server_version, server.synchronous_commit
    );
    let ms = |q: f64| result.latency.value_at_quantile(q) as f64 / 1000.0;
    println!("| phase | figure |\n|---|---|");
    println!(
        "| append → Kafka ack at {:.0} events/s ({} events) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        result.achieved_rate,
        result.latency.len(),
        ms(0.5),
        ms(0.99),
        result.latency.max() as f64 / 1000.0
    );
    println!(
        "| drain a backlog of {} events | {:.1} s, {:.0} events/s |",
        result.backlog,
        result.drain.as_secs_f64(),
        result.backlog as f64 / result.drain.as_secs_f64()
    );
    if let Some((events, took)) = result.mock_drain {
        println!(
            "| drain the whole log ({events} events) into librdkafka's mock broker | {:.1} s, {:.0} events/s |",
            took.as_secs_f64(),
            events as f64 / took.as_secs_f64()
        );
    }
    dropped
}

async fn lag_bench(args: LagArgs) -> anyhow::Result<()> {
    if args.rate == 0 || args.seconds == 0 || args.users < 10 {
        bail!("--rate and --seconds must be at least 1, --users at least 10");
    }
    let load = lag::LagLoad {
        rate: args.rate,
        seconds: args.seconds,
        users: args.users,
        follows_per_user: args.follows_per_user,
        redis_url: args.redis_url.clone(),
    };
    let mut sources = vec![lag::LagSource::Log {
        event_by_event: false,
    }];
    if args.baseline {
        sources.push(lag::LagSource::Log {
            event_by_event: true,
        });
    }
    if args.kafka {
        sources.push(lag::LagSource::Kafka {
            brokers: args.kafka_brokers.clone(),
        });
    }
    let mut results = Vec::new();
    let mut server = None;
    for source in &sources {
        let db = BenchDatabase::create(&args.server.database_url, &args.database_name).await?;
        server = Some(db.facts().await?);
        let measured = lag::run(&db, &load, source).await;
        let dropped = db.drop_database().await;
        results.push(measured?);
        dropped?;
    }
    let server = server.context("no source was measured")?;
    let cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    println!(
        "`{bench} lag --rate {} --seconds {} --users {} \
         --follows-per-user {}{}{}`\n",
        args.rate,
        args.seconds,
        args.users,
        args.follows_per_user,
        if args.baseline { " --baseline" } else { "" },
        if args.kafka { " --kafka" } else { "" },
        bench = invocation()
    );
    println!(
        "{cores} cores; PostgreSQL {} (synchronous_commit={}, shared_buffers={}); Redis; lite \
         read models; writer, projections{} in one process.\n",
        server.server_version,
        server.synchronous_commit,
        server.shared_buffers,
        if args.kafka { " and relay" } else { "" }
    );
    for r in &results {
        let mix: Vec<String> = r.mix.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!(
            "{}: {} setup events (applied by both projections in {:.1} s); {} timed appends at {:.0} events/s ({}); append call p50 \
             {:.2} ms, p99 {:.2} ms.",
            r.source.describe(),
            r.setup_events,
            r.catch_up.as_secs_f64(),
            r.appended,
            r.achieved_rate,
            mix.join(", "),
            r.append.value_at_quantile(0.5) as f64 / 1000.0,
            r.append.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "\n| source | projection | events applied | applied/s | p50 ms | p99 ms | p99.9 ms | max ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        if let Some(h) = &r.kafka_ack {
            println!(
                "| {} | (append → Kafka ack, all events) | {} | — | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.source.describe(),
                h.len(),
                ms(h, 0.5),
                ms(h, 0.99),
                ms(h, 0.999),
                h.max() as f64 / 1000.0
            );
        }
        for p in &r.projections {
            println!(
                "| {} | `{}` | {} (all){} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.source.describe(),
                p.name,
                p.applied,
                if p.ahead_of_ack > 0 {
                    format!(", {} before their append returned", p.ahead_of_ack)
                } else {
                    String::new()
                },
                p.applied_per_sec,
                ms(&p.lag, 0.5),
                ms(&p.lag, 0.99),
                ms(&p.lag, 0.999),
                p.lag.max() as f64 / 1000.0
            );
        }
    }
    Ok(())
}

async fn replay_bench(args: ReplayArgs) -> anyhow::Result<()> {
    if args.events == 0 || args.batch_size == 0 {
        bail!("--events and --batch-size must be at least 1");
    }
    let kept = if args.keep_log {
        BenchDatabase::existing(&args.server.database_url, &args.database_name).await?
    } else {
        None
    };
    let (db, log_kept) = match kept {
        Some(db) if rebuild::kept_log(&db, rebuild::users(args.events)).await => (db, true),
        _ => (
            BenchDatabase::create(&args.server.database_url, &args.database_name).await?,
            false,
        ),
    };
    let load = rebuild::ReplayLoad {
        events: args.events,
        batch_size: args.batch_size,
        baseline: args.baseline,
        repeat: args.repeat,
        log_kept,
    };
    let server = db.facts().await?;
    let measured = rebuild::run(&db, &load).await;
    let dropped = if args.keep_log {
        Ok(())
    } else {
        db.drop_database().await
    };
    let result = measured?;
    println!(
        "`{bench} replay --events {} --batch-size {}{}{}{}`\n",
        args.events,
        args.batch_size,
        if args.baseline { " --baseline" } else { "" },
        if args.repeat > 1 {
            format!(" --repeat {}", args.repeat)
        } else {
            String::new()
        },
        if args.keep_log { " --keep-log" } else { "" },
        bench = invocation()
    );
    let appended = match result.generated_in {
        Some(took) => format!("appended in {:.1} s", took.as_secs_f64()),
        None => "kept from an earlier run (--keep-log)".to_owned(),
    };
    println!(
        "PostgreSQL {} (the replay's connections: synchronous_commit=off, enable_seqscan=off). A log of {} events \
         {appended}.\n",
        server.server_version,
        result.events,
    );
    println!("| phase | events | time | events/s | rows written |\n|---|---|---|---|---|");
    for model in &result.models {
        println!(
            "| replay `{}` {} (from scratch, not swapped) | {} | {:.1} s | {:.0} | {} |",
            model.model,
            if model.set_wise {
                "set-wise"
            } else {
                "event by event"
            },
            model.events,
            model.elapsed.as_secs_f64(),
            model.events as f64 / model.elapsed.as_secs_f64(),
            model.rows
        );
    }
    let (events, bytes, elapsed) = result.export;
    println!(
        "| export as NDJSON (every event, to a sink) | {events} | {:.1} s | {:.0} ({:.1} MB/s) | — |",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        bytes as f64 / 1e6 / elapsed.as_secs_f64()
    );
    dropped
}

async fn http_bench(args: HttpArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.register_clients == 0 || args.pool_size == 0 {
        bail!("--clients, --register-clients and --pool-size must be at least 1");
    }
    if args.seconds == 0 || args.register_seconds == 0 {
        bail!("--seconds and --register-seconds must be at least 1");
    }
    let cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    let load = http::HttpLoad {
        clients: args.clients,
        register_clients: args.register_clients,
        warmup: Duration::from_secs(args.warmup_seconds),
        publish: Duration::from_secs(args.seconds),
        register: Duration::from_secs(args.register_seconds),
        pool_size: args.pool_size,
        server_threads: if args.server_threads == 0 {
            cores
        } else {
            args.server_threads
        },
        redis_url: args.redis_url.clone(),
    };
    let db = BenchDatabase::create(&args.server.database_url, &args.database_name).await?;
    let server = db.facts().await?;
    let measured = http::run(&db, &load).await;
    let dropped = db.drop_database().await;
    let phases = measured?;
    println!(
        "`{bench} http --clients {} --register-clients {} --seconds {} \
         --register-seconds {} --warmup-seconds {} --pool-size {}{}`\n",
        args.clients,
        args.register_clients,
        args.seconds,
        args.register_seconds,
        args.warmup_seconds,
        args.pool_size,
        if args.telemetry { " --telemetry" } else { "" },
        bench = invocation()
    );
    if args.telemetry {
        println!(
            "Telemetry as `serve` installs it: LOG_FORMAT={}, RUST_LOG={}, spans {}.\n",
            std::env::var("LOG_FORMAT").unwrap_or_else(|_| "text".into()),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
            match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Ok(endpoint) if !endpoint.is_empty() => format!("exported to {endpoint}"),
                _ => "not exported".to_owned(),
            }
        );
    }
    println!(
        "{cores} cores; PostgreSQL {} (synchronous_commit={}, shared_buffers={}); the API on {} \
         worker threads, pool {}.\n",
        server.server_version,
        server.synchronous_commit,
        server.shared_buffers,
        load.server_threads,
        load.pool_size
    );
    println!("| phase | clients | commands/s | p50 ms | p99 ms | conflicts | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for phase in &phases {
        let m = &phase.measured;
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
            phase.name,
            phase.clients,
            m.ops_per_sec(),
            m.latency_ms(0.5),
            m.latency_ms(0.99),
            m.conflicts,
            m.failures
        );
    }
    dropped
}

async fn appends(args: AppendsArgs) -> anyhow::Result<()> {
    let load = args.load()?;
    let db = BenchDatabase::create(&args.server.database_url, &args.database_name).await?;
    eprintln!("Created database {}.", db.name());
    let measured = run_scenarios(&db, load, args.command()).await;
    // Clean up whatever happened, but report the results before a failed drop.
    let dropped = if args.keep {
        eprintln!("Kept database {}.", db.name());
        Ok(())
    } else {
        db.drop_database().await
    };
    let report = measured?;
    println!("{}", report.markdown());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report.json()).context("encoding JSON")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    dropped
}

async fn run_scenarios(db: &BenchDatabase, load: Load, command: String) -> anyhow::Result<Report> {
    let server = db.facts().await?;
    let cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    let scenarios = |kinds: &[Kind]| {
        kinds
            .iter()
            .map(|&kind| Scenario::new(kind, &load))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let mut single = scenarios(&Kind::SINGLE_EVENT)?;
    let mut batch = scenarios(&Kind::BATCH)?;
    for round in 0..load.rounds {
        run_round(&mut single, db, &load, round).await?;
        run_round(&mut batch, db, &load, round).await?;
    }
    Ok(Report {
        command,
        load,
        cores,
        server,
        single,
        batch,
    })
}

/// One slice of every scenario of `group`, in order in even rounds and reversed in odd ones.
async fn run_round(
    group: &mut [Scenario],
    db: &BenchDatabase,
    load: &Load,
    round: u32,
) -> anyhow::Result<()> {
    let reversed = round % 2 == 1;
    if reversed {
        group.reverse();
    }
    for scenario in group.iter_mut() {
        scenario.run_slice(db, load, round).await?;
    }
    if reversed {
        group.reverse();
    }
    Ok(())
}
