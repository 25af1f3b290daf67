//! `hybridlive replay <model>` as an analyst runs it: interrupted with SIGINT, resumed by
//! running it again, then swapped in — and the rebuilt model equals the live-built one.
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
    let db = TestDb::new().await;
    SocialLog::new(300).append(&db.pool).await.unwrap();
    let settings = TimelineSettings {
        cap: 800,
        fanout_max_followers: FANOUT_MAX_FOLLOWERS,
    };
    // A transaction that took its id before the last registrations were appended holds
    // every log reader back before them while it is open: the replay stops there, part of
    // the way, until it ends — however fast the replay is.
    let mut holdback = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *holdback)
        .await
        .unwrap();
    let store = store::PgEventStore::new(db.pool.clone());
    for name in ["late_one", "late_two"] {
        store
            .append(&testkit::social::registration(name))
            .await
            .unwrap();
    }

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
        assert!(line.contains("events/s, ETA"), "{line}");
        if !line.starts_with("replay timeline: 0/") {
            break;
        }
    }
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let first = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{stdout}");
    assert!(stdout.contains("Interrupted"), "{stdout}");
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
