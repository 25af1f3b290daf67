//! The command routes: social graph, posts, comments, likes; versions and `If-Match`.

use e2e::{spawn_app, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn position(response: &reqwest::Response) -> i64 {
    response.headers()["x-global-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn publish(app: &TestApp, token: &str, title: &str) -> String {
    let response = app
        .post(
            "/v1/posts",
            json!({"title": title, "body_markdown": "Some *markdown*"}),
            Some(token),
        )
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 1);
    body["post_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn follow_and_unfollow_are_idempotent_and_check_the_followee() {
    let app = spawn_app().await;
    let ada = app.register("ada").await;
    let bob = app.register("bob").await;
    let path = format!("/v1/users/{}/follow", bob.user_id);

    let first = app.call(Method::PUT, &path, &ada.access_token).await;
    assert_eq!(first.status(), 204);
    assert_eq!(first.headers()["etag"], "\"1\"");
    assert!(position(&first) > 0);
    let events = app.event_count().await;
    let again = app.call(Method::PUT, &path, &ada.access_token).await;
    assert_eq!((again.status().as_u16(), position(&again)), (204, 0));
    assert_eq!(
        app.event_count().await,
        events,
        "a repeated follow appends nothing"
    );

    let unknown = app
        .call(
            Method::PUT,
            &format!("/v1/users/{}/follow", uuid::Uuid::now_v7()),
            &ada.access_token,
        )
        .await;
    assert_eq!(error_code(unknown).await, (404, "not_found".to_owned()));
    let not_an_id = app
        .call(
            Method::PUT,
            "/v1/users/not-a-uuid/follow",
            &ada.access_token,
        )
        .await;
    assert_eq!(error_code(not_an_id).await, (404, "not_found".to_owned()));
    let selfie = app
        .call(
            Method::PUT,
            &format!("/v1/users/{}/follow", ada.user_id),
            &ada.access_token,
        )
        .await;
    assert_eq!(
        error_code(selfie).await,
        (422, "cannot_follow_self".to_owned())
    );

    let unfollow = app.call(Method::DELETE, &path, &ada.access_token).await;
    assert_eq!(
        (
            unfollow.status().as_u16(),
            unfollow.headers()["etag"].to_str().unwrap()
        ),
        (204, "\"2\"")
    );
    assert_eq!(
        app.call(Method::DELETE, &path, &ada.access_token)
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn posts_are_published_validated_and_deleted_by_their_author_only() {
    let app = spawn_app().await;
    let ada = app.register("ada").await;
    let bob = app.register("bob").await;
    let post = publish(&app, &ada.access_token, "Hello").await;

    for (body, code) in [
        (json!({"title": "", "body_markdown": "x"}), "invalid_title"),
        (
            json!({"title": "t".repeat(201), "body_markdown": "x"}),
            "invalid_title",
        ),
        (
            json!({"title": "ok", "body_markdown": "   "}),
            "invalid_body",
        ),
        (
            json!({"title": "ok", "body_markdown": "x", "media": ["ftp://example.com/a"]}),
            "invalid_media",
        ),
        // No read model could store a NUL (PostgreSQL text and jsonb refuse it): accepted,
        // the event would stop every projection that stores posts.
        (
            json!({"title": "a\u{0}b", "body_markdown": "x"}),
            "invalid_title",
        ),
        (
            json!({"title": "ok", "body_markdown": "x\u{0}"}),
            "invalid_body",
        ),
    ] {
        let response = app
            .post("/v1/posts", body.clone(), Some(&ada.access_token))
            .await;
        assert_eq!(error_code(response).await, (422, code.to_owned()), "{body}");
    }

    let path = format!("/v1/posts/{post}");
    let by_bob = app.call(Method::DELETE, &path, &bob.access_token).await;
    assert_eq!(error_code(by_bob).await, (403, "forbidden".to_owned()));
    let deleted = app.call(Method::DELETE, &path, &ada.access_token).await;
    assert_eq!(
        (
            deleted.status().as_u16(),
            deleted.headers()["etag"].to_str().unwrap()
        ),
        (204, "\"2\"")
    );
    assert_eq!(
        app.call(Method::DELETE, &path, &ada.access_token)
            .await
            .status(),
        204
    );
    let unknown = app
        .call(
            Method::DELETE,
            &format!("/v1/posts/{}", uuid::Uuid::now_v7()),
            &ada.access_token,
        )
        .await;
    assert_eq!(error_code(unknown).await, (404, "not_found".to_owned()));
}

#[tokio::test]
async fn if_match_pins_the_version_a_command_was_decided_on() {
    let app = spawn_app().await;
    let ada = app.register("ada").await;
    let post = publish(&app, &ada.access_token, "Versioned").await;
    let path = app.url(&format!("/v1/posts/{post}"));
    let send = |if_match: &'static str| {
        app.http
            .delete(path.clone())
            .bearer_auth(&ada.access_token)
            .header("if-match", if_match)
            .send()
    };
    assert_eq!(
        error_code(send("\"5\"").await.unwrap()).await,
        (409, "version_conflict".to_owned())
    );
    assert_eq!(
        error_code(send("soon").await.unwrap()).await,
        (400, "invalid_if_match".to_owned())
    );
    assert_eq!(send("\"1\"").await.unwrap().status(), 204);
}

#[tokio::test]
async fn comments_and_likes_need_a_live_post_and_likes_are_one_per_user() {
    let app = spawn_app().await;
    let ada = app.register("ada").await;
    let bob = app.register("bob").await;
    let post = publish(&app, &ada.access_token, "Likeable").await;

    let comment = app
        .post(
            &format!("/v1/posts/{post}/comments"),
            json!({"body": "Nice!"}),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(comment.status(), 201);
    let comment: Value = comment.json().await.unwrap();
    assert!(comment["comment_id"]
        .as_str()
        .unwrap()
        .parse::<uuid::Uuid>()
        .is_ok());
    let empty = app
        .post(
            &format!("/v1/posts/{post}/comments"),
            json!({"body": "  "}),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(error_code(empty).await, (422, "invalid_body".to_owned()));

    let like = format!("/v1/posts/{post}/like");
    assert_eq!(
        app.call(Method::PUT, &like, &bob.access_token)
            .await
            .status(),
        204
    );
    let events = app.event_count().await;
    assert_eq!(
        app.call(Method::PUT, &like, &bob.access_token)
            .await
            .status(),
        204
    );
    assert_eq!(
        app.event_count().await,
        events,
        "a second like by the same user appends nothing"
    );
    assert_eq!(
        app.call(Method::DELETE, &like, &bob.access_token)
            .await
            .status(),
        204
    );
    assert_eq!(
        app.call(Method::DELETE, &like, &bob.access_token)
            .await
            .status(),
        204
    );
    assert_eq!(app.event_count().await, events + 1);

    app.call(
        Method::DELETE,
        &format!("/v1/posts/{post}"),
        &ada.access_token,
    )
    .await;
    let on_deleted = app
        .post(
            &format!("/v1/posts/{post}/comments"),
            json!({"body": "late"}),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(error_code(on_deleted).await, (404, "not_found".to_owned()));
    let like_deleted = app.call(Method::PUT, &like, &bob.access_token).await;
    assert_eq!(
        error_code(like_deleted).await,
        (404, "not_found".to_owned())
    );
}

#[tokio::test]
async fn commands_need_a_valid_access_token() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/v1/posts",
            json!({"title": "t", "body_markdown": "b"}),
            None,
        )
        .await;
    assert_eq!(error_code(response).await, (401, "unauthorized".to_owned()));
    let response = app
        .post(
            "/v1/posts",
            json!({"title": "t", "body_markdown": "b"}),
            Some("nope"),
        )
        .await;
    assert_eq!(error_code(response).await, (401, "unauthorized".to_owned()));
    assert_eq!(app.event_count().await, 0);
}
