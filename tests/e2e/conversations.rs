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
