//! The audit API: filters and cursors over the immutable log (a client that keeps
//! polling with `next_cursor` gets each later event once), one stream's history, the NDJSON
//! export, and verification that names the first altered or removed event, for role
//! `auditor` only.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Executor;
use uuid::Uuid;

use e2e::{spawn_app, Session, TestApp};

/// A command with a chosen `x-request-id` (the correlation id of its events).
async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    who: &Session,
    request_id: &str,
) -> Value {
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(&who.access_token)
        .header("x-request-id", request_id);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap_or(Value::Null)
}

/// A known log: two authors with a post each, a like and a comment, each command with its
/// own request id. Returns (alice, bob, alice's post id).
async fn seed(app: &TestApp) -> (Session, Session, Uuid) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let post = send(
        app,
        reqwest::Method::POST,
        "/v1/posts",
        Some(json!({"title": "Audited", "body_markdown": "text"})),
        &alice,
        "req-alice-post",
    )
    .await;
    let post_id: Uuid = post["post_id"].as_str().unwrap().parse().unwrap();
    send(
        app,
        reqwest::Method::POST,
        "/v1/posts",
        Some(json!({"title": "Bob's", "body_markdown": "text"})),
        &bob,
        "req-bob-post",
    )
    .await;
    send(
        app,
        reqwest::Method::PUT,
        &format!("/v1/posts/{post_id}/like"),
        None,
        &bob,
        "req-bob-like",
    )
    .await;
    send(
        app,
        reqwest::Method::POST,
        &format!("/v1/posts/{post_id}/comments"),
        Some(json!({"body": "nice"})),
        &bob,
        "req-bob-comment",
    )
    .await;
    (alice, bob, post_id)
}

async fn get(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    let response = app.call(reqwest::Method::GET, path, token).await;
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every item of a listing from `after` (none: the start), following `next_cursor` until
/// `has_more` is false; checks each page's size. Returns the items and the cursor to poll
/// with later.
async fn page_to_end(
    app: &TestApp,
    query: &str,
    after: Option<&str>,
    limit: usize,
    token: &str,
) -> (Vec<Value>, String) {
    let mut items = Vec::new();
    let mut after = after.map(str::to_owned);
    loop {
        let cursor = after
            .as_ref()
            .map(|c| format!("&after_position={c}"))
            .unwrap_or_default();
        let (status, page) = get(
            app,
            &format!("/v1/audit/events?limit={limit}{query}{cursor}"),
            token,
        )
        .await;
        assert_eq!(status, 200, "{query}: {page}");
        let page_items = page["items"].as_array().unwrap();
        assert!(page_items.len() <= limit);
        items.extend(page_items.iter().cloned());
        let next = page["next_cursor"]
            .as_str()
            .expect("next_cursor is never null");
        if !page["has_more"].as_bool().unwrap() {
            return (items, next.to_owned());
        }
        after = Some(next.to_owned());
    }
}

/// Every item of a listing settled so far.
async fn list_all(app: &TestApp, query: &str, limit: usize, token: &str) -> Vec<Value> {
    page_to_end(app, query, None, limit, token).await.0
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The event ids the database itself holds for a condition, in the log's read order.
async fn ids_where(app: &TestApp, condition: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT event_id::text FROM events WHERE {condition} \
          ORDER BY transaction_id, global_position"
    ))
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

/// Waits until the listing shows every stored event (events of running transactions, and
/// of other tests' CREATE DATABASE, hold the watermark back briefly) and nothing is still
/// being appended (onboarding runs after registration).
async fn settled(app: &TestApp, token: &str) {
    let mut last = usize::MAX;
    for _ in 0..200 {
        // The registration saga appends `onboarding.*` events after each registration.
        let sagas_open: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM events WHERE event_type = 'user.registered') \
                  - (SELECT count(*) FROM events WHERE event_type = 'onboarding.completed')",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        let stored = ids_where(app, "true").await;
        let listed = list_all(app, "", 1000, token).await;
        if sagas_open == 0 && ids(&listed) == stored && stored.len() == last {
            return;
        }
        last = stored.len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the audit listing never caught up with the log");
}

#[tokio::test]
async fn each_audit_filter_returns_exactly_the_matching_events_across_pages() {
    let app = spawn_app().await;
    let (alice, bob, post_id) = seed(&app).await;
    let audra = app.register_with_role("audra", "auditor").await;
    settled(&app, &audra.access_token).await;

    let created_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT recorded_at FROM events WHERE metadata->>'correlation_id' = 'req-bob-post'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    let at = created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let cases = [
        (String::new(), "true".to_owned()),
        ("&stream_type=post".into(), "stream_type = 'post'".into()),
        (
            format!("&stream_type=post&stream_id={post_id}"),
            format!("stream_type = 'post' AND stream_id = '{post_id}'"),
        ),
        (
            "&event_type=post.published".into(),
            "event_type = 'post.published'".into(),
        ),
        (
            "&correlation_id=req-bob-comment".into(),
            "metadata->>'correlation_id' = 'req-bob-comment'".into(),
        ),
        (
            format!("&actor=user:{}", bob.user_id),
            format!("metadata->>'actor' = 'user:{}'", bob.user_id),
        ),
        (
            format!("&actor=user:{}&event_type=post.published", alice.user_id),
            format!(
                "metadata->>'actor' = 'user:{}' AND event_type = 'post.published'",
                alice.user_id
            ),
        ),
        (format!("&from={at}"), format!("recorded_at >= '{at}'")),
        (format!("&to={at}"), format!("recorded_at < '{at}'")),
        ("&correlation_id=nobody".into(), "false".into()),
    ];
    for (query, condition) in &cases {
        let expected = ids_where(&app, condition).await;
        for limit in [1, 2, 1000] {
            let listed = list_all(&app, query, limit, &audra.access_token).await;
            assert_eq!(ids(&listed), expected, "{query} (limit {limit})");
        }
    }
    // The oracle is not vacuous: the filters select what the commands wrote.
    let comment = list_all(
        &app,
        "&correlation_id=req-bob-comment",
        10,
        &audra.access_token,
    )
    .await;
    assert_eq!(comment.len(), 1);
    assert_eq!(comment[0]["event_type"], "comment.added");
    assert_eq!(
        comment[0]["metadata"]["actor"],
        format!("user:{}", bob.user_id)
    );
    let published = list_all(&app, "&event_type=post.published", 10, &audra.access_token).await;
    assert_eq!(published.len(), 2);
    let all = list_all(&app, "", 1000, &audra.access_token).await;
    assert!(all.len() >= 8, "{}", all.len());
    let first = &all[0];
    for field in [
        "global_position",
        "event_id",
        "stream_type",
        "stream_id",
        "stream_version",
        "event_type",
        "schema_version",
        "payload",
        "metadata",
        "recorded_at",
        "hash",
    ] {
        assert!(!first[field].is_null(), "{field} missing: {first}");
    }
    assert_eq!(first["hash"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn a_stream_history_is_the_whole_stream_in_version_order() {
    let app = spawn_app().await;
    let audra = app.register_with_role("audra", "auditor").await;
    let (status, history) = get(
        &app,
        &format!("/v1/audit/streams/user/{}", audra.user_id),
        &audra.access_token,
    )
    .await;
    assert_eq!(status, 200);
    let items = history["items"].as_array().unwrap();
    let versions: Vec<(i64, &str)> = items
        .iter()
        .map(|i| {
            (
                i["stream_version"].as_i64().unwrap(),
                i["event_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![(1, "user.registered"), (2, "user.role_granted")]
    );
    assert_eq!(
        ids(items),
        ids_where(
            &app,
            &format!("stream_type = 'user' AND stream_id = '{}'", audra.user_id)
        )
        .await
    );
    let (missing, body) = get(&app, "/v1/audit/streams/post/nothing", &audra.access_token).await;
    assert_eq!(missing, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn audit_routes_refuse_non_auditors_and_bad_filters() {
    let app = spawn_app().await;
    let (alice, _, post_id) = seed(&app).await;
    let audra = app.register_with_role("audra", "auditor").await;
    for path in [
        "/v1/audit/events".to_owned(),
        format!("/v1/audit/streams/post/{post_id}"),
        "/v1/audit/verify".to_owned(),
        "/v1/audit/export".to_owned(),
    ] {
        let (status, body) = get(&app, &path, &alice.access_token).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(body["error"]["code"], "forbidden");
        let anonymous = app.http.get(app.url(&path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
    }
    let openapi: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/audit/events",
        "/v1/audit/streams/{stream_type}/{stream_id}",
        "/v1/audit/verify",
        "/v1/audit/export",
    ] {
        assert!(
            openapi["paths"][path]["get"].is_object(),
            "{path} undocumented"
        );
    }
    // The cursor is an opaque string, in the page (never null) and in the query.
    let page = &openapi["components"]["schemas"]["AuditEventPage"];
    assert_eq!(
        page["properties"]["next_cursor"]["type"], "string",
        "{page}"
    );
    assert_eq!(page["properties"]["has_more"]["type"], "boolean", "{page}");
    let required = page["required"].as_array().unwrap();
    for field in ["items", "next_cursor", "has_more"] {
        assert!(required.contains(&json!(field)), "{field}: {page}");
    }
    for path in ["/v1/audit/events", "/v1/audit/export"] {
        let parameters = openapi["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap();
        let after = parameters
            .iter()
            .find(|p| p["name"] == "after_position")
            .unwrap();
        let kind = &after["schema"]["type"];
        assert!(
            kind == "string"
                || kind
                    .as_array()
                    .is_some_and(|k| k.contains(&json!("string"))),
            "{path}: {after}"
        );
    }
    assert!(
        openapi["paths"]["/v1/audit/export"]["get"]["responses"]["200"]["headers"]["x-next-cursor"]
            .is_object()
    );
    for query in [
        "/v1/audit/events?limit=0",
        "/v1/audit/events?limit=1001",
        "/v1/audit/events?limit=ten",
        "/v1/audit/events?after_position=-1",
        "/v1/audit/events?after_position=1.5",
        "/v1/audit/events?after_position=v1.2.3",
        "/v1/audit/events?after_position=v1.2.x.0",
        "/v1/audit/export?after_position=v9.1.2.3",
        "/v1/audit/events?from=yesterday",
        "/v1/audit/events?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/v1/audit/events?stream_id=abc",
        "/v1/audit/events?event_type=",
        "/v1/audit/events?evnt_type=post.published",
        "/v1/audit/export?limit=5",
        "/v1/audit/verify?from_position=x",
        "/v1/audit/verify?from_position=5&to_position=4",
    ] {
        let (status, body) = get(&app, query, &audra.access_token).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_filter", "{query}");
    }
}

#[tokio::test]
async fn a_malformed_cursor_is_refused_with_a_message_naming_it() {
    let app = spawn_app().await;
    let audra = app.register_with_role("audra", "auditor").await;
    let (status, body) = get(
        &app,
        "/v1/audit/events?after_position=not-a-cursor",
        &audra.access_token,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_filter");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("after_position") && message.contains("next_cursor"),
        "{message}"
    );
}

/// Polls `GET /v1/audit/events` from `cursor` until an event of `correlation_id` is listed;
/// returns what was listed and the cursor to go on with.
async fn poll_until(
    app: &TestApp,
    cursor: &str,
    correlation_id: &str,
    token: &str,
) -> (Vec<Value>, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut listed = Vec::new();
    let mut cursor = cursor.to_owned();
    loop {
        let (items, next) = page_to_end(app, "", Some(&cursor), 2, token).await;
        listed.extend(items);
        cursor = next;
        if listed
            .iter()
            .any(|i| i["metadata"]["correlation_id"] == correlation_id)
        {
            return (listed, cursor);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{correlation_id} never listed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_client_polling_with_the_last_cursor_gets_each_later_event_once() {
    let app = spawn_app().await;
    let (alice, _, _) = seed(&app).await;
    let audra = app.register_with_role("audra", "auditor").await;
    settled(&app, &audra.access_token).await;
    let (first, cursor) = page_to_end(&app, "", None, 2, &audra.access_token).await;
    assert_eq!(ids(&first), ids_where(&app, "true").await);

    // Caught up: the cursor stays usable, and nothing is listed twice.
    let (again, cursor) = page_to_end(&app, "", Some(&cursor), 2, &audra.access_token).await;
    assert!(again.is_empty(), "{again:?}");

    send(
        &app,
        reqwest::Method::POST,
        "/v1/posts",
        Some(json!({"title": "Later", "body_markdown": "text"})),
        &alice,
        "req-later",
    )
    .await;
    let (later, _) = poll_until(&app, &cursor, "req-later", &audra.access_token).await;
    let seen_before = ids(&first);
    assert!(
        ids(&later).iter().all(|id| !seen_before.contains(id)),
        "listed again: {later:?}"
    );
    assert_eq!(
        ids(&later),
        ids_where(
            &app,
            &format!(
                "event_id NOT IN ({})",
                seen_before
                    .iter()
                    .map(|id| format!("'{id}'"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        )
        .await
    );
}

#[tokio::test]
async fn a_plain_position_lists_the_events_above_it_on_every_page() {
    let app = spawn_app().await;
    seed(&app).await;
    let audra = app.register_with_role("audra", "auditor").await;
    settled(&app, &audra.access_token).await;
    let floor = position_of(
        &app,
        "metadata->>'correlation_id' = 'req-bob-post' AND event_type = 'post.published'",
    )
    .await;
    let expected = ids_where(&app, &format!("global_position > {floor}")).await;
    assert!(expected.len() >= 2, "{expected:?}");
    let (listed, _) = page_to_end(&app, "", Some(&floor.to_string()), 1, &audra.access_token).await;
    assert_eq!(ids(&listed), expected);
}

#[tokio::test]
async fn the_export_names_the_cursor_that_continues_after_it() {
    let app = spawn_app().await;
    let (alice, _, _) = seed(&app).await;
    let audra = app.register_with_role("audra", "auditor").await;
    settled(&app, &audra.access_token).await;
    let response = app
        .call(
            reqwest::Method::GET,
            "/v1/audit/export",
            &audra.access_token,
        )
        .await;
    assert_eq!(response.status(), 200);
    let cursor = response.headers()["x-next-cursor"]
        .to_str()
        .unwrap()
        .to_owned();
    let exported: Vec<Value> = response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(ids(&exported), ids_where(&app, "true").await);

    send(
        &app,
        reqwest::Method::POST,
        "/v1/posts",
        Some(json!({"title": "After the export", "body_markdown": "text"})),
        &alice,
        "req-after-export",
    )
    .await;
    let (later, _) = poll_until(&app, &cursor, "req-after-export", &audra.access_token).await;
    assert_eq!(
        ids(&later),
        ids_where(&app, "metadata->>'correlation_id' = 'req-after-export'").await
    );
}

#[tokio::test]
async fn the_export_streams_the_same_events_as_the_listing_as_ndjson() {
    let app = spawn_app().await;
    let (_, bob, _) = seed(&app).await;
    let audra = app.register_with_role("audra", "auditor").await;
    settled(&app, &audra.access_token).await;
    for query in [
        "",
        &format!("actor=user:{}", bob.user_id),
        "event_type=post.published",
    ] {
        let listed = list_all(&app, &format!("&{query}"), 1000, &audra.access_token).await;
        let response = app
            .call(
                reqwest::Method::GET,
                &format!("/v1/audit/export?{query}"),
                &audra.access_token,
            )
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let text = response.text().await.unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines, listed, "{query}");
        assert!(!lines.is_empty());
    }
}

/// Tampering as a superuser would: the append-only trigger switched off.
async fn tamper(app: &TestApp, statement: &str) {
    let mut conn = app.db.connect().await;
    conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        .await
        .unwrap();
    conn.execute(statement).await.unwrap();
    conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")
        .await
        .unwrap();
}

async fn verify(app: &TestApp, token: &str) -> Value {
    let (status, body) = get(app, "/v1/audit/verify", token).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn position_of(app: &TestApp, condition: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT global_position FROM events WHERE {condition}"
    ))
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn verification_passes_on_a_clean_log_and_names_an_edited_payload() {
    let app = spawn_app().await;
    let (_, _, post_id) = seed(&app).await;
    let audra = app.register_with_role("audra", "auditor").await;
    settled(&app, &audra.access_token).await;
    let clean = verify(&app, &audra.access_token).await;
    assert_eq!(clean["ok"], true, "{clean}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(clean["checked"], stored);
    assert!(clean["first_bad_position"].is_null());
    assert_eq!(clean["from_position"], 1);
    assert!(clean["next_from_position"].is_null(), "{clean}");
    // A range at the very end of the positions: nothing to check, nothing after it.
    let (status, last) = get(
        &app,
        &format!("/v1/audit/verify?from_position={}", i64::MAX),
        &audra.access_token,
    )
    .await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(last["checked"], 0, "{last}");
    assert_eq!(last["to_position"], i64::MAX, "{last}");
    assert!(last["next_from_position"].is_null(), "{last}");

    let edited = position_of(
        &app,
        &format!("stream_type = 'post' AND stream_id = '{post_id}' AND stream_version = 1"),
    )
    .await;
    tamper(
        &app,
        &format!(
            r#"UPDATE events SET payload = jsonb_set(payload, '{{title}}', '"Forged"') WHERE global_position = {edited}"#
        ),
    )
    .await;
    let tampered = verify(&app, &audra.access_token).await;
    assert_eq!(tampered["ok"], false);
    assert_eq!(tampered["first_bad_position"], edited, "{tampered}");
}

#[tokio::test]
async fn verification_names_the_event_after_a_deleted_row() {
    let app = spawn_app().await;
    seed(&app).await;
    let audra = app.register_with_role("audra", "auditor").await;
    // audra's stream: user.registered, user.role_granted.
    let stream = format!("stream_type = 'user' AND stream_id = '{}'", audra.user_id);
    let deleted = position_of(&app, &format!("{stream} AND stream_version = 1")).await;
    let next = position_of(&app, &format!("{stream} AND stream_version = 2")).await;
    tamper(
        &app,
        &format!("DELETE FROM events WHERE global_position = {deleted}"),
    )
    .await;
    let tampered = verify(&app, &audra.access_token).await;
    assert_eq!(tampered["ok"], false);
    assert_eq!(tampered["first_bad_position"], next, "{tampered}");
}

#[tokio::test]
async fn a_seal_names_a_deleted_stream_tail_that_the_chain_alone_misses() {
    let app = spawn_app().await;
    seed(&app).await;
    let audra = app.register_with_role("audra", "auditor").await;
    settled(&app, &audra.access_token).await;
    let sealed = store::Sealer::new(app.db.pool.clone())
        .seal_now(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        matches!(sealed, store::SealOutcome::Sealed(_)),
        "{sealed:?}"
    );
    let clean = verify(&app, &audra.access_token).await;
    assert_eq!(clean["ok"], true, "{clean}");
    assert_eq!(clean["seals_checked"], 1);

    let stream = format!("stream_type = 'user' AND stream_id = '{}'", audra.user_id);
    let tail = position_of(
        &app,
        &format!("{stream} ORDER BY stream_version DESC LIMIT 1"),
    )
    .await;
    // Remove the stream's last event and hide it from the chain (lower the head version).
    tamper(
        &app,
        &format!(
            "DELETE FROM events WHERE global_position = {tail}; \
             UPDATE streams SET version = version - 1 WHERE {stream}"
        ),
    )
    .await;
    let chain_only = store::PgEventStore::new(app.db.pool.clone())
        .verify(0, i64::MAX)
        .await
        .unwrap();
    assert!(
        chain_only.ok,
        "the per-stream chain cannot see this: {chain_only:?}"
    );
    let tampered = verify(&app, &audra.access_token).await;
    assert_eq!(tampered["ok"], false);
    assert_eq!(tampered["first_bad_position"], tail, "{tampered}");
}
