//! Finding people by name: `GET /v1/users/search?q=` (prefixes and typos, best first) and
//! `GET /v1/users/by-username/{username}`, fed by the `people` projection; an erased
//! person is no longer found.

use reqwest::Method;
use serde_json::{json, Value};

use e2e::TestApp;

async fn register(app: &TestApp, username: &str, display_name: &str) -> (String, i64) {
    let response = app
        .post(
            "/v1/auth/register",
            json!({"username": username, "email": format!("{username}@example.org"),
                   "password": "correct horse battery staple", "display_name": display_name}),
            None,
        )
        .await;
    assert_eq!(response.status(), 201);
    let position = response.headers()["x-global-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = response.json().await.unwrap();
    (body["access_token"].as_str().unwrap().to_owned(), position)
}

async fn status(app: &TestApp, path: &str) -> u16 {
    app.http
        .get(app.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The usernames of every page of a list of people, `limit` at a time.
async fn list(app: &TestApp, path: &str, limit: usize) -> Vec<String> {
    let (mut names, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let response = app
            .http
            .get(app.url(path))
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let page: Value = response.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        names.extend(
            items
                .iter()
                .map(|i| i["username"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return names,
        }
    }
}

/// The usernames a search answers, in order.
async fn found(app: &TestApp, q: &str, at: i64) -> Vec<String> {
    let response = app
        .http
        .get(app.url("/v1/users/search"))
        .query(&[("q", q)])
        .header("x-min-position", at.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "search {q}");
    let body: Value = response.json().await.unwrap();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["username"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn people_are_found_by_prefix_typo_and_display_name_and_by_username() {
    let app = e2e::spawn_app().await;
    let (ada, _) = register(&app, "ada_lovelace", "Ada Lovelace").await;
    register(&app, "adam_smith", "Adam Smith").await;
    register(&app, "ada", "Another Ada").await;
    let (_, at) = register(&app, "grace_hopper", "Grace Hopper").await;

    // The exact username first, then the prefixes; nobody else.
    assert_eq!(
        found(&app, "ada", at).await,
        ["ada", "ada_lovelace", "adam_smith"]
    );
    // Best first: case-insensitive prefixes, a typo, a display name.
    for (q, best) in [
        ("ADA_LOVE", "ada_lovelace"),
        ("grace_hoper", "grace_hopper"),
        ("Lovelace", "ada_lovelace"),
        ("smith", "adam_smith"),
    ] {
        let answer = found(&app, q, at).await;
        assert_eq!(
            answer.first().map(String::as_str),
            Some(best),
            "{q}: {answer:?}"
        );
        assert!(!answer.contains(&"grace_hopper".to_owned()) || best == "grace_hopper");
    }
    assert!(found(&app, "zzzzqqq", at).await.is_empty());

    let profile = app
        .http
        .get(app.url("/v1/users/by-username/grace_hopper"))
        .header("x-min-position", at.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), 200);
    let profile: Value = profile.json().await.unwrap();
    assert_eq!(profile["display_name"], "Grace Hopper");
    assert_eq!(profile["followers"], 0);
    assert_eq!(
        status(&app, "/v1/users/by-username/nobody_at_all").await,
        404
    );

    for bad in [
        "/v1/users/search",
        "/v1/users/search?q=%20",
        "/v1/users/search?q=a&limit=0",
    ] {
        assert_eq!(status(&app, bad).await, 400, "{bad}");
    }
    let long = format!("/v1/users/search?q={}", "a".repeat(65));
    assert_eq!(status(&app, &long).await, 400);

    // Followers and following, page by page.
    let grace = app.register("grace_fan_0").await;
    let star = profile["user_id"].as_str().unwrap().to_owned();
    let mut fans = vec![grace];
    for i in 1..5 {
        fans.push(app.register(&format!("grace_fan_{i}")).await);
    }
    let mut at = 0;
    for fan in &fans {
        let followed = app
            .call(
                Method::PUT,
                &format!("/v1/users/{star}/follow"),
                &fan.access_token,
            )
            .await;
        assert_eq!(followed.status(), 204);
        at = followed.headers()["x-global-position"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
    }
    // Lists read the follows and the people models: wait for both.
    found(&app, "grace_fan_4", at).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut listed = Vec::new();
    while listed.len() < fans.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "followers: {listed:?}"
        );
        listed = list(&app, &format!("/v1/users/{star}/followers"), 2).await;
    }
    let mut expected: Vec<String> = (0..5).map(|i| format!("grace_fan_{i}")).collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    let following = list(&app, &format!("/v1/users/{}/following", fans[0].user_id), 2).await;
    assert_eq!(following, ["grace_hopper"]);
    let unknown = format!("/v1/users/{}/followers", uuid::Uuid::new_v4());
    assert_eq!(status(&app, &unknown).await, 404);
    let bad_cursor = format!("/v1/users/{star}/followers?cursor=nope");
    assert_eq!(status(&app, &bad_cursor).await, 400);

    // Erased: not found any more.
    let erased = app
        .http
        .request(Method::DELETE, app.url("/v1/me"))
        .bearer_auth(&ada)
        .json(&json!({"password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while found(&app, "lovelace", at).await != Vec::<String>::new() {
        assert!(
            std::time::Instant::now() < deadline,
            "still found after the erasure"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_persons_posts_are_listed_newest_first_page_by_page() {
    let app = e2e::spawn_app().await;
    let (token, _) = register(&app, "prolific", "Prolific Writer").await;
    let me: Value = app
        .http
        .get(app.url("/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = me["user_id"].as_str().unwrap().to_owned();
    let mut published = Vec::new();
    let mut at = String::new();
    for i in 0..5 {
        let response = app
            .post(
                "/v1/posts",
                json!({"title": format!("post {i}"), "body_markdown": "words"}),
                Some(&token),
            )
            .await;
        assert_eq!(response.status(), 201);
        at = response.headers()["x-global-position"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = response.json().await.unwrap();
        published.push(body["post_id"].as_str().unwrap().to_owned());
    }
    published.reverse();
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let mut query = vec![("limit", "2".to_owned())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let page: Value = app
            .http
            .get(app.url(&format!("/v1/users/{id}/posts")))
            .header("x-min-position", &at)
            .query(&query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = page["items"].as_array().unwrap();
        seen.extend(
            items
                .iter()
                .map(|i| i["post_id"].as_str().unwrap().to_owned()),
        );
        assert!(items.iter().all(|i| i["author_id"] == id.as_str()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, published);
    let unknown = format!("/v1/users/{}/posts", uuid::Uuid::now_v7());
    assert_eq!(status(&app, &unknown).await, 404);
    assert_eq!(status(&app, "/v1/users/nope/posts").await, 404);
}
