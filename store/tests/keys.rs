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
