//! Test support: a fresh, migrated PostgreSQL database per test, so tests run in parallel
//! and never share state (STYLE: "a fresh database per test").
//!
//! `DATABASE_URL` names the server (default `postgres://postgres:postgres@127.0.0.1:5432/postgres`);
//! each [`TestDb`] creates `hl_test_<pid>_<uuid>` on it, runs the project's migrations, and
//! drops the database again when dropped (or, when the test process exited first, the next
//! test process drops it); `kafka::TestTopics` (feature `kafka`) does the same for Kafka
//! topics, and `kafka::OwnBroker` starts a Kafka broker a test may kill and restart.
//! [`social`] writes a synthetic social log; [`tables`] copies and compares
//! read-model tables. Used by the tests of every crate and by `bench`; uses `store` (its
//! migrations) and `event-schemas`.

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod social;
pub mod tables;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};
use uuid::Uuid;

/// The server tests run against when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

/// The server's URL: `DATABASE_URL` or [`DEFAULT_DATABASE_URL`].
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// The address of a production read-model server a test needs (`variable`: `SCYLLA_NODES`,
/// `MONGODB_URI`), or `None` when the test may skip: only outside CI with the variable
/// unset, and it says so on stderr. `scripts/test.sh` starts every server and sets them.
///
/// # Panics
/// When the variable is unset in CI (`CI` set) or under `scripts/test.sh`
/// (`HYBRIDLIVE_REQUIRE_SERVERS` set): a test that needs a server never passes without
/// running.
pub fn production_server(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ if std::env::var_os("CI").is_some()
            || std::env::var_os("HYBRIDLIVE_REQUIRE_SERVERS").is_some() =>
        {
            panic!("{variable} is not set, and this run requires every server: run the tests with scripts/test.sh")
        }
        _ => {
            eprintln!(
                "SKIPPED: {variable} is not set, so this test did not run \
                 (scripts/test.sh starts the servers and sets it)"
            );
            None
        }
    }
}

/// The Kafka brokers a test runs against: `KAFKA_BROKERS`, else `127.0.0.1:9092` — never a
/// skip: without a broker the test fails.
///
/// # Panics
/// When the variable is unset in CI (`CI` set) or under `scripts/test.sh`
/// (`HYBRIDLIVE_REQUIRE_SERVERS` set): the run was meant to name every server.
pub fn kafka_brokers() -> String {
    match std::env::var("KAFKA_BROKERS") {
        Ok(value) if !value.trim().is_empty() => value,
        _ if std::env::var_os("CI").is_some()
            || std::env::var_os("HYBRIDLIVE_REQUIRE_SERVERS").is_some() =>
        {
            panic!("KAFKA_BROKERS is not set, and this run requires every server: run the tests with scripts/test.sh")
        }
        _ => "127.0.0.1:9092".to_owned(),
    }
}

/// The SMTP server the emailer's tests send to and the HTTP API that reads what arrived
/// (Mailpit: `SMTP_URL`, `MAILPIT_URL`; `scripts/services.sh --mail` starts it). Unset, they
/// are Mailpit's defaults on this machine — or, in CI and under `scripts/test.sh`, a
/// failure: the test never passes without its server.
///
/// # Panics
/// When a variable is unset in CI or under `scripts/test.sh`.
pub fn mail_servers() -> (String, String) {
    (
        server_or("SMTP_URL", "smtp://127.0.0.1:1025"),
        server_or("MAILPIT_URL", "http://127.0.0.1:8025"),
    )
}

/// The trace collector a test sends spans to and reads them back from: `JAEGER_OTLP_ENDPOINT`
/// (OTLP/HTTP) and `JAEGER_URL` (Jaeger's query API), by default Jaeger's own ports on
/// 127.0.0.1 — never a skip: without a collector the test fails.
///
/// # Panics
/// When a variable is unset in CI or under `scripts/test.sh`, as [`mail_servers`].
pub fn trace_collector() -> (String, String) {
    (
        server_or("JAEGER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        server_or("JAEGER_URL", "http://127.0.0.1:16686"),
    )
}

/// `variable`, else `default` outside CI and `scripts/test.sh`.
fn server_or(variable: &str, default: &str) -> String {
    match std::env::var(variable) {
        Ok(value) if !value.trim().is_empty() => value,
        _ if std::env::var_os("CI").is_some()
            || std::env::var_os("HYBRIDLIVE_REQUIRE_SERVERS").is_some() =>
        {
            panic!("{variable} is not set, and this run requires every server: run the tests with scripts/test.sh")
        }
        _ => default.to_owned(),
    }
}

/// The variables that put the read models on production stores (and `project` on Kafka):
/// a test that runs the binary for the lite profile removes them from the child's
/// environment, since `scripts/test.sh` sets them all.
pub const PRODUCTION_STORE_VARIABLES: [&str; 3] = ["KAFKA_BROKERS", "SCYLLA_NODES", "MONGODB_URI"];

/// The key-encryption key of the tests (`store::keys`): every [`TestDb`] installs it in the
/// test process, and tests that run the binary pass it as `KEY_ENCRYPTION_KEY`.
pub const TEST_KEY_ENCRYPTION_KEY: &str = "aHlicmlkbGl2ZSB0ZXN0IHN1aXRlIGtlayAwMDAwMDA=";

/// Installs [`TEST_KEY_ENCRYPTION_KEY`] in this process (again: a no-op).
///
/// # Panics
/// When other keys are installed.
#[allow(clippy::expect_used)]
pub fn install_test_keys() {
    let kek = store::keys::Kek::from_base64(&TEST_KEY_ENCRYPTION_KEY.into())
        .expect("the test key-encryption key is well formed");
    store::keys::install(kek, None).expect("the tests' key-encryption key is the one installed");
}

/// Writes the first event of a stream by plain SQL, bypassing the store — as an older release
/// wrote it (no sealing, no credentials): for tests of what the store does with old rows.
///
/// # Panics
/// When the insert fails.
#[allow(clippy::expect_used)]
pub async fn insert_as_before(
    pool: &PgPool,
    (stream_type, stream_id): (&str, &str),
    (event_type, schema_version): (&str, i32),
    payload: &serde_json::Value,
) {
    sqlx::query(
        "WITH s AS (INSERT INTO streams (stream_type, stream_id, version) VALUES ($1, $2, 1)) \
         INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, \
                             schema_version, payload, metadata) \
         VALUES ($3, $1, $2, 1, $4, $5, $6, '{}')",
    )
    .bind(stream_type)
    .bind(stream_id)
    .bind(Uuid::now_v7())
    .bind(event_type)
    .bind(schema_version)
    .bind(payload)
    .execute(pool)
    .await
    .expect("an old event is written");
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin: PgConnectOptions,
}

impl TestDb {
    /// A new database with every migration applied.
    ///
    /// # Panics
    /// When the server is unreachable or a migration fails: the test cannot run.
    #[allow(clippy::expect_used)]
    pub async fn new() -> Self {
        let db = Self::empty().await;
        store::MIGRATOR
            .run(&db.pool)
            .await
            .expect("migrations apply to a fresh database");
        db
    }

    /// A new database without migrations (for testing `migrate` itself).
    ///
    /// # Panics
    /// When the server is unreachable.
    #[allow(clippy::expect_used)]
    pub async fn empty() -> Self {
        install_test_keys();
        let admin: PgConnectOptions = server_url().parse().expect("DATABASE_URL is a valid URL");
        sweep_left_behind(&admin);
        let name = format!("hl_test_{}_{}", std::process::id(), Uuid::new_v4().simple());
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .expect("PostgreSQL is reachable at DATABASE_URL (run scripts/services.sh)");
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("can create a test database");
        conn.close().await.ok();
        let options = admin.clone().database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .expect("can connect to the test database");
        Self {
            name,
            url,
            pool,
            admin,
        }
    }

    /// A connection to the test database with its own options (e.g. another role).
    ///
    /// # Panics
    /// When the connection fails.
    #[allow(clippy::expect_used)]
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect_with(&self.admin.clone().database(&self.name))
            .await
            .expect("can connect to the test database")
    }
}

impl Drop for TestDb {
    /// Drops the database from a thread of its own, without waiting for it. This thread runs
    /// the test's runtime, whose tasks may be opening a connection right now: a backend
    /// authenticating a client that is never polled again does not answer DROP DATABASE's
    /// barrier until `authentication_timeout` (60 s), and the waiting DROP holds a
    /// transaction id that holds back every log reader on the server — every other test's
    /// projections stood still for that minute.
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        std::thread::spawn(move || drop_databases(&admin, &[name]));
    }
}

/// Runs `work` to its end on a runtime of its own (on a thread that is not a test's).
fn on_own_runtime<F: std::future::Future>(work: F) -> Option<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    Some(runtime.block_on(work))
}

/// Drops the databases `names` (their connections terminated), ignoring failures: a
/// database left behind is dropped by a later test process ([`sweep_left_behind`]).
fn drop_databases(admin: &PgConnectOptions, names: &[String]) {
    on_own_runtime(async move {
        if let Ok(mut conn) = PgConnection::connect_with(admin).await {
            for name in names {
                let _ = conn
                    .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                    .await;
            }
            let _ = conn.close().await;
        }
    });
}

/// Once per test process, drops (in the background) the test databases of processes that
/// exited before their last databases were dropped. A name's second part is its creator's
/// pid; names without one are older than this scheme. Only where `/proc` tells which
/// processes live.
fn sweep_left_behind(admin: &PgConnectOptions) {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    SWEPT.call_once(|| {
        let admin = admin.clone();
        std::thread::spawn(move || {
            let names: Vec<String> = on_own_runtime(async {
                let mut conn = PgConnection::connect_with(&admin).await.ok()?;
                let names = sqlx::query_scalar(
                    r"SELECT datname FROM pg_database WHERE datname LIKE 'hl\_test\_%'",
                )
                .fetch_all(&mut conn)
                .await
                .ok();
                let _ = conn.close().await;
                names
            })
            .flatten()
            .unwrap_or_default();
            let left: Vec<String> = names.into_iter().filter(|name| left_behind(name)).collect();
            drop_databases(&admin, &left);
        });
    });
}

/// Whether the test database `name` outlived its creator: the process whose pid its name
/// carries (`hl_test_<pid>_<uuid>`) is gone, or it has none (an older name).
fn left_behind(name: &str) -> bool {
    let pid = name
        .strip_prefix("hl_test_")
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(pid, _)| pid.parse::<u32>().ok());
    match pid {
        Some(pid) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        None => true,
    }
}

/// Reads the log from `from` until `expected` events were read, waiting (up to 30 s) while
/// open transactions anywhere on the server — other tests' too — hold the reader back
/// below their `xmin`: an empty batch means "nothing safe to read yet", not "the end".
///
/// # Panics
/// When a read fails.
#[allow(clippy::expect_used)]
pub async fn read_log(
    reader: &store::LogReader,
    from: store::LogPosition,
    expected: usize,
) -> Vec<store::RecordedEvent> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut position = from;
    let mut read = Vec::new();
    while read.len() < expected && std::time::Instant::now() < deadline {
        let batch = reader
            .read_batch(position, 100)
            .await
            .expect("reading the log");
        match batch.last() {
            Some(last) => position = store::LogPosition::of(last),
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
        read.extend(batch);
    }
    read
}

#[cfg(test)]
mod tests {
    use super::left_behind;

    #[test]
    fn a_database_is_left_behind_once_its_creator_is_gone() {
        let uuid = uuid::Uuid::new_v4().simple();
        assert!(!left_behind(&format!(
            "hl_test_{}_{uuid}",
            std::process::id()
        )));
        // Above the kernel's largest pid (2^22): no such process.
        assert!(left_behind(&format!("hl_test_4194305_{uuid}")));
        assert!(
            left_behind(&format!("hl_test_{uuid}")),
            "a name older than the pid"
        );
    }
}
