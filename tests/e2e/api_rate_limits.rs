//! Redis-backed rate limits: per client IP on the credential endpoints, per user, and what
//! a limited client is told.

use api::rate_limit::RateLimits;
use e2e::spawn_app_with;
use serde_json::{json, Value};

#[tokio::test]
async fn login_attempts_over_the_per_ip_limit_get_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.rate_limits = RateLimits {
            auth_per_ip: 3,
            ..RateLimits::OFF
        };
    })
    .await;
    // 7 attempts at 3 per window: even if a window ends during the loop, at most 6 pass.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let response = app
            .post(
                "/v1/auth/login",
                json!({ "login": "nobody", "password": "wrong password here" }),
                None,
            )
            .await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
            assert!(body["error"]["request_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()));
        }
    }
    assert_eq!(statuses[..3], [401, 401, 401], "{statuses:?}");
    assert!(statuses.contains(&429), "never limited: {statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 401 || s == 429),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn each_user_has_a_budget_of_their_own() {
    let app = spawn_app_with(|s| {
        s.rate_limits = RateLimits {
            per_user: 4,
            ..RateLimits::OFF
        };
    })
    .await;
    let ada = app.register("ada").await;
    let bob = app.register("bob").await;
    let publish = |token: String| {
        let app = &app;
        async move {
            app.post(
                "/v1/posts",
                json!({ "title": "t", "body_markdown": "b" }),
                Some(&token),
            )
            .await
            .status()
            .as_u16()
        }
    };
    // 9 attempts at 4 per window: even if a window ends during the loop, at most 8 pass.
    let mut ada_statuses = Vec::new();
    for _ in 0..9 {
        ada_statuses.push(publish(ada.access_token.clone()).await);
    }
    assert!(ada_statuses.contains(&429), "{ada_statuses:?}");
    let published = ada_statuses.iter().filter(|&&s| s == 201).count();
    assert!((4..=8).contains(&published), "{ada_statuses:?}");
    // Bob is not limited by Ada's requests (nor is anything stored for a refused one).
    assert_eq!(publish(bob.access_token.clone()).await, 201);
    let posts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'post.published'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(posts, i64::try_from(published).unwrap() + 1);
}
