//! End-to-end test support. The HTTP `spawn_app()` helper joins with the API (issue #3);
//! until then the write side is driven through [`commands::WriteSide`] on a fresh database.

use commands::{CommandContext, Settings, WriteSide};
use event_schemas::Metadata;
use testkit::TestDb;

/// The write side on its own fresh, migrated database.
#[derive(Debug)]
pub struct TestWriteSide {
    pub db: TestDb,
    pub commands: WriteSide,
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
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        self.workers.cancel();
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

/// [`spawn_app`] with adjusted settings.
///
/// # Panics
/// When PostgreSQL or Redis is unreachable.
#[allow(clippy::expect_used)]
pub async fn spawn_app_with(adjust: impl FnOnce(&mut api::Settings)) -> TestApp {
    let db = TestDb::new().await;
    let redis = redis::Client::open(redis_url()).expect("REDIS_URL is valid");
    let redis = redis::aio::ConnectionManager::new(redis)
        .await
        .expect("Redis is reachable at REDIS_URL (run scripts/services.sh)");
    let redis_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let jwt_secret = format!(
        "test-secret-{}-{}",
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4()
    )
    .into_bytes();
    let mut settings = api::Settings {
        http_addr: ([127, 0, 0, 1], 0).into(),
        jwt_secret: jwt_secret.clone(),
        redis_prefix: redis_prefix.clone(),
        // Every test client is 127.0.0.1; the rate-limit tests switch limits on themselves.
        rate_limits: api::rate_limit::RateLimits::OFF,
        // Tests share one PostgreSQL server, and the CREATE/DROP DATABASE of parallel tests
        // hold every log reader on the server back for a second or two (they take a
        // transaction id): the projections then lag more than in production.
        min_position_wait: std::time::Duration::from_secs(20),
        ..api::Settings::default()
    };
    adjust(&mut settings);
    let read = projections::ReadModels::lite(db.pool.clone(), redis.clone(), &redis_prefix);
    let app = api::App::build_with(settings, db.pool.clone(), redis, read.clone())
        .await
        .expect("the API binds 127.0.0.1:0");
    let workers = tokio_util::sync::CancellationToken::new();
    let projections = projections::Workers::new(
        db.pool.clone(),
        read.clone(),
        projections::TimelineSettings::default(),
    );
    let stop = workers.clone();
    tokio::spawn(async move {
        projections
            .run(&["all".to_owned()], &projections::Source::Log, &stop)
            .await
    });
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
    }
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
        Session {
            user_id: body["user_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("user_id"),
            access_token: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            refresh_token: body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }

    /// Events stored so far.
    ///
    /// # Panics
    /// When the database does not answer.
    #[allow(clippy::expect_used)]
    pub async fn event_count(&self) -> i64 {
        let count: (i64,) = sqlx::query_as("SELECT count(*) FROM events")
            .fetch_one(&self.db.pool)
            .await
            .expect("count events");
        count.0
    }
}
