//! One trace from a click to every read model: a like sent with a W3C `traceparent` to a
//! `serve` process is followed, in Jaeger, through the append, the relay's publication to
//! Kafka, each Kafka-fed projection that applies it and the live push — four processes,
//! each exporting its spans over OTLP/HTTP. Also: `LOG_FORMAT=json` lines carry the trace,
//! and a replay of the model adds no span.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::TestDb;
use tokio::process::Command;
use uuid::Uuid;

#[path = "common/processes.rs"]
mod processes;
use processes::{hybridlive, spawn_until};

/// The projections of `project all` that apply a `post.liked`: a like changes the post's
/// count (content) and notifies its author (notifications), live both.
const APPLYING_A_LIKE: [&str; 2] = ["apply content", "apply notifications"];

/// The binary on the test's database, lite stores fed by Kafka, exporting its spans to the
/// collector as `service`.
fn traced(db: &TestDb, env: &Env, service: &str, args: &[&str]) -> Command {
    let mut command = hybridlive(db, args);
    command
        .env("KAFKA_BROKERS", testkit::kafka_brokers())
        .env("KAFKA_TOPIC_PREFIX", &env.topics.prefix)
        .env("REDIS_PREFIX", &env.redis_prefix)
        .env("JWT_SECRET", &env.jwt_secret)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &env.otlp)
        .env("OTEL_SERVICE_NAME", format!("{service}-{}", env.run))
        .env("SEAL_INTERVAL_SECS", "0")
        // The filter selects the spans too: the steps of a command are `info`.
        .env("RUST_LOG", "info,sqlx=warn");
    command
}

/// What the processes of one test share.
struct Env {
    run: String,
    topics: testkit::kafka::TestTopics,
    redis_prefix: String,
    jwt_secret: String,
    otlp: String,
}

/// `(operation name, service)` of each span of Jaeger's `trace`.
fn spans_in(trace: &Value) -> Vec<(String, String)> {
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|span| {
            let process = span["processID"].as_str().unwrap_or_default();
            let service = trace["processes"][process]["serviceName"]
                .as_str()
                .unwrap_or_default();
            let name = span["operationName"].as_str().unwrap_or_default();
            (name.to_owned(), service.to_owned())
        })
        .collect()
}

/// The spans of `trace_id` Jaeger holds, and those of the traces of `linking` (a service)
/// that link to it: a projection that applies a batch at once does so in a span of its own,
/// linked to every event's trace, and its live pushes are that span's children.
async fn spans_of(jaeger: &str, trace_id: &str, linking: &str) -> Vec<(String, String)> {
    let get = |url: String| async move {
        match reqwest::get(url).await {
            Ok(response) => response.json::<Value>().await.unwrap_or_default(),
            Err(_) => Value::Null,
        }
    };
    let own = get(format!("{jaeger}/api/traces/{trace_id}")).await;
    let mut spans: Vec<(String, String)> = own["data"].get(0).map(spans_in).unwrap_or_default();
    let others = get(format!("{jaeger}/api/traces?service={linking}&limit=100")).await;
    for trace in others["data"].as_array().into_iter().flatten() {
        let links_ours = trace["spans"].as_array().into_iter().flatten().any(|span| {
            span["references"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["traceID"] == trace_id && r["refType"] == "FOLLOWS_FROM")
        });
        if links_ours && trace["traceID"] != trace_id {
            spans.extend(spans_in(trace));
        }
    }
    spans
}

#[tokio::test]
async fn one_like_is_one_trace_from_the_http_request_through_kafka_to_every_projection_and_the_live_push(
) {
    let (otlp, jaeger) = testkit::trace_collector();
    let db = TestDb::new().await;
    let run = Uuid::new_v4().simple().to_string();
    let env = Env {
        topics: testkit::kafka::TestTopics::new(),
        redis_prefix: format!("test:{run}:"),
        jwt_secret: format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
        otlp,
        run,
    };
    let _relay = spawn_until(
        &mut traced(&db, &env, "relay", &["relay"]),
        "Serving /metrics.",
    )
    .await;
    let _project = spawn_until(
        &mut traced(&db, &env, "project", &["project", "all"]),
        "Serving /metrics.",
    )
    .await;
    let serve = spawn_until(
        traced(&db, &env, "serve", &["serve"])
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info,sqlx=warn,api::access=debug"),
        "Serving the HTTP API.",
    )
    .await;
    let api = format!("http://{}", serve.addr.as_deref().unwrap());
    let http = reqwest::Client::new();

    let register = |name: &'static str| {
        let (http, api, run) = (http.clone(), api.clone(), env.run.clone());
        async move {
            let registered: Value = http
                .post(format!("{api}/v1/auth/register"))
                .json(&json!({
                    "username": format!("{name}{}", &run[..12]),
                    "email": format!("{name}{}@example.com", &run[..12]),
                    "password": "correct horse battery staple",
                }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            registered["access_token"]
                .as_str()
                .expect("a token")
                .to_owned()
        }
    };
    let (author, liker) = (register("author").await, register("liker").await);
    let published = http
        .post(format!("{api}/v1/posts"))
        .bearer_auth(&author)
        .json(&json!({"title": "Traced", "body_markdown": "One like, one trace."}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let post: Value = published.json().await.unwrap();
    let post_id = post["post_id"].as_str().expect("a post id").to_owned();

    // The like, in a trace of the test's own: the client's span is its parent.
    let trace_id = Uuid::new_v4().simple().to_string();
    let parent_span = &Uuid::new_v4().simple().to_string()[..16];
    let liked = http
        .put(format!("{api}/v1/posts/{post_id}/like"))
        .bearer_auth(&liker)
        .header("traceparent", format!("00-{trace_id}-{parent_span}-01"))
        .header("x-request-id", format!("like-{}", env.run))
        .send()
        .await
        .unwrap();
    assert!(liked.status().is_success(), "{}", liked.status());

    let mut wanted: BTreeSet<&str> = [
        "PUT /v1/posts/{post_id}/like",
        "append",
        "relay publish",
        "live push",
    ]
    .into_iter()
    .collect();
    wanted.extend(APPLYING_A_LIKE);
    let start = Instant::now();
    let spans = loop {
        let spans = spans_of(&jaeger, &trace_id, &format!("project-{}", env.run)).await;
        let names: BTreeSet<&str> = spans.iter().map(|(name, _)| name.as_str()).collect();
        if wanted.is_subset(&names) {
            break spans;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "trace {trace_id} in {jaeger} lacks {:?} after 90 s; it holds {spans:?}",
            wanted.difference(&names).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Each step in the process that does it.
    let service_of = |name: &str| {
        spans
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, service)| service.split('-').next().unwrap_or_default().to_owned())
    };
    assert_eq!(
        service_of("PUT /v1/posts/{post_id}/like").as_deref(),
        Some("serve")
    );
    assert_eq!(service_of("append").as_deref(), Some("serve"));
    assert_eq!(service_of("relay publish").as_deref(), Some("relay"));
    for apply in APPLYING_A_LIKE {
        assert_eq!(service_of(apply).as_deref(), Some("project"), "{apply}");
    }
    assert_eq!(service_of("live push").as_deref(), Some("project"));

    // The access log line of the like, as JSON: the trace, the request's span and the
    // correlation id (the request id).
    let logged: Vec<Value> = serve
        .lines
        .lock()
        .unwrap()
        .iter()
        .map(|line| serde_json::from_str(line).expect("LOG_FORMAT=json writes JSON lines"))
        .collect();
    let access = logged
        .iter()
        .find(|line| line["trace_id"] == trace_id.as_str() && line["message"] == "Answered.")
        .unwrap_or_else(|| panic!("no access log line in trace {trace_id}: {logged:#?}"));
    assert_eq!(
        access["correlation_id"],
        format!("like-{}", env.run).as_str()
    );
    let span_id = access["span_id"].as_str().expect("a span id");
    assert!(span_id.len() == 16 && span_id != parent_span, "{access}");
    assert_eq!(access["fields"]["status"], 204, "{access}");

    // A replay applies the like again, long after its trace ended, and exports no span of
    // it (nor of any event): no span of the replay reaches the collector.
    let replay = format!("replay-{}", env.run);
    let replayed = traced(&db, &env, "replay", &["replay", "content", "--no-swap"])
        .output()
        .await
        .unwrap();
    assert!(
        replayed.status.success(),
        "hybridlive replay content: {}\n{}",
        replayed.status,
        String::from_utf8_lossy(&replayed.stderr)
    );
    // The process flushed its spans as it exited; give the collector a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let services: Value = http
        .get(format!("{jaeger}/api/services"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let services: Vec<&str> = services["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        services.contains(&format!("serve-{}", env.run).as_str()),
        "{services:?}"
    );
    assert!(
        !services.contains(&replay.as_str()),
        "the replay exported spans: {}",
        spans_of(&jaeger, &trace_id, &replay).await.len()
    );
}
