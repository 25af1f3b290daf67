//! Real time: SSE through two API instances sharing Redis, `Last-Event-ID`
//! resume, the registration saga with its compensation, aggregated likes.

use std::time::{Duration, Instant};

use e2e::{spawn_app, spawn_app_configured, SseClient, TestApp, WorkerOptions};
use reqwest::Method;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Publishes a post as `token`'s user; its id.
pub(crate) async fn publish(app: &TestApp, token: &str, title: &str) -> String {
    let response = app
        .post(
            "/v1/posts",
            json!({"title": title, "body_markdown": format!("*{title}* body")}),
            Some(token),
        )
        .await;
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    body["post_id"].as_str().unwrap().to_owned()
}

/// Waits until the post is readable (the content projection has it).
pub(crate) async fn readable(app: &TestApp, token: &str, post: &str) {
    let deadline = Instant::now() + WAIT;
    while app
        .call(Method::GET, &format!("/v1/posts/{post}"), token)
        .await
        .status()
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "post {post} never became readable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /v1/me`'s `onboarding` for the token's user.
async fn onboarding_state(app: &TestApp, token: &str) -> serde_json::Value {
    let me: serde_json::Value = app
        .call(Method::GET, "/v1/me", token)
        .await
        .json()
        .await
        .unwrap();
    me["onboarding"].clone()
}

/// How many `event_type` events the user's stream holds in the log.
async fn events_of(app: &TestApp, event_type: &str, user: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1 AND stream_id = $2")
        .bind(event_type)
        .bind(user.to_string())
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

async fn comment(http: &reqwest::Client, url: String, token: &str, body: &str) -> String {
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "body": body }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    body["comment_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_user_on_instance_a_receives_events_caused_through_instance_b_and_resumes_after_a_disconnect(
) {
    let a = spawn_app().await;
    let b = a.other_instance().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let http = reqwest::Client::new();

    // Alice follows Bob through B and listens on A.
    let followed = http
        .put(b.url(&format!("/v1/users/{}/follow", bob.user_id)))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(followed.status(), 204);
    let mut alice_stream =
        SseClient::connect(&a.url("/v1/stream"), &alice.access_token, None).await;
    // The follow must be in the timeline model before Bob posts, or there is no fan-out.
    let position = followed.headers()["x-global-position"]
        .to_str()
        .unwrap()
        .to_owned();
    let feed = a
        .http
        .get(a.url("/v1/feed"))
        .bearer_auth(&alice.access_token)
        .header("x-min-position", position)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);

    // Bob posts through B: Alice's connection on A gets the feed item.
    let response = http
        .post(b.url("/v1/posts"))
        .bearer_auth(&bob.access_token)
        .json(&json!({"title": "Hello from B", "body_markdown": "**hi**"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let post: serde_json::Value = response.json().await.unwrap();
    let post = post["post_id"].as_str().unwrap().to_owned();
    let item = alice_stream.expect("feed_item", WAIT).await;
    assert!(item.id.is_some(), "every event has an id");
    let item = item.json();
    assert_eq!(item["post_id"], post.as_str());
    assert_eq!(item["author_id"], bob.user_id.to_string());
    assert_eq!(item["title"], "Hello from B");
    assert_eq!(item["preview"], "hi");

    // Alice watches the post on A; comments made through B arrive at once.
    readable(&a, &alice.access_token, &post).await;
    let post_url = a.url(&format!("/v1/posts/{post}/stream"));
    let mut watching = SseClient::connect(&post_url, &alice.access_token, None).await;
    let comments_url = b.url(&format!("/v1/posts/{post}/comments"));
    let first = comment(&http, comments_url.clone(), &bob.access_token, "first").await;
    let event = watching.expect("comment_added", WAIT).await;
    assert_eq!(event.json()["comment_id"], first.as_str());
    assert_eq!(event.json()["body"], "first");
    assert_eq!(event.json()["author_id"], bob.user_id.to_string());
    let last_seen = event.id.clone().unwrap();

    // Disconnect; three comments while away; resume with Last-Event-ID: all three, in
    // order, nothing twice, then live again.
    drop(watching);
    let mut missed = Vec::new();
    for body in ["second", "third", "fourth"] {
        missed.push(comment(&http, comments_url.clone(), &bob.access_token, body).await);
    }
    // Let the projection push them before Alice returns (they must come from the stream).
    let deadline = Instant::now() + WAIT;
    loop {
        let page: serde_json::Value = a
            .call(
                Method::GET,
                &format!("/v1/posts/{post}"),
                &alice.access_token,
            )
            .await
            .json()
            .await
            .unwrap();
        if page["comment_count"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "comments never counted: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut resumed = SseClient::connect(&post_url, &alice.access_token, Some(&last_seen)).await;
    let mut received = Vec::new();
    while received.len() < 3 {
        let event = resumed.expect("comment_added", WAIT).await;
        received.push(event.json()["comment_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        received, missed,
        "resume delivers what was missed, in order"
    );
    let live = comment(&http, comments_url, &bob.access_token, "fifth").await;
    let event = resumed.expect("comment_added", WAIT).await;
    assert_eq!(
        event.json()["comment_id"],
        live.as_str(),
        "nothing twice after the resume"
    );
}

#[tokio::test]
async fn registration_pushes_exactly_one_onboarding_completed_also_to_a_stream_that_connects_late()
{
    let app = spawn_app().await;
    let early = app.register("early_bird").await;
    let mut early_stream =
        SseClient::connect(&app.url("/v1/stream"), &early.access_token, None).await;
    let late = app.register("late_comer").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut late_stream =
        SseClient::connect(&app.url("/v1/stream"), &late.access_token, None).await;

    for (session, stream) in [(&early, &mut early_stream), (&late, &mut late_stream)] {
        let event = stream.expect("onboarding_completed", WAIT).await;
        assert_eq!(event.json()["user_id"], session.user_id.to_string());
        // Nothing else for a while: exactly one.
        let next = stream.next_within(Duration::from_millis(1500)).await;
        assert!(
            next.as_ref()
                .is_none_or(|e| e.event != "onboarding_completed"),
            "a second onboarding_completed: {next:?}"
        );
        assert_eq!(
            onboarding_state(&app, &session.access_token).await,
            "completed"
        );
        assert_eq!(
            events_of(&app, "onboarding.completed", session.user_id).await,
            1,
            "recorded once in the log"
        );
    }
}

#[tokio::test]
async fn a_downstream_that_dead_letters_the_user_rolls_the_registration_back_and_frees_the_username(
) {
    let options = WorkerOptions {
        retry: projections::RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
        },
        ..WorkerOptions::default()
    };
    let app = spawn_app_configured(|_| {}, options).await;
    // The content store refuses this one user: its projection dead-letters the registration.
    sqlx::query(
        "ALTER TABLE read_model.profiles ADD CONSTRAINT no_doomed CHECK (username <> 'doomed')",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let doomed = app.register("doomed").await;
    let mut stream = SseClient::connect(&app.url("/v1/stream"), &doomed.access_token, None).await;
    let failed = stream.expect("onboarding_failed", WAIT).await;
    assert_eq!(failed.json()["user_id"], doomed.user_id.to_string());
    let reason = failed.json()["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("content"), "{reason}");
    assert!(reason.contains("no_doomed"), "{reason}");

    assert_eq!(onboarding_state(&app, &doomed.access_token).await, "failed");
    assert_eq!(
        events_of(&app, "user.registration_rolled_back", doomed.user_id).await,
        1
    );

    // Username and email are free again; with the cause gone, the new registration completes.
    sqlx::query("ALTER TABLE read_model.profiles DROP CONSTRAINT no_doomed")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let again = app.register("doomed").await;
    assert_ne!(again.user_id, doomed.user_id);
    let mut stream = SseClient::connect(&app.url("/v1/stream"), &again.access_token, None).await;
    stream.expect("onboarding_completed", WAIT).await;
}

#[tokio::test]
async fn a_registration_not_completed_before_its_deadline_is_rolled_back() {
    let mut options = WorkerOptions {
        retry: projections::RetryPolicy {
            // The poison event keeps being retried: only the deadline can end the saga.
            max_attempts: 10_000,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(100),
        },
        ..WorkerOptions::default()
    };
    options.onboarding.deadline = Duration::from_secs(2);
    let app = spawn_app_configured(|_| {}, options).await;
    sqlx::query("ALTER TABLE read_model.profiles ADD CONSTRAINT stuck CHECK (username <> 'stuck')")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let started = Instant::now();
    let stuck = app.register("stuck").await;
    let mut stream = SseClient::connect(&app.url("/v1/stream"), &stuck.access_token, None).await;
    let failed = stream.expect("onboarding_failed", WAIT).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the deadline"
    );
    assert!(failed.json()["reason"]
        .as_str()
        .unwrap()
        .contains("deadline"));
    let taken = app
        .post(
            "/v1/auth/register",
            json!({"username": "stuck", "email": "stuck@example.com", "password": "correct horse battery staple"}),
            None,
        )
        .await;
    assert_eq!(taken.status(), 201, "the username is free again");
}

#[tokio::test]
async fn likes_are_pushed_aggregated_at_most_once_per_interval_with_the_count() {
    let app = spawn_app().await; // test apps push likes every 500 ms
    let author = app.register("author").await;
    let post = publish(&app, &author.access_token, "Likeable").await;
    readable(&app, &author.access_token, &post).await;
    let mut fans = Vec::new();
    for i in 0..6 {
        fans.push(app.register(&format!("fan_{i}")).await);
    }
    let url = app.url(&format!("/v1/posts/{post}/stream"));
    let mut stream = SseClient::connect(&url, &author.access_token, None).await;
    let like_path = format!("/v1/posts/{post}/like");
    let likes = futures::future::join_all(
        fans.iter()
            .map(|fan| app.call(Method::PUT, &like_path, &fan.access_token)),
    )
    .await;
    assert!(likes.iter().all(|r| r.status() == 204));

    let mut pushes: Vec<(Instant, i64)> = Vec::new();
    while pushes.last().is_none_or(|(_, count)| *count < 6) {
        let event = stream.expect("likes", WAIT).await;
        assert_eq!(event.json()["post_id"], post.as_str());
        pushes.push((Instant::now(), event.json()["like_count"].as_i64().unwrap()));
    }
    assert!(
        pushes.len() < 6,
        "aggregated, not one push per like: {pushes:?}"
    );
    for pair in pushes.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(350), "pushed {gap:?} apart");
        assert!(pair[1].1 > pair[0].1, "counts only grow here: {pushes:?}");
    }
}

#[tokio::test]
async fn streams_refuse_bad_tokens_and_ids_and_accept_the_token_in_the_query() {
    let app = spawn_app().await;
    let ada = app.register("ada").await;
    let http = reqwest::Client::new();
    let no_token = http.get(app.url("/v1/stream")).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let bad_token = http
        .get(app.url("/v1/stream?access_token=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), 401);
    let bad_id = http
        .get(app.url("/v1/stream"))
        .bearer_auth(&ada.access_token)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), 400);
    let body: serde_json::Value = bad_id.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_last_event_id");
    let unknown_post = http
        .get(app.url(&format!("/v1/posts/{}/stream", uuid::Uuid::now_v7())))
        .bearer_auth(&ada.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_post.status(), 404);

    let by_query = http
        .get(app.url(&format!("/v1/stream?access_token={}", ada.access_token)))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);
    assert_eq!(by_query.headers()["x-accel-buffering"], "no");
    assert!(by_query.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
}

#[tokio::test]
async fn a_resume_older_than_the_retention_gets_a_reset_then_live_events() {
    let mut options = WorkerOptions::default();
    options.live.retention_entries = 2;
    let app = spawn_app_configured(|_| {}, options).await;
    let ada = app.register("ada").await;
    let post = publish(&app, &ada.access_token, "Busy").await;
    readable(&app, &ada.access_token, &post).await;
    let url = app.url(&format!("/v1/posts/{post}/stream"));
    let comments = app.url(&format!("/v1/posts/{post}/comments"));
    let mut stream = SseClient::connect(&url, &ada.access_token, None).await;
    // A second viewer stays connected: when it has seen "five", every push is in the stream.
    let mut watcher = SseClient::connect(&url, &ada.access_token, None).await;
    comment(&app.http, comments.clone(), &ada.access_token, "one").await;
    let first = stream.expect("comment_added", WAIT).await;
    drop(stream);
    // Four more: with two kept, the entries after `first` are partly gone.
    for body in ["two", "three", "four", "five"] {
        comment(&app.http, comments.clone(), &ada.access_token, body).await;
    }
    loop {
        if watcher.expect("comment_added", WAIT).await.json()["body"] == "five" {
            break;
        }
    }
    let mut resumed = SseClient::connect(&url, &ada.access_token, first.id.as_deref()).await;
    let reset = resumed.next_within(WAIT).await.unwrap();
    assert_eq!(reset.event, "reset");
    assert!(reset.id.is_some());
    comment(&app.http, comments, &ada.access_token, "six").await;
    let live = resumed.expect("comment_added", WAIT).await;
    assert_eq!(live.json()["body"], "six");
}

#[tokio::test]
async fn a_resume_behind_by_more_than_one_read_gets_every_entry_in_order() {
    let app = spawn_app().await;
    let ada = app.register("ada").await;
    let post = publish(&app, &ada.access_token, "Popular").await;
    readable(&app, &ada.access_token, &post).await;
    let redis = redis::aio::ConnectionManager::new(redis::Client::open(e2e::redis_url()).unwrap())
        .await
        .unwrap();
    let publisher = projections::LivePublisher::new(
        redis,
        &app.redis_prefix,
        projections::LiveSettings {
            retention_entries: 5000,
            ..projections::LiveSettings::default()
        },
    );
    let channel = projections::live::post_channel(post.parse().unwrap());
    let push = |n: usize| {
        let publisher = publisher.clone();
        let channel = channel.clone();
        async move {
            publisher
                .push(&channel, "bench", &json!({ "n": n }), Default::default())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let first = push(0).await;
    // More than the route reads at once (1000).
    for n in 1..=2500 {
        push(n).await;
    }
    let url = app.url(&format!("/v1/posts/{post}/stream"));
    let mut resumed = SseClient::connect(&url, &ada.access_token, Some(&first)).await;
    for n in 1..=2500 {
        let event = resumed.expect("bench", WAIT).await;
        assert_eq!(event.json()["n"], n, "in order, none skipped");
    }
    push(2501).await;
    assert_eq!(resumed.expect("bench", WAIT).await.json()["n"], 2501);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_never_delays_the_others() {
    // A connection may fall 16 events behind here.
    let app = e2e::spawn_app_with(|settings| settings.hub.buffer = 16).await;
    let ada = app.register("ada").await;
    let post = publish(&app, &ada.access_token, "Heavy").await;
    readable(&app, &ada.access_token, &post).await;
    let url = app.url(&format!("/v1/posts/{post}/stream"));
    // reqwest stops reading the socket while its body is not polled: a stalled client.
    let mut stalled = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&ada.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    let mut reader = SseClient::connect(&url, &ada.access_token, None).await;

    let redis = redis::aio::ConnectionManager::new(redis::Client::open(e2e::redis_url()).unwrap())
        .await
        .unwrap();
    let publisher = projections::LivePublisher::new(
        redis,
        &app.redis_prefix,
        projections::LiveSettings {
            retention: Duration::from_secs(60),
            ..projections::LiveSettings::default()
        },
    );
    let channel = projections::live::post_channel(post.parse().unwrap());
    // 400 × 64 KiB: far more than the socket buffers between the server and the stalled
    // client hold, so the server cannot write it all and the stalled one falls behind.
    const EVENTS: usize = 400;
    let padding = "x".repeat(64 * 1024);
    let pushing = tokio::spawn(async move {
        for n in 0..EVENTS {
            publisher
                .push(
                    &channel,
                    "bench",
                    &json!({ "n": n, "padding": padding }),
                    Default::default(),
                )
                .await
                .unwrap();
        }
    });
    for n in 0..EVENTS {
        let event = reader.expect("bench", WAIT).await;
        assert_eq!(
            event.json()["n"],
            n,
            "the reading client gets every event, in order"
        );
    }
    pushing.await.unwrap();

    // The stalled client reads again: it gets what was buffered, then the server ends its
    // stream instead of skipping events silently.
    let mut text = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = stalled.chunk().await.unwrap() {
            text.extend_from_slice(&chunk);
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stalled client's stream was never closed"
    );
    let received = String::from_utf8_lossy(&text)
        .matches("event: bench")
        .count();
    assert!(
        received < EVENTS,
        "the stalled client was not dropped ({received} events)"
    );
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sse_slow_clients_dropped_total 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("sse_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A Redis server of one test's own, so that it can be cut off and restarted without
/// touching the other tests' (scratch: nothing on disk).
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    fn start_on(port: u16) -> PrivateRedis {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (run scripts/services.sh)");
        PrivateRedis { port, child }
    }

    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        PrivateRedis::start_on(port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    if redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, then a new server on the same port: everything it held is gone.
    async fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        *self = PrivateRedis::start_on(self.port);
        self.ready().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn connections_survive_a_lost_pubsub_connection_and_a_redis_restart() {
    let mut private = PrivateRedis::start();
    private.ready().await;
    let url = private.url();
    let app = spawn_app_configured(
        |settings| settings.redis_url = url.into(),
        WorkerOptions::default(),
    )
    .await;
    let ada = app.register("ada").await;
    let post = publish(&app, &ada.access_token, "Resilient").await;
    readable(&app, &ada.access_token, &post).await;
    let stream_url = app.url(&format!("/v1/posts/{post}/stream"));
    let mut reader = SseClient::connect(&stream_url, &ada.access_token, None).await;
    let prefix = app.redis_prefix.clone();
    let publisher = |redis_url: String| {
        let prefix = prefix.clone();
        async move {
            let redis = redis::aio::ConnectionManager::new(redis::Client::open(redis_url).unwrap())
                .await
                .unwrap();
            projections::LivePublisher::new(redis, &prefix, Default::default())
        }
    };
    let channel = projections::live::post_channel(post.parse().unwrap());
    let push = |publisher: projections::LivePublisher, n: usize| {
        let channel = channel.clone();
        async move {
            publisher
                .push(&channel, "bench", &json!({ "n": n }), Default::default())
                .await
                .unwrap();
        }
    };
    let live = publisher(private.url()).await;
    push(live.clone(), 0).await;
    assert_eq!(reader.expect("bench", WAIT).await.json()["n"], 0);

    // The hub's Pub/Sub connection is cut; events pushed meanwhile reach the client once
    // it has subscribed again (from the stream), in order, none twice.
    let mut admin = redis::Client::open(private.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1, "this app's hub is the only subscriber");
    for n in 1..=20 {
        push(live.clone(), n).await;
    }
    for n in 1..=20 {
        assert_eq!(reader.expect("bench", WAIT).await.json()["n"], n);
    }

    // Redis restarts empty: the client is told to reload (`reset`), then live again.
    private.restart().await;
    let reset = reader
        .next_within(WAIT)
        .await
        .expect("an event after the restart");
    assert_eq!(reset.event, "reset", "{reset:?}");
    let live = publisher(private.url()).await;
    push(live, 21).await;
    assert_eq!(reader.expect("bench", WAIT).await.json()["n"], 21);
}
