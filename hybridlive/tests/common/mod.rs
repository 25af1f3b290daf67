//! What the replay tests share: holding log readers back, and reading a replay's progress.

use std::time::Duration;

use testkit::TestDb;
use tokio::io::BufReader;

/// A transaction with an id, open: while it is, every log reader stops before the events
/// appended after it began.
pub async fn holdback(db: &TestDb) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holdback = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *holdback)
        .await
        .unwrap();
    holdback
}

/// Waits for a progress line of `model`'s replay past its start on `lines` (its stderr).
pub async fn progress_past_start(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    model: &str,
) {
    let (ours, at_start) = (format!("replay {model}: "), format!("replay {model}: 0/"));
    loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("a progress line within 120 s")
            .unwrap()
            .expect("the replay reports progress before it ends");
        // Log lines (warnings of a loaded machine) go to stderr too.
        if !line.starts_with(&ours) {
            continue;
        }
        assert!(line.contains("events/s, ETA"), "{line}");
        if !line.starts_with(&at_start) {
            return;
        }
    }
}
