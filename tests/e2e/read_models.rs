//! Every read model is idempotent: applying the whole log again, every event twice, leaves
//! what is stored and what readers see unchanged.

use projections::content::ContentProjection;
use projections::timeline::{TimelineProjection, TimelineSettings};
use projections::{ApplyError, Projection, RetryPolicy, Runner};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use e2e::{spawn_app, TestApp};

/// Applies every event twice, under its own checkpoint name.
struct Twice<P> {
    inner: P,
    name: String,
}

impl<P: Projection> Projection for Twice<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn handles(&self, event_type: &str) -> bool {
        self.inner.handles(event_type)
    }

    async fn apply(&self, event: &event_schemas::EventEnvelope) -> Result<(), ApplyError> {
        self.inner.apply(event).await?;
        self.inner.apply(event).await
    }
}

const TABLES: &[&str] = &[
    "follows",
    "timelines",
    "timeline_lengths",
    "author_posts",
    "merged_authors",
    "profiles",
    "posts",
    "comments",
    "likes",
];

/// Every lite read-model table, and every user's feed and every post as the API serves
/// them (through the caches).
async fn snapshot(app: &TestApp, users: &[&e2e::Session], posts: &[String]) -> Vec<Value> {
    let mut seen = Vec::new();
    for table in TABLES {
        let rows: String = sqlx::query_scalar(&format!(
            "SELECT coalesce(json_agg(t ORDER BY t::text), '[]')::text FROM read_model.{table} t"
        ))
        .fetch_one(&app.db.pool)
        .await
        .expect("dump");
        seen.push(
            json!({ "table": table, "rows": serde_json::from_str::<Value>(&rows).expect("json") }),
        );
    }
    for user in users {
        let feed: Value = app
            .http
            .get(app.url("/v1/feed?limit=100"))
            .bearer_auth(&user.access_token)
            .send()
            .await
            .expect("feed")
            .json()
            .await
            .expect("json");
        seen.push(feed);
    }
    for post in posts {
        for path in [
            format!("/v1/posts/{post}"),
            format!("/v1/posts/{post}/comments"),
        ] {
            let response = app.http.get(app.url(&path)).send().await.expect("get");
            let status = response.status().as_u16();
            let mut body: Value = response.json().await.expect("json");
            // An error body carries its own request id; compare its code.
            if let Some(code) = body.pointer("/error/code").cloned() {
                body = code;
            }
            seen.push(json!({"path": path, "status": status, "body": body}));
        }
    }
    seen
}

async fn drain<P: Projection>(runner: &Runner<P>) {
    runner
        .catch_up(&CancellationToken::new())
        .await
        .expect("caught up");
}

#[tokio::test]
async fn applying_every_event_twice_leaves_every_read_model_unchanged() {
    let app = spawn_app().await;
    let a = app.register("twice_a").await;
    let b = app.register("twice_b").await;
    let c = app.register("twice_c").await;
    let mut posts = Vec::new();
    let mut last = 0i64;
    let mut remember = |response: &reqwest::Response| {
        let p = response.headers()["x-global-position"]
            .to_str()
            .expect("ascii")
            .parse::<i64>()
            .expect("int");
        last = last.max(p);
    };
    for (follower, followee) in [(&a, &b), (&c, &b), (&b, &a), (&c, &a)] {
        let r = app
            .call(
                Method::PUT,
                &format!("/v1/users/{}/follow", followee.user_id),
                &follower.access_token,
            )
            .await;
        remember(&r);
    }
    for (author, title) in [(&b, "one"), (&a, "two"), (&b, "three"), (&c, "four")] {
        let r = app
            .post(
                "/v1/posts",
                json!({"title": title, "body_markdown": format!("# {title}\n\nbody")}),
                Some(&author.access_token),
            )
            .await;
        remember(&r);
        let body: Value = r.json().await.expect("json");
        posts.push(body["post_id"].as_str().expect("id").to_owned());
    }
    for (who, post) in [(&a, 0), (&c, 0), (&b, 1), (&a, 2)] {
        let r = app
            .call(
                Method::PUT,
                &format!("/v1/posts/{}/like", posts[post]),
                &who.access_token,
            )
            .await;
        remember(&r);
        let r = app
            .post(
                &format!("/v1/posts/{}/comments", posts[post]),
                json!({"body": "nice"}),
                Some(&who.access_token),
            )
            .await;
        remember(&r);
    }
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/posts/{}/like", posts[0]),
            &c.access_token,
        )
        .await;
    remember(&r);
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/posts/{}", posts[2]),
            &b.access_token,
        )
        .await;
    remember(&r);
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/users/{}/follow", a.user_id),
            &c.access_token,
        )
        .await;
    remember(&r);

    assert!(
        projections::query::wait_caught_up(
            &app.db.pool,
            &["timeline", "content"],
            last,
            std::time::Duration::from_secs(10)
        )
        .await
        .expect("checkpoints"),
        "the projections caught up"
    );
    let users = [&a, &b, &c];
    let before = snapshot(&app, &users, &posts).await;
    assert_eq!(
        before[0]["rows"].as_array().expect("follows").len(),
        3,
        "{}",
        before[0]
    );

    let timeline = TimelineProjection::new(app.read.timelines.clone(), TimelineSettings::default());
    let content = ContentProjection::new(app.read.content.clone(), app.read.cache.clone());
    let pool = app.db.pool.clone();
    drain(&Runner::new(
        pool.clone(),
        Twice {
            inner: timeline,
            name: "twice-timeline".into(),
        },
        RetryPolicy::default(),
    ))
    .await;
    drain(&Runner::new(
        pool,
        Twice {
            inner: content,
            name: "twice-content".into(),
        },
        RetryPolicy::default(),
    ))
    .await;

    let after = snapshot(&app, &users, &posts).await;
    assert_eq!(before, after);
}
