//! The analytics API: signups and activity per day and the most liked posts,
//! from the model built by replaying the log, for role `analyst` (or `admin`) only.

use std::collections::BTreeMap;

use chrono::{Days, NaiveDate, Utc};
use projections::AnalyticsProjection;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use e2e::{spawn_app, Session, TestApp};

/// The UTC day the event at `position` was recorded on.
async fn day_at(app: &TestApp, position: i64) -> NaiveDate {
    sqlx::query_scalar(
        "SELECT (recorded_at AT TIME ZONE 'UTC')::date FROM events WHERE global_position = $1",
    )
    .bind(position)
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

async fn registered_on(app: &TestApp, user: Uuid) -> NaiveDate {
    let position: i64 = sqlx::query_scalar(
        "SELECT global_position FROM events \
          WHERE stream_type = 'user' AND stream_id = $1 AND event_type = 'user.registered'",
    )
    .bind(user.to_string())
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    day_at(app, position).await
}

/// A command; its `x-global-position`.
async fn command(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    who: &Session,
) -> i64 {
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(&who.access_token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.headers()["x-global-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = app.http.get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Builds the model from the whole log and swaps it in: `hybridlive replay analytics`.
async fn build_model(app: &TestApp) {
    let model = replay::Model::named(AnalyticsProjection::NAME).unwrap();
    let summary = replay::Replay::new(app.db.pool.clone(), model, replay::ReplayOptions::default())
        .unwrap()
        .run(&CancellationToken::new(), &mut |_| {})
        .await
        .unwrap();
    assert!(summary.swap.is_some(), "{summary:?}");
}

/// What the test did, per UTC day.
#[derive(Default)]
struct Tally {
    signups: BTreeMap<NaiveDate, i64>,
    posts: BTreeMap<NaiveDate, i64>,
    posts_deleted: BTreeMap<NaiveDate, i64>,
    likes: BTreeMap<NaiveDate, i64>,
    unlikes: BTreeMap<NaiveDate, i64>,
}

fn count(map: &BTreeMap<NaiveDate, i64>, day: NaiveDate) -> i64 {
    map.get(&day).copied().unwrap_or(0)
}

fn days(from: NaiveDate, to: NaiveDate) -> Vec<NaiveDate> {
    from.iter_days().take_while(|d| *d <= to).collect()
}

#[tokio::test]
async fn analysts_read_exact_daily_figures_and_top_posts_of_the_replayed_model() {
    let app = spawn_app().await;
    let mut tally = Tally::default();
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let ann = app.register_with_role("ann", "analyst").await;
    let dora = app.register_with_role("dora", "admin").await;
    for user in [&alice, &bob, &carol, &ann, &dora] {
        *tally
            .signups
            .entry(registered_on(&app, user.user_id).await)
            .or_default() += 1;
    }

    // Before the first replay the model is empty.
    let (status, top) = get(&app, "/v1/analytics/top-posts", Some(&ann.access_token)).await;
    assert_eq!(status, 200, "{top}");
    assert_eq!(top, json!({"items": [], "as_of": null}));

    let mut posts = Vec::new();
    for (author, title) in [
        (&alice, "Popular"),
        (&bob, "Liked once"),
        (&carol, "Deleted"),
    ] {
        let response = app
            .post(
                "/v1/posts",
                json!({"title": title, "body_markdown": "text"}),
                Some(&author.access_token),
            )
            .await;
        assert_eq!(response.status(), 201);
        let position: i64 = response.headers()["x-global-position"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body: Value = response.json().await.unwrap();
        let post_id: Uuid = body["post_id"].as_str().unwrap().parse().unwrap();
        let day = day_at(&app, position).await;
        *tally.posts.entry(day).or_default() += 1;
        posts.push((post_id, author.user_id, title, day));
    }
    let (popular, liked_once, deleted) = (posts[0].0, posts[1].0, posts[2].0);
    let likes = [
        (Method::PUT, popular, &bob),
        (Method::PUT, popular, &carol),
        (Method::DELETE, popular, &carol),
        (Method::PUT, popular, &carol),
        // Repeated: the like stands already, nothing is appended, nothing counted.
        (Method::PUT, popular, &carol),
        (Method::PUT, liked_once, &alice),
        (Method::PUT, deleted, &alice),
        (Method::PUT, deleted, &bob),
    ];
    for (method, post, who) in likes {
        let liked = method == Method::PUT;
        let position = command(&app, method, &format!("/v1/posts/{post}/like"), None, who).await;
        if position == 0 {
            continue;
        }
        let day = day_at(&app, position).await;
        let map = if liked {
            &mut tally.likes
        } else {
            &mut tally.unlikes
        };
        *map.entry(day).or_default() += 1;
    }
    let position = command(
        &app,
        Method::DELETE,
        &format!("/v1/posts/{deleted}"),
        None,
        &carol,
    )
    .await;
    *tally
        .posts_deleted
        .entry(day_at(&app, position).await)
        .or_default() += 1;
    assert_eq!(
        tally.likes.values().sum::<i64>(),
        6,
        "the repeated like appended nothing"
    );

    build_model(&app).await;
    let handled: (i64, chrono::DateTime<Utc>) = sqlx::query_as(
        "SELECT max(global_position), max(recorded_at) FROM events WHERE event_type IN \
         ('user.registered', 'user.registration_rolled_back', 'post.published', \
          'post.deleted', 'post.liked', 'post.unliked')",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    let as_of = json!({
        "global_position": handled.0,
        "recorded_at": handled.1.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    });

    // Every day the test touched, and one either side.
    let touched: Vec<NaiveDate> = [&tally.signups, &tally.posts, &tally.likes]
        .iter()
        .flat_map(|m| m.keys().copied())
        .chain(tally.posts_deleted.keys().copied())
        .chain(tally.unlikes.keys().copied())
        .collect();
    let from = touched.iter().min().unwrap().pred_opt().unwrap();
    let to = touched.iter().max().unwrap().succ_opt().unwrap();
    let range = format!("from={from}&to={to}");

    let (status, signups) = get(
        &app,
        &format!("/v1/analytics/signups?{range}"),
        Some(&ann.access_token),
    )
    .await;
    assert_eq!(status, 200, "{signups}");
    let expected: Vec<Value> = days(from, to)
        .into_iter()
        .map(|d| json!({"day": d.to_string(), "signups": count(&tally.signups, d), "rolled_back": 0}))
        .collect();
    assert_eq!(
        signups,
        json!({"from": from.to_string(), "to": to.to_string(), "days": expected, "as_of": as_of})
    );

    let (status, activity) = get(
        &app,
        &format!("/v1/analytics/activity?{range}"),
        Some(&dora.access_token),
    )
    .await;
    assert_eq!(status, 200, "an admin reads analytics too: {activity}");
    let expected: Vec<Value> = days(from, to)
        .into_iter()
        .map(|d| {
            json!({
                "day": d.to_string(),
                "posts": count(&tally.posts, d),
                "posts_deleted": count(&tally.posts_deleted, d),
                "likes": count(&tally.likes, d),
                "unlikes": count(&tally.unlikes, d),
            })
        })
        .collect();
    assert_eq!(
        activity,
        json!({"from": from.to_string(), "to": to.to_string(), "days": expected, "as_of": as_of})
    );
    let total = |field: &str| -> i64 {
        activity["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d[field].as_i64().unwrap())
            .sum()
    };
    assert_eq!(
        (
            total("posts"),
            total("posts_deleted"),
            total("likes"),
            total("unlikes")
        ),
        (3, 1, 6, 1)
    );

    let top_post = |(post_id, author_id, title, day): (Uuid, Uuid, &str, NaiveDate), likes| {
        json!({"post_id": post_id, "author_id": author_id, "title": title,
               "published_on": day.to_string(), "like_count": likes})
    };
    let (status, top) = get(&app, "/v1/analytics/top-posts", Some(&ann.access_token)).await;
    assert_eq!(status, 200, "{top}");
    assert_eq!(
        top,
        json!({"items": [top_post(posts[0], 2), top_post(posts[1], 1)], "as_of": as_of}),
        "the deleted post is left out, though two users like it"
    );
    let (_, top) = get(
        &app,
        "/v1/analytics/top-posts?limit=1",
        Some(&ann.access_token),
    )
    .await;
    assert_eq!(top["items"], json!([top_post(posts[0], 2)]));

    // Default range: the 30 days up to today (UTC).
    let today_before = Utc::now().date_naive();
    let (status, default) = get(&app, "/v1/analytics/signups", Some(&ann.access_token)).await;
    let today_after = Utc::now().date_naive();
    assert_eq!(status, 200);
    let to: NaiveDate = default["to"].as_str().unwrap().parse().unwrap();
    assert!(to == today_before || to == today_after);
    assert_eq!(
        default["from"],
        json!(to.checked_sub_days(Days::new(29)).unwrap().to_string())
    );
    assert_eq!(default["days"].as_array().unwrap().len(), 30);
}

#[tokio::test]
async fn analytics_needs_the_analyst_role_and_valid_parameters() {
    let app = spawn_app().await;
    let user = app.register("plain").await;
    let ann = app.register_with_role("ann", "analyst").await;
    let auditor = app.register_with_role("audra", "auditor").await;
    let paths = [
        "/v1/analytics/signups",
        "/v1/analytics/activity",
        "/v1/analytics/top-posts",
    ];
    for path in paths {
        let (status, body) = get(&app, path, None).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "unauthorized");
        for who in [&user, &auditor] {
            let (status, body) = get(&app, path, Some(&who.access_token)).await;
            assert_eq!(status, 403, "{path}");
            assert_eq!(body["error"]["code"], "forbidden");
        }
        let (status, _) = get(&app, path, Some("not-a-token")).await;
        assert_eq!(status, 401, "{path}");
        let (status, body) = get(&app, path, Some(&ann.access_token)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    for query in [
        "from=2026-13-01",
        "from=2026-12-1",
        "to=yesterday",
        "from=2026-12-01T00:00:00Z",
        "from=2026-12-02&to=2026-12-01",
        "from=2025-01-01&to=2026-01-02",
        "days=7",
    ] {
        for path in &paths[..2] {
            let (status, body) =
                get(&app, &format!("{path}?{query}"), Some(&ann.access_token)).await;
            assert_eq!(status, 400, "{path}?{query}: {body}");
            assert_eq!(body["error"]["code"], "invalid_filter", "{path}?{query}");
        }
    }
    let (status, body) = get(
        &app,
        "/v1/analytics/activity?from=2025-01-01&to=2026-01-01",
        Some(&ann.access_token),
    )
    .await;
    assert_eq!(status, 200, "366 days are allowed: {body}");
    assert_eq!(body["days"].as_array().unwrap().len(), 366);
    for query in ["limit=0", "limit=101", "limit=ten", "limit=-1", "top=5"] {
        let (status, body) = get(
            &app,
            &format!("/v1/analytics/top-posts?{query}"),
            Some(&ann.access_token),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_filter", "{query}");
    }
    let (status, _) = get(
        &app,
        "/v1/analytics/top-posts?limit=100",
        Some(&ann.access_token),
    )
    .await;
    assert_eq!(status, 200);

    let openapi: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in paths {
        assert!(
            openapi["paths"][path]["get"].is_object(),
            "{path} documented"
        );
    }
}
