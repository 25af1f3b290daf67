//! Read-your-writes with the projections fed by Kafka (DESIGN §5): the relay publishes the
//! log, every projection consumes its topics, and a query carrying `X-Min-Position: <the
//! command's x-global-position>` answers 200 with the command's effect — not 503, not the
//! state before it.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use e2e::{spawn_app_on_kafka, TestApp};

/// The `x-global-position` of a command response.
fn position(response: &reqwest::Response) -> i64 {
    response
        .headers()
        .get("x-global-position")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-global-position")
}

/// GET `path` with `X-Min-Position: min`; the status and JSON body.
async fn get(app: &TestApp, path: &str, token: &str, min: i64) -> (StatusCode, Value) {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .header("x-min-position", min.to_string())
        .send()
        .await
        .expect("the API answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_a_query_with_x_min_position_sees_the_command_it_names() {
    let app = spawn_app_on_kafka().await;
    let reader = app.register("kafka_reader").await;
    let author = app.register("kafka_author").await;

    // Follow: the profile (timeline and content) counts it.
    let response = app
        .call(
            Method::PUT,
            &format!("/v1/users/{}/follow", author.user_id),
            &reader.access_token,
        )
        .await;
    assert_eq!(response.status(), 204);
    let at = position(&response);
    let (status, profile) = get(
        &app,
        &format!("/v1/users/{}", author.user_id),
        &reader.access_token,
        at,
    )
    .await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["followers"], 1, "{profile}");
    // The people projection, on Kafka too: the author is found by name.
    let (status, found) = get(
        &app,
        "/v1/users/search?q=kafka_auth",
        &reader.access_token,
        at,
    )
    .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["items"][0]["username"], "kafka_author", "{found}");

    // Publish: the post reads back, and is in the follower's feed.
    let response = app
        .post(
            "/v1/posts",
            json!({"title": "Over Kafka", "body_markdown": "Sent *through* the relay"}),
            Some(&author.access_token),
        )
        .await;
    assert_eq!(response.status(), 201);
    let at = position(&response);
    let post = response.json::<Value>().await.expect("JSON")["post_id"]
        .as_str()
        .expect("post_id")
        .to_owned();
    let (status, view) = get(&app, &format!("/v1/posts/{post}"), &reader.access_token, at).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["title"], "Over Kafka");
    let (status, feed) = get(&app, "/v1/feed", &reader.access_token, at).await;
    assert_eq!(status, 200, "{feed}");
    assert_eq!(feed["items"][0]["post_id"], post.as_str(), "{feed}");

    // Comment and like: the comment list and the counts show them at once.
    let response = app
        .post(
            &format!("/v1/posts/{post}/comments"),
            json!({"body": "Read my write"}),
            Some(&reader.access_token),
        )
        .await;
    assert_eq!(response.status(), 201);
    let at = position(&response);
    let (status, comments) = get(
        &app,
        &format!("/v1/posts/{post}/comments"),
        &reader.access_token,
        at,
    )
    .await;
    assert_eq!(status, 200, "{comments}");
    assert_eq!(comments["items"][0]["body"], "Read my write", "{comments}");
    let response = app
        .call(
            Method::PUT,
            &format!("/v1/posts/{post}/like"),
            &reader.access_token,
        )
        .await;
    assert_eq!(response.status(), 204);
    let at = position(&response);
    let (status, view) = get(&app, &format!("/v1/posts/{post}"), &reader.access_token, at).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["like_count"], 1, "{view}");
    assert_eq!(view["comment_count"], 1, "{view}");
}
