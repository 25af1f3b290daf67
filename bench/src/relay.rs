//! `bench relay`: the outbox relay against a real Kafka-protocol broker.
//!
//! Two phases on one fresh database, with the relay running in this process
//! (`relay::Relay`, exactly as `hybridlive relay` runs it):
//! - **latency**: one writer issues single-event appends at a fixed `--rate` (each append on
//!   its own task, so a slow append does not lower the rate) for `--seconds`; an event's
//!   latency is from the start of its `append` call to the moment the relay saw Kafka
//!   acknowledge it (`acks=all`) — commit, wake-up, read, produce and acknowledgement;
//! - **throughput**: with the relay stopped, `--backlog` events are appended (100 per
//!   append); a relay then starts from the checkpoint and the time until Kafka acknowledged
//!   the last of them gives its maximum events/s (read, produce, acknowledge, checkpoint).
//!   With `--mock-broker`, a second relay (a name of its own, so from the start of the log)
//!   then drains the same log into librdkafka's mock broker: the Kafka protocol over TCP
//!   on loopback, records kept in memory, no disk and no replication. The broker costs
//!   next to nothing there, so the figure is the relay's own ceiling on this machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use event_schemas::Metadata;
use hdrhistogram::Histogram;
use relay::{Relay, RelaySettings};
use store::{AppendRequest, NewEvent, PgEventStore, RecordedEvent};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::setup::BenchDatabase;

/// What one `bench relay` run does.
#[derive(Debug, Clone)]
pub struct RelayLoad {
    pub brokers: String,
    pub rate: u32,
    pub duration: Duration,
    pub backlog: usize,
    pub batch_size: u32,
    /// Also drain the log into librdkafka's mock broker.
    pub mock_broker: bool,
}

/// The figures of one run.
#[derive(Debug)]
pub struct RelayResult {
    /// Microseconds from `append` to Kafka's acknowledgement.
    pub latency: Histogram<u64>,
    pub achieved_rate: f64,
    pub backlog: usize,
    pub drain: Duration,
    /// Events drained into the mock broker, and how long that took.
    pub mock_drain: Option<(usize, Duration)>,
}

type Acks = Arc<Mutex<HashMap<Uuid, Instant>>>;

/// Runs both phases.
///
/// # Errors
/// When the database, the broker or the relay fail.
pub async fn run(db: &BenchDatabase, load: &RelayLoad) -> anyhow::Result<RelayResult> {
    let pool = db.pool(16, None).await?;
    let store = PgEventStore::new(pool.clone());
    // Deleted at the end: each run leaves some 100 MB of messages on the broker otherwise.
    let topics = testkit::kafka::TestTopics::on(&load.brokers);
    let settings = RelaySettings {
        brokers: load.brokers.clone(),
        topic_prefix: topics.prefix.clone(),
        batch_size: load.batch_size,
        ..RelaySettings::default()
    };
    let acks: Acks = Arc::default();
    let start_relay = |acks: Acks| start(&pool, settings.clone(), acks);

    // Latency at a fixed rate.
    let (stop, task) = start_relay(acks.clone());
    let warm = append(&store, "warmup", 0, 1).await?;
    wait_for(&acks, &warm, Duration::from_secs(60)).await?;
    eprintln!(
        "relay: latency phase, {} events/s for {:?}",
        load.rate, load.duration
    );
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / load.rate);
    let mut appends = Vec::new();
    let mut n = 0u64;
    while started.elapsed() < load.duration {
        ticks.tick().await;
        let store = store.clone();
        n += 1;
        appends.push(tokio::spawn(async move {
            let at = Instant::now();
            let ids = append(&store, &format!("s{}", n % 1000), (n - 1) / 1000, 1).await?;
            Ok::<_, anyhow::Error>((ids, at))
        }));
    }
    let achieved_rate = n as f64 / started.elapsed().as_secs_f64();
    let mut sent = Vec::with_capacity(appends.len());
    for handle in appends {
        sent.push(handle.await.context("append task")??);
    }
    let last = sent
        .iter()
        .flat_map(|(ids, _)| ids.clone())
        .collect::<Vec<_>>();
    wait_for(&acks, &last, Duration::from_secs(60)).await?;
    let mut latency = Histogram::<u64>::new(3).context("histogram")?;
    {
        let acks = acks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for (ids, at) in &sent {
            for id in ids {
                let acked = acks.get(id).context("an event was not acknowledged")?;
                let micros = acked.saturating_duration_since(*at).as_micros();
                latency.record(u64::try_from(micros)?.max(1))?;
            }
        }
    }
    stop.cancel();
    task.await.context("relay task")?;

    // Throughput from a backlog.
    eprintln!("relay: appending a backlog of {} events", load.backlog);
    let mut writers = Vec::new();
    let per_writer = load.backlog.div_ceil(8 * 100);
    for w in 0..8 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..per_writer {
                ids.extend(append(&store, &format!("backlog{w}"), (i * 100) as u64, 100).await?);
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut backlog_ids = Vec::new();
    for writer in writers {
        backlog_ids.extend(writer.await.context("writer task")??);
    }
    let backlog = backlog_ids.len();
    eprintln!("relay: draining {backlog} events");
    let acks: Acks = Arc::default();
    let started = Instant::now();
    let (stop, task) = start_relay(acks.clone());
    wait_for(&acks, &backlog_ids, Duration::from_secs(600)).await?;
    let drain = started.elapsed();
    stop.cancel();
    task.await.context("relay task")?;
    let mock_drain = if load.mock_broker {
        eprintln!("relay: draining the whole log again, into librdkafka's mock broker");
        Some(drain_into_mock_broker(&pool, &settings, &backlog_ids).await?)
    } else {
        None
    };
    pool.close().await;
    topics.delete_now();
    Ok(RelayResult {
        latency,
        achieved_rate,
        backlog,
        drain,
        mock_drain,
    })
}

/// A relay on `pool` with `settings`, recording in `acks` when Kafka acknowledged each
/// event; stopped by cancelling the token.
fn start(
    pool: &sqlx::PgPool,
    settings: RelaySettings,
    acks: Acks,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let hook: relay::PublishedHook = Arc::new(move |batch: &[RecordedEvent]| {
        let now = Instant::now();
        if let Ok(mut acks) = acks.lock() {
            acks.extend(batch.iter().map(|e| (e.event_id, now)));
        }
    });
    let relay = Relay::new(pool.clone(), settings).on_published(hook);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { relay.run(stop).await }
    });
    (stop, task)
}

/// The whole log, from its start, drained by a relay of its own into librdkafka's mock
/// broker (one broker; the topic made beforehand, as the mock has no CreateTopics) until
/// `last` are acknowledged. Returns the events it published and the time it took.
async fn drain_into_mock_broker(
    pool: &sqlx::PgPool,
    settings: &RelaySettings,
    last: &[Uuid],
) -> anyhow::Result<(usize, Duration)> {
    let cluster = rdkafka::mocking::MockCluster::new(1).context("starting the mock broker")?;
    cluster
        .create_topic(
            &format!("{}bench", settings.topic_prefix),
            settings.topic_partitions,
            1,
        )
        .context("creating the topic on the mock broker")?;
    let settings = RelaySettings {
        brokers: cluster.bootstrap_servers(),
        name: "bench-mock-broker".into(),
        create_topics: false,
        ..settings.clone()
    };
    let acks: Acks = Arc::default();
    let started = Instant::now();
    let (stop, task) = start(pool, settings, acks.clone());
    wait_for(&acks, last, Duration::from_secs(600)).await?;
    let drain = started.elapsed();
    stop.cancel();
    task.await.context("relay task")?;
    let published = acks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.len();
    Ok((published, drain))
}

async fn append(
    store: &PgEventStore,
    stream: &str,
    expected: u64,
    events: u64,
) -> anyhow::Result<Vec<Uuid>> {
    let events: Vec<NewEvent> = (0..events)
        .map(|i| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "bench.happened".into(),
            schema_version: 1,
            payload: serde_json::json!({ "n": expected + i + 1, "text": "x".repeat(200) }),
        })
        .collect();
    let ids = events.iter().map(|e| e.event_id).collect();
    store
        .append(&AppendRequest {
            stream_type: "bench".into(),
            stream_id: stream.into(),
            expected_version: expected,
            events,
            metadata: Metadata {
                correlation_id: Some(Uuid::new_v4().to_string()),
                ..Metadata::default()
            },
            claims: Vec::new(),
            credentials: Vec::new(),
            erases_subject: false,
        })
        .await
        .with_context(|| format!("appending to {stream}"))?;
    Ok(ids)
}

/// Waits until every one of `ids` was acknowledged. Acknowledgements only accumulate, so
/// each check goes on from the first id still missing: a check costs the ids acknowledged
/// since the last one, not all of them (200k lookups every 5 ms under the lock the relay's
/// hook takes cost the relay a third of its throughput).
async fn wait_for(acks: &Acks, ids: &[Uuid], limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut confirmed = 0;
    loop {
        {
            let acks = acks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            while ids.get(confirmed).is_some_and(|id| acks.contains_key(id)) {
                confirmed += 1;
            }
        }
        if confirmed == ids.len() {
            return Ok(());
        }
        if start.elapsed() > limit {
            let (first, of) = (confirmed + 1, ids.len());
            bail!("event {first} of {of} (and maybe later ones) not acknowledged by Kafka within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
