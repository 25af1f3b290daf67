//! Read models fed by Kafka reach the state that read models fed by the log reach (DESIGN
//! §5 "Order-independence on Kafka"), on the real servers: a generated workload of more
//! than 5,000 commands over HTTP is appended while the Kafka-fed workers are stopped; the
//! relay publishes it; two `hybridlive project` instances of one consumer group consume it
//! into Cassandra and the MongoDB-protocol server, one of them killed with SIGKILL midway and
//! started again; then every query answer — each user's profile with follower counts and
//! every page of their feed, each post, and every page of its comments — equals the answer
//! of the lite read models the log built. Once as Kafka happens to deliver, once in an
//! adversarial order: every comment and like before any post, every publication before
//! any follow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/production.rs"]
mod production;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use e2e::{Session, TestApp};
use futures::{StreamExt, TryStreamExt};
use production::Production;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

/// What the workload did: its users, every post it published (deleted ones too), how many
/// comments it added and how many commands answered with success.
struct Workload {
    users: Vec<Session>,
    posts: Vec<Uuid>,
    comments: u64,
    commands: usize,
}

/// A command: method, path, token, body, and the statuses it may answer.
type Request = (Method, String, String, Option<Value>, &'static [u16]);

/// Sends `requests` 16 at a time; the
/// number that succeeded (2xx), and the ids of the created resources (`post_id`).
async fn send(app: &TestApp, requests: Vec<Request>) -> (usize, Vec<Value>) {
    let answers: Vec<(bool, Value)> = futures::stream::iter(requests)
        .map(|(method, path, token, body, accepted)| async move {
            let mut request = app
                .http
                .request(method.clone(), app.url(&path))
                .bearer_auth(&token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("the API answers");
            let status = response.status().as_u16();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            assert!(
                accepted.contains(&status),
                "{method} {path}: {status} {body}"
            );
            (status < 300, body)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let ok = answers.iter().filter(|(ok, _)| *ok).count();
    (ok, answers.into_iter().map(|(_, body)| body).collect())
}

/// More than 5,000 commands over HTTP, in waves that interleave the topics in the log:
/// registrations (each starts an onboarding), follows, posts, then comments, likes, more
/// follows and posts, unfollows, then deletions, unlikes and more comments.
async fn workload(app: &TestApp) -> Workload {
    let mut rng = StdRng::seed_from_u64(21);
    let users: Vec<Session> = futures::stream::iter(0..48)
        .map(|i| async move { app.register(&format!("conv_user_{i}")).await })
        .buffer_unordered(8)
        .collect()
        .await;
    let sessions: HashMap<Uuid, Session> = users.iter().map(|s| (s.user_id, s.clone())).collect();
    let mut commands = users.len();
    let pick = |rng: &mut StdRng| users.choose(rng).unwrap().clone();
    let follow = |rng: &mut StdRng, method: Method| {
        let (a, b) = (pick(rng), pick(rng));
        (a.user_id != b.user_id).then(|| {
            (
                method,
                format!("/v1/users/{}/follow", b.user_id),
                a.access_token,
                None,
                &[204u16][..],
            )
        })
    };
    let publish = |rng: &mut StdRng, n: usize| {
        let author = pick(rng);
        (
            Method::POST,
            "/v1/posts".to_owned(),
            author.access_token,
            Some(json!({"title": format!("post {n}"), "body_markdown": format!("**body** {n}")})),
            &[201u16][..],
        )
    };

    let requests: Vec<_> = (0..500)
        .filter_map(|_| follow(&mut rng, Method::PUT))
        .collect();
    commands += send(app, requests).await.0;
    let requests: Vec<_> = (0..600).map(|n| publish(&mut rng, n)).collect();
    let (ok, created) = send(app, requests).await;
    commands += ok;
    let mut posts = authored(app, &sessions, &created).await;

    // Comments and likes on what exists, with follows, unfollows and posts among them.
    let mut requests = Vec::new();
    for n in 0..3000 {
        let (post, _) = posts.choose(&mut rng).unwrap().clone();
        let who = pick(&mut rng);
        match rng.gen_range(0..10) {
            0..=3 => requests.push((
                Method::POST,
                format!("/v1/posts/{post}/comments"),
                who.access_token,
                Some(json!({"body": format!("comment {n}")})),
                &[201u16][..],
            )),
            4..=7 => requests.push((
                Method::PUT,
                format!("/v1/posts/{post}/like"),
                who.access_token,
                None,
                &[204u16][..],
            )),
            8 => requests.extend(follow(&mut rng, Method::PUT)),
            _ => requests.extend(follow(&mut rng, Method::DELETE)),
        }
    }
    requests.extend((600..800).map(|n| publish(&mut rng, n)));
    requests.shuffle(&mut rng);
    let (ok, created) = send(app, requests).await;
    commands += ok;
    posts.extend(authored(app, &sessions, &created).await);

    // Deletions by their authors, unlikes, and comments that may find a post deleted.
    let mut requests = Vec::new();
    let mut deleted = posts.clone();
    deleted.shuffle(&mut rng);
    deleted.truncate(80);
    for (post, author) in &deleted {
        requests.push((
            Method::DELETE,
            format!("/v1/posts/{post}"),
            author.access_token.clone(),
            None,
            &[204u16][..],
        ));
    }
    for n in 0..700 {
        let (post, _) = posts.choose(&mut rng).unwrap().clone();
        let who = pick(&mut rng);
        if n % 2 == 0 {
            requests.push((
                Method::DELETE,
                format!("/v1/posts/{post}/like"),
                who.access_token,
                None,
                &[204u16][..],
            ));
        } else {
            requests.push((
                Method::POST,
                format!("/v1/posts/{post}/comments"),
                who.access_token,
                Some(json!({"body": format!("late comment {n}")})),
                &[201u16, 404][..],
            ));
        }
    }
    requests.shuffle(&mut rng);
    let (ok, _) = send(app, requests).await;
    commands += ok;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'comment.added'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    Workload {
        users,
        posts: posts.into_iter().map(|(post, _)| post).collect(),
        comments: u64::try_from(stored).unwrap(),
        commands,
    }
}

/// The posts created among the answers `created` with their author's session.
async fn authored(
    app: &TestApp,
    sessions: &HashMap<Uuid, Session>,
    created: &[Value],
) -> Vec<(Uuid, Session)> {
    let ids: Vec<Uuid> = created
        .iter()
        .filter_map(|body| body["post_id"].as_str()?.parse().ok())
        .collect();
    let authors: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT (payload->>'post_id')::uuid, (payload->>'author_id')::uuid FROM events \
          WHERE event_type = 'post.published' AND (payload->>'post_id')::uuid = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    authors
        .into_iter()
        .map(|(post, author)| (post, sessions[&author].clone()))
        .collect()
}

/// Every answer the read models give the workload's users: profiles with follower
/// counts, every feed page, every post and every page of its comments; keyed by request.
async fn answers(base: &str, http: &reqwest::Client, work: &Workload) -> BTreeMap<String, Value> {
    let token = &work.users[0].access_token;
    let get = |path: String, token: String| async move {
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        // The request id differs between two answers by design.
        let body = match body {
            Value::Object(mut map) => {
                if let Some(Value::Object(error)) = map.get_mut("error") {
                    error.remove("request_id");
                }
                Value::Object(map)
            }
            other => other,
        };
        Ok::<_, reqwest::Error>(json!({"status": status, "body": body}))
    };
    // Every page of a cursor-paged listing.
    let pages = |path: String, cursor: &'static str, token: String| async move {
        let mut all = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let separator = if path.contains('?') { '&' } else { '?' };
            let url = match &next {
                Some(at) => format!("{path}{separator}{cursor}={at}"),
                None => path.clone(),
            };
            let page = get(url, token.clone()).await?;
            next = page["body"]["next_cursor"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| page["body"]["next_cursor"].as_i64().map(|n| n.to_string()));
            all.push(page);
            if next.is_none() || all.len() > 200 {
                return Ok::<_, reqwest::Error>(Value::Array(all));
            }
        }
    };
    let mut requests: Vec<futures::future::BoxFuture<'_, Result<(String, Value), reqwest::Error>>> =
        Vec::new();
    for user in &work.users {
        let id = user.user_id;
        let token = user.access_token.clone();
        let profile = get(format!("/v1/users/{id}"), token.clone());
        requests.push(Box::pin(async move {
            Ok((format!("user {id}"), profile.await?))
        }));
        let feed = pages("/v1/feed?limit=20".to_owned(), "cursor", token);
        requests.push(Box::pin(
            async move { Ok((format!("feed {id}"), feed.await?)) },
        ));
    }
    for post in &work.posts {
        let post = *post;
        let one = get(format!("/v1/posts/{post}"), token.clone());
        requests.push(Box::pin(
            async move { Ok((format!("post {post}"), one.await?)) },
        ));
        let comments = pages(
            format!("/v1/posts/{post}/comments?limit=25"),
            "before",
            token.clone(),
        );
        requests.push(Box::pin(async move {
            Ok((format!("comments {post}"), comments.await?))
        }));
    }
    futures::stream::iter(requests)
        .buffer_unordered(16)
        .try_collect()
        .await
        .expect("the API answers")
}

/// The first differences between two sets of answers, each at the first place it differs.
fn differences(lite: &BTreeMap<String, Value>, kafka: &BTreeMap<String, Value>) -> Vec<String> {
    lite.iter()
        .filter_map(|(key, answer)| {
            let other = kafka.get(key).unwrap_or(&Value::Null);
            first_difference(answer, other, key.clone())
        })
        .take(5)
        .collect()
}

/// Where `log` and `kafka` first differ, with both values there (arrays element by
/// element, then by length; objects field by field).
fn first_difference(log: &Value, kafka: &Value, at: String) -> Option<String> {
    match (log, kafka) {
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, format!("{at}[{i}]")))
            .or_else(|| {
                (a.len() != b.len()).then(|| {
                    let n = a.len().min(b.len());
                    format!(
                        "{at}: {} items from the log, {} from Kafka; next: log {:?}, kafka {:?}",
                        a.len(),
                        b.len(),
                        a.get(n),
                        b.get(n)
                    )
                })
            }),
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .find_map(|(k, x)| {
                first_difference(x, b.get(k).unwrap_or(&Value::Null), format!("{at}.{k}"))
            })
            .or_else(|| {
                b.keys()
                    .find(|k| !a.contains_key(*k))
                    .map(|k| format!("{at}.{k}: only from Kafka"))
            }),
        _ => (log != kafka).then(|| format!("{at}: log {log}, kafka {kafka}")),
    }
}

/// Waits until the Kafka-fed answers equal the log-fed ones (the log-fed ones first
/// settle: the lite workers run in the test app); fails with the differences after 480 s.
async fn assert_converges(app: &TestApp, production: &Production, work: &Workload) {
    let kafka = production.api(app).await;
    let deadline = Instant::now() + Duration::from_secs(480);
    let mut lite = answers(&app.base, &app.http, work).await;
    loop {
        let from_kafka = answers(&kafka.base, &app.http, work).await;
        let different = differences(&lite, &from_kafka);
        if different.is_empty() {
            // The log-fed side settled too: nothing moved since.
            let again = answers(&app.base, &app.http, work).await;
            if again == lite {
                return;
            }
            lite = again;
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "the Kafka-fed read models differ from the log-fed ones:\n{}\n{}\nthe processes' logs:\n{}",
            different.join("\n"),
            production.where_users_are(&different),
            production.log_tails()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        lite = answers(&app.base, &app.http, work).await;
    }
}

/// The workload, appended with the Kafka-fed workers stopped, and the relay started.
async fn prepared() -> (TestApp, Production, Workload, tokio::process::Child) {
    let app = e2e::spawn_app().await;
    let production = Production::new(&app);
    production.migrate().await;
    let work = workload(&app).await;
    assert!(work.commands > 5000, "{} commands", work.commands);
    let relay = production.relay();
    (app, production, work, relay)
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_fed_read_models_equal_the_log_fed_ones_across_a_killed_consumer() {
    let (app, production, work, _relay) = prepared().await;
    let mut first = production.project("");
    let _second = production.project("");
    // Midway: some posts stored, not all.
    let total = u64::try_from(work.posts.len()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while production.stored("posts").await < total / 3 {
        assert!(
            Instant::now() < deadline,
            "no progress on the Kafka-fed content:\n{}",
            production.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let _restarted = production.project("");

    assert_converges(&app, &production, &work).await;
    production.drop_stores().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_fed_read_models_equal_the_log_fed_ones_in_an_adversarial_order() {
    let (app, production, work, _relay) = prepared().await;
    // Every comment and like first: none of their posts is stored yet.
    let mut early = production.project("comment,like");
    production.wait_stored("comments", work.comments).await;
    assert_eq!(production.stored("posts").await, 0);
    early.start_kill().unwrap();
    early.wait().await.unwrap();
    // Then every publication (the timeline's fan-out before any follow is consumed).
    let mut posts = production.project("post");
    production
        .wait_stored("posts", u64::try_from(work.posts.len()).unwrap())
        .await;
    posts.start_kill().unwrap();
    posts.wait().await.unwrap();
    // Then the rest, by two instances, one killed midway.
    let mut first = production.project("");
    let _second = production.project("");
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let _restarted = production.project("");

    assert_converges(&app, &production, &work).await;
    production.drop_stores().await;
}
