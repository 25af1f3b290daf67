//! Audit listings return exactly the events their filters name; seals catch what the
//! per-stream chain cannot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::Utc;
use event_schemas::Metadata;
use serde_json::json;
use sqlx::Executor;
use store::{AppendRequest, AuditFilter, AuditLog, NewEvent, PgEventStore, SealOutcome, Sealer};
use testkit::TestDb;
use uuid::Uuid;

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
        },
        claims: Vec::new(),
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

/// Every matching event, following cursors; waits until all `expected` events are listed
/// (events of other tests' running transactions hold the watermark back briefly).
async fn list_all(log: &AuditLog, filter: &AuditFilter, limit: u32) -> Vec<(String, i64)> {
    let mut listed = Vec::new();
    let mut after = 0;
    loop {
        let page = log.list(filter, after, limit).await.unwrap();
        assert!(page.items.len() <= limit as usize);
        listed.extend(page.items.iter().map(|e| {
            (
                format!("{}/{}", e.stream_id, e.stream_version),
                e.global_position,
            )
        }));
        match page.next_cursor {
            Some(cursor) => after = cursor,
            None => return listed,
        }
    }
}

async fn settled(log: &AuditLog, total: usize) {
    for _ in 0..200 {
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
async fn each_filter_lists_exactly_the_matching_events_in_position_order() {
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
