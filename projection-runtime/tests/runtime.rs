//! The projection runtime on the PostgreSQL log: poison events are dead-lettered and
//! retried, a store outage is waited out, nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_schemas::{EventEnvelope, Metadata};
use projection_runtime::{ApplyError, DeadLetters, KafkaSource, Projection, RetryPolicy, Runner};
use serde_json::json;
use sqlx::PgPool;
use store::{AppendRequest, NewEvent, PgEventStore};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Records applied event ids in a table; refuses the `poison` ids (until `fixed`) and
/// everything while `down`. With `batches`, applies a batch in one statement, refused
/// whole when it holds a poison id.
struct Recorder {
    name: String,
    pool: PgPool,
    poison: Mutex<HashSet<Uuid>>,
    fixed: AtomicBool,
    down: AtomicBool,
    attempts: AtomicU32,
    batches: AtomicBool,
    batch_attempts: AtomicU32,
    /// Events applied in batches that succeeded.
    batched: AtomicU32,
    /// How long applying one event takes.
    pace: Duration,
}

impl Recorder {
    async fn new(pool: PgPool) -> Self {
        sqlx::query("CREATE TABLE IF NOT EXISTS applied (event_id uuid PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        Self {
            name: "recorder".into(),
            pool,
            poison: Mutex::default(),
            fixed: AtomicBool::new(false),
            down: AtomicBool::new(false),
            attempts: AtomicU32::new(0),
            batches: AtomicBool::new(false),
            batch_attempts: AtomicU32::new(0),
            batched: AtomicU32::new(0),
            pace: Duration::ZERO,
        }
    }
}

impl Projection for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type == "social.followed"
    }

    fn applies_batches(&self) -> bool {
        self.batches.load(Ordering::Relaxed)
    }

    async fn apply_batch(&self, events: &[EventEnvelope]) -> Result<(), ApplyError> {
        self.batch_attempts.fetch_add(1, Ordering::Relaxed);
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let poisoned = ids
            .iter()
            .any(|id| self.poison.lock().unwrap().contains(id));
        if poisoned && !self.fixed.load(Ordering::Relaxed) {
            return Err(ApplyError::Poison("a poison event in the batch".into()));
        }
        sqlx::query("INSERT INTO applied SELECT * FROM unnest($1::uuid[]) ON CONFLICT DO NOTHING")
            .bind(&ids)
            .execute(&self.pool)
            .await
            .map_err(|e| ApplyError::Transient(e.to_string()))?;
        self.batched
            .fetch_add(u32::try_from(ids.len()).unwrap(), Ordering::Relaxed);
        Ok(())
    }

    async fn apply(&self, event: &EventEnvelope) -> Result<(), ApplyError> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if !self.pace.is_zero() {
            tokio::time::sleep(self.pace).await;
        }
        if self.down.load(Ordering::Relaxed) {
            return Err(ApplyError::Transient("the store is down".into()));
        }
        let poisoned = self.poison.lock().unwrap().contains(&event.event_id);
        if poisoned && !self.fixed.load(Ordering::Relaxed) {
            return Err(ApplyError::Poison(format!(
                "cannot apply {}",
                event.event_id
            )));
        }
        sqlx::query("INSERT INTO applied VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(event.event_id)
            .execute(&self.pool)
            .await
            .map_err(|e| ApplyError::Transient(e.to_string()))?;
        Ok(())
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
    }
}

/// Appends `n` follow events (each its own stream); returns their ids.
async fn follows(store: &PgEventStore, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = Uuid::now_v7();
        store
            .append(&AppendRequest {
                stream_type: "social".into(),
                stream_id: Uuid::new_v4().to_string(),
                expected_version: 0,
                events: vec![NewEvent {
                    event_id: id,
                    event_type: "social.followed".into(),
                    schema_version: 1,
                    payload: json!({ "follower_id": Uuid::new_v4(), "followee_id": Uuid::new_v4() }),
                }],
                metadata: Metadata::default(),
                claims: Vec::new(),
                credentials: Vec::new(),
                erases_subject: false,
            })
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

async fn applied(pool: &PgPool) -> HashSet<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM applied")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn catch_up<P: Projection>(runner: &Runner<P>) {
    runner.catch_up(&CancellationToken::new()).await.unwrap();
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_with_its_error_and_retried_once_fixed() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let recorder = Recorder::new(db.pool.clone()).await;
    let ids = follows(&store, 20).await;
    recorder.poison.lock().unwrap().insert(ids[7]);
    let runner = Runner::new(db.pool.clone(), recorder, policy());

    catch_up(&runner).await;
    let done = applied(&db.pool).await;
    assert_eq!(
        done.len(),
        19,
        "the projection went on past the poison event"
    );
    assert!(!done.contains(&ids[7]));
    let dead = DeadLetters::new(db.pool.clone());
    let letters = dead.list(Some("recorder")).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_id, ids[7]);
    assert_eq!(letters[0].attempts, 3, "dead-lettered after max_attempts");
    assert!(
        letters[0].error.contains("cannot apply"),
        "{}",
        letters[0].error
    );

    // Still broken: the retry keeps it dead; fixed: the retry applies it and clears it.
    assert_eq!(dead.retry(&runner).await.unwrap(), (1, 1));
    assert_eq!(dead.list(None).await.unwrap().len(), 1);
    runner.projection().fixed.store(true, Ordering::Relaxed);
    assert_eq!(dead.retry(&runner).await.unwrap(), (1, 0));
    assert!(dead.list(None).await.unwrap().is_empty());
    assert_eq!(applied(&db.pool).await, ids.into_iter().collect());
}

#[tokio::test]
async fn a_batch_that_fails_whole_is_applied_event_by_event_and_only_its_poison_is_dead_lettered() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let recorder = Recorder::new(db.pool.clone()).await;
    recorder.batches.store(true, Ordering::Relaxed);
    let ids = follows(&store, 20).await;
    recorder.poison.lock().unwrap().insert(ids[7]);
    let runner = Runner::new(db.pool.clone(), recorder, policy()).batch_size(5);

    catch_up(&runner).await;
    let done = applied(&db.pool).await;
    assert_eq!(done.len(), 19);
    assert!(!done.contains(&ids[7]));
    let letters = DeadLetters::new(db.pool.clone())
        .list(Some("recorder"))
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_id, ids[7]);
    // Four batches offered whole; only the second, which holds the poison, went event by
    // event: its four good events once each, the poison max_attempts times.
    let recorder = runner.projection();
    assert_eq!(recorder.batch_attempts.load(Ordering::Relaxed), 4);
    assert_eq!(recorder.attempts.load(Ordering::Relaxed), 4 + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_waited_out_with_backoff_and_nothing_is_lost() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let recorder = Recorder::new(db.pool.clone()).await;
    recorder.down.store(true, Ordering::Relaxed);
    let runner = Arc::new(Runner::new(db.pool.clone(), recorder, policy()));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let runner = runner.clone();
        let stop = stop.clone();
        async move { runner.run(&stop).await }
    });
    let ids = follows(&store, 50).await;

    // Ten seconds of outage: retried with backoff (capped at 200 ms: tens of attempts, not
    // the thousands a busy loop would make), nothing applied, nothing dead-lettered.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let attempts = runner.projection().attempts.load(Ordering::Relaxed);
    assert!(
        (20..=200).contains(&attempts),
        "{attempts} attempts in 10 s"
    );
    assert!(applied(&db.pool).await.is_empty());

    runner.projection().down.store(false, Ordering::Relaxed);
    let start = Instant::now();
    while applied(&db.pool).await.len() < ids.len() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(applied(&db.pool).await, ids.into_iter().collect());
    assert!(DeadLetters::new(db.pool.clone())
        .list(None)
        .await
        .unwrap()
        .is_empty());
    stop.cancel();
    task.await.unwrap().unwrap();
}

fn brokers() -> String {
    testkit::kafka_brokers()
}

/// A relay publishing the test's log under `prefix`, until the token is cancelled.
fn spawn_relay(
    db: &TestDb,
    prefix: &str,
    partitions: i32,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    spawn_relay_with(
        db,
        relay::RelaySettings {
            brokers: brokers(),
            topic_prefix: prefix.to_owned(),
            topic_partitions: partitions,
            ..relay::RelaySettings::default()
        },
    )
}

fn spawn_relay_with(
    db: &TestDb,
    settings: relay::RelaySettings,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let relay = relay::Relay::new(db.pool.clone(), settings);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { relay.run(stop).await }
    });
    (stop, task)
}

/// Consumes with `runner` until `applied` holds at least `until` events, then stops it
/// gracefully (offsets committed); returns how many events it was given.
async fn consume_until(
    db: &TestDb,
    runner: Runner<Recorder>,
    source: &KafkaSource,
    until: usize,
) -> (u32, u32) {
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        let source = source.clone();
        async move {
            runner.run_kafka(&source, &stop).await.unwrap();
            let recorder = runner.projection();
            (
                recorder.attempts.load(Ordering::Relaxed),
                recorder.batched.load(Ordering::Relaxed),
            )
        }
    });
    let start = Instant::now();
    while applied(&db.pool).await.len() < until {
        assert!(start.elapsed() < Duration::from_secs(60), "stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kafka_source_applies_every_relayed_event_across_a_consumer_restart() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let topics = testkit::kafka::TestTopics::new();
    let prefix = topics.prefix.clone();
    let (relay_stop, relay) = spawn_relay(&db, &prefix, 3);
    let ids = follows(&store, 1000).await;
    let source = KafkaSource {
        brokers: brokers(),
        topic_prefix: prefix,
        stream_types: vec!["social".into()],
        dlq_replication: 1,
        fetch_wait: projection_runtime::kafka::DEFAULT_FETCH_WAIT,
        relay: projection_runtime::kafka::DEFAULT_RELAY.to_owned(),
    };
    let group = format!("recorder-{}", Uuid::new_v4().simple());
    let runner = |recorder: Recorder| {
        Runner::new(
            db.pool.clone(),
            Recorder {
                name: group.clone(),
                ..recorder
            },
            policy(),
        )
    };

    // One consumer applies part of the stream and stops; the next resumes from the group's
    // committed offsets: every event applied, none lost (re-deliveries are idempotent). The
    // second takes what is waiting in batches.
    consume_until(
        &db,
        runner(Recorder::new(db.pool.clone()).await),
        &source,
        300,
    )
    .await;
    let first = applied(&db.pool).await.len();
    assert!((300..1000).contains(&first), "{first}");
    let batching = Recorder::new(db.pool.clone()).await;
    batching.batches.store(true, Ordering::Relaxed);
    let (one_by_one, batched) = consume_until(&db, runner(batching), &source, 1000).await;
    // It started from the committed offsets, not from the beginning.
    assert_eq!(
        (one_by_one + batched) as usize,
        1000 - first,
        "re-delivered after a graceful stop"
    );
    assert!(batched > 0, "no batch: {one_by_one} applied one by one");
    assert_eq!(applied(&db.pool).await, ids.into_iter().collect());
    assert!(DeadLetters::new(db.pool.clone())
        .list(None)
        .await
        .unwrap()
        .is_empty());
    relay_stop.cancel();
    relay.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_runners_of_one_projection_exactly_one_applies_and_the_other_takes_over() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let first = Arc::new(Runner::new(
        db.pool.clone(),
        Recorder::new(db.pool.clone()).await,
        policy(),
    ));
    let second = Arc::new(Runner::new(
        db.pool.clone(),
        Recorder::new(db.pool.clone()).await,
        policy(),
    ));
    let (stop_first, stop_second) = (CancellationToken::new(), CancellationToken::new());
    let running_first = {
        let (runner, stop) = (first.clone(), stop_first.clone());
        tokio::spawn(async move { runner.run(&stop).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let running_second = {
        let (runner, stop) = (second.clone(), stop_second.clone());
        tokio::spawn(async move { runner.run(&stop).await })
    };
    let before = follows(&store, 50).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while applied(&db.pool).await.len() < before.len() {
        assert!(
            Instant::now() < deadline,
            "the active runner did not apply the events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.projection().attempts.load(Ordering::Relaxed), 50);
    assert_eq!(
        second.projection().attempts.load(Ordering::Relaxed),
        0,
        "the standby applied nothing"
    );

    stop_first.cancel();
    running_first.await.unwrap().unwrap();
    let stopped = Instant::now();
    let after = follows(&store, 20).await;
    while applied(&db.pool).await.len() < before.len() + after.len() {
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "the standby did not take over within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("takeover after {:?}", stopped.elapsed());
    assert_eq!(first.projection().attempts.load(Ordering::Relaxed), 50);
    assert_eq!(
        second.projection().attempts.load(Ordering::Relaxed),
        20,
        "the new active runner resumed at the checkpoint: nothing applied twice"
    );
    stop_second.cancel();
    running_second.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_on_the_kafka_source_goes_to_the_dead_letter_topic_with_its_error() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};

    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let topics = testkit::kafka::TestTopics::new();
    let prefix = topics.prefix.clone();
    let (relay_stop, relay) = spawn_relay(&db, &prefix, 1);
    let ids = follows(&store, 20).await;
    let poison = ids[7];
    let group = format!("recorder-{}", Uuid::new_v4().simple());
    let recorder = Recorder {
        name: group.clone(),
        ..Recorder::new(db.pool.clone()).await
    };
    recorder.poison.lock().unwrap().insert(poison);
    // A batch holding the poison is refused whole, then applied one by one.
    recorder.batches.store(true, Ordering::Relaxed);
    let source = KafkaSource {
        brokers: brokers(),
        topic_prefix: prefix.clone(),
        stream_types: vec!["social".into()],
        dlq_replication: 1,
        fetch_wait: projection_runtime::kafka::DEFAULT_FETCH_WAIT,
        relay: projection_runtime::kafka::DEFAULT_RELAY.to_owned(),
    };
    consume_until(
        &db,
        Runner::new(db.pool.clone(), recorder, policy()),
        &source,
        19,
    )
    .await;
    let dead = DeadLetters::new(db.pool.clone()).list(None).await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.event_id).collect::<Vec<_>>(),
        vec![poison]
    );

    let reader: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set(
            "group.id",
            format!("dlq-reader-{}", Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader
        .subscribe(&[&format!("{prefix}{group}.dlq")])
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .expect("a dead letter on the topic")
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(event["event_id"], poison.to_string());
    let headers = message.headers().unwrap();
    let header = |key: &str| {
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("error"), Some(format!("cannot apply {poison}")));
    assert_eq!(header("source_topic"), Some(format!("{prefix}social")));
    assert_eq!(
        header("event_id"),
        Some(poison.to_string()),
        "the original headers are kept"
    );
    relay_stop.cancel();
    relay.await.unwrap();
}

/// Appends `n` events of a type the recorder does not handle, each its own stream.
async fn others(store: &PgEventStore, stream_type: &str, event_type: &str, n: usize) {
    for _ in 0..n {
        store
            .append(&AppendRequest {
                stream_type: stream_type.into(),
                stream_id: Uuid::new_v4().to_string(),
                expected_version: 0,
                events: vec![NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: event_type.into(),
                    schema_version: 1,
                    payload: json!({}),
                }],
                metadata: Metadata::default(),
                claims: Vec::new(),
                credentials: Vec::new(),
                erases_subject: false,
            })
            .await
            .unwrap();
    }
}

/// From now on, each time the checkpoint row `name` is written, records (in
/// `checkpoint_moves`, by a trigger in the writer's transaction) where it went and which
/// `social.followed` events at or before it the recorder had not applied at that moment.
async fn watch_checkpoint(pool: &PgPool, name: &str) {
    sqlx::raw_sql(&format!(
        r#"
        CREATE TABLE IF NOT EXISTS applied (event_id uuid PRIMARY KEY);
        CREATE TABLE checkpoint_moves (
            transaction_id xid8, global_position bigint, missing uuid[], at timestamptz
        );
        CREATE FUNCTION check_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO checkpoint_moves
            SELECT NEW.transaction_id, NEW.global_position,
                   coalesce(array_agg(e.event_id), '{{}}'), clock_timestamp()
              FROM events e
             WHERE e.event_type = 'social.followed'
               AND (e.transaction_id, e.global_position)
                   <= (NEW.transaction_id, NEW.global_position)
               AND NOT EXISTS (SELECT 1 FROM applied a WHERE a.event_id = e.event_id);
            RETURN NEW;
        END $$;
        CREATE TRIGGER check_checkpoint AFTER INSERT OR UPDATE ON checkpoints
            FOR EACH ROW WHEN (NEW.name = '{name}') EXECUTE FUNCTION check_checkpoint();
        "#
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// Runs a recorder of consumer group `group`, shaped by `recorder`, on the Kafka source in
/// batches of `batch_size` until cancelled (or aborted: a crash, nothing stored or committed
/// after the last batch), as `hybridlive project` runs a worker: when the source fails, a
/// new consumer takes over after a second. Returns how many times the source failed.
fn spawn_consumer(
    db: &TestDb,
    group: &str,
    source: &KafkaSource,
    stop: &CancellationToken,
    recorder: fn(Recorder) -> Recorder,
    batch_size: u32,
) -> tokio::task::JoinHandle<u32> {
    let (pool, group, source, stop) = (
        db.pool.clone(),
        group.to_owned(),
        source.clone(),
        stop.clone(),
    );
    tokio::spawn(async move {
        let recorder = recorder(Recorder {
            name: group,
            ..Recorder::new(pool.clone()).await
        });
        let runner = Runner::new(pool, recorder, policy()).batch_size(batch_size);
        let mut failures = 0;
        while let Err(error) = runner.run_kafka(&source, &stop).await {
            failures += 1;
            eprintln!("consumer failed ({error}); a new one in 1 s");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => break,
            }
        }
        failures
    })
}

/// Slow enough for a kill to come midway.
fn paced(recorder: Recorder) -> Recorder {
    Recorder {
        pace: Duration::from_millis(5),
        ..recorder
    }
}

/// Offered whole batches.
fn batching(recorder: Recorder) -> Recorder {
    recorder.batches.store(true, Ordering::Relaxed);
    recorder
}

async fn checkpoint(pool: &PgPool, name: &str) -> store::LogPosition {
    store::Checkpoints::new(pool.clone())
        .load(name)
        .await
        .unwrap()
}

/// Waits, up to `limit`, until checkpoint `name` is at the end of the log; returns the end.
async fn wait_for_the_end(pool: &PgPool, name: &str, limit: Duration) -> store::LogPosition {
    let end = store::LogReader::new(pool.clone())
        .last_up_to(i64::MAX)
        .await
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + limit;
    while checkpoint(pool, name).await < end {
        assert!(
            Instant::now() < deadline,
            "the checkpoint stayed at {:?}; the relay is at {:?}, the log ends at {end:?}",
            checkpoint(pool, name).await,
            checkpoint(pool, "relay").await,
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    end
}

/// Asserts that the watched checkpoint ([`watch_checkpoint`]) never passed an event not
/// applied yet; returns how many times it moved.
async fn assert_no_early_move(pool: &PgPool) -> usize {
    let moves: Vec<(i64, Vec<Uuid>)> =
        sqlx::query_as("SELECT global_position, missing FROM checkpoint_moves ORDER BY at")
            .fetch_all(pool)
            .await
            .unwrap();
    let early: Vec<_> = moves
        .iter()
        .filter(|(_, missing)| !missing.is_empty())
        .collect();
    assert!(
        early.is_empty(),
        "the checkpoint passed events not applied yet: {} of {} moves, first {:?}",
        early.len(),
        moves.len(),
        early.first()
    );
    moves.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kafka_checkpoint_never_passes_an_unapplied_event_across_a_killed_consumer_and_reaches_the_relay(
) {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let topics = testkit::kafka::TestTopics::new();
    let prefix = topics.prefix.clone();
    let group = format!("recorder-{}", Uuid::new_v4().simple());
    let checkpoint_name = format!("projection:{group}");
    watch_checkpoint(&db.pool, &checkpoint_name).await;
    // Small batches: many relay checkpoints, so many watermarks to check.
    let (relay_stop, relay) = spawn_relay_with(
        &db,
        relay::RelaySettings {
            brokers: brokers(),
            topic_prefix: prefix.clone(),
            topic_partitions: 4,
            batch_size: 20,
            ..relay::RelaySettings::default()
        },
    );
    // A backlog before the consumers start, and more appended while they run: the relay is
    // ahead of them, the watermark must wait for both of their partitions.
    let mut ids = follows(&store, 100).await;
    others(&store, "post", "post.published", 10).await;
    let source = KafkaSource {
        brokers: brokers(),
        topic_prefix: prefix,
        stream_types: vec!["post".into(), "social".into()],
        dlq_replication: 1,
        fetch_wait: projection_runtime::kafka::DEFAULT_FETCH_WAIT,
        relay: projection_runtime::kafka::DEFAULT_RELAY.to_owned(),
    };
    let stop = CancellationToken::new();
    let first = spawn_consumer(&db, &group, &source, &stop, paced, 25);
    let second = spawn_consumer(&db, &group, &source, &stop, paced, 25);
    let start = Instant::now();
    while applied(&db.pool).await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The group has joined: the writer goes on while they consume.
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            // Paced over about 4 s, so that the watermark has many chances to move while
            // the consumers run, also on a loaded machine (the check below needs moves).
            for _ in 0..40 {
                ids.extend(follows(&store, 10).await);
                others(&store, "post", "post.published", 1).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ids
        }
    });

    // One instance dies midway (its task dropped between two awaits: what it applied but
    // did not store is re-delivered), and a new one joins.
    while applied(&db.pool).await.len() < 150 {
        assert!(start.elapsed() < Duration::from_secs(60), "stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let killed_at = applied(&db.pool).await.len();
    let third = spawn_consumer(&db, &group, &source, &stop, paced, 25);
    ids.extend(writer.await.unwrap());
    assert!(killed_at < ids.len(), "the kill came after the end");
    while applied(&db.pool).await.len() < ids.len() {
        assert!(start.elapsed() < Duration::from_secs(120), "stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(applied(&db.pool).await, ids.iter().copied().collect());

    // Events of a topic the projection does not read: its checkpoint follows the relay's
    // all the same, to the end of the log.
    others(&store, "comment", "comment.added", 10).await;
    let end = wait_for_the_end(&db.pool, &checkpoint_name, Duration::from_secs(30)).await;
    assert_eq!(checkpoint(&db.pool, &checkpoint_name).await, end);
    assert_eq!(checkpoint(&db.pool, "relay").await, end);

    let moves = assert_no_early_move(&db.pool).await;
    assert!(moves >= 5, "the checkpoint moved only {moves} times");
    println!("the checkpoint moved {moves} times");
    stop.cancel();
    assert_eq!(
        second.await.unwrap(),
        0,
        "the second consumer's source failed"
    );
    assert_eq!(
        third.await.unwrap(),
        0,
        "the third consumer's source failed"
    );
    relay_stop.cancel();
    relay.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_is_applied_and_the_checkpoint_stays_sound_across_a_killed_and_restarted_broker(
) {
    let broker = Arc::new(
        tokio::task::spawn_blocking(testkit::kafka::OwnBroker::start)
            .await
            .unwrap(),
    );
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let prefix = "restart.".to_owned();
    let group = format!("recorder-{}", Uuid::new_v4().simple());
    let checkpoint_name = format!("projection:{group}");
    watch_checkpoint(&db.pool, &checkpoint_name).await;
    let (relay_stop, relay) = spawn_relay_with(
        &db,
        relay::RelaySettings {
            brokers: broker.address.clone(),
            topic_prefix: prefix.clone(),
            topic_partitions: 4,
            batch_size: 100,
            ..relay::RelaySettings::default()
        },
    );
    let source = KafkaSource {
        brokers: broker.address.clone(),
        topic_prefix: prefix,
        stream_types: vec!["social".into()],
        dlq_replication: 1,
        fetch_wait: projection_runtime::kafka::DEFAULT_FETCH_WAIT,
        relay: projection_runtime::kafka::DEFAULT_RELAY.to_owned(),
    };
    let stop = CancellationToken::new();
    let consumers = [
        spawn_consumer(&db, &group, &source, &stop, batching, 50),
        spawn_consumer(&db, &group, &source, &stop, batching, 50),
    ];
    // Four writers append before, during and after the broker's death, about 12 s in all.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..120 {
                    ids.extend(follows(&store, 5).await);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                ids
            })
        })
        .collect();
    let start = Instant::now();
    while applied(&db.pool).await.len() < 300 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "stalled before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: what the broker acknowledged is in its log files (the page cache), what it
    // had not is re-sent by the relay; the consumers and the relay reconnect on their own.
    // Down for longer than the relay's message timeout (30 s) with its start: deliveries in
    // flight fail, and the relay publishes again from its checkpoint.
    let killed_at = applied(&db.pool).await.len();
    tokio::task::spawn_blocking({
        let broker = Arc::clone(&broker);
        move || broker.kill()
    })
    .await
    .unwrap();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(25)).await;
    tokio::task::spawn_blocking({
        let broker = Arc::clone(&broker);
        move || broker.restart()
    })
    .await
    .unwrap();
    println!(
        "killed the broker after {killed_at} events applied; it answered again {:.1} s later, with {} applied",
        down.elapsed().as_secs_f64(),
        applied(&db.pool).await.len()
    );
    let mut ids = Vec::new();
    for writer in writers {
        ids.extend(writer.await.unwrap());
    }
    assert!(killed_at < ids.len(), "the kill came after the end");
    let deadline = Instant::now() + Duration::from_secs(180);
    while applied(&db.pool).await.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} events applied 180 s after the writers stopped (relay at {:?})",
            applied(&db.pool).await.len(),
            ids.len(),
            checkpoint(&db.pool, "relay").await,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(applied(&db.pool).await, ids.iter().copied().collect());

    // Read-your-writes comes back: the checkpoint reaches the end of the log, and it never
    // passed an event not applied yet, before, during or after the broker's death.
    wait_for_the_end(&db.pool, &checkpoint_name, Duration::from_secs(60)).await;
    assert_no_early_move(&db.pool).await;
    assert!(DeadLetters::new(db.pool.clone())
        .list(None)
        .await
        .unwrap()
        .is_empty());
    stop.cancel();
    for consumer in consumers {
        let failures = consumer.await.unwrap();
        println!("a consumer's source failed {failures} times");
    }
    relay_stop.cancel();
    relay.await.unwrap();
}
