//! The general rules of API.md: error shape, request ids, strict JSON, body limit,
//! `Idempotency-Key`, and the operations endpoints.

use e2e::spawn_app;
use serde_json::{json, Value};

#[tokio::test]
async fn every_error_has_the_documented_shape_and_echoes_the_request_id() {
    let app = spawn_app().await;
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (app.http.get(app.url("/no/such/route")), 404, "not_found"),
        (
            app.http.patch(app.url("/v1/auth/login")),
            405,
            "method_not_allowed",
        ),
        (
            app.http
                .post(app.url("/v1/auth/login"))
                .header("content-type", "application/json")
                .body("{\"login\": "),
            400,
            "malformed_json",
        ),
        (
            app.http
                .post(app.url("/v1/auth/login"))
                .header("content-type", "application/json")
                .body("[1, 2]"),
            400,
            "invalid_request",
        ),
        (
            app.http
                .post(app.url("/v1/auth/login"))
                .body("login=a&password=b"),
            415,
            "unsupported_media_type",
        ),
        (
            app.http
                .post(app.url("/v1/auth/login"))
                .header("content-type", "application/json")
                .body(vec![b' '; 200 * 1024]),
            413,
            "payload_too_large",
        ),
    ];
    for (n, (request, status, code)) in cases.into_iter().enumerate() {
        let request_id = format!("client-chosen-{n}");
        let response = request
            .header("x-request-id", &request_id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{code}");
        assert_eq!(response.headers()["x-request-id"], request_id.as_str());
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
        assert_eq!(body["error"]["request_id"], request_id.as_str());
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn the_request_id_becomes_the_correlation_id_of_the_events() {
    let app = spawn_app().await;
    let ada = app.register("ada").await;
    let response = app
        .http
        .post(app.url("/v1/posts"))
        .bearer_auth(&ada.access_token)
        .header("x-request-id", "trace-me-42")
        .json(&json!({"title": "Traced", "body_markdown": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let metadata: Value =
        sqlx::query_scalar("SELECT metadata FROM events WHERE event_type = 'post.published'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(metadata["correlation_id"], "trace-me-42");
    assert_eq!(metadata["request_id"], "trace-me-42");
    assert_eq!(metadata["actor"], format!("user:{}", ada.user_id));
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_first_response_and_appends_nothing() {
    let app = spawn_app().await;
    let ada = app.register("ada").await;
    let send = |body: Value| {
        app.http
            .post(app.url("/v1/posts"))
            .bearer_auth(&ada.access_token)
            .header("idempotency-key", "post-once-1")
            .json(&body)
            .send()
    };
    let body = json!({"title": "Once", "body_markdown": "only once"});
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first_etag = first.headers()["etag"].clone();
    let first: Value = first.json().await.unwrap();
    let events = app.event_count().await;

    let retry = send(body.clone()).await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.headers()["etag"], first_etag);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first);
    assert_eq!(
        app.event_count().await,
        events,
        "the retry appended nothing"
    );

    let other = send(json!({"title": "Other", "body_markdown": "different"}))
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    let other: Value = other.json().await.unwrap();
    assert_eq!(other["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.event_count().await, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_append_once() {
    let app = spawn_app().await;
    let ada = app.register("ada").await;
    let attempts = (0..8).map(|_| {
        app.http
            .post(app.url("/v1/posts"))
            .bearer_auth(&ada.access_token)
            .header("idempotency-key", "burst")
            .json(&json!({"title": "Burst", "body_markdown": "b"}))
            .send()
    });
    let mut statuses = Vec::new();
    for response in futures::future::join_all(attempts).await {
        statuses.push(response.unwrap().status().as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&201));
    let published: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'post.published'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(published, 1);
}

#[tokio::test]
async fn a_replayed_error_keeps_its_code_with_the_new_request_id() {
    let app = spawn_app().await;
    let ada = app.register("ada").await;
    for request_id in ["first", "second"] {
        let response = app
            .http
            .post(app.url("/v1/posts"))
            .bearer_auth(&ada.access_token)
            .header("idempotency-key", "bad-post")
            .header("x-request-id", request_id)
            .json(&json!({"title": "", "body_markdown": "b"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_title");
        assert_eq!(body["error"]["request_id"], request_id);
    }
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let app = spawn_app().await;
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready,
        json!({"status": "ready", "postgres": true, "redis": true})
    );
    let openapi: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["paths"]["/v1/auth/register"]["post"].is_object());
    assert!(openapi["components"]["securitySchemes"]["bearer"].is_object());
    let docs = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    app.register("metered").await;
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(metrics.contains(r#"route="/v1/auth/register""#));
}

/// The served document, as a client generator reads it.
async fn openapi(app: &e2e::TestApp) -> Value {
    app.http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// What the OpenAPI fuzzer (scripts/fuzz-api.sh) found undocumented, pinned: every operation
/// documents the errors its shape lets it answer, each with the shared error body.
#[tokio::test]
async fn every_operation_documents_the_errors_its_shape_can_answer() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    let error_body = json!({"$ref": "#/components/schemas/ErrorBody"});
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let mut expected: Vec<&str> = Vec::new();
            if op.get("requestBody").is_some() {
                expected.extend(["400", "413", "415"]);
            }
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                expected.push("401");
            }
            if path.starts_with("/v1/") {
                expected.extend(["429", "503"]);
            }
            if method != "get" {
                expected.extend(["400", "409", "422"]);
            }
            for status in expected {
                let response = &responses
                    .get(status)
                    .unwrap_or_else(|| panic!("{method} {path} does not document {status}"));
                assert_eq!(
                    response["content"]["application/json"]["schema"], error_body,
                    "{method} {path} {status}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 200, "only {checked} responses checked");
    // A few codes by name, where clients branch on them.
    let publish = &doc["paths"]["/v1/posts"]["post"]["responses"];
    assert!(publish["415"]["description"]
        .as_str()
        .unwrap()
        .contains("unsupported_media_type"));
    assert!(publish["429"]["headers"]["Retry-After"].is_object());
    let feed = &doc["paths"]["/v1/feed"]["get"]["responses"];
    assert!(feed["503"]["description"]
        .as_str()
        .unwrap()
        .contains("read_model_behind"));
}

/// The constraints the API enforces are in the schemas, and operation ids are unique (links
/// and generated clients name operations by them).
#[tokio::test]
async fn the_document_states_the_constraints_the_api_enforces() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    let schemas = &doc["components"]["schemas"];
    let register = &schemas["RegisterRequest"];
    assert_eq!(register["additionalProperties"], false);
    assert_eq!(
        register["properties"]["username"]["pattern"],
        "^[a-z0-9_]+$"
    );
    assert_eq!(register["properties"]["username"]["maxLength"], 30);
    assert_eq!(register["properties"]["password"]["minLength"], 10);
    assert_eq!(
        schemas["PublishRequest"]["properties"]["title"]["maxLength"],
        200
    );
    assert_eq!(
        schemas["NotificationsReadRequest"]["properties"]["up_to"]["pattern"],
        "^[1-9][0-9]{0,17}$"
    );
    let params = doc["paths"]["/v1/feed"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let param = |name: &str| params.iter().find(|p| p["name"] == name).unwrap().clone();
    assert_eq!(param("limit")["schema"]["maximum"], 100);
    assert_eq!(param("X-Min-Position")["schema"]["minimum"], 0);
    let publish = doc["paths"]["/v1/posts"]["post"]["parameters"]
        .as_array()
        .unwrap();
    let key = publish
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap();
    assert_eq!(key["schema"]["maxLength"], 200);
    let mut ids = std::collections::HashSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        }
    }
    // The stateful walk register → publish → read: links spelled as OpenAPI spells them.
    let link = &doc["paths"]["/v1/posts"]["post"]["responses"]["201"]["links"]["read"];
    assert_eq!(link["operationId"], "get_post");
    assert_eq!(
        link["parameters"]["header.X-Min-Position"],
        "$response.header.x-global-position"
    );
}

/// A position past the end of the log is bad input (422), not a wait that ends in 503.
#[tokio::test]
async fn a_min_position_past_the_end_of_the_log_is_refused_at_once() {
    let app = spawn_app().await;
    let ada = app.register("ada").await;
    let started = std::time::Instant::now();
    let response = app
        .http
        .get(app.url("/v1/feed"))
        .bearer_auth(&ada.access_token)
        .header("x-min-position", "9223372036854775806")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_position");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}
