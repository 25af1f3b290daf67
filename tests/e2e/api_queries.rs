//! The query routes over the read models: feed, post, comments, profile, the
//! Redis caches, and `X-Min-Position`. The projections run next to the API, fed by the log.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use e2e::{spawn_app, Session, TestApp};

/// The `x-global-position` of a command response.
fn position(response: &reqwest::Response) -> i64 {
    response
        .headers()
        .get("x-global-position")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-global-position")
}

/// GET `path` after the read models caught up with `min`; the status and JSON body.
async fn get(app: &TestApp, path: &str, token: Option<&str>, min: i64) -> (StatusCode, Value) {
    let mut request = app
        .http
        .get(app.url(path))
        .header("x-min-position", min.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn publish(app: &TestApp, author: &Session, title: &str) -> (Uuid, i64) {
    let response = app
        .post(
            "/v1/posts",
            json!({"title": title, "body_markdown": format!("Body of *{title}* <script>x()</script>")}),
            Some(&author.access_token),
        )
        .await;
    assert_eq!(response.status(), 201);
    let at = position(&response);
    let body: Value = response.json().await.expect("JSON");
    (
        body["post_id"]
            .as_str()
            .expect("post_id")
            .parse()
            .expect("uuid"),
        at,
    )
}

async fn command(app: &TestApp, method: Method, path: &str, who: &Session) -> i64 {
    let response = app.call(method, path, &who.access_token).await;
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    position(&response)
}

fn titles(feed: &Value) -> Vec<String> {
    feed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["title"].as_str().expect("title").to_owned())
        .collect()
}

#[tokio::test]
async fn a_follower_sees_a_post_with_its_counts_until_it_is_deleted() {
    let app = spawn_app().await;
    let a = app.register("reader_a").await;
    let b = app.register("author_b").await;
    let at = command(
        &app,
        Method::PUT,
        &format!("/v1/users/{}/follow", b.user_id),
        &a,
    )
    .await;
    let (_, profile) = get(&app, &format!("/v1/users/{}", b.user_id), None, at).await;
    assert_eq!(profile["followers"], 1);
    assert_eq!(profile["username"], "author_b");

    let (post, at) = publish(&app, &b, "Hello").await;
    let (status, feed) = get(&app, "/v1/feed", Some(&a.access_token), at).await;
    assert_eq!(status, 200, "{feed}");
    assert_eq!(titles(&feed), ["Hello"]);
    assert_eq!(feed["items"][0]["like_count"], 0);
    assert_eq!(feed["items"][0]["comment_count"], 0);
    assert_eq!(feed["items"][0]["preview"], "Body of Hello x()");
    let (_, own) = get(&app, "/v1/feed", Some(&b.access_token), at).await;
    assert_eq!(titles(&own), ["Hello"], "an author sees their own posts");

    let comment = app
        .post(
            &format!("/v1/posts/{post}/comments"),
            json!({"body": "First!"}),
            Some(&a.access_token),
        )
        .await;
    assert_eq!(comment.status(), 201);
    command(&app, Method::PUT, &format!("/v1/posts/{post}/like"), &a).await;
    let at = command(&app, Method::PUT, &format!("/v1/posts/{post}/like"), &b).await;
    let (_, feed) = get(&app, "/v1/feed", Some(&a.access_token), at).await;
    assert_eq!(feed["items"][0]["like_count"], 2);
    assert_eq!(feed["items"][0]["comment_count"], 1);
    let (_, view) = get(&app, &format!("/v1/posts/{post}"), None, at).await;
    assert_eq!(view["like_count"], 2);
    assert_eq!(view["comment_count"], 1);
    assert!(view["body_html"]
        .as_str()
        .expect("html")
        .contains("<em>Hello</em>"));
    assert!(
        !view["body_html"]
            .as_str()
            .expect("html")
            .contains("<script"),
        "{view}"
    );
    let (_, comments) = get(&app, &format!("/v1/posts/{post}/comments"), None, at).await;
    assert_eq!(comments["items"][0]["body"], "First!");
    assert_eq!(comments["items"][0]["author_id"], a.user_id.to_string());

    let at = command(&app, Method::DELETE, &format!("/v1/posts/{post}"), &b).await;
    for reader in [&a, &b] {
        let (_, feed) = get(&app, "/v1/feed", Some(&reader.access_token), at).await;
        assert!(titles(&feed).is_empty(), "{feed}");
    }
    assert_eq!(
        get(&app, &format!("/v1/posts/{post}"), None, at).await.0,
        404
    );
    assert_eq!(
        get(&app, &format!("/v1/posts/{post}/comments"), None, at)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn feed_pages_stay_stable_while_new_posts_arrive_and_unfollow_takes_posts_out() {
    let app = spawn_app().await;
    let a = app.register("pager_a").await;
    let b = app.register("pager_b").await;
    command(
        &app,
        Method::PUT,
        &format!("/v1/users/{}/follow", b.user_id),
        &a,
    )
    .await;
    let mut at = 0;
    for i in 1..=7 {
        at = publish(&app, &b, &format!("p{i}")).await.1;
    }
    let (_, first) = get(&app, "/v1/feed?limit=3", Some(&a.access_token), at).await;
    assert_eq!(titles(&first), ["p7", "p6", "p5"]);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    for i in 8..=9 {
        at = publish(&app, &b, &format!("p{i}")).await.1;
    }
    let (_, second) = get(
        &app,
        &format!("/v1/feed?limit=3&cursor={cursor}"),
        Some(&a.access_token),
        at,
    )
    .await;
    assert_eq!(titles(&second), ["p4", "p3", "p2"]);
    let cursor = second["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let (_, last) = get(
        &app,
        &format!("/v1/feed?limit=3&cursor={cursor}"),
        Some(&a.access_token),
        at,
    )
    .await;
    assert_eq!(titles(&last), ["p1"]);
    assert!(last["next_cursor"].is_null());

    let at = command(
        &app,
        Method::DELETE,
        &format!("/v1/users/{}/follow", b.user_id),
        &a,
    )
    .await;
    let (_, profile) = get(&app, &format!("/v1/users/{}", a.user_id), None, at).await;
    assert_eq!(profile["following"], 0);
    let (_, at) = publish(&app, &b, "after unfollow").await;
    let (_, feed) = get(&app, "/v1/feed?limit=100", Some(&a.access_token), at).await;
    assert!(
        titles(&feed).is_empty(),
        "an unfollow takes the followee's posts out of the feed: {feed}"
    );

    // Following again brings the followee's recent posts, also those of the time between.
    let at = command(
        &app,
        Method::PUT,
        &format!("/v1/users/{}/follow", b.user_id),
        &a,
    )
    .await;
    let (_, feed) = get(&app, "/v1/feed?limit=100", Some(&a.access_token), at).await;
    let mut expected = vec!["after unfollow".to_owned()];
    expected.extend((1..=9).rev().map(|i| format!("p{i}")));
    assert_eq!(titles(&feed), expected);

    for bad in [
        "/v1/feed?limit=0",
        "/v1/feed?limit=101",
        "/v1/feed?cursor=abc",
    ] {
        let (status, body) = get(&app, bad, Some(&a.access_token), 0).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    assert_eq!(get(&app, "/v1/feed", None, 0).await.0, 401);
    assert_eq!(
        get(&app, &format!("/v1/posts/{}", Uuid::new_v4()), None, 0)
            .await
            .0,
        404
    );
    assert_eq!(get(&app, "/v1/users/not-a-uuid", None, 0).await.0, 404);
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(e2e::redis_url())
        .expect("REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis")
}

async fn exists(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(conn)
        .await
        .expect("EXISTS")
        == 1
}

#[tokio::test]
async fn a_like_never_creates_a_cold_counter_and_a_cache_miss_refills_from_the_store() {
    let app = spawn_app().await;
    let b = app.register("cache_b").await;
    let a = app.register("cache_a").await;
    let (post, _) = publish(&app, &b, "Cached").await;
    let likes_key = app.read.cache.key(post, "likes");
    let preview_key = app.read.cache.key(post, "preview");
    let mut conn = redis().await;

    // Cold: the like is applied to the store, and the counter stays absent.
    let at = command(&app, Method::PUT, &format!("/v1/posts/{post}/like"), &a).await;
    let (_, view) = get(&app, &format!("/v1/posts/{post}"), None, at).await;
    assert_eq!(view["like_count"], 1);
    assert!(
        !exists(&mut conn, &likes_key).await,
        "an increment created a cold key"
    );

    // A feed read misses, reads the store and fills the cache.
    let (_, feed) = get(&app, "/v1/feed", Some(&b.access_token), at).await;
    assert_eq!(feed["items"][0]["like_count"], 1);
    let cached: Option<String> = redis::cmd("GET")
        .arg(&likes_key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(cached.as_deref(), Some("1"));
    let ttl: i64 = redis::cmd("TTL")
        .arg(&preview_key)
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!(ttl > 23 * 3600, "preview TTL {ttl}");

    // Warm: an unlike writes the stored count onto the cached counter.
    let at = command(&app, Method::DELETE, &format!("/v1/posts/{post}/like"), &a).await;
    assert_eq!(
        get(&app, "/v1/feed", Some(&b.access_token), at).await.1["items"][0]["like_count"],
        0
    );
    let cached: Option<String> = redis::cmd("GET")
        .arg(&likes_key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(cached.as_deref(), Some("0"));

    // Evicted: the next read falls back to the store and repopulates.
    let _: i64 = redis::cmd("DEL")
        .arg(&preview_key)
        .arg(&likes_key)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let (_, feed) = get(&app, "/v1/feed", Some(&b.access_token), at).await;
    assert_eq!(titles(&feed), ["Cached"]);
    assert!(exists(&mut conn, &preview_key).await && exists(&mut conn, &likes_key).await);

    // Comments: the first page is cached, and a new comment is pushed onto it.
    let (_, empty) = get(&app, &format!("/v1/posts/{post}/comments"), None, at).await;
    assert_eq!(empty["items"], json!([]));
    let comments_key = app.read.cache.key(post, "comments");
    assert!(
        exists(&mut conn, &comments_key).await,
        "an empty first page is cached too"
    );
    let response = app
        .post(
            &format!("/v1/posts/{post}/comments"),
            json!({"body": "pushed"}),
            Some(&a.access_token),
        )
        .await;
    let at = position(&response);
    let (_, page) = get(&app, &format!("/v1/posts/{post}/comments"), None, at).await;
    assert_eq!(page["items"][0]["body"], "pushed");
    let len: i64 = redis::cmd("LLEN")
        .arg(&comments_key)
        .query_async(&mut conn)
        .await
        .expect("LLEN");
    assert_eq!(len, 2, "the comment and the end marker");
}

#[tokio::test]
async fn a_hundred_concurrent_likes_by_a_hundred_users_count_a_hundred_and_repeats_change_nothing()
{
    let app = spawn_app().await;
    let author = app.register("liked_author").await;
    let (post, _) = publish(&app, &author, "Popular").await;
    let keys = auth::jwt::JwtKeys::new(&app.jwt_secret, Duration::from_secs(900), "hybridlive");
    let tokens: Vec<String> = (0..100)
        .map(|_| keys.issue(Uuid::now_v7(), &[]).expect("token").0)
        .collect();
    // Warm the counter so the likes update it in Redis as well as in the store.
    get(&app, "/v1/feed", Some(&author.access_token), 0).await;
    let path = format!("/v1/posts/{post}/like");
    let likes = futures::future::join_all(tokens.iter().map(|token| async {
        let first = app.call(Method::PUT, &path, token).await;
        let again = app.call(Method::PUT, &path, token).await;
        assert_eq!(
            (first.status(), again.status()),
            (StatusCode::NO_CONTENT, StatusCode::NO_CONTENT)
        );
        position(&first).max(position(&again))
    }))
    .await;
    let at = likes.into_iter().max().expect("positions");
    let (_, view) = get(&app, &format!("/v1/posts/{post}"), None, at).await;
    assert_eq!(view["like_count"], 100);
    let (_, feed) = get(&app, "/v1/feed", Some(&author.access_token), at).await;
    assert_eq!(feed["items"][0]["like_count"], 100);

    let mut at = 0;
    for token in &tokens[..10] {
        for _ in 0..2 {
            let response = app.call(Method::DELETE, &path, token).await;
            assert_eq!(response.status(), 204);
            at = at.max(position(&response));
        }
    }
    let (_, feed) = get(&app, "/v1/feed", Some(&author.access_token), at).await;
    assert_eq!(feed["items"][0]["like_count"], 90);
}

#[tokio::test]
async fn x_min_position_not_yet_applied_answers_503_after_the_bounded_wait_and_past_the_log_422() {
    let app = e2e::spawn_app_with(|s| s.min_position_wait = Duration::from_millis(200)).await;
    let reader = app.register("waiting").await;
    // An open transaction with an id holds every log reader back: the publication below is
    // in the log, and no projection applies it while the transaction is open.
    let mut holdback = app.db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *holdback)
        .await
        .unwrap();
    let published = app
        .post(
            "/v1/posts",
            json!({"title": "Held back", "body_markdown": "Not applied yet."}),
            Some(&reader.access_token),
        )
        .await;
    assert_eq!(published.status(), 201);
    let at = position(&published);
    let started = std::time::Instant::now();
    let (status, body) = get(&app, "/v1/feed", Some(&reader.access_token), at).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "read_model_behind");
    assert!(started.elapsed() < Duration::from_secs(2));
    holdback.rollback().await.unwrap();
    let waited = std::time::Instant::now();
    while get(&app, "/v1/feed", Some(&reader.access_token), at)
        .await
        .0
        != 200
    {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "applied once the transaction ended"
        );
    }

    // A position this server never returned: refused at once, nothing to wait for.
    let started = std::time::Instant::now();
    let (status, body) = get(&app, "/v1/feed", Some(&reader.access_token), i64::MAX / 2).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "unknown_position");
    assert!(started.elapsed() < Duration::from_millis(200));
    let response = app
        .http
        .get(app.url("/v1/feed"))
        .bearer_auth(&reader.access_token)
        .header("x-min-position", "-3")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 400);
}
