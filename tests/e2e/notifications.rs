//! In-app notifications over HTTP and SSE: follows, likes and comments on your posts,
//! grouped per post and kind, never for your own acts; read marks; live pushes.

use std::time::Duration;

use e2e::{spawn_app, Session, SseClient, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// The log position a command's answer names.
fn position(response: &reqwest::Response) -> i64 {
    response.headers()["x-global-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn act(app: &TestApp, method: Method, path: &str, who: &Session) -> i64 {
    let response = app.call(method, path, &who.access_token).await;
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    position(&response)
}

async fn comment(app: &TestApp, post: &str, who: &Session) -> i64 {
    let response = app
        .post(
            &format!("/v1/posts/{post}/comments"),
            json!({"body": "nice"}),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(response.status(), 201);
    position(&response)
}

/// The caller's notifications once they reflect position `at`.
async fn notifications(app: &TestApp, who: &Session, query: &str, at: i64) -> Value {
    let response = app
        .http
        .get(app.url(&format!("/v1/notifications{query}")))
        .bearer_auth(&who.access_token)
        .header("x-min-position", at.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn mark_read(app: &TestApp, who: &Session, up_to: &Value) -> i64 {
    let response = app
        .post(
            "/v1/notifications/read",
            json!({"up_to": up_to}),
            Some(&who.access_token),
        )
        .await;
    assert_eq!(response.status(), 204);
    response
        .headers()
        .get("x-global-position")
        .map_or(0, |_| position(&response))
}

fn summary(page: &Value) -> Vec<(String, i64, Vec<String>, bool)> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["kind"].as_str().unwrap().to_owned(),
                item["count"].as_i64().unwrap(),
                item["actors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["username"].as_str().unwrap().to_owned())
                    .collect(),
                item["read"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn likes_comments_and_follows_notify_grouped_never_for_your_own_acts_and_read_marks_hold() {
    let app = spawn_app().await;
    let ada = app.register("nf_ada").await;
    let bob = app.register("nf_bob").await;
    let cy = app.register("nf_cy").await;
    let dee = app.register("nf_dee").await;
    let mut stream = SseClient::connect(&app.url("/v1/stream"), &ada.access_token, None).await;

    let published = app
        .post(
            "/v1/posts",
            json!({"title": "Hello", "body_markdown": "first"}),
            Some(&ada.access_token),
        )
        .await;
    assert_eq!(published.status(), 201);
    let post: Value = published.json().await.unwrap();
    let post = post["post_id"].as_str().unwrap().to_owned();
    let like = format!("/v1/posts/{post}/like");

    for who in [&bob, &cy, &dee] {
        act(&app, Method::PUT, &like, who).await;
    }
    comment(&app, &post, &bob).await;
    comment(&app, &post, &bob).await;
    act(
        &app,
        Method::PUT,
        &format!("/v1/users/{}/follow", ada.user_id),
        &cy,
    )
    .await;
    // Her own like and comment notify nobody.
    act(&app, Method::PUT, &like, &ada).await;
    let last = comment(&app, &post, &ada).await;

    let page = notifications(&app, &ada, "", last).await;
    assert_eq!(
        summary(&page),
        vec![
            ("follow".to_owned(), 1, vec!["nf_cy".to_owned()], false),
            ("comment".to_owned(), 1, vec!["nf_bob".to_owned()], false),
            (
                "like".to_owned(),
                3,
                vec!["nf_dee".to_owned(), "nf_cy".to_owned(), "nf_bob".to_owned()],
                false
            ),
        ]
    );
    assert_eq!(page["unread"], 3);
    assert_eq!(page["items"][1]["post_id"], json!(post));
    assert_eq!(page["items"][0]["post_id"], Value::Null);
    assert_eq!(page["next_cursor"], Value::Null);

    // Each act was pushed live to her, hers were not.
    let mut pushed = Vec::new();
    while let Some(event) = stream.next_within(Duration::from_secs(5)).await {
        if event.event == "notification" {
            let data: Value = serde_json::from_str(&event.data).unwrap();
            pushed.push(data["kind"].as_str().unwrap().to_owned());
        }
        if pushed.len() == 6 {
            break;
        }
    }
    assert_eq!(
        pushed,
        ["like", "like", "like", "comment", "comment", "follow"]
    );

    // Paging.
    let first = notifications(&app, &ada, "?limit=2", last).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let rest = notifications(&app, &ada, &format!("?limit=2&before={cursor}"), last).await;
    assert_eq!(summary(&rest)[0].0, "like");
    assert_eq!(rest["next_cursor"], Value::Null);

    // Read up to the comment group: it and the older likes are read, the follow is not.
    let read_at = mark_read(&app, &ada, &page["items"][1]["id"]).await;
    let page = notifications(&app, &ada, "", read_at.max(last)).await;
    let read: Vec<bool> = summary(&page).into_iter().map(|s| s.3).collect();
    assert_eq!(read, [false, true, true]);
    assert_eq!(page["unread"], 1);
    // Marks never go back.
    mark_read(&app, &ada, &page["items"][2]["id"]).await;
    let undone = act(&app, Method::DELETE, &like, &bob).await;
    let page = notifications(&app, &ada, "", undone).await;
    assert_eq!(page["unread"], 1);
    assert_eq!(summary(&page)[2].1, 2, "bob's like was taken back");

    // A new like moves the like group up, unread again.
    let eve = app.register("nf_eve").await;
    let liked = act(&app, Method::PUT, &like, &eve).await;
    let page = notifications(&app, &ada, "", liked).await;
    assert_eq!(
        summary(&page)[0],
        (
            "like".to_owned(),
            3,
            vec!["nf_eve".to_owned(), "nf_dee".to_owned(), "nf_cy".to_owned()],
            false
        )
    );
    assert_eq!(page["unread"], 2);
    // Past the oldest group: no items, and the unread count all the same.
    let oldest = page["items"][2]["id"].as_str().unwrap().to_owned();
    let past = notifications(&app, &ada, &format!("?before={oldest}"), liked).await;
    assert_eq!(past["items"], json!([]));
    assert_eq!(past["unread"], 2);
    assert_eq!(past["next_cursor"], Value::Null);

    // Bad input.
    for bad in [json!("abc"), json!("-1"), json!(5)] {
        let response = app
            .post(
                "/v1/notifications/read",
                json!({"up_to": bad}),
                Some(&ada.access_token),
            )
            .await;
        assert_eq!(response.status().as_u16() / 100, 4, "{bad}");
    }
    let response = app
        .http
        .get(app.url("/v1/notifications?limit=0"))
        .bearer_auth(&ada.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = app
        .http
        .get(app.url("/v1/notifications"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Others see none of hers.
    let page = notifications(&app, &dee, "", liked).await;
    assert_eq!(page["items"], json!([]));
}
