//! Appends against a real PostgreSQL: versions, conflicts, idempotency, claims, metadata.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use event_schemas::Metadata;
use serde_json::json;
use store::claims::{Claim, ClaimTaken};
use store::{AppendError, AppendRequest, NewEvent, PgEventStore};
use testkit::TestDb;
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "test.happened".into(),
        schema_version: 1,
        payload: json!({ "n": n }),
    }
}

fn request(stream_id: &str, expected_version: u64, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream_type: "test".into(),
        stream_id: stream_id.into(),
        expected_version,
        events,
        metadata: Metadata::default(),
        claims: Vec::new(),
        credentials: Vec::new(),
        erases_subject: false,
    }
}

#[tokio::test]
async fn appended_events_read_back_in_version_order_with_increasing_positions() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let first = store
        .append(&request("s", 0, vec![event(1), event(2)]))
        .await
        .unwrap();
    let second = store
        .append(&request("s", 2, vec![event(3)]))
        .await
        .unwrap();
    assert_eq!((first.stream_version, second.stream_version), (2, 3));
    assert!(first.first_position < first.last_position);
    assert!(first.last_position < second.first_position);
    assert!(!first.duplicate && !second.duplicate);

    let events = store.read_stream("test", "s", 0).await.unwrap();
    let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
    let payloads: Vec<_> = events
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(payloads, [1, 2, 3]);
    assert_eq!(store.read_stream("test", "s", 2).await.unwrap().len(), 1);
    assert_eq!(store.stream_version("test", "s").await.unwrap(), 3);
    assert_eq!(store.stream_version("test", "unknown").await.unwrap(), 0);
}

#[tokio::test]
async fn a_stale_expected_version_is_a_typed_conflict_and_writes_nothing() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    store
        .append(&request("s", 0, vec![event(1)]))
        .await
        .unwrap();

    for stale in [0, 2, 7] {
        let err = store
            .append(&request("s", stale, vec![event(9)]))
            .await
            .unwrap_err();
        match err {
            AppendError::Conflict {
                expected, actual, ..
            } => {
                assert_eq!((expected, actual), (stale, 1));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(store.read_stream("test", "s", 0).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_appends_with_the_same_expected_version_conflict_all_but_once() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    store
        .append(&request("hot", 0, vec![event(0)]))
        .await
        .unwrap();

    let writers = (0..64).map(|n| {
        let store = store.clone();
        tokio::spawn(async move { store.append(&request("hot", 1, vec![event(n)])).await })
    });
    let results = futures::future::join_all(writers).await;
    let (ok, conflicts) =
        results
            .into_iter()
            .map(|r| r.unwrap())
            .fold((0, 0), |(ok, c), r| match r {
                Ok(_) => (ok + 1, c),
                Err(AppendError::Conflict { .. }) => (ok, c + 1),
                Err(other) => panic!("unexpected error {other:?}"),
            });
    assert_eq!((ok, conflicts), (1, 63));
    let versions: Vec<u64> = store
        .read_stream("test", "hot", 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, [1, 2]);
}

#[tokio::test]
async fn concurrent_creations_of_one_stream_succeed_once() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let writers = (0..16).map(|n| {
        let store = store.clone();
        tokio::spawn(async move { store.append(&request("new", 0, vec![event(n)])).await })
    });
    let oks = futures::future::join_all(writers)
        .await
        .into_iter()
        .filter(|r| r.as_ref().unwrap().is_ok())
        .count();
    assert_eq!(oks, 1);
    assert_eq!(store.stream_version("test", "new").await.unwrap(), 1);
}

#[tokio::test]
async fn retrying_an_append_with_the_same_event_ids_returns_the_original_result() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let append = request("s", 0, vec![event(1), event(2)]);
    let original = store.append(&append).await.unwrap();
    store
        .append(&request("s", 2, vec![event(3)]))
        .await
        .unwrap();

    let retry = store.append(&append).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (
            retry.stream_version,
            retry.first_position,
            retry.last_position
        ),
        (
            original.stream_version,
            original.first_position,
            original.last_position
        )
    );
    assert_eq!(store.read_stream("test", "s", 0).await.unwrap().len(), 3);
}

#[tokio::test]
async fn concurrent_retries_of_one_append_store_it_once() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let append = request("s", 0, vec![event(1)]);
    let retries = (0..12).map(|_| {
        let (store, append) = (store.clone(), append.clone());
        tokio::spawn(async move { store.append(&append).await })
    });
    let results: Vec<_> = futures::future::join_all(retries)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert!(results
        .iter()
        .all(|r| r.last_position == results[0].last_position));
    assert_eq!(store.read_stream("test", "s", 0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_event_id_reused_in_another_stream_is_refused() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let shared = event(1);
    store
        .append(&request("a", 0, vec![shared.clone()]))
        .await
        .unwrap();
    let err = store
        .append(&request("b", 0, vec![shared.clone()]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::EventIdReused(id) if id == shared.event_id),
        "{err:?}"
    );
    assert_eq!(store.stream_version("test", "b").await.unwrap(), 0);
}

#[tokio::test]
async fn an_empty_append_is_refused() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    assert!(matches!(
        store.append(&request("s", 0, vec![])).await,
        Err(AppendError::Empty)
    ));
}

#[tokio::test]
async fn metadata_is_stored_with_every_event_and_decodes() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let metadata = Metadata {
        correlation_id: Some("corr-1".into()),
        causation_id: Some("cause-1".into()),
        actor: Some("user:42".into()),
        request_id: Some("req-1".into()),
        traceparent: None,
    };
    let followed = event_schemas::Event::from(event_schemas::social::FollowedV1 {
        follower_id: Uuid::now_v7(),
        followee_id: Uuid::now_v7(),
    });
    let mut append = request("m", 0, vec![NewEvent::encode(&followed).unwrap()]);
    append.metadata = metadata.clone();
    store.append(&append).await.unwrap();

    let stored = store.read_stream("test", "m", 0).await.unwrap();
    assert_eq!(stored[0].metadata["actor"], "user:42");
    let envelope = stored[0].decode().unwrap();
    assert_eq!(envelope.metadata, metadata);
    assert_eq!(envelope.event, followed);
    assert_eq!(stored[0].hash.len(), 32);
}

fn claim(scope: &'static str, value: &str) -> Claim {
    Claim::Reserve {
        scope,
        value: value.into(),
    }
}

#[tokio::test]
async fn concurrent_claims_of_one_value_succeed_once_and_name_the_taken_value() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let writers = (0..30).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut append = request(&format!("user-{n}"), 0, vec![event(n)]);
            append.claims = vec![
                claim("email", &format!("{n}@example.com")),
                claim("username", "alice"),
            ];
            store.append(&append).await
        })
    });
    let results: Vec<_> = futures::future::join_all(writers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for failure in results.iter().filter_map(|r| r.as_ref().err()) {
        match failure {
            AppendError::Taken(ClaimTaken { scope, value }) => {
                assert_eq!((scope.as_str(), value.as_str()), ("username", "alice"));
            }
            other => panic!("expected Taken, got {other:?}"),
        }
    }
    // The losers wrote nothing at all: no stream, no event, no email claim.
    let streams: i64 = sqlx::query_scalar("SELECT count(*) FROM streams")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM unique_claims")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((streams, claims), (1, 2));
}

#[tokio::test]
async fn releasing_claims_frees_the_values_for_another_stream() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let mut first = request("u1", 0, vec![event(1)]);
    first.claims = vec![claim("username", "bob")];
    store.append(&first).await.unwrap();

    let mut second = request("u2", 0, vec![event(2)]);
    second.claims = vec![claim("username", "bob")];
    assert!(matches!(
        store.append(&second).await,
        Err(AppendError::Taken(_))
    ));

    let mut release = request("u1", 1, vec![event(3)]);
    release.claims = vec![Claim::ReleaseAll];
    store.append(&release).await.unwrap();
    store.append(&second).await.unwrap();
}
