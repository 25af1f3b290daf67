//! Audit listings return exactly the events their filters name, and a client following the
//! cursor never misses one, whatever the commit order; seals catch what the per-stream chain
//! cannot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use event_schemas::Metadata;
use serde_json::json;
use sqlx::{Connection, Executor};
use store::{
    AppendRequest, AuditCursor, AuditEvent, AuditFilter, AuditLog, NewEvent, PgEventStore,
    SealOutcome, Sealer,
};
use testkit::TestDb;
use uuid::Uuid;

/// How long the watermark may be held back by other tests' transactions (every database of
/// the server shares it) before a test gives up waiting for an event to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

fn append(
    stream_type: &str,
    stream_id: &str,
    expected_version: u64,
    event_types: &[&str],
    correlation: &str,
    actor: &str,
) -> AppendRequest {
    AppendRequest {
        stream_type: stream_type.into(),
        stream_id: stream_id.into(),
        expected_version,
        events: event_types
            .iter()
            .map(|t| NewEvent {
                event_id: Uuid::now_v7(),
                event_type: (*t).into(),
                schema_version: 1,
                payload: json!({ "t": t }),
            })
            .collect(),
        metadata: Metadata {
            correlation_id: Some(correlation.into()),
            actor: Some(actor.into()),
            request_id: Some(correlation.into()),
            causation_id: None,
            traceparent: None,
        },
        claims: Vec::new(),
        credentials: Vec::new(),
        erases_subject: false,
    }
}

/// Positions of all events, appended as: a1 a2 (req-1, alice), b1 (req-2, bob),
/// a3 (req-3, bob), c1 c2 (req-4, alice).
async fn seeded() -> (TestDb, PgEventStore) {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    for request in [
        append(
            "thing",
            "a",
            0,
            &["thing.made", "thing.named"],
            "req-1",
            "user:alice",
        ),
        append("other", "b", 0, &["other.made"], "req-2", "user:bob"),
        append("thing", "a", 2, &["thing.named"], "req-3", "user:bob"),
        append(
            "thing",
            "c",
            0,
            &["thing.made", "thing.named"],
            "req-4",
            "user:alice",
        ),
    ] {
        store.append(&request).await.unwrap();
    }
    (db, store)
}

/// Pages from `cursor` until the listing has caught up; returns the events and the cursor
/// to poll with later.
async fn page_to_end(
    log: &AuditLog,
    filter: &AuditFilter,
    mut cursor: AuditCursor,
    limit: u32,
) -> (Vec<AuditEvent>, AuditCursor) {
    let mut listed = Vec::new();
    loop {
        let page = log.list(filter, cursor, limit).await.unwrap();
        assert!(page.items.len() <= limit as usize);
        assert!(
            page.next_cursor.after >= cursor.after,
            "the cursor went back"
        );
        assert_eq!(page.next_cursor.floor, cursor.floor, "the floor was lost");
        listed.extend(page.items);
        cursor = page.next_cursor;
        if !page.has_more {
            return (listed, cursor);
        }
    }
}

/// Every matching event settled so far, as `stream/version` and position.
async fn list_all(log: &AuditLog, filter: &AuditFilter, limit: u32) -> Vec<(String, i64)> {
    page_to_end(log, filter, AuditCursor::START, limit)
        .await
        .0
        .iter()
        .map(|e| {
            (
                format!("{}/{}", e.stream_id, e.stream_version),
                e.global_position,
            )
        })
        .collect()
}

async fn settled(log: &AuditLog, total: usize) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while Instant::now() < deadline {
        if list_all(log, &AuditFilter::default(), 1000).await.len() == total {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the listing never showed all {total} events");
}

fn names(listed: &[(String, i64)]) -> Vec<&str> {
    listed.iter().map(|(name, _)| name.as_str()).collect()
}

#[tokio::test]
async fn each_filter_lists_exactly_the_matching_events_in_log_order() {
    let (db, _) = seeded().await;
    let log = AuditLog::new(db.pool.clone());
    settled(&log, 6).await;
    let cases: Vec<(AuditFilter, Vec<&str>)> = vec![
        (
            AuditFilter::default(),
            vec!["a/1", "a/2", "b/1", "a/3", "c/1", "c/2"],
        ),
        (
            AuditFilter {
                stream_type: Some("thing".into()),
                ..Default::default()
            },
            vec!["a/1", "a/2", "a/3", "c/1", "c/2"],
        ),
        (
            AuditFilter {
                stream_type: Some("thing".into()),
                stream_id: Some("a".into()),
                ..Default::default()
            },
            vec!["a/1", "a/2", "a/3"],
        ),
        (
            AuditFilter {
                event_type: Some("thing.named".into()),
                ..Default::default()
            },
            vec!["a/2", "a/3", "c/2"],
        ),
        (
            AuditFilter {
                correlation_id: Some("req-4".into()),
                ..Default::default()
            },
            vec!["c/1", "c/2"],
        ),
        (
            AuditFilter {
                actor: Some("user:bob".into()),
                ..Default::default()
            },
            vec!["b/1", "a/3"],
        ),
        (
            AuditFilter {
                actor: Some("user:alice".into()),
                event_type: Some("thing.made".into()),
                ..Default::default()
            },
            vec!["a/1", "c/1"],
        ),
        (
            AuditFilter {
                correlation_id: Some("nobody".into()),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (filter, expected) in cases {
        for limit in [1, 2, 1000] {
            let listed = list_all(&log, &filter, limit).await;
            assert_eq!(names(&listed), expected, "{filter:?} limit {limit}");
            assert!(listed.windows(2).all(|w| w[0].1 < w[1].1));
        }
    }
}

#[tokio::test]
async fn time_filters_are_half_open() {
    let (db, store) = seeded().await;
    let log = AuditLog::new(db.pool.clone());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .append(&append(
            "thing",
            "d",
            0,
            &["thing.made"],
            "req-5",
            "user:carol",
        ))
        .await
        .unwrap();
    settled(&log, 7).await;
    let before = AuditFilter {
        to: Some(between),
        ..Default::default()
    };
    assert_eq!(list_all(&log, &before, 100).await.len(), 6);
    let after = AuditFilter {
        from: Some(between),
        ..Default::default()
    };
    assert_eq!(names(&list_all(&log, &after, 100).await), vec!["d/1"]);
    let d_time = log.stream("thing", "d").await.unwrap()[0].recorded_at;
    let exactly = AuditFilter {
        from: Some(d_time),
        to: Some(d_time),
        ..Default::default()
    };
    assert!(list_all(&log, &exactly, 100).await.is_empty());
}

/// Polls the listing from `cursor` (as a client would: page to the end, wait, go on with
/// the last cursor) until an event `wanted` has been listed; returns everything listed and
/// the cursor to continue with. Waits generously: other tests' transactions anywhere on the
/// server hold the watermark back.
async fn follow_until(
    log: &AuditLog,
    filter: &AuditFilter,
    mut cursor: AuditCursor,
    wanted: impl Fn(&AuditEvent) -> bool,
) -> (Vec<AuditEvent>, AuditCursor) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut listed = Vec::new();
    loop {
        let (page, next) = page_to_end(log, filter, cursor, 1).await;
        listed.extend(page);
        cursor = next;
        if listed.iter().any(&wanted) {
            return (listed, cursor);
        }
        assert!(
            Instant::now() < deadline,
            "not listed within {SETTLE_TIMEOUT:?}; listed {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn streams(listed: &[AuditEvent]) -> Vec<&str> {
    listed.iter().map(|e| e.stream_id.as_str()).collect()
}

/// The race a cursor over positions loses: B takes its transaction id before A, A takes the
/// smaller position and stays open, B appends after it and commits. B is settled (older than
/// every running transaction) while A is not, so a listing shows B, past A's position. A
/// client that keeps polling with the cursor it got must still get A's event, once; a client
/// that started from a plain position at A's keeps that floor on every page and never does.
#[tokio::test]
async fn an_event_committed_after_a_later_position_was_listed_is_listed_exactly_once() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let log = AuditLog::new(db.pool.clone());

    let mut b_connection = db.connect().await;
    let mut b = b_connection.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *b)
        .await
        .unwrap();
    let mut a_connection = db.connect().await;
    let mut a = a_connection.begin().await.unwrap();
    let a_appended = store
        .append_in(
            &mut a,
            &append("thing", "a", 0, &["thing.made"], "req-a", "user:bob"),
        )
        .await
        .unwrap();
    store
        .append_in(
            &mut b,
            &append("thing", "b", 0, &["thing.made"], "req-b", "user:bob"),
        )
        .await
        .unwrap();
    b.commit().await.unwrap();

    let everything = AuditFilter::default();
    let by_bob = AuditFilter {
        actor: Some("user:bob".into()),
        ..Default::default()
    };
    let floor: AuditCursor = a_appended.last_position.to_string().parse().unwrap();
    let is = |stream: &'static str| move |e: &AuditEvent| e.stream_id == stream;
    let (mut all, all_cursor) = follow_until(&log, &everything, AuditCursor::START, is("b")).await;
    let (mut bobs, bob_cursor) = follow_until(&log, &by_bob, AuditCursor::START, is("b")).await;
    let (mut floored, floored_cursor) = follow_until(&log, &everything, floor, is("b")).await;
    assert_eq!(streams(&all), ["b"], "A is still open");

    a.commit().await.unwrap();
    let order: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT stream_id, transaction_id::text, global_position FROM events \
          ORDER BY global_position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let xid = |row: &(String, String, i64)| row.1.parse::<u64>().unwrap();
    assert_eq!((order[0].0.as_str(), order[1].0.as_str()), ("a", "b"));
    assert!(
        xid(&order[0]) > xid(&order[1]),
        "the race needs A's transaction id above B's: {order:?}"
    );

    all.extend(follow_until(&log, &everything, all_cursor, is("a")).await.0);
    bobs.extend(follow_until(&log, &by_bob, bob_cursor, is("a")).await.0);
    // A is settled now; later polls of the floored client see everything the others saw.
    floored.extend(page_to_end(&log, &everything, floored_cursor, 1).await.0);
    assert_eq!(streams(&all), ["b", "a"], "each once, in log order");
    assert_eq!(streams(&bobs), ["b", "a"]);
    assert_eq!(streams(&floored), ["b"], "A is at the floor, not above it");
}

/// A number in `0..n`, from a v4 UUID's random bits.
fn random_below(n: u64) -> u64 {
    u64::try_from(Uuid::new_v4().as_u128() % u128::from(n)).unwrap()
}

/// Writers append in transactions that commit out of position order (and sometimes roll
/// back) while clients follow four listings a few events a page; once everything is
/// settled, each client has listed exactly the committed events its filters match, each
/// once, in log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_following_filtered_listings_over_many_pages_list_each_matching_event_once() {
    const WRITERS: u64 = 6;
    const APPENDS: u64 = 25;
    const TYPES: [&str; 3] = ["thing.made", "thing.named", "thing.moved"];
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let log = AuditLog::new(db.pool.clone());

    let cases: Vec<(AuditFilter, &str)> = vec![
        (AuditFilter::default(), "true"),
        (
            AuditFilter {
                event_type: Some("thing.named".into()),
                ..Default::default()
            },
            "event_type = 'thing.named'",
        ),
        (
            AuditFilter {
                actor: Some("user:w1".into()),
                ..Default::default()
            },
            "metadata ->> 'actor' = 'user:w1'",
        ),
        (
            AuditFilter {
                actor: Some("user:w2".into()),
                event_type: Some("thing.moved".into()),
                ..Default::default()
            },
            "metadata ->> 'actor' = 'user:w2' AND event_type = 'thing.moved'",
        ),
    ];
    let last_call = Arc::new(AtomicBool::new(false));
    let followers: Vec<_> = cases
        .iter()
        .map(|(filter, _)| {
            let (log, filter, last_call) = (log.clone(), filter.clone(), last_call.clone());
            tokio::spawn(async move {
                let mut listed = Vec::new();
                let mut cursor = AuditCursor::START;
                loop {
                    // Read before the poll: once it is set, everything is settled, and this
                    // poll gets the rest.
                    let last = last_call.load(Ordering::SeqCst);
                    let (page, next) = page_to_end(&log, &filter, cursor, 3).await;
                    listed.extend(page.into_iter().map(|e| e.event_id));
                    cursor = next;
                    if last {
                        return listed;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db_pool, store) = (db.pool.clone(), store.clone());
            tokio::spawn(async move {
                for i in 0..APPENDS {
                    let types: Vec<&str> = (0..=random_below(2))
                        .map(|_| TYPES[random_below(3) as usize])
                        .collect();
                    let request = append(
                        "thing",
                        &format!("w{w}-{i}"),
                        0,
                        &types,
                        &format!("req-{w}-{i}"),
                        &format!("user:w{}", w % 3),
                    );
                    let mut connection = db_pool.acquire().await.unwrap();
                    let mut tx = connection.begin().await.unwrap();
                    store.append_in(&mut tx, &request).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(random_below(15))).await;
                    if random_below(10) == 0 {
                        tx.rollback().await.unwrap();
                    } else {
                        tx.commit().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    settled(&log, usize::try_from(committed).unwrap()).await;
    last_call.store(true, Ordering::SeqCst);

    for ((filter, condition), follower) in cases.iter().zip(followers) {
        let listed = follower.await.unwrap();
        let expected: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT event_id FROM events WHERE {condition} \
              ORDER BY transaction_id, global_position"
        ))
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert!(!expected.is_empty(), "{filter:?} matches nothing");
        let mut times_listed: HashMap<Uuid, usize> = HashMap::new();
        for id in &listed {
            *times_listed.entry(*id).or_default() += 1;
        }
        assert!(
            times_listed.values().all(|n| *n == 1),
            "{filter:?}: listed twice"
        );
        assert_eq!(listed, expected, "{filter:?}");
    }
}

#[tokio::test]
async fn a_stream_history_is_in_version_order_with_each_hash() {
    let (db, _) = seeded().await;
    let history = AuditLog::new(db.pool.clone())
        .stream("thing", "a")
        .await
        .unwrap();
    let versions: Vec<i64> = history.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    let stored: String = sqlx::query_scalar(
        "SELECT encode(hash, 'hex') FROM events WHERE stream_id = 'a' AND stream_version = 3",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(history[2].hash, stored);
    assert_eq!(history[2].metadata["correlation_id"], "req-3");
}

async fn tamper(db: &TestDb, statement: &str) {
    let mut conn = db.connect().await;
    conn.execute("SET session_replication_role = replica")
        .await
        .unwrap();
    conn.execute(statement).await.unwrap();
}

async fn seal(db: &TestDb) -> Vec<store::Seal> {
    match Sealer::new(db.pool.clone())
        .seal_now(Duration::from_secs(30))
        .await
        .unwrap()
    {
        SealOutcome::Sealed(seals) => seals,
        other => panic!("nothing sealed: {other:?}"),
    }
}

#[tokio::test]
async fn seals_chain_each_window_and_a_second_seal_finds_nothing_new() {
    let (db, store) = seeded().await;
    let first = seal(&db).await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        (
            first[0].seal_id,
            first[0].after_position,
            first[0].up_to_position
        ),
        (1, 0, 6)
    );
    assert_eq!(first[0].streams, 3);
    assert_eq!(
        Sealer::new(db.pool.clone())
            .seal_now(Duration::from_secs(30))
            .await
            .unwrap(),
        SealOutcome::UpToDate
    );
    store
        .append(&append(
            "thing",
            "a",
            3,
            &["thing.named"],
            "req-5",
            "user:bob",
        ))
        .await
        .unwrap();
    let second = seal(&db).await;
    assert_eq!(
        (
            second[0].seal_id,
            second[0].after_position,
            second[0].up_to_position
        ),
        (2, 6, 7)
    );
    assert_eq!(second[0].streams, 1);
    let verification = store.verify_log(0, i64::MAX).await.unwrap();
    assert!(verification.ok, "{verification:?}");
    assert_eq!((verification.checked, verification.seals_checked), (7, 2));
}

#[tokio::test]
async fn concurrent_sealers_build_one_chain() {
    let (db, store) = seeded().await;
    let sealers = (0..4).map(|_| {
        let sealer = Sealer::new(db.pool.clone());
        async move { sealer.seal_now(Duration::from_secs(30)).await.unwrap() }
    });
    let outcomes = futures::future::join_all(sealers).await;
    let sealed: usize = outcomes
        .iter()
        .map(|o| match o {
            SealOutcome::Sealed(seals) => seals.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(sealed, 1, "{outcomes:?}");
    assert!(store.verify_log(0, i64::MAX).await.unwrap().ok);
}

#[tokio::test]
async fn a_deleted_stream_tail_hidden_from_the_chain_is_named_by_its_seal() {
    let (db, store) = seeded().await;
    seal(&db).await;
    let tail: i64 = sqlx::query_scalar(
        "SELECT global_position FROM events WHERE stream_id = 'c' AND stream_version = 2",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // Remove the stream's last event and lower its version: the chain of what is left is
    // intact.
    tamper(
        &db,
        &format!(
            "DELETE FROM events WHERE global_position = {tail}; \
             UPDATE streams SET version = 1 WHERE stream_id = 'c'"
        ),
    )
    .await;
    assert!(store.verify(0, i64::MAX).await.unwrap().ok);
    let verification = store.verify_log(0, i64::MAX).await.unwrap();
    assert!(!verification.ok);
    assert_eq!(verification.first_bad_position, Some(tail));
    assert!(
        verification
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("thing/c"),
        "{verification:?}"
    );
}

#[tokio::test]
async fn an_altered_seal_breaks_the_seal_chain() {
    let (db, store) = seeded().await;
    seal(&db).await;
    store
        .append(&append(
            "thing",
            "a",
            3,
            &["thing.named"],
            "req-5",
            "user:bob",
        ))
        .await
        .unwrap();
    seal(&db).await;
    tamper(
        &db,
        "UPDATE seals SET hash = sha256('forged') WHERE seal_id = 1",
    )
    .await;
    let verification = store.verify_log(0, i64::MAX).await.unwrap();
    assert!(!verification.ok);
    assert_eq!(verification.first_bad_position, Some(1));
    assert!(verification.reason.unwrap().contains("seal 1"));
}

#[tokio::test]
async fn seals_are_append_only() {
    let (db, _) = seeded().await;
    seal(&db).await;
    for statement in [
        "UPDATE seals SET streams = 0",
        "DELETE FROM seal_heads",
        "TRUNCATE seals CASCADE",
    ] {
        let err = db.pool.execute(statement).await.unwrap_err();
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
}
