//! `hybridlive replay <model>` as an analyst runs it: interrupted with SIGINT (or killed),
//! resumed by running it again, then swapped in — and the rebuilt model equals the
//! live-built one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{holdback, progress_past_start};
use projections::timeline::postgres::PgTimelines;
use projections::{RetryPolicy, Runner, TimelineProjection, TimelineSettings};
use testkit::social::SocialLog;
use testkit::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

const FANOUT_MAX_FOLLOWERS: usize = 8;

fn replay(db: &TestDb, model: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hybridlive"));
    // The lite models.
    for variable in testkit::PRODUCTION_STORE_VARIABLES {
        command.env_remove(variable);
    }
    command
        .args(["replay", model, "--batch-size", "100"])
        .env("DATABASE_URL", &db.url)
        .env("KEY_ENCRYPTION_KEY", testkit::TEST_KEY_ENCRYPTION_KEY)
        .env("FANOUT_MAX_FOLLOWERS", FANOUT_MAX_FOLLOWERS.to_string())
        // The swap of `content` drops the caches under this deployment's prefix.
        .env(
            "REDIS_PREFIX",
            format!("hl:test:{}:", uuid::Uuid::new_v4().simple()),
        )
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    command
}

/// Messaging on Cassandra has no generations to rebuild into: replay refuses it rather
/// than rebuild the PostgreSQL tables nobody reads then, and touches nothing.
#[tokio::test(flavor = "multi_thread")]
async fn replay_refuses_messaging_configured_on_cassandra() {
    let db = TestDb::new().await;
    let output = replay(&db, "messaging")
        .env("SCYLLA_NODES", "127.0.0.1:9")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("`messaging` is configured on ScyllaDB/Cassandra"),
        "{stderr}"
    );
    let replays: i64 = sqlx::query_scalar("SELECT count(*) FROM replays")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(replays, 0, "no replay was recorded");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_interrupted_by_sigint_resumes_then_swaps_in_a_model_equal_to_the_live_one() {
    interrupted_replay_resumes_to_the_live_model("INT").await;
}

/// Killed, it has no chance to save anything or to finish its batch: its memory (what the
/// batches stored) is gone, and the run that resumes works from the tables and the checkpoint alone.
#[tokio::test(flavor = "multi_thread")]
async fn replay_killed_by_sigkill_resumes_then_swaps_in_a_model_equal_to_the_live_one() {
    interrupted_replay_resumes_to_the_live_model("KILL").await;
}

/// A replay stopped by `signal` once it reports progress, resumed by the same command, and
/// swapped in: the rebuilt model equals the live-built one.
async fn interrupted_replay_resumes_to_the_live_model(signal: &str) {
    let db = TestDb::new().await;
    let log = SocialLog::new(300);
    log.append_phases(&db.pool, 1..=2).await.unwrap();
    let settings = TimelineSettings {
        cap: 800,
        fanout_max_followers: FANOUT_MAX_FOLLOWERS,
    };
    // A transaction that took its id before the posts were appended holds every log
    // reader back before them while it is open: the replay stops after the follows, until
    // it ends — however fast the replay is. What it builds after the restart is the
    // fan-out of every post, to the follower sets it stored before.
    let holdback = holdback(&db).await;
    log.append_phases(&db.pool, 3..=5).await.unwrap();

    // Started, interrupted once it reports progress past the start (it waits there).
    let mut child = replay(&db, "timeline")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    progress_past_start(&mut lines, "timeline").await;
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let first = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&first.stdout);
    if signal == "INT" {
        assert!(first.status.success(), "{stdout}");
        assert!(stdout.contains("Interrupted"), "{stdout}");
    } else {
        assert!(!first.status.success(), "{stdout}");
    }
    let (at, total): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT global_position FROM checkpoints WHERE name = 'projection:replay:timeline'), \
                (SELECT max(global_position) FROM events)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(0 < at && at < total, "interrupted at {at} of {total}");

    // The live model, built by the live runner once the log can be read to its end.
    holdback.rollback().await.unwrap();
    let live = TimelineProjection::new(Arc::new(PgTimelines::lite(db.pool.clone())), settings);
    Runner::new(db.pool.clone(), live, RetryPolicy::default())
        .event_by_event()
        .catch_up(&CancellationToken::new())
        .await
        .unwrap();

    resumes_and_swaps_in_the_live_model(&db, "timeline", PgTimelines::TABLES).await;
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM read_model.timelines")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(entries > 3000, "only {entries} timeline entries");
}

/// Killed in the middle of a batch: a content replay's batch stores its statements at once,
/// each in its own transaction, so part of the batch is stored and its checkpoint is not.
/// Held at the insert of its comments (a lock the test takes) while its likes commit, it is
/// killed; the run that resumes applies the batch again, and the model it swaps in equals
/// the live-built one.
#[tokio::test(flavor = "multi_thread")]
async fn content_replay_killed_in_the_middle_of_a_batch_resumes_to_the_live_model() {
    let db = TestDb::new().await;
    let log = SocialLog::new(300);
    log.append_phases(&db.pool, 1..=3).await.unwrap();
    // Holds every log reader back before the likes and comments while it is open (see
    // above): the replay waits there, with its tables created.
    let holdback = holdback(&db).await;
    log.append_phases(&db.pool, 4..=5).await.unwrap();

    let mut child = replay(&db, "content")
        .arg("--no-swap")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    progress_past_start(&mut lines, "content").await;
    let stderr = keep_reading(lines);
    // Reads of `comments` go on; its inserts wait for this lock.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE replay_content.comments IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    holdback.rollback().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
               AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO replay_content.comments%')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if held {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replay's insert of comments did not wait for the lock; its stderr:\n{}",
            stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The batch's likes committed meanwhile (they are on their own connections).
    let likes_committed = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT (SELECT count(*) FROM replay_content.likes) > \
                    (SELECT count(*) FROM events e, checkpoints c \
                      WHERE c.name = 'projection:replay:content' AND e.event_type = 'post.liked' \
                        AND (e.transaction_id, e.global_position) <= (c.transaction_id, c.global_position))",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !likes_committed().await {
        assert!(
            std::time::Instant::now() < deadline,
            "no like of the held batch was stored beyond the checkpoint; its stderr:\n{}",
            stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().await.unwrap();
    lock.rollback().await.unwrap();

    // The live model, built by the live runner as `hybridlive project` does.
    let redis = redis::Client::open(
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    )
    .unwrap();
    let cache = projections::PostCache::new(
        redis::aio::ConnectionManager::new(redis).await.unwrap(),
        format!("hl:test:{}:rm:", uuid::Uuid::new_v4().simple()),
        projections::CacheSettings::default(),
    );
    let live = projections::ContentProjection::new(
        Arc::new(projections::content::postgres::PgContent::lite(
            db.pool.clone(),
        )),
        cache,
    );
    Runner::new(db.pool.clone(), live, RetryPolicy::default())
        .catch_up(&CancellationToken::new())
        .await
        .unwrap();

    resumes_and_swaps_in_the_live_model(
        &db,
        "content",
        projections::content::postgres::PgContent::TABLES,
    )
    .await;
}

/// The replay of `model` run again resumes, finishes and swaps the rebuilt model in; the
/// live-built tables, now in `retired_<model>`, equal it table by table.
async fn resumes_and_swaps_in_the_live_model(db: &TestDb, model: &str, tables: &[&str]) {
    let second = replay(db, model).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(stdout.contains("(resumed)"), "{stdout}");
    assert!(stdout.contains("Swapped in"), "{stdout}");
    testkit::tables::assert_same(&db.pool, tables, &format!("retired_{model}"), "read_model").await;
}

/// Reads the rest of `lines` (a replay's stderr) in the background, so that the replay
/// never waits on a full pipe, into the string returned: a failing test shows it.
fn keep_reading(
    mut lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) -> Arc<std::sync::Mutex<String>> {
    let read = Arc::new(std::sync::Mutex::new(String::new()));
    let into = Arc::clone(&read);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut into = into.lock().unwrap();
            into.push_str(&line);
            into.push('\n');
        }
    });
    read
}
