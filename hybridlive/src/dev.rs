//! `hybridlive dev --print-events`: the committed log as JSON lines.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use store::{LogPosition, LogReader};

/// Follows the committed log from its current end, printing one JSON line per new event.
pub async fn print_events(pool: sqlx::PgPool) -> anyhow::Result<()> {
    let reader = LogReader::new(pool);
    let mut position = end_of_log(&reader).await?;
    tracing::info!(?position, "Printing committed events.");
    let mut last_holdback_check = Instant::now();
    loop {
        let batch = reader
            .read_batch(position, 500)
            .await
            .context("reading the log")?;
        for event in &batch {
            let line = json!({
                "global_position": event.global_position,
                "stream_type": event.stream_type,
                "stream_id": event.stream_id,
                "stream_version": event.stream_version,
                "event_type": event.event_type,
                "schema_version": event.schema_version,
                "recorded_at": event.recorded_at,
                "metadata": event.metadata,
            });
            println!("{line}");
            position = LogPosition::of(event);
        }
        if last_holdback_check.elapsed() > Duration::from_secs(5) {
            let holdback = reader.holdback().await.context("reading the holdback")?;
            if holdback > Duration::from_secs(5) {
                tracing::warn!(
                    holdback_seconds = holdback.as_secs(),
                    "A long-open write transaction holds log readers back."
                );
            }
            last_holdback_check = Instant::now();
        }
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The end of the log as it is now: reads through the history without printing it.
async fn end_of_log(reader: &LogReader) -> anyhow::Result<LogPosition> {
    let mut position = LogPosition::START;
    loop {
        let batch = reader
            .read_batch(position, 5000)
            .await
            .context("reading the log")?;
        let Some(last) = batch.last() else {
            return Ok(position);
        };
        position = LogPosition::of(last);
    }
}
