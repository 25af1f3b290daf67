//! Conversations over HTTP (the write side): starting one (a one-to-one pair gets exactly
//! one, also when both start it at once), sending messages, marking them read; members
//! only, everyone else gets 404.

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use e2e::{Session, TestApp};

async fn post(app: &TestApp, path: &str, who: &Session, body: Value) -> Response {
    app.post(path, body, Some(&who.access_token)).await
}

async fn started(response: Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["conversation_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pair_has_one_conversation_and_only_members_write_to_it() {
    let app = e2e::spawn_app().await;
    let (ada, bob, cyd) = (
        app.register("conv_ada").await,
        app.register("conv_bob").await,
        app.register("conv_cyd").await,
    );
    let (status, id) = started(
        post(
            &app,
            "/v1/conversations",
            &ada,
            json!({"members": [bob.user_id]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201);
    // The other side of the pair, and the caller named among the members: the same one.
    for (who, members) in [
        (&bob, json!([ada.user_id])),
        (&ada, json!([ada.user_id, bob.user_id])),
    ] {
        let (status, again) =
            started(post(&app, "/v1/conversations", who, json!({"members": members})).await).await;
        assert_eq!((status, again.as_str()), (StatusCode::OK, id.as_str()));
    }

    // Both of a new pair at once, many times: one conversation, every answer names it.
    let (dan, eve) = (
        app.register("conv_dan").await,
        app.register("conv_eve").await,
    );
    let app = &app;
    let starts = (0..8).map(|i| {
        let (who, other) = if i % 2 == 0 {
            (&dan, &eve)
        } else {
            (&eve, &dan)
        };
        async move {
            started(
                post(
                    app,
                    "/v1/conversations",
                    who,
                    json!({"members": [other.user_id]}),
                )
                .await,
            )
            .await
        }
    });
    let answers = futures::future::join_all(starts).await;
    assert_eq!(
        answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CREATED)
            .count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|(s, c)| s.is_success() && *c == answers[0].1),
        "{answers:?}"
    );

    // A group with a title; bad starts.
    let (status, group) = started(
        post(
            app,
            "/v1/conversations",
            &ada,
            json!({"members": [bob.user_id, cyd.user_id], "title": "Lunch"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201);
    assert_ne!(group, id);
    for (body, expected) in [
        (json!({"members": []}), 422),
        (json!({"members": [cyd.user_id]}), 422),
        (json!({"members": [Uuid::now_v7()]}), 404),
        (
            json!({"members": [bob.user_id], "title": "t".repeat(101)}),
            422,
        ),
        (json!({"members": "nope"}), 400),
    ] {
        let response = post(app, "/v1/conversations", &cyd, body.clone()).await;
        assert_eq!(response.status().as_u16(), expected, "{body}");
    }

    // Messages: members only; the same Idempotency-Key sends once.
    let messages = format!("/v1/conversations/{id}/messages");
    let sent = post(app, &messages, &ada, json!({"body": "Lunch at *noon*?"})).await;
    assert_eq!(sent.status(), 201);
    let sent: Value = sent.json().await.unwrap();
    assert!(sent["sent_at"].is_string(), "{sent}");
    let message_id = sent["message_id"].as_str().unwrap().to_owned();
    assert_eq!(
        post(app, &messages, &cyd, json!({"body": "hi"}))
            .await
            .status(),
        404
    );
    assert_eq!(
        post(app, &messages, &ada, json!({"body": "  "}))
            .await
            .status(),
        422
    );
    let nowhere = format!("/v1/conversations/{}/messages", Uuid::now_v7());
    assert_eq!(
        post(app, &nowhere, &ada, json!({"body": "hi"}))
            .await
            .status(),
        404
    );
    let before = app.event_count().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = app
            .http
            .post(app.url(&messages))
            .bearer_auth(&bob.access_token)
            .header("idempotency-key", "conv-once")
            .json(&json!({"body": "yes"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        ids.push(response.json::<Value>().await.unwrap()["message_id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(app.event_count().await, before + 1);

    // Reads: members only.
    let read = format!("/v1/conversations/{id}/read");
    assert_eq!(
        post(app, &read, &bob, json!({"up_to": message_id}))
            .await
            .status(),
        204
    );
    assert_eq!(
        post(app, &read, &cyd, json!({"up_to": message_id}))
            .await
            .status(),
        404
    );
}

/// GET `path` as `who` once the read side has applied `at`.
async fn read(app: &TestApp, path: &str, who: &Session, at: &str) -> (u16, Value) {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(&who.access_token)
        .header("x-min-position", at)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn position(response: &Response) -> String {
    response.headers()["x-global-position"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_inbox_and_the_history_follow_the_messages_live() {
    let app = e2e::spawn_app().await;
    let (ada, bob, cyd) = (
        app.register("inbox_ada").await,
        app.register("inbox_bob").await,
        app.register("inbox_cyd").await,
    );
    let (_, first) = started(
        post(
            &app,
            "/v1/conversations",
            &ada,
            json!({"members": [bob.user_id]}),
        )
        .await,
    )
    .await;
    let (_, second) = started(
        post(
            &app,
            "/v1/conversations",
            &cyd,
            json!({"members": [bob.user_id], "title": "Plans"}),
        )
        .await,
    )
    .await;
    let mut live = e2e::SseClient::connect(&app.url("/v1/stream"), &bob.access_token, None).await;

    let messages = format!("/v1/conversations/{first}/messages");
    let mut ids = Vec::new();
    let mut at = String::new();
    for body in ["one", "**two**", "three <script>x</script>"] {
        let sent = post(&app, &messages, &ada, json!({"body": body})).await;
        assert_eq!(sent.status(), 201);
        at = position(&sent);
        ids.push(
            sent.json::<Value>().await.unwrap()["message_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let pushed = live
        .expect("message", std::time::Duration::from_secs(10))
        .await;
    assert_eq!(pushed.json()["message_id"], ids[0].as_str());

    // Bob's inbox: the conversation with the newest message first, its unread count.
    let (status, inbox) = read(&app, "/v1/conversations", &bob, &at).await;
    assert_eq!(status, 200, "{inbox}");
    let items = inbox["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{inbox}");
    assert_eq!(items[0]["conversation_id"], first.as_str());
    assert_eq!(items[0]["unread"], 3);
    assert_eq!(items[0]["last_message"]["message_id"], ids[2].as_str());
    assert!(!items[0]["last_message"]["body_html"]
        .as_str()
        .unwrap()
        .contains("<script"));
    assert_eq!(items[1]["title"], "Plans");
    assert!(items[1]["last_message"].is_null());
    // Members by name, from chat's own profiles.
    let mut names: Vec<&str> = items[0]["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["username"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["inbox_ada", "inbox_bob"], "{inbox}");
    // Ada sent them: none unread for her.
    let (_, hers) = read(&app, "/v1/conversations", &ada, &at).await;
    assert_eq!(hers["items"][0]["unread"], 0, "{hers}");

    // The history, newest first, page by page; members only.
    let (status, page) = read(&app, &format!("{messages}?limit=2"), &bob, &at).await;
    assert_eq!(status, 200, "{page}");
    let newest: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(newest, [ids[2].as_str(), ids[1].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = read(
        &app,
        &format!("{messages}?limit=2&before={cursor}"),
        &bob,
        &at,
    )
    .await;
    assert_eq!(rest["items"][0]["message_id"], ids[0].as_str(), "{rest}");
    assert!(rest["next_cursor"].is_null(), "{rest}");
    let (status, _) = read(&app, &messages, &cyd, &at).await;
    assert_eq!(status, 404);

    // Read up to the second: one left unread; the reader's own stream hears of it.
    let marked = post(
        &app,
        &format!("/v1/conversations/{first}/read"),
        &bob,
        json!({"up_to": ids[1]}),
    )
    .await;
    assert_eq!(marked.status(), 204);
    let at = position(&marked);
    live.expect("conversation_read", std::time::Duration::from_secs(10))
        .await;
    let (_, inbox) = read(&app, "/v1/conversations", &bob, &at).await;
    assert_eq!(inbox["items"][0]["unread"], 1, "{inbox}");
    let _ = second;
}
