//! `/metrics` of the processes (DESIGN §2, §3, §5): `serve`, `relay` and `project` export
//! how long open transactions hold the log readers back, and each projection its lag in
//! events and in seconds, on both sources.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use event_schemas::Metadata;
use store::{AppendRequest, NewEvent, PgEventStore};
use testkit::TestDb;
use uuid::Uuid;

#[path = "common/processes.rs"]
mod processes;
use processes::{hybridlive, spawn_at};

/// Scrapes `http://<addr>/metrics` until it holds every line start of `wanted` (60 s).
async fn scrape_until(addr: &str, wanted: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let text = match reqwest::get(format!("http://{addr}/metrics")).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(error) => format!("no answer: {error}"),
        };
        let has = |name: &&str| text.lines().any(|line| line.starts_with(*name));
        if wanted.iter().all(has) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{addr}/metrics lacks {:?}:\n{text}",
            wanted.iter().filter(|w| !has(w)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Appends `n` follows (the timeline projection applies them).
async fn follows(db: &TestDb, n: usize) {
    let store = PgEventStore::new(db.pool.clone());
    for _ in 0..n {
        store
            .append(&AppendRequest {
                stream_type: "social_graph".into(),
                stream_id: Uuid::new_v4().to_string(),
                expected_version: 0,
                events: vec![NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: "social.followed".into(),
                    schema_version: 1,
                    payload: serde_json::json!({
                        "follower_id": Uuid::new_v4(),
                        "followee_id": Uuid::new_v4(),
                    }),
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

#[tokio::test]
async fn serve_relay_and_a_kafka_fed_project_export_the_holdback_and_the_lag_in_events_and_seconds()
{
    let db = TestDb::new().await;
    let run = Uuid::new_v4().simple().to_string();
    let test_topics = testkit::kafka::TestTopics::new();
    let topics = test_topics.prefix.clone();
    follows(&db, 5).await;
    let (_relay, relay) = spawn_at(
        hybridlive(&db, &["relay"])
            .env("KAFKA_BROKERS", testkit::kafka_brokers())
            .env("KAFKA_TOPIC_PREFIX", &topics),
        "Serving /metrics.",
    )
    .await;
    let (_project, project) = spawn_at(
        hybridlive(&db, &["project", "timeline"])
            .env("KAFKA_BROKERS", testkit::kafka_brokers())
            .env("KAFKA_TOPIC_PREFIX", &topics)
            .env("REDIS_PREFIX", format!("test:{run}:")),
        "Serving /metrics.",
    )
    .await;
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let (_serve, serve) = spawn_at(
        hybridlive(&db, &["serve"])
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("JWT_SECRET", secret)
            .env("SEAL_INTERVAL_SECS", "0")
            .env("REDIS_PREFIX", format!("test:{run}:")),
        "Serving the HTTP API.",
    )
    .await;

    let holdback = "eventstore_reader_holdback_seconds";
    // The counter is exported from the start, at 0: wait for the five events.
    scrape_until(&relay, &[holdback, "relay_published_total 5"]).await;
    scrape_until(&serve, &[holdback]).await;
    let metrics = scrape_until(
        &project,
        &[
            holdback,
            "projection_lag_events{projection=\"timeline\"}",
            "projection_lag_seconds{projection=\"timeline\"}",
            "projection_applied_total{projection=\"timeline\"} 5",
        ],
    )
    .await;
    // Everything applied: the consumer's lag comes down to nothing.
    let start = Instant::now();
    let mut metrics = metrics;
    while !metrics.contains("projection_lag_events{projection=\"timeline\"} 0") {
        assert!(start.elapsed() < Duration::from_secs(30), "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        metrics = scrape_until(&project, &[holdback]).await;
    }
}

#[tokio::test]
async fn a_log_fed_project_exports_the_holdback_and_its_lag_in_events_and_seconds() {
    let db = TestDb::new().await;
    let run = Uuid::new_v4().simple().to_string();
    follows(&db, 5).await;
    let (_project, project) = spawn_at(
        hybridlive(&db, &["project", "timeline"]).env("REDIS_PREFIX", format!("test:{run}:")),
        "Serving /metrics.",
    )
    .await;
    scrape_until(
        &project,
        &[
            "eventstore_reader_holdback_seconds",
            "projection_lag_events{projection=\"timeline\"}",
            "projection_lag_seconds{projection=\"timeline\"}",
            "projection_applied_total{projection=\"timeline\"} 5",
        ],
    )
    .await;
}
