//! The catch-up reader never skips a committed event, whatever the commit order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_schemas::Metadata;
use serde_json::json;
use sqlx::{Connection, Executor};
use store::{
    AppendRequest, Checkpoints, LogPosition, LogReader, NewEvent, PgEventStore, RecordedEvent,
};
use testkit::TestDb;
use uuid::Uuid;

fn append(stream_id: &str, expected_version: u64) -> AppendRequest {
    AppendRequest {
        stream_type: "test".into(),
        stream_id: stream_id.into(),
        expected_version,
        events: vec![NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "test.happened".into(),
            schema_version: 1,
            payload: json!({ "v": expected_version + 1 }),
        }],
        metadata: Metadata::default(),
        claims: Vec::new(),
        credentials: Vec::new(),
        erases_subject: false,
    }
}

async fn read_all(reader: &LogReader, from: LogPosition) -> (Vec<RecordedEvent>, LogPosition) {
    let mut position = from;
    let mut read = Vec::new();
    loop {
        let batch = reader.read_batch(position, 100).await.unwrap();
        let Some(last) = batch.last() else {
            return (read, position);
        };
        position = LogPosition::of(last);
        read.extend(batch);
    }
}

/// The classic skip: transaction A takes position 1 but commits after B (position 2) was
/// read. A reader by position alone would move past 1 and never see A's event.
#[tokio::test]
async fn an_event_committed_after_a_later_position_was_read_is_not_skipped() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let reader = LogReader::new(db.pool.clone());

    // A: opens a transaction, appends (position 1), and stays open.
    let mut slow = db.connect().await;
    let mut slow_tx = slow.begin().await.unwrap();
    slow_tx
        .execute("INSERT INTO streams VALUES ('test', 'slow', 1)")
        .await
        .unwrap();
    slow_tx
        .execute(
            "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, schema_version, payload) \
             VALUES (gen_random_uuid(), 'test', 'slow', 1, 'test.happened', 1, '{}')",
        )
        .await
        .unwrap();

    // B: appends and commits (position 2).
    let fast = store.append(&append("fast", 0)).await.unwrap();

    // A naive reader ("position > last seen") would now see B at position 2 and move on.
    let visible: Vec<i64> =
        sqlx::query_scalar("SELECT global_position FROM events ORDER BY global_position")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        visible,
        [fast.last_position],
        "only B is visible while A is open"
    );
    assert!(fast.last_position > 1);

    // Ours holds back: nothing is safe to read while A, the older transaction, is open.
    let (before_commit, position) = read_all(&reader, LogPosition::START).await;
    assert!(
        before_commit.is_empty(),
        "read {before_commit:?} past an open older transaction"
    );

    slow_tx.commit().await.unwrap();
    let after_commit = testkit::read_log(&reader, position, 2).await;
    let streams: Vec<&str> = after_commit.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(
        streams,
        ["slow", "fast"],
        "A's event first: it is in the older transaction"
    );
}

#[tokio::test]
async fn holdback_reports_the_age_of_the_oldest_open_write_transaction() {
    let db = TestDb::new().await;
    let reader = LogReader::new(db.pool.clone());
    let mut conn = db.connect().await;
    let mut tx = conn.begin().await.unwrap();
    tx.execute("INSERT INTO checkpoints VALUES ('holder', '1', 0)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let held = reader.holdback().await.unwrap();
    assert!(held >= Duration::from_secs(1), "holdback {held:?}");
    tx.rollback().await.unwrap();
    // Other tests' databases share the cluster, so only check that ours no longer counts.
    let released = reader.holdback().await.unwrap();
    assert!(
        released < held,
        "holdback {released:?} after rollback, {held:?} before"
    );
}

/// A number in `0..n`, from a v4 UUID's random bits.
fn random_below(n: u64) -> u64 {
    u64::try_from(Uuid::new_v4().as_u128() % u128::from(n)).unwrap()
}

/// What broke the well-known stores, at scale: 32 writers append in explicit transactions
/// and sleep inside them after the append (most not at all, some a few milliseconds, 1 in 50
/// for 50–250 ms), so transactions commit out of position order; 1 in 10 rolls back; a
/// reader follows the log all the while. Once 50k events are committed, the reader must have
/// read exactly those: each once, every stream in version order, none skipped, nothing of a
/// rolled-back transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_following_32_writers_with_delays_and_rollbacks_reads_exactly_the_committed_events(
) {
    const WRITERS: usize = 32;
    const COMMITTED_TARGET: usize = 50_000;
    const STREAMS: u64 = 256;

    let db = TestDb::new().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(WRITERS).unwrap() + 4)
        .connect(&db.url)
        .await
        .unwrap();
    let store = PgEventStore::new(pool.clone());
    let reader = LogReader::new(pool.clone());
    let committed = Arc::new(AtomicUsize::new(0));
    let final_count = Arc::new(AtomicUsize::new(usize::MAX));

    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (store, pool, committed) = (store.clone(), pool.clone(), committed.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut rolled_back = 0_usize;
                while committed.load(Ordering::Relaxed) < COMMITTED_TARGET {
                    let stream = format!("s{}", random_below(STREAMS));
                    let mut connection = pool.acquire().await.unwrap();
                    let mut tx = connection.begin().await.unwrap();
                    let version: Option<i64> = sqlx::query_scalar(
                        "SELECT version FROM streams WHERE stream_type = 'test' AND stream_id = $1",
                    )
                    .bind(&stream)
                    .fetch_optional(&mut *tx)
                    .await
                    .unwrap();
                    let mut request = append(&stream, u64::try_from(version.unwrap_or(0)).unwrap());
                    for _ in 0..random_below(4) {
                        let mut extra = append(&stream, 0).events.remove(0);
                        extra.payload = json!({ "extra": true });
                        request.events.push(extra);
                    }
                    match store.append_in(&mut tx, &request).await {
                        Ok(_) => {}
                        Err(store::AppendError::Conflict { .. }) => {
                            tx.rollback().await.unwrap();
                            continue;
                        }
                        Err(other) => panic!("append failed: {other}"),
                    }
                    match random_below(100) {
                        0..2 => {
                            tokio::time::sleep(Duration::from_millis(50 + random_below(200))).await
                        }
                        2..30 => tokio::time::sleep(Duration::from_millis(random_below(4))).await,
                        _ => tokio::task::yield_now().await,
                    }
                    if random_below(10) == 0 {
                        tx.rollback().await.unwrap();
                        rolled_back += request.events.len();
                    } else {
                        tx.commit().await.unwrap();
                        committed.fetch_add(request.events.len(), Ordering::Relaxed);
                        mine.extend(request.events.iter().map(|e| e.event_id));
                    }
                }
                (mine, rolled_back)
            })
        })
        .collect();

    let follower = {
        let final_count = final_count.clone();
        tokio::spawn(async move {
            let mut position = LogPosition::START;
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            // Bounded: a reader that skipped an event would otherwise wait forever.
            while std::time::Instant::now() < deadline {
                let batch = reader.read_batch(position, 500).await.unwrap();
                match batch.last() {
                    Some(last) => position = LogPosition::of(last),
                    None if seen.len() >= final_count.load(Ordering::Acquire) => break,
                    None => tokio::time::sleep(Duration::from_millis(2)).await,
                }
                seen.extend(batch);
            }
            seen
        })
    };

    let mut committed_ids = HashSet::new();
    let mut rolled_back = 0;
    for writer in writers {
        let (mine, dropped) = writer.await.unwrap();
        committed_ids.extend(mine);
        rolled_back += dropped;
    }
    final_count.store(committed_ids.len(), Ordering::Release);
    let seen: Vec<RecordedEvent> = follower.await.unwrap();

    assert!(
        committed_ids.len() >= COMMITTED_TARGET,
        "{} committed",
        committed_ids.len()
    );
    assert!(rolled_back > 0, "no transaction was rolled back");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(usize::try_from(stored).unwrap(), committed_ids.len());
    let seen_ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(seen_ids.len(), seen.len(), "an event was read twice");
    assert_eq!(
        seen_ids.len(),
        committed_ids.len(),
        "read {} of {} committed events",
        seen_ids.len(),
        committed_ids.len()
    );
    assert!(
        seen_ids == committed_ids,
        "the reader read other events than were committed"
    );
    let mut last_version: HashMap<&str, u64> = HashMap::new();
    for event in &seen {
        let last = last_version.entry(event.stream_id.as_str()).or_default();
        assert_eq!(
            event.stream_version,
            *last + 1,
            "stream {} out of order",
            event.stream_id
        );
        *last = event.stream_version;
    }
}

#[tokio::test]
async fn checkpoints_round_trip_and_start_at_the_beginning() {
    let db = TestDb::new().await;
    let checkpoints = Checkpoints::new(db.pool.clone());
    assert_eq!(checkpoints.load("relay").await.unwrap(), LogPosition::START);
    let position = LogPosition {
        transaction_id: 9_000_000_001,
        global_position: 42,
    };
    checkpoints.save("relay", position).await.unwrap();
    let later = LogPosition {
        transaction_id: 9_000_000_002,
        global_position: 43,
    };
    checkpoints.save("relay", later).await.unwrap();
    assert_eq!(checkpoints.load("relay").await.unwrap(), later);
    assert_eq!(checkpoints.load("other").await.unwrap(), LogPosition::START);
}

/// Transaction ids compare as numbers: 9 < 10 < 100, though "10" < "100" < "9" as text.
/// (A reader that once sorted them as text re-read events when the cluster's transaction
/// counter went from 99999 to 100000.)
#[tokio::test]
async fn transaction_ids_are_read_in_numeric_order_across_a_digit_boundary() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    // Forging transaction ids needs the triggers off (superuser only).
    conn.execute("SET session_replication_role = replica")
        .await
        .unwrap();
    for (stream, xid) in [("c", 100), ("b", 10), ("a", 9)] {
        conn.execute(
            format!(
                "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, \
                 schema_version, payload, transaction_id, hash) \
                 VALUES (gen_random_uuid(), 'test', '{stream}', 1, 'test.happened', 1, '{{}}', '{xid}', '\\x00')"
            )
            .as_str(),
        )
        .await
        .unwrap();
    }
    let reader = LogReader::new(db.pool.clone());
    let mut position = LogPosition::START;
    let mut order = Vec::new();
    loop {
        let batch = reader.read_batch(position, 1).await.unwrap();
        let Some(event) = batch.first() else { break };
        assert!(order.len() < 3, "re-read {event:?}");
        order.push(event.transaction_id);
        position = LogPosition::of(event);
    }
    assert_eq!(order, [9, 10, 100]);
    // The last in read order, which ends a replay: a reader that sorted the ids as text
    // took 9 for the last and stopped a replay early once the counter passed 999999.
    let last = reader.last_up_to(i64::MAX).await.unwrap().unwrap();
    assert_eq!((last.transaction_id, last.global_position), (100, 1));
    let last = reader.last_up_to(2).await.unwrap().unwrap();
    assert_eq!(last.transaction_id, 100);
}

/// A reader that passes some types over gets every event, in the same order and with the
/// same positions, and the payloads and metadata of only the other types.
#[tokio::test]
async fn a_batch_skipping_types_reads_every_event_without_their_payloads() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    for (stream, event_type) in [
        ("a", "test.kept"),
        ("b", "test.skipped"),
        ("c", "test.kept"),
    ] {
        let mut request = append(stream, 0);
        request.events[0].event_type = event_type.into();
        request.metadata.correlation_id = Some(format!("corr-{stream}"));
        store.append(&request).await.unwrap();
    }
    let reader = LogReader::new(db.pool.clone());
    // Other tests' open transactions share the cluster and may hold the events back a moment.
    let full = testkit::read_log(&reader, LogPosition::START, 3).await;
    let skipping = reader
        .read_batch_skipping(LogPosition::START, 10, &["test.skipped".to_owned()])
        .await
        .unwrap();
    assert_eq!(full.len(), 3);
    assert_eq!(skipping.len(), 3);
    for (full, skipping) in full.iter().zip(&skipping) {
        assert_eq!(LogPosition::of(full), LogPosition::of(skipping));
        assert_eq!(full.event_type, skipping.event_type);
        if full.event_type == "test.skipped" {
            assert_eq!(skipping.payload, serde_json::Value::Null);
            assert_eq!(skipping.metadata, serde_json::Value::Null);
            assert_ne!(full.payload, serde_json::Value::Null);
        } else {
            assert_eq!(full.payload, skipping.payload);
            assert_eq!(full.metadata, skipping.metadata);
            assert_eq!(full.hash, skipping.hash);
        }
    }
    // Nothing skipped: the plain batch.
    let none = reader
        .read_batch_skipping(LogPosition::START, 2, &[])
        .await
        .unwrap();
    assert_eq!(none.len(), 2);
    assert_eq!(none[1].payload, full[1].payload);
}
