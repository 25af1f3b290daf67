//! `hybridlive replay <model>` as an analyst runs it: interrupted with SIGINT (or killed),
//! resumed by running it again, then swapped in — and the rebuilt model equals the
//! live-built one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use projections::timeline::postgres::PgTimelines;
use projections::{RetryPolicy, Runner, TimelineProjection, TimelineSettings};
use testkit::social::SocialLog;
use testkit::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

const FANOUT_MAX_FOLLOWERS: usize = 8;

fn replay(db: &TestDb) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hybridlive"));
    command
        .args(["replay", "timeline", "--batch-size", "100"])
        .env("DATABASE_URL", &db.url)
        .env("FANOUT_MAX_FOLLOWERS", FANOUT_MAX_FOLLOWERS.to_string())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_interrupted_by_sigint_resumes_then_swaps_in_a_model_equal_to_the_live_one() {
    interrupted_replay_resumes_to_the_live_model("INT").await;
}

/// Killed, it has no chance to save anything or to finish its batch: its in-memory mirror
/// is gone, and the run that resumes works from the tables and the checkpoint alone.
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
    let mut holdback = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *holdback)
        .await
        .unwrap();
    log.append_phases(&db.pool, 3..=5).await.unwrap();

    // Started, interrupted once it reports progress past the start (it waits there).
    let mut child = replay(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("a progress line within 60 s")
            .unwrap()
            .expect("the replay reports progress before it ends");
        // Log lines (warnings of a loaded machine) go to stderr too.
        if !line.starts_with("replay timeline: ") {
            continue;
        }
        assert!(line.contains("events/s, ETA"), "{line}");
        if !line.starts_with("replay timeline: 0/") {
            break;
        }
    }
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

    // The same command resumes, finishes and swaps the rebuilt model in.
    let second = replay(&db).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(stdout.contains("(resumed)"), "{stdout}");
    assert!(stdout.contains("Swapped in"), "{stdout}");

    // The live-built tables are now in `retired_timeline`: equal, table by table.
    testkit::tables::assert_same(
        &db.pool,
        PgTimelines::TABLES,
        "retired_timeline",
        "read_model",
    )
    .await;
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM read_model.timelines")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(entries > 3000, "only {entries} timeline entries");
}
