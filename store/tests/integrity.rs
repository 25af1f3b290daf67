//! The log is append-only in the database and tamper-evident through the hash chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use event_schemas::Metadata;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::Executor;
use store::{AppendRequest, NewEvent, PgEventStore};
use testkit::TestDb;
use uuid::Uuid;

fn append(stream_id: &str, expected_version: u64, count: u64) -> AppendRequest {
    AppendRequest {
        stream_type: "test".into(),
        stream_id: stream_id.into(),
        expected_version,
        events: (0..count)
            .map(|n| NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "test.happened".into(),
                schema_version: 1,
                payload: json!({ "n": n, "text": "héllo \"quoted\"" }),
            })
            .collect(),
        metadata: Metadata {
            actor: Some("user:1".into()),
            ..Metadata::default()
        },
        claims: Vec::new(),
        credentials: Vec::new(),
        erases_subject: false,
    }
}

async fn seeded() -> (TestDb, PgEventStore) {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    store.append(&append("a", 0, 3)).await.unwrap();
    store.append(&append("b", 0, 2)).await.unwrap();
    store.append(&append("a", 3, 2)).await.unwrap();
    (db, store)
}

#[tokio::test]
async fn update_delete_and_truncate_of_events_are_rejected_even_for_the_owner() {
    let (db, _) = seeded().await;
    for statement in [
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events WHERE stream_id = 'a'",
        "TRUNCATE events",
    ] {
        let err = db.pool.execute(statement).await.unwrap_err();
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 7);
}

#[tokio::test]
async fn the_writer_role_can_append_but_has_no_update_or_delete_privilege() {
    let db = TestDb::new().await;
    let writer = PgPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move { conn.execute("SET ROLE hybridlive_writer").await.map(|_| ()) })
        })
        .connect(&db.url)
        .await
        .unwrap();
    let store = PgEventStore::new(writer.clone());
    store.append(&append("w", 0, 2)).await.unwrap();
    store.append(&append("w", 2, 1)).await.unwrap();
    for statement in [
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = writer.execute(statement).await.unwrap_err();
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .unwrap_or_default();
        assert_eq!(
            code, "42501",
            "{statement} must be refused by privileges: {err}"
        );
    }
}

#[tokio::test]
async fn a_clean_log_verifies() {
    let (_db, store) = seeded().await;
    let verification = store.verify(0, i64::MAX).await.unwrap();
    assert!(verification.ok, "{verification:?}");
    assert_eq!(verification.checked, 7);
    assert_eq!(verification.first_bad_position, None);
}

/// Tampering needs a superuser who switches the append-only triggers off.
async fn tamper(db: &TestDb, statement: &str) {
    let mut conn = db.connect().await;
    conn.execute("SET session_replication_role = replica")
        .await
        .unwrap();
    conn.execute(statement).await.unwrap();
}

async fn position_of(db: &TestDb, stream: &str, version: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT global_position FROM events WHERE stream_id = $1 AND stream_version = $2",
    )
    .bind(stream)
    .bind(version)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn verification_names_an_edited_payload() {
    let (db, store) = seeded().await;
    let edited = position_of(&db, "a", 2).await;
    tamper(
        &db,
        &format!(r#"UPDATE events SET payload = '{{"n": 99}}' WHERE global_position = {edited}"#),
    )
    .await;
    let verification = store.verify(0, i64::MAX).await.unwrap();
    assert!(!verification.ok);
    assert_eq!(verification.first_bad_position, Some(edited));
}

#[tokio::test]
async fn verification_names_an_edited_metadata_or_timestamp() {
    let (db, store) = seeded().await;
    let edited = position_of(&db, "b", 1).await;
    tamper(&db, &format!("UPDATE events SET recorded_at = recorded_at - interval '1 day' WHERE global_position = {edited}")).await;
    assert_eq!(
        store.verify(0, i64::MAX).await.unwrap().first_bad_position,
        Some(edited)
    );
}

#[tokio::test]
async fn verification_names_the_event_after_a_deleted_one() {
    let (db, store) = seeded().await;
    let deleted = position_of(&db, "a", 2).await;
    let next = position_of(&db, "a", 3).await;
    tamper(
        &db,
        &format!("DELETE FROM events WHERE global_position = {deleted}"),
    )
    .await;
    let verification = store.verify(0, i64::MAX).await.unwrap();
    assert!(!verification.ok);
    assert_eq!(verification.first_bad_position, Some(next));
}

#[tokio::test]
async fn verification_notices_a_deleted_stream_tail() {
    let (db, store) = seeded().await;
    let tail = position_of(&db, "a", 5).await;
    let new_last = position_of(&db, "a", 4).await;
    tamper(
        &db,
        &format!("DELETE FROM events WHERE global_position = {tail}"),
    )
    .await;
    let verification = store.verify(0, i64::MAX).await.unwrap();
    assert!(!verification.ok, "{verification:?}");
    assert_eq!(verification.first_bad_position, Some(new_last));
}

#[tokio::test]
async fn a_gap_in_stream_versions_cannot_be_inserted() {
    let (db, _) = seeded().await;
    let err = db
        .pool
        .execute(
            "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, schema_version, payload) \
             VALUES (gen_random_uuid(), 'test', 'b', 4, 'test.happened', 1, '{}')",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no predecessor"), "{err}");
}

#[tokio::test]
async fn writers_cannot_choose_the_time_transaction_or_hash() {
    let (db, store) = seeded().await;
    db.pool
        .execute(
            "INSERT INTO streams VALUES ('test', 'forged', 1); \
             INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, schema_version, payload, recorded_at, transaction_id, hash) \
             VALUES (gen_random_uuid(), 'test', 'forged', 1, 'test.happened', 1, '{}', '2000-01-01', '1', '\\x00')",
        )
        .await
        .unwrap();
    let (year, hash_len): (f64, i32) = sqlx::query_as(
        "SELECT extract(year FROM recorded_at)::float8, length(hash) FROM events WHERE stream_id = 'forged'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(year > 2000.0);
    assert_eq!(hash_len, 32);
    assert!(store.verify(0, i64::MAX).await.unwrap().ok);
}
