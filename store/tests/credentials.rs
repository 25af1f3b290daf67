//! Secrets are credentials, written with the append that records them and never in an event;
//! the password hashes that old `user.registered` events held are moved to credentials by
//! the migration and redacted on every read of the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use event_schemas::Metadata;
use secrecy::ExposeSecret;
use serde_json::json;
use store::credentials::{self, Credential};
use store::{
    AppendError, AppendRequest, AuditCursor, AuditFilter, AuditLog, NewEvent, PgEventStore,
};
use testkit::TestDb;
use uuid::Uuid;

const OLD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$b2xkc2FsdA$b2xkaGFzaA";

fn append(stream_id: &str, expected_version: u64, secret: Option<&str>) -> AppendRequest {
    AppendRequest {
        stream_type: "user".into(),
        stream_id: stream_id.into(),
        expected_version,
        events: vec![NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "test.password_changed".into(),
            schema_version: 1,
            payload: json!({}),
        }],
        metadata: Metadata::default(),
        claims: Vec::new(),
        credentials: secret
            .map(|secret| Credential {
                kind: "password",
                secret: Some(secret.into()),
            })
            .into_iter()
            .collect(),
        erases_subject: false,
    }
}

async fn password(db: &TestDb, stream_id: &str) -> Option<String> {
    credentials::secret(&db.pool, "user", stream_id, "password")
        .await
        .unwrap()
        .map(|s| s.expose_secret().to_owned())
}

#[tokio::test]
async fn a_credential_is_stored_exactly_when_its_append_commits() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    store.append(&append("u", 0, Some("first"))).await.unwrap();
    assert_eq!(password(&db, "u").await.as_deref(), Some("first"));

    // A stale append writes nothing, its credential included.
    let stale = store.append(&append("u", 0, Some("stale"))).await;
    assert!(
        matches!(stale, Err(AppendError::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(password(&db, "u").await.as_deref(), Some("first"));

    // An append without one leaves it; a later one replaces it.
    store.append(&append("u", 1, None)).await.unwrap();
    store.append(&append("u", 2, Some("second"))).await.unwrap();
    assert_eq!(password(&db, "u").await.as_deref(), Some("second"));
    assert_eq!(password(&db, "other").await, None);

    let in_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE payload::text LIKE '%second%' OR metadata::text LIKE '%second%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(in_events, 0);
    assert!(
        !format!("{:?}", append("u", 3, Some("second"))).contains("second"),
        "Debug hides it"
    );
}

#[tokio::test]
async fn the_log_s_readers_cannot_read_credentials() {
    let db = TestDb::new().await;
    let mut reader = db.connect().await;
    sqlx::query("SET ROLE hybridlive_reader")
        .execute(&mut reader)
        .await
        .unwrap();
    let refused = sqlx::query("SELECT * FROM credentials")
        .execute(&mut reader)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
}

/// A database as the release before credentials left it: a registration whose event holds
/// the hash, and a snapshot of the user that holds it too. Then the new migration runs.
#[tokio::test]
async fn the_migration_moves_old_hashes_to_credentials_and_every_read_redacts_them() {
    let db = TestDb::empty().await;
    let before = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let old = std::env::temp_dir().join(format!("hl-migrations-{}", Uuid::new_v4()));
    std::fs::create_dir(&old).unwrap();
    for entry in std::fs::read_dir(&before).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Those before the credentials migration (later ones may build on it).
        if name.as_str() < "20261206000013_credentials.sql" {
            std::fs::copy(&path, old.join(name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.as_path()).await.unwrap();
    std::fs::remove_dir_all(&old).unwrap();
    migrator.run(&db.pool).await.unwrap();

    let user = Uuid::now_v7();
    let registered = json!({"user_id": user, "username": "olga", "email": "olga@example.org",
        "display_name": "Olga", "password_hash": OLD_HASH});
    testkit::insert_as_before(
        &db.pool,
        ("user", &user.to_string()),
        ("user.registered", 2),
        &registered,
    )
    .await;
    sqlx::query(
        "INSERT INTO snapshots (stream_type, stream_id, version, state) VALUES ('user', $1, 1, $2)",
    )
    .bind(user.to_string())
    .bind(json!({"user_id": user, "password_hash": OLD_HASH}))
    .execute(&db.pool)
    .await
    .unwrap();

    store::MIGRATOR.run(&db.pool).await.unwrap();

    assert_eq!(
        password(&db, &user.to_string()).await.as_deref(),
        Some(OLD_HASH)
    );
    let snapshot: serde_json::Value =
        sqlx::query_scalar("SELECT state FROM snapshots WHERE stream_id = $1")
            .bind(user.to_string())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(snapshot.get("password_hash"), None, "{snapshot}");

    // The row keeps the hash (the log is immutable, and the chain covers it) ...
    let stored: String = sqlx::query_scalar("SELECT payload::text FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(stored.contains(OLD_HASH));
    let store = PgEventStore::new(db.pool.clone());
    assert!(store.verify_log(0, i64::MAX).await.unwrap().ok);

    // ... and no read of it shows it: stream reads, the log reader, audit listings.
    let read = store
        .read_stream("user", &user.to_string(), 0)
        .await
        .unwrap();
    // The log reader and the listing show events below the watermark, which other tests'
    // transactions (every database of the server shares it) can hold back for a while.
    let (mut logged, mut audited) = (Vec::new(), Vec::new());
    for _ in 0..600 {
        logged = store::LogReader::new(db.pool.clone())
            .read_batch(store::LogPosition::START, 10)
            .await
            .unwrap();
        audited = AuditLog::new(db.pool.clone())
            .list(&AuditFilter::default(), AuditCursor::default(), 10)
            .await
            .unwrap()
            .items;
        if !logged.is_empty() && !audited.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!((read.len(), logged.len(), audited.len()), (1, 1, 1));
    for payload in [&read[0].payload, &logged[0].payload, &audited[0].payload] {
        assert_eq!(payload["password_hash"], "[redacted]");
        assert_eq!(payload["username"], "olga");
    }
    assert_eq!(audited[0].redacted, ["password_hash"]);
    let listed = serde_json::to_string(&audited[0]).unwrap();
    assert!(!listed.contains(OLD_HASH), "{listed}");
    let relayed = serde_json::to_string(&logged[0]).unwrap();
    assert!(!relayed.contains(OLD_HASH), "{relayed}");
}
