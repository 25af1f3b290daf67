//! `hybridlive relay` against a real Kafka-protocol broker (`KAFKA_BROKERS`, default
//! 127.0.0.1:9092; `scripts/test.sh` starts one): processes are killed with SIGKILL and
//! restarted while 16 writers append, and two instances compete for the lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_schemas::Metadata;
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use store::{AppendRequest, NewEvent, PgEventStore, RecordedEvent};
use testkit::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

const STREAM_TYPES: [&str; 2] = ["post", "user"];
const PARTITIONS: i32 = 3;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A relay process on the test's database, publishing under its own topic prefix.
fn spawn_relay(db: &TestDb, prefix: &str) -> Child {
    relay_command(db, prefix)
        .spawn()
        .expect("the hybridlive binary runs")
}

fn relay_command(db: &TestDb, prefix: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hybridlive"));
    command
        .arg("relay")
        .env("DATABASE_URL", &db.url)
        .env("KEY_ENCRYPTION_KEY", testkit::TEST_KEY_ENCRYPTION_KEY)
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC_PREFIX", prefix)
        .env("KAFKA_TOPIC_PARTITIONS", PARTITIONS.to_string())
        .env("RELAY_BATCH_SIZE", "500")
        .env("RELAY_STANDBY_MS", "200")
        .env("RUST_LOG", "warn,relay=info")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

fn append(stream_type: &str, stream_id: &str, expected: u64, events: u64) -> AppendRequest {
    AppendRequest {
        stream_type: stream_type.into(),
        stream_id: stream_id.into(),
        expected_version: expected,
        events: (1..=events)
            .map(|i| NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "test.happened".into(),
                schema_version: 1,
                payload: json!({ "version": expected + i }),
            })
            .collect(),
        metadata: Metadata {
            correlation_id: Some(format!("{stream_id}@{}", expected + 1)),
            ..Metadata::default()
        },
        claims: Vec::new(),
        credentials: Vec::new(),
        erases_subject: false,
    }
}

/// The position of the last event in read order, once no write transaction is open.
async fn end_of_log(db: &TestDb) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT global_position FROM events ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

async fn relayed_up_to(db: &TestDb) -> Option<i64> {
    sqlx::query_scalar("SELECT global_position FROM checkpoints WHERE name = 'relay'")
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

/// Waits until the relay's checkpoint (saved only after Kafka acknowledged) reaches the end
/// of the log; returns how long that took.
async fn wait_until_relayed(db: &TestDb, limit: Duration) -> Duration {
    let start = Instant::now();
    let end = end_of_log(db).await;
    while relayed_up_to(db).await != end {
        assert!(
            start.elapsed() < limit,
            "relay checkpoint {:?} did not reach {end:?} within {limit:?}",
            relayed_up_to(db).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Every message of the test's topics, per partition in offset order.
fn consume_all(prefix: &str) -> Vec<(String, Vec<RecordedEvent>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{prefix}test"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut result = Vec::new();
    for stream_type in STREAM_TYPES {
        let topic = format!("{prefix}{stream_type}");
        for partition in 0..PARTITIONS {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .unwrap();
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&topic, partition, Offset::Offset(low))
                .unwrap();
            consumer.assign(&assignment).unwrap();
            let mut events = Vec::new();
            let mut next = low;
            let deadline = Instant::now() + Duration::from_secs(60);
            while next < high {
                assert!(
                    Instant::now() < deadline,
                    "{topic}/{partition} stalled at {next} of {high}"
                );
                let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let message = message.unwrap();
                next = message.offset() + 1;
                let event: RecordedEvent =
                    serde_json::from_slice(message.payload().unwrap()).unwrap();
                assert_eq!(message.key(), Some(event.stream_id.as_bytes()));
                let headers = message.headers().unwrap();
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8(v.to_vec()).unwrap())
                };
                assert_eq!(header("event_id"), Some(event.event_id.to_string()));
                assert_eq!(header("event_type").as_deref(), Some("test.happened"));
                assert_eq!(header("schema_version").as_deref(), Some("1"));
                assert_eq!(
                    header("global_position"),
                    Some(event.global_position.to_string())
                );
                assert!(header("correlation_id").is_some());
                events.push(event);
            }
            result.push((format!("{topic}/{partition}"), events));
        }
    }
    result
}

/// What a consumer that deduplicates by (stream, version) does with the messages: applies
/// each stream's next version, drops what it already applied, and fails on a gap.
/// Returns (applied per stream, duplicates dropped).
fn apply_exactly_once(
    partitions: &[(String, Vec<RecordedEvent>)],
) -> (HashMap<String, u64>, usize) {
    let mut applied: HashMap<String, u64> = HashMap::new();
    let mut duplicates = 0;
    for (partition, events) in partitions {
        for event in events {
            let key = format!("{}/{}", event.stream_type, event.stream_id);
            let last = applied.entry(key.clone()).or_default();
            if event.stream_version <= *last {
                duplicates += 1;
            } else {
                assert_eq!(
                    event.stream_version,
                    *last + 1,
                    "{key} jumped from {last} to {} in {partition}: an event was skipped or reordered",
                    event.stream_version
                );
                *last = event.stream_version;
            }
        }
    }
    (applied, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_reaches_kafka_in_stream_order_across_two_relay_kills() {
    let db = TestDb::new().await;
    let topics = testkit::kafka::TestTopics::new();
    let prefix = topics.prefix.clone();
    let store = PgEventStore::new(db.pool.clone());
    let mut relay = spawn_relay(&db, &prefix);

    // 16 writers, each over its own 25 streams, appends of 1–4 events, 50k+ events in all.
    const WRITERS: usize = 16;
    const TARGET: usize = 50_000;
    let written = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let written = written.clone();
            tokio::spawn(async move {
                let mut versions = [0u64; 25];
                let mut committed: HashMap<String, u64> = HashMap::new();
                while written.load(Ordering::Relaxed) < TARGET {
                    let (s, n) = {
                        let mut rng = rand::thread_rng();
                        (rng.gen_range(0..versions.len()), rng.gen_range(1..=4u64))
                    };
                    let stream_type = STREAM_TYPES[s % 2];
                    let stream_id = format!("w{w}-s{s}");
                    store
                        .append(&append(stream_type, &stream_id, versions[s], n))
                        .await
                        .unwrap();
                    versions[s] += n;
                    committed.insert(format!("{stream_type}/{stream_id}"), versions[s]);
                    written.fetch_add(n as usize, Ordering::Relaxed);
                }
                committed
            })
        })
        .collect();

    // Kill the relay twice mid-stream (SIGKILL: no chance to finish its batch), restart it.
    for kill_at in [TARGET / 3, 2 * TARGET / 3] {
        while written.load(Ordering::Relaxed) < kill_at {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        relay.start_kill().unwrap();
        relay.wait().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        relay = spawn_relay(&db, &prefix);
    }
    let mut committed: HashMap<String, u64> = HashMap::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }
    let total: u64 = committed.values().sum();
    assert!(total >= TARGET as u64);
    wait_until_relayed(&db, Duration::from_secs(120)).await;

    let partitions = consume_all(&prefix);
    let (applied, duplicates) = apply_exactly_once(&partitions);
    assert_eq!(
        applied, committed,
        "every stream fully applied, nothing extra"
    );
    let published: usize = partitions.iter().map(|(_, events)| events.len()).sum();
    assert_eq!(published, total as usize + duplicates);
    // Duplicates only at the two restart boundaries: at most the batch in flight each time.
    eprintln!("{total} events, {published} messages, {duplicates} duplicates");
    assert!(duplicates <= 2 * 500, "{duplicates} duplicates");
    let ids: HashSet<Uuid> = partitions
        .iter()
        .flat_map(|(_, events)| events.iter().map(|e| e.event_id))
        .collect();
    assert_eq!(ids.len(), total as usize);
    relay.start_kill().unwrap();
}

/// The OS process id of the relay holding the lease, read from PostgreSQL.
async fn active_relay(db: &TestDb) -> Vec<u32> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
          WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    names
        .iter()
        .map(|name| {
            name.strip_prefix("hybridlive relay ")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_relays_exactly_one_publishes_and_the_other_takes_over_within_5s_of_a_kill() {
    let db = TestDb::new().await;
    let topics = testkit::kafka::TestTopics::new();
    let prefix = topics.prefix.clone();
    let store = PgEventStore::new(db.pool.clone());
    let mut relays = [spawn_relay(&db, &prefix), spawn_relay(&db, &prefix)];

    // 200 single-event appends over 50 streams; a stream keeps its type.
    let mut versions = [0u64; 50];
    let mut write = async |store: &PgEventStore| {
        for i in 0..200 {
            let s = i % 50;
            let request = append(STREAM_TYPES[s % 2], &format!("s{s}"), versions[s], 1);
            store.append(&request).await.unwrap();
            versions[s] += 1;
        }
    };
    write(&store).await;
    wait_until_relayed(&db, Duration::from_secs(30)).await;
    let active = active_relay(&db).await;
    assert_eq!(
        active.len(),
        1,
        "exactly one relay holds the lease: {active:?}"
    );
    let (index, _) = relays
        .iter()
        .enumerate()
        .find(|(_, child)| child.id() == Some(active[0]))
        .expect("the lease holder is one of our relays");

    // Kill the active one; events appended right after must reach Kafka through the other.
    let killed_at = Instant::now();
    relays[index].start_kill().unwrap();
    relays[index].wait().await.unwrap();
    write(&store).await;
    wait_until_relayed(&db, Duration::from_secs(30)).await;
    let takeover = killed_at.elapsed();
    eprintln!("the standby published the events appended after the kill {takeover:?} after it");
    assert!(
        takeover < Duration::from_secs(5),
        "took over after {takeover:?}"
    );
    let survivor = relays[1 - index].id().unwrap();
    assert_eq!(active_relay(&db).await, vec![survivor]);

    // Only one ever published: 400 events, 400 messages, no duplicate.
    let partitions = consume_all(&prefix);
    let (applied, duplicates) = apply_exactly_once(&partitions);
    assert_eq!(duplicates, 0);
    assert_eq!(applied.values().sum::<u64>(), 400);
}

#[tokio::test]
async fn a_relay_serves_its_metrics_on_metrics_addr() {
    let db = TestDb::new().await;
    let topics = testkit::kafka::TestTopics::new();
    let prefix = topics.prefix.clone();
    // Port 0: the relay binds a free port and logs it (a port picked here and passed on
    // could be taken by another process in between).
    let mut relay = relay_command(&db, &prefix)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn,relay=info,hybridlive=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(relay.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the relay logs its metrics address within 30 s")
            .unwrap()
            .expect("the relay runs");
        if line.contains("Serving /metrics.") {
            // `addr=127.0.0.1:<port>` (with colour codes around the `=` on a terminal).
            let (_, after) = line
                .split_once("127.0.0.1:")
                .expect("the address is logged");
            let port: String = after.chars().take_while(char::is_ascii_digit).collect();
            break format!("127.0.0.1:{port}");
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let store = PgEventStore::new(db.pool.clone());
    store.append(&append("post", "p1", 0, 3)).await.unwrap();
    wait_until_relayed(&db, Duration::from_secs(30)).await;
    // The endpoint may answer a moment after the relay started: poll it.
    let start = Instant::now();
    let metrics = loop {
        let answer = match reqwest::get(format!("http://{addr}/metrics")).await {
            Ok(response) => format!("{}\n{}", response.status(), response.text().await.unwrap()),
            Err(error) => format!("no answer: {error}"),
        };
        if answer.contains("relay_published_total 3") || start.elapsed() > Duration::from_secs(10) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("relay_published_total 3"), "{metrics}");
    assert!(metrics.contains("relay_active 1"), "{metrics}");
    relay.start_kill().unwrap();
}
