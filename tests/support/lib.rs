//! End-to-end test support: [`spawn_app`] starts the real API on port 0 over a fresh
//! database with the projection workers (on Kafka, with its own topics), and helpers drive
//! the write side directly through [`commands::WriteSide`]. A test crate: it may use every
//! library crate, and nothing uses it.

use commands::{CommandContext, Settings, WriteSide};
use event_schemas::Metadata;
use secrecy::ExposeSecret;
use testkit::TestDb;

/// The write side on its own fresh, migrated database.
#[derive(Debug)]
pub struct TestWriteSide {
    pub db: TestDb,
    pub commands: WriteSide,
}

impl Drop for TestWriteSide {
    fn drop(&mut self) {
        assert_no_secret_in_log(&self.db);
    }
}

/// Fails the test (unless it is failing already) when an event of its log holds a secret:
/// every end-to-end test checks the whole log it wrote this way. A secret is a stored
/// credential (anywhere in an event's payload or metadata) or anything shaped like a
/// password hash, except in the `user.registered` versions that held one before
/// credentials existed (tests write such old events on purpose).
#[allow(clippy::expect_used, clippy::panic)]
pub fn assert_no_secret_in_log(db: &TestDb) {
    if std::thread::panicking() {
        return;
    }
    let url = db.url.clone();
    let found = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the log check");
        runtime.block_on(secrets_in_log(&url))
    })
    .join()
    .expect("the log check ran");
    if let Some(leak) = found {
        panic!("a secret is in the log: {leak}");
    }
}

#[allow(clippy::expect_used)]
async fn secrets_in_log(url: &str) -> Option<String> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url)
        .await
        .expect("the test database is reachable");
    sqlx::query_scalar(
        "SELECT format('event %s (%s v%s)', e.global_position, e.event_type, e.schema_version) \
           FROM events e \
          WHERE (strpos(e.payload::text || e.metadata::text, '$argon2') > 0 \
                 AND NOT (e.event_type = 'user.registered' AND e.schema_version < 3)) \
             OR EXISTS (SELECT 1 FROM credentials c \
                         WHERE strpos(e.payload::text || e.metadata::text, c.secret) > 0) \
          LIMIT 1",
    )
    .fetch_optional(&mut connection)
    .await
    .expect("the log check's query runs")
}

/// Every row of every table of the database but those named in `except`, as text, with
/// its table: what a dump of the database would show.
///
/// # Panics
/// When the database cannot be read.
#[allow(clippy::expect_used)]
pub async fn database_rows(db: &TestDb, except: &[&str]) -> Vec<(String, String)> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema, table_name FROM information_schema.tables \
          WHERE table_type = 'BASE TABLE' \
            AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&db.pool)
    .await
    .expect("the tables are listed");
    let mut rows = Vec::new();
    for (schema, table) in tables {
        let name = format!("{schema}.{table}");
        if except.contains(&name.as_str()) {
            continue;
        }
        let texts: Vec<String> =
            sqlx::query_scalar(&format!(r#"SELECT t::text FROM "{schema}"."{table}" t"#))
                .fetch_all(&db.pool)
                .await
                .expect("a table is read");
        rows.extend(texts.into_iter().map(|text| (name.clone(), text)));
    }
    rows
}

/// Starts the write side exactly as production builds it, with small snapshots so tests
/// cross snapshot boundaries.
pub async fn spawn_write_side() -> TestWriteSide {
    let db = TestDb::new().await;
    let commands = WriteSide::new(
        db.pool.clone(),
        Settings {
            snapshot_every: 3,
            max_attempts: 20,
        },
    );
    TestWriteSide { db, commands }
}

/// A command context as the API builds it for an authenticated request.
pub fn as_user(user: uuid::Uuid, request_id: &str) -> CommandContext {
    CommandContext {
        metadata: Metadata {
            correlation_id: Some(request_id.to_owned()),
            causation_id: None,
            actor: Some(format!("user:{user}")),
            request_id: Some(request_id.to_owned()),
            traceparent: None,
        },
        ..CommandContext::default()
    }
}

/// The real API on port 0 over a fresh database and its own Redis key prefix.
#[derive(Debug)]
pub struct TestApp {
    pub base: String,
    pub db: TestDb,
    pub http: reqwest::Client,
    pub redis_prefix: String,
    pub jwt_secret: Vec<u8>,
    /// The read models the projections build and the query routes serve.
    pub read: projections::ReadModels,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    workers: tokio_util::sync::CancellationToken,
    /// On Kafka, the topics the relay publishes to (deleted with the app).
    pub topics: Option<testkit::kafka::TestTopics>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        self.workers.cancel();
        assert_no_secret_in_log(&self.db);
    }
}

/// The Redis tests use: `REDIS_URL` or the local default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Starts exactly what `hybridlive dev` starts (the API and every projection, fed by the
/// PostgreSQL log), on 127.0.0.1:0.
///
/// # Panics
/// When PostgreSQL or Redis is unreachable: the test cannot run.
#[allow(clippy::expect_used)]
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// How the projection workers of a test app run.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub retry: projections::RetryPolicy,
    pub onboarding: projections::OnboardingSettings,
    pub live: projections::LiveSettings,
    /// Runs the emailer, sending to Mailpit ([`testkit::mail_servers`]).
    pub mail: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            retry: projections::RetryPolicy::default(),
            onboarding: projections::OnboardingSettings::default(),
            // Fast enough for tests to watch several aggregated pushes.
            live: projections::LiveSettings {
                likes_interval: std::time::Duration::from_millis(500),
                ..projections::LiveSettings::default()
            },
            mail: false,
        }
    }
}

/// [`spawn_app`] with adjusted settings.
///
/// # Panics
/// When PostgreSQL or Redis is unreachable.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut api::Settings)) -> TestApp {
    spawn_app_configured(adjust, WorkerOptions::default()).await
}

/// [`spawn_app`] with adjusted API settings and worker options.
///
/// # Panics
/// When PostgreSQL or Redis is unreachable.
pub async fn spawn_app_configured(
    adjust: impl FnOnce(&mut api::Settings),
    options: WorkerOptions,
) -> TestApp {
    spawn_app_fed(adjust, options, false).await
}

/// [`spawn_app`] with the production transport: the relay (`relay::Relay`, as `hybridlive
/// relay` runs it) publishes the log to Kafka (`KAFKA_BROKERS`, topics under a prefix of
/// the test's own), and every projection consumes its topics (as `hybridlive project all`
/// does with `KAFKA_BROKERS` set; consumer groups under a prefix of the test's own). The
/// read models are the lite ones: the transport is what differs.
///
/// # Panics
/// When PostgreSQL or Redis is unreachable, or `KAFKA_BROKERS` is unset where every server
/// is required ([`testkit::kafka_brokers`]).
pub async fn spawn_app_on_kafka() -> TestApp {
    spawn_app_fed(|_| {}, WorkerOptions::default(), true).await
}

#[allow(clippy::expect_used)]
async fn spawn_app_fed(
    adjust: impl FnOnce(&mut api::Settings),
    options: WorkerOptions,
    on_kafka: bool,
) -> TestApp {
    log_to_the_test();
    let db = TestDb::new().await;
    let redis_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let jwt_secret = format!(
        "test-secret-{}-{}",
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4()
    )
    .into_bytes();
    let mut settings = api::Settings {
        http_addr: ([127, 0, 0, 1], 0).into(),
        jwt_secret: jwt_secret.clone().into(),
        redis_prefix: redis_prefix.clone(),
        // Every test client is 127.0.0.1; the rate-limit tests switch limits on themselves.
        rate_limits: api::rate_limit::RateLimits::OFF,
        // Tests share one PostgreSQL server, and the CREATE/DROP DATABASE of parallel tests
        // hold every log reader on the server back while they run (they take a transaction
        // id): the projections then lag more than in production. A deadline, not a sleep:
        // a healthy test does not wait it out.
        min_position_wait: std::time::Duration::from_secs(60),
        redis_url: redis_url().into(),
        ..api::Settings::default()
    };
    adjust(&mut settings);
    // The whole app uses the Redis the settings name (a test may point it at its own).
    let redis =
        redis::Client::open(settings.redis_url.expose_secret()).expect("REDIS_URL is valid");
    let redis = redis::aio::ConnectionManager::new(redis)
        .await
        .expect("Redis is reachable at REDIS_URL (run scripts/services.sh)");
    let read = projections::ReadModels::lite(db.pool.clone(), redis.clone(), &redis_prefix);
    let app = api::App::build_with(settings, db.pool.clone(), redis.clone(), read.clone())
        .await
        .expect("the API binds 127.0.0.1:0");
    let workers = tokio_util::sync::CancellationToken::new();
    let mut projections = workers::real_time(
        &db.pool,
        read.clone(),
        projections::TimelineSettings::default(),
        redis.clone(),
        &redis_prefix,
        workers::RealTimeSettings {
            live: options.live,
            onboarding: options.onboarding.clone(),
            ..workers::RealTimeSettings::default()
        },
    );
    projections.retry = options.retry;
    if options.mail {
        projections.email = Some(projections::EmailSettings {
            smtp_url: testkit::mail_servers().0.into(),
            from: "Hybrid Live <no-reply@hybridlive.test>".to_owned(),
            public_url: "http://hybridlive.test".to_owned(),
            tokens: auth::account_token::AccountTokens::new(&jwt_secret),
            max_age: std::time::Duration::from_secs(3600),
        });
    }
    let topics = on_kafka.then(testkit::kafka::TestTopics::new);
    let source = if let Some(topics) = &topics {
        let brokers = testkit::kafka_brokers();
        let settings = relay::RelaySettings {
            brokers: brokers.clone(),
            topic_prefix: topics.prefix.clone(),
            topic_partitions: 3,
            ..relay::RelaySettings::default()
        };
        let source = projections::Source::Kafka {
            brokers,
            topic_prefix: settings.topic_prefix.clone(),
            replication: 1,
            fetch_wait: projections::kafka::DEFAULT_FETCH_WAIT,
            relay: settings.name.clone(),
            only: Vec::new(),
        };
        let relay = relay::Relay::new(db.pool.clone(), settings);
        let stop = workers.clone();
        tokio::spawn(async move { relay.run(stop).await });
        source
    } else {
        projections::Source::Log
    };
    let stop = workers.clone();
    tokio::spawn(async move { projections.run(&["all".to_owned()], &source, &stop).await });
    let addr = app.local_addr().expect("bound address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        base: format!("http://{addr}"),
        db,
        http: reqwest::Client::new(),
        redis_prefix,
        jwt_secret,
        read,
        shutdown: Some(stop),
        workers,
        topics,
    }
}

/// The app's logs (`RUST_LOG`, else warnings and the workers' own lines) go to the test's
/// captured output: a failing test shows what its API and workers said.
fn log_to_the_test() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,projections=info,relay=info"));
    // Once per test binary; later calls find the subscriber set.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A registered user's tokens.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: uuid::Uuid,
    pub access_token: String,
    pub refresh_token: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The `hybridlive` binary at `binary` (a test's `env!("CARGO_BIN_EXE_hybridlive")`),
    /// set up to run beside this app: its database, Redis keys, token secret and key
    /// encryption key, the lite read models (the production stores' variables removed),
    /// stdout dropped and stderr piped.
    pub fn binary_beside(&self, binary: &str) -> std::process::Command {
        let mut command = std::process::Command::new(binary);
        for variable in testkit::PRODUCTION_STORE_VARIABLES {
            command.env_remove(variable);
        }
        command
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", redis_url())
            .env("REDIS_PREFIX", &self.redis_prefix)
            .env(
                "JWT_SECRET",
                String::from_utf8_lossy(&self.jwt_secret).into_owned(),
            )
            .env("KEY_ENCRYPTION_KEY", testkit::TEST_KEY_ENCRYPTION_KEY)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command
    }

    /// POST JSON, optionally authenticated.
    ///
    /// # Panics
    /// When the server does not answer.
    #[allow(clippy::expect_used)]
    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.http.post(self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("the API answers")
    }

    /// A request with a method and no body, authenticated.
    ///
    /// # Panics
    /// When the server does not answer.
    #[allow(clippy::expect_used)]
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::Response {
        self.http
            .request(method, self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("the API answers")
    }

    /// Registers `username` (email `<username>@example.com`) and returns its session.
    ///
    /// # Panics
    /// When registration does not answer 201.
    #[allow(clippy::expect_used)]
    pub async fn register(&self, username: &str) -> Session {
        let response = self
            .post(
                "/v1/auth/register",
                serde_json::json!({
                    "username": username,
                    "email": format!("{username}@example.com"),
                    "password": "correct horse battery staple",
                }),
                None,
            )
            .await;
        assert_eq!(response.status(), 201, "registering {username}");
        let body: serde_json::Value = response.json().await.expect("JSON body");
        let (access_token, refresh_token) = tokens(&body);
        Session {
            user_id: body["user_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("user_id"),
            access_token,
            refresh_token,
        }
    }

    /// Registers `username` and returns a session whose token carries `role`: granted
    /// through the command layer (as `hybridlive admin grant-role` does), then a new login.
    ///
    /// # Panics
    /// When a step does not succeed.
    #[allow(clippy::expect_used)]
    pub async fn register_with_role(&self, username: &str, role: &str) -> Session {
        let session = self.register(username).await;
        let write = WriteSide::new(self.db.pool.clone(), Settings::default());
        write
            .users
            .execute(
                &session.user_id.to_string(),
                domain::user::UserCommand::GrantRole { role: role.into() },
                &CommandContext::default(),
            )
            .await
            .expect("granting the role");
        let response = self
            .post(
                "/v1/auth/login",
                serde_json::json!({"login": username, "password": "correct horse battery staple"}),
                None,
            )
            .await;
        assert_eq!(response.status(), 200, "logging {username} in");
        let body: serde_json::Value = response.json().await.expect("JSON body");
        let (access_token, refresh_token) = tokens(&body);
        Session {
            access_token,
            refresh_token,
            ..session
        }
    }

    /// Events stored so far by commands: the registration saga's `onboarding` streams,
    /// which the workers append to on their own schedule, are left out.
    ///
    /// # Panics
    /// When the database does not answer.
    #[allow(clippy::expect_used)]
    pub async fn event_count(&self) -> i64 {
        let count: (i64,) =
            sqlx::query_as("SELECT count(*) FROM events WHERE stream_type <> 'onboarding'")
                .fetch_one(&self.db.pool)
                .await
                .expect("count events");
        count.0
    }
}

/// The access and refresh tokens of a register or login response body.
#[allow(clippy::expect_used)]
fn tokens(body: &serde_json::Value) -> (String, String) {
    let token = |name: &str| body[name].as_str().expect(name).to_owned();
    (token("access_token"), token("refresh_token"))
}

/// One server-sent event as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    /// `data` as JSON.
    ///
    /// # Panics
    /// When `data` is not JSON.
    #[allow(clippy::expect_used)]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("SSE data is JSON")
    }
}

/// A minimal `text/event-stream` reader over a real HTTP connection.
#[derive(Debug)]
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    /// Opens `url` with `Authorization: Bearer <token>` and, when given, `Last-Event-ID`.
    ///
    /// # Panics
    /// When the server does not answer 200 with `text/event-stream`.
    #[allow(clippy::expect_used)]
    pub async fn connect(url: &str, token: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = reqwest::Client::new().get(url).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("the API answers");
        assert_eq!(response.status(), 200, "opening {url}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        SseClient {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (heartbeat comments skipped), or `None` when `within` passed or the
    /// server closed the stream.
    ///
    /// # Panics
    /// When the stream is not UTF-8.
    #[allow(clippy::expect_used)]
    pub async fn next_within(&mut self, within: std::time::Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".to_owned(),
                    data: String::new(),
                };
                let mut has_field = false;
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => event.id = Some(value.to_owned()),
                        "event" => event.event = value.to_owned(),
                        "data" => {
                            if !event.data.is_empty() {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                        }
                        _ => continue,
                    }
                    has_field = true;
                }
                if has_field {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8 stream")),
                _ => return None,
            }
        }
    }

    /// The next event named `name` within `within`, skipping others.
    ///
    /// # Panics
    /// When none arrives in time.
    pub async fn expect(&mut self, name: &str, within: std::time::Duration) -> SseEvent {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(event) if event.event == name => return event,
                Some(_) => continue,
                None => panic!("no `{name}` event within {within:?}"),
            }
        }
    }
}

/// A second API instance over the same database and Redis prefix as a [`TestApp`] (no
/// projection workers of its own): what a user connected to "the other gateway" talks to.
#[derive(Debug)]
pub struct OtherInstance {
    pub base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for OtherInstance {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
    }
}

impl OtherInstance {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl TestApp {
    /// Starts another API instance beside this one (its own port, Pub/Sub connection and
    /// SSE hub; shared PostgreSQL, Redis and token secret).
    ///
    /// # Panics
    /// When Redis is unreachable.
    pub async fn other_instance(&self) -> OtherInstance {
        self.instance_reading(self.read.clone(), &self.redis_prefix)
            .await
    }

    /// Starts another API instance beside this one that serves `read` (read models built
    /// elsewhere, e.g. by workers fed by Kafka) with the Redis keys under `redis_prefix`.
    ///
    /// # Panics
    /// When Redis is unreachable.
    #[allow(clippy::expect_used)]
    pub async fn instance_reading(
        &self,
        read: projections::ReadModels,
        redis_prefix: &str,
    ) -> OtherInstance {
        let redis = redis::Client::open(redis_url()).expect("REDIS_URL is valid");
        let redis = redis::aio::ConnectionManager::new(redis)
            .await
            .expect("Redis is reachable");
        let settings = api::Settings {
            http_addr: ([127, 0, 0, 1], 0).into(),
            jwt_secret: self.jwt_secret.clone().into(),
            redis_prefix: redis_prefix.to_owned(),
            rate_limits: api::rate_limit::RateLimits::OFF,
            min_position_wait: std::time::Duration::from_secs(60),
            redis_url: redis_url().into(),
            ..api::Settings::default()
        };
        let app = api::App::build_with(settings, self.db.pool.clone(), redis, read)
            .await
            .expect("the API binds 127.0.0.1:0");
        let addr = app.local_addr().expect("bound address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        OtherInstance {
            base: format!("http://{addr}"),
            shutdown: Some(stop),
        }
    }
}

pub mod mailpit;
