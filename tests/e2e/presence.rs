//! Presence (API.md "Messaging and presence"): online while a stream is open on any
//! instance, offline when the last one closes; visible to oneself and mutual followers
//! only; pushed to mutual followers at most once per person per 5 s; kept as history.

use std::time::{Duration, Instant};

use e2e::{spawn_app, Session, SseClient, TestApp};
use reqwest::Method;
use serde_json::Value;
use uuid::Uuid;

async fn get(app: &TestApp, path: &str, who: &Session) -> (u16, Value) {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(&who.access_token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn follow(app: &TestApp, who: &Session, whom: &Session) {
    let path = format!("/v1/users/{}/follow", whom.user_id);
    let response = app.call(Method::PUT, &path, &who.access_token).await;
    assert_eq!(response.status(), 204);
}

/// Waits until `who` reads `want` at `path` (10 s).
async fn until(
    app: &TestApp,
    path: &str,
    who: &Session,
    want: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(app, path, who).await;
        if want(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path}: still {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next `presence` event about `user` within `within`, others skipped.
async fn presence_of(stream: &mut SseClient, user: Uuid, within: Duration) -> Option<Value> {
    Some(pushed_presence(stream, user, within).await?.1)
}

/// [`presence_of`] with when it was published (the millisecond of its stream id).
async fn pushed_presence(
    stream: &mut SseClient,
    user: Uuid,
    within: Duration,
) -> Option<(u64, Value)> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = stream.next_within(left).await?;
        if event.event == "presence" && event.json()["user_id"] == user.to_string() {
            let id = event.id.clone().expect("every live event has an id");
            let ms = id.split('-').next().unwrap().parse().unwrap();
            return Some((ms, event.json()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_follows_streams_on_any_instance_and_only_mutual_followers_see_it() {
    let app = spawn_app().await;
    let other = app.other_instance().await;
    let (ada, bob, cyd) = (
        app.register("pres_ada").await,
        app.register("pres_bob").await,
        app.register("pres_cyd").await,
    );
    // Bob and Ada follow each other; Cyd follows Ada, who does not follow back.
    follow(&app, &ada, &bob).await;
    follow(&app, &bob, &ada).await;
    follow(&app, &cyd, &ada).await;
    let ada_presence = format!("/v1/users/{}/presence", ada.user_id);
    let offline = until(&app, &ada_presence, &bob, |s, _| s == 200).await;
    assert_eq!(offline["online"], false, "{offline}");
    assert!(offline["last_seen"].is_null(), "{offline}");
    // Oneself: always; a follower not followed back, an unknown id, a bad id: 404.
    assert_eq!(get(&app, &ada_presence, &ada).await.0, 200);
    assert_eq!(get(&app, &ada_presence, &cyd).await.0, 404);
    let nobody = format!("/v1/users/{}/presence", Uuid::now_v7());
    assert_eq!(get(&app, &nobody, &ada).await.0, 404);
    assert_eq!(get(&app, "/v1/users/nope/presence", &ada).await.0, 404);
    let history = format!("/v1/users/{}/presence/history", ada.user_id);
    assert_eq!(get(&app, &history, &cyd).await.0, 404);

    let mut bobs = SseClient::connect(&app.url("/v1/stream"), &bob.access_token, None).await;
    let mut cyds = SseClient::connect(&app.url("/v1/stream"), &cyd.access_token, None).await;
    // Ada's two devices, on two instances: online with the first, still online when it closes.
    let first = SseClient::connect(&other.url("/v1/stream"), &ada.access_token, None).await;
    let pushed = presence_of(&mut bobs, ada.user_id, Duration::from_secs(5))
        .await
        .expect("Bob is told Ada came online");
    assert_eq!(pushed["online"], true, "{pushed}");
    until(&app, &ada_presence, &bob, |_, b| b["online"] == true).await;
    let second = SseClient::connect(&app.url("/v1/stream"), &ada.access_token, None).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = get(&app, &ada_presence, &bob).await.1;
    assert_eq!(still["online"], true, "one stream is still open: {still}");
    drop(second);
    let gone = until(&app, &ada_presence, &bob, |_, b| b["online"] == false).await;
    assert!(gone["last_seen"].is_string(), "{gone}");
    // Inside the 5 s after the first push: held back, then sent with the state of then.
    let held = presence_of(&mut bobs, ada.user_id, Duration::from_secs(8))
        .await
        .expect("the offline push comes once the interval is over");
    assert_eq!(held["online"], false, "{held}");
    // Cyd follows Ada but is not followed back: told nothing.
    assert!(
        presence_of(&mut cyds, ada.user_id, Duration::from_millis(500))
            .await
            .is_none()
    );

    let transitions = until(&app, &history, &bob, |s, b| {
        s == 200 && b["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    let statuses: Vec<&str> = transitions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["online", "offline"], "{transitions}");
    assert_eq!(transitions["items"][1]["at"], gone["last_seen"]);
}

#[tokio::test]
async fn presence_pushes_are_at_most_one_per_person_per_5_s() {
    let app = spawn_app().await;
    let (ada, bob) = (
        app.register("flap_ada").await,
        app.register("flap_bob").await,
    );
    follow(&app, &ada, &bob).await;
    follow(&app, &bob, &ada).await;
    until(
        &app,
        &format!("/v1/users/{}/presence", ada.user_id),
        &bob,
        |s, _| s == 200,
    )
    .await;
    let mut bobs = SseClient::connect(&app.url("/v1/stream"), &bob.access_token, None).await;
    // Ada's connection flaps ten times in about two seconds.
    for _ in 0..10 {
        let stream = SseClient::connect(&app.url("/v1/stream"), &ada.access_token, None).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(stream);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pushes = Vec::new();
    while let Some(push) = pushed_presence(&mut bobs, ada.user_id, Duration::from_secs(8)).await {
        pushes.push(push);
    }
    assert!(
        (1..=3).contains(&pushes.len()),
        "{} pushes for ten flaps in 2 s: {pushes:?}",
        pushes.len()
    );
    for pair in pushes.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= 5000,
            "two pushes within 5 s: {pushes:?}"
        );
    }
    // Followers end with the state Ada is in.
    assert_eq!(pushes.last().unwrap().1["online"], false, "{pushes:?}");
}

#[tokio::test]
async fn presence_history_spans_are_checked() {
    let app = spawn_app().await;
    let ada = app.register("span_ada").await;
    let history = format!("/v1/users/{}/presence/history", ada.user_id);
    for query in [
        "?from=yesterday",
        "?to=2026-13-01T00:00:00Z",
        "?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
        "?from=2026-10-01T00:00:00Z&to=2026-12-01T00:00:00Z",
    ] {
        let (status, body) = get(&app, &format!("{history}{query}"), &ada).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{query}: {body}");
    }
    let (status, body) = get(
        &app,
        &format!("{history}?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"),
        &ada,
    )
    .await;
    assert_eq!(
        (status, body["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}
