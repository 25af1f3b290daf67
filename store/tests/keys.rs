//! Sealing against a real PostgreSQL: racing appends for a person without a key agree on one
//! key, and every event they sealed opens with it; the raw log holds only ciphertext.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use event_schemas::Metadata;
use serde_json::json;
use store::{AppendRequest, NewEvent, PgEventStore};
use testkit::TestDb;
use uuid::Uuid;

fn post(author: Uuid, title: &str) -> AppendRequest {
    let post_id = Uuid::now_v7();
    AppendRequest {
        stream_type: "post".into(),
        stream_id: post_id.to_string(),
        expected_version: 0,
        events: vec![NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "post.published".into(),
            schema_version: 1,
            payload: json!({"post_id": post_id, "author_id": author, "title": title,
                "body_markdown": title, "media": [format!("https://example.org/{title}.png")]}),
        }],
        metadata: Metadata::default(),
        claims: Vec::new(),
        credentials: Vec::new(),
        erases_subject: false,
    }
}

#[tokio::test]
async fn racing_appends_for_a_new_person_agree_on_one_key() {
    let db = TestDb::new().await;
    let author = Uuid::now_v7();
    // Separate stores: separate key caches, as separate API instances have.
    let appends = (0..16).map(|i| {
        let store = PgEventStore::new(db.pool.clone());
        async move { store.append(&post(author, &format!("title-{i}"))).await }
    });
    for appended in futures::future::join_all(appends).await {
        appended.unwrap();
    }
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM data_keys WHERE subject = $1")
        .bind(author)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(keys, 1);
    let raw: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM events")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(raw.len(), 16);
    assert!(raw.iter().all(|p| !p.contains("title-")), "{raw:?}");

    let store = PgEventStore::new(db.pool.clone());
    let mut titles = Vec::new();
    for stream in sqlx::query_scalar::<_, String>("SELECT stream_id FROM events")
        .fetch_all(&db.pool)
        .await
        .unwrap()
    {
        let event = &store.read_stream("post", &stream, 0).await.unwrap()[0];
        assert!(event.payload["media"][0]
            .as_str()
            .unwrap()
            .ends_with(".png"));
        titles.push(event.payload["title"].as_str().unwrap().to_owned());
    }
    titles.sort();
    let mut expected: Vec<String> = (0..16).map(|i| format!("title-{i}")).collect();
    expected.sort();
    assert_eq!(titles, expected);
}

fn erased(person: Uuid, expected_version: u64) -> AppendRequest {
    AppendRequest {
        stream_type: "user".into(),
        stream_id: person.to_string(),
        expected_version,
        events: vec![NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "user.erased".into(),
            schema_version: 1,
            payload: json!({ "user_id": person }),
        }],
        metadata: Metadata::default(),
        claims: vec![store::claims::Claim::ReleaseAll],
        credentials: Vec::new(),
        erases_subject: true,
    }
}

async fn count(db: &TestDb, sql: &str, person: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(person.to_string())
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// The erasing append destroys the key, the credentials, the claims and the snapshot with
/// its event, or nothing when it is refused; afterwards the person's data opens to
/// `[erased]` for every reader and nothing of theirs can be sealed again.
#[tokio::test]
async fn an_erasing_append_shreds_the_key_with_its_event_or_not_at_all() {
    let db = TestDb::new().await;
    let person = Uuid::now_v7();
    let store = PgEventStore::new(db.pool.clone());
    store.append(&post(person, "zq-before")).await.unwrap();
    let mut registered = erased(person, 0);
    registered.events[0].event_type = "test.registered".into();
    registered.claims = vec![store::claims::Claim::Reserve {
        scope: "username",
        value: "zq_person".into(),
    }];
    registered.credentials = vec![store::credentials::Credential {
        kind: "password",
        secret: Some("$argon2id$zq".into()),
    }];
    registered.erases_subject = false;
    store.append(&registered).await.unwrap();
    store
        .save_snapshot(
            "user",
            &person.to_string(),
            1,
            &json!({"username": "zq_person"}),
        )
        .await
        .unwrap();
    let held = [
        "SELECT count(*) FROM credentials WHERE stream_id = $1",
        "SELECT count(*) FROM unique_claims WHERE stream_id = $1",
        "SELECT count(*) FROM snapshots WHERE stream_id = $1",
        "SELECT count(*) FROM data_keys WHERE subject::text = $1 AND wrapped IS NOT NULL",
    ];

    // A stale version: refused, and nothing of it happened.
    assert!(matches!(
        store.append(&erased(person, 0)).await,
        Err(store::AppendError::Conflict { .. })
    ));
    for sql in held {
        assert_eq!(count(&db, sql, person).await, 1, "{sql}");
    }

    store.append(&erased(person, 1)).await.unwrap();
    for sql in held {
        assert_eq!(count(&db, sql, person).await, 0, "{sql}");
    }
    assert!(store::keys::is_erased(&db.pool, person).await.unwrap());
    // A fresh store (no cache) and this one (which dropped its key) open to `[erased]`.
    for reader in [PgEventStore::new(db.pool.clone()), store.clone()] {
        let stream: String =
            sqlx::query_scalar("SELECT stream_id FROM events WHERE event_type = 'post.published'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let event = &reader.read_stream("post", &stream, 0).await.unwrap()[0];
        assert_eq!(event.payload["title"], "[erased]");
        assert_eq!(event.payload["media"][0], "[erased]");
    }
    assert!(store.append(&post(person, "zq-after")).await.is_err());
}
