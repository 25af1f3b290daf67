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

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{Session, TestApp};
use futures::{StreamExt, TryStreamExt};
use projections::content::mongo::MongoContent;
use projections::timeline::scylla::{ScyllaSettings, ScyllaTimelines};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

/// The production side of one test: its own topics, keyspace, database and Redis keys.
struct Production {
    scylla_nodes: String,
    keyspace: String,
    mongodb_uri: String,
    database: String,
    redis_prefix: String,
    env: Vec<(&'static str, String)>,
    /// The topics the relay publishes to (deleted with the test).
    topics: testkit::kafka::TestTopics,
    /// The stderr of each process started, in a file: a failure shows their ends.
    logs: std::sync::Mutex<Vec<std::path::PathBuf>>,
    /// The pid of each process started, by its log's index: a failure says which exited.
    pids: std::sync::Mutex<HashMap<usize, u32>>,
}

impl Production {
    fn new(app: &TestApp) -> Self {
        let brokers = testkit::production_server("KAFKA_BROKERS").unwrap();
        let scylla_nodes = testkit::production_server("SCYLLA_NODES").unwrap();
        let mongodb_uri = testkit::production_server("MONGODB_URI").unwrap();
        let id = Uuid::new_v4().simple().to_string();
        let (keyspace, database) = (format!("conv_{id}"), format!("conv_{id}"));
        let redis_prefix = format!("conv:{id}:");
        let topics = testkit::kafka::TestTopics::new();
        let env = vec![
            ("DATABASE_URL", app.db.url.clone()),
            ("REDIS_URL", e2e::redis_url()),
            ("REDIS_PREFIX", redis_prefix.clone()),
            ("KAFKA_BROKERS", brokers),
            ("KAFKA_TOPIC_PREFIX", topics.prefix.clone()),
            ("SCYLLA_NODES", scylla_nodes.clone()),
            ("SCYLLA_KEYSPACE", keyspace.clone()),
            ("MONGODB_URI", mongodb_uri.clone()),
            ("MONGODB_DATABASE", database.clone()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        Self {
            scylla_nodes,
            keyspace,
            mongodb_uri,
            database,
            redis_prefix,
            env,
            topics,
            logs: std::sync::Mutex::default(),
            pids: std::sync::Mutex::default(),
        }
    }

    /// For `comments`: the comments of the log missing from the Kafka-fed store, where they
    /// are in the `comment` topic and what the groups committed there.
    async fn where_missing_comments_are(&self, collection: &str) -> String {
        if collection != "comments" {
            return String::new();
        }
        let url = self
            .env
            .iter()
            .find(|(k, _)| *k == "DATABASE_URL")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let Ok(pool) = sqlx::PgPool::connect(&url).await else {
            return "(cannot read the log)".to_owned();
        };
        let logged: Vec<String> = sqlx::query_scalar(
            "SELECT stream_id FROM events WHERE stream_type = 'comment' AND stream_version = 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        let client = mongodb::Client::with_uri_str(&self.mongodb_uri)
            .await
            .unwrap();
        let stored: Vec<mongodb::bson::Bson> = client
            .database(&self.database)
            .collection::<mongodb::bson::Document>("comments")
            .distinct("_id", mongodb::bson::doc! {})
            .await
            .unwrap_or_default();
        let stored: std::collections::HashSet<String> = stored
            .iter()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&str> = logged
            .iter()
            .filter(|id| !stored.contains(*id))
            .take(10)
            .map(String::as_str)
            .collect();
        let topic = format!("{}comment", self.topics.prefix);
        let groups = ["timeline", "content"].map(|g| format!("{}{g}", self.topics.prefix));
        keyed_messages(&topic, &missing, &groups)
    }

    /// For each user among `differences` (`user <id>: …`), where that user's events are in
    /// the `user` topic and what the consumer groups committed there: whether an event the
    /// read models lack was published, and whether its offset was committed.
    fn where_users_are(&self, differences: &[String]) -> String {
        let users: Vec<&str> = differences
            .iter()
            .filter_map(|d| d.strip_prefix("user ")?.split(['.', ':']).next())
            .collect();
        if users.is_empty() {
            return String::new();
        }
        let topic = format!("{}user", self.topics.prefix);
        let groups = ["timeline", "content"].map(|g| format!("{}{g}", self.topics.prefix));
        keyed_messages(&topic, &users, &groups)
    }

    /// The last lines of every process's stderr, after its first errors (a dead letter, a
    /// failed write) wherever they are.
    fn log_tails(&self) -> String {
        let mut tails = String::new();
        let pids = self.pids.lock().unwrap();
        for (index, path) in self.logs.lock().unwrap().iter().enumerate() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let state = pids.get(&index).map_or("not started".to_owned(), |pid| {
                // The third field of /proc/<pid>/stat; Z (or no entry) once it exited.
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                match stat
                    .rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().next())
                {
                    Some("Z") | None => format!("pid {pid}, exited"),
                    Some(state) => format!("pid {pid}, running ({state})"),
                }
            });
            tails.push_str(&format!("--- {} ({state})\n", path.display()));
            for line in lines.iter().filter(|l| l.contains("ERROR")).take(10) {
                tails.push_str(&format!("error: {line}\n"));
            }
            for line in &lines[lines.len().saturating_sub(15)..] {
                tails.push_str(line);
                tails.push('\n');
            }
        }
        tails
    }

    fn hybridlive(&self, args: &[&str]) -> tokio::process::Command {
        let mut logs = self.logs.lock().unwrap();
        let path = std::env::temp_dir().join(format!(
            "{}{}-{}.log",
            self.redis_prefix.replace(':', "_"),
            logs.len(),
            args.join("-")
        ));
        let stderr = std::fs::File::create(&path).unwrap();
        logs.push(path);
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hybridlive"));
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("KEY_ENCRYPTION_KEY", testkit::TEST_KEY_ENCRYPTION_KEY)
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        command
    }

    /// Starts `command` (the last one [`Self::hybridlive`] made) and records its pid.
    fn spawn(&self, mut command: tokio::process::Command) -> tokio::process::Child {
        let child = command.spawn().unwrap();
        let index = self.logs.lock().unwrap().len() - 1;
        if let Some(pid) = child.id() {
            self.pids.lock().unwrap().insert(index, pid);
        }
        child
    }

    /// The relay, publishing the test's log to its topics.
    fn relay(&self) -> tokio::process::Child {
        self.spawn(self.hybridlive(&["relay"]))
    }

    /// An instance of the Kafka-fed timeline and content workers, consuming the topics of
    /// `only` (every topic when empty).
    fn project(&self, only: &str) -> tokio::process::Child {
        let mut command = self.hybridlive(&["project", "timeline", "content"]);
        if !only.is_empty() {
            command.env("KAFKA_STREAM_TYPES", only);
        }
        self.spawn(command)
    }

    async fn migrate(&self) {
        let status = self.hybridlive(&["migrate"]).status().await.unwrap();
        assert!(status.success(), "hybridlive migrate");
    }

    fn scylla(&self) -> ScyllaSettings {
        ScyllaSettings {
            nodes: self.scylla_nodes.split(',').map(str::to_owned).collect(),
            keyspace: self.keyspace.clone(),
            consistency: "LOCAL_QUORUM".to_owned(),
            replication_factor: 1,
        }
    }

    /// An API instance beside `app` serving the Kafka-fed read models.
    async fn api(&self, app: &TestApp) -> e2e::OtherInstance {
        let settings = self.scylla();
        let redis = redis::Client::open(e2e::redis_url()).unwrap();
        let redis = redis::aio::ConnectionManager::new(redis).await.unwrap();
        let read = projections::ReadModels {
            timelines: Arc::new(ScyllaTimelines::connect(&settings).await.unwrap()),
            content: Arc::new(
                MongoContent::connect(&self.mongodb_uri, &self.database)
                    .await
                    .unwrap(),
            ),
            cache: projections::PostCache::new(
                redis,
                format!("{}rm:", self.redis_prefix),
                projections::CacheSettings::default(),
            ),
        };
        app.instance_reading(read, &self.redis_prefix).await
    }

    /// Documents in a collection of the Kafka-fed content.
    async fn stored(&self, collection: &str) -> u64 {
        let client = mongodb::Client::with_uri_str(&self.mongodb_uri)
            .await
            .unwrap();
        client
            .database(&self.database)
            .collection::<mongodb::bson::Document>(collection)
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap()
    }

    async fn wait_stored(&self, collection: &str, expected: u64) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let stored = self.stored(collection).await;
            if stored >= expected {
                assert_eq!(stored, expected, "{collection}");
                return;
            }
            if Instant::now() >= deadline {
                let missing = self.where_missing_comments_are(collection).await;
                panic!(
                    "{collection}: {stored} of {expected} stored\n{missing}\n{}",
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn drop_stores(&self) {
        let client = mongodb::Client::with_uri_str(&self.mongodb_uri)
            .await
            .unwrap();
        client.database(&self.database).drop().await.unwrap();
        projections::timeline::scylla::drop_keyspace(&self.scylla())
            .await
            .unwrap();
    }
}

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

/// The messages of `topic` whose key is one of `keys` (partition, offset, event type and
/// global position), and the offsets `groups` committed on it.
fn keyed_messages(topic: &str, keys: &[&str], groups: &[String]) -> String {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let brokers = testkit::kafka_brokers();
    let timeout = Duration::from_secs(10);
    let mut report = format!("the messages of {keys:?} in {topic}:\n");
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{topic}.diagnosis"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = match reader.fetch_metadata(Some(topic), timeout) {
        Ok(metadata) => metadata,
        Err(error) => return report + &format!("(no metadata: {error})\n"),
    };
    let mut all = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        all.add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    for group in groups {
        let member: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", group)
            .create()
            .unwrap();
        let committed: Vec<String> = match member.committed_offsets(all.clone(), timeout) {
            Ok(offsets) => offsets
                .elements()
                .iter()
                .map(|e| format!("{}:{:?}", e.partition(), e.offset()))
                .collect(),
            Err(error) => vec![error.to_string()],
        };
        report.push_str(&format!("  {group} committed {}\n", committed.join(" ")));
    }
    let mut left: HashMap<i32, i64> = all
        .elements()
        .iter()
        .filter_map(|e| {
            let (_, high) = reader
                .fetch_watermarks(topic, e.partition(), timeout)
                .ok()?;
            (high > 0).then_some((e.partition(), high))
        })
        .collect();
    let total: i64 = left.values().sum();
    reader.assign(&all).unwrap();
    let (mut scanned, deadline) = (0, Instant::now() + Duration::from_secs(30));
    while !left.is_empty() && Instant::now() < deadline {
        let message = match reader.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                report.push_str(&format!("  ({error})\n"));
                continue;
            }
            None => continue,
        };
        scanned += 1;
        let key = message
            .key()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        if keys.iter().any(|k| key == *k) {
            let event: Value = message
                .payload()
                .and_then(|p| serde_json::from_slice(p).ok())
                .unwrap_or(Value::Null);
            report.push_str(&format!(
                "  {key}: partition {} offset {}: {} at {}\n",
                message.partition(),
                message.offset(),
                event["event_type"],
                event["global_position"]
            ));
        }
        if left
            .get(&message.partition())
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            left.remove(&message.partition());
        }
    }
    report + &format!("  ({scanned} of {total} messages read)\n")
}
