//! `hybridlive dev`: everything in one process for local development, and
//! `--print-events`, the committed log as JSON lines.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use projections::Source;
use serde_json::json;
use store::{LogPosition, LogReader};
use tokio_util::sync::CancellationToken;

use crate::process::DatabaseArgs;
use crate::relay::{KafkaTopicArgs, RelayArgs};
use crate::serve::{serve, ServeArgs};
use crate::workers::RealTimeArgs;

/// Everything in one process for local development: the HTTP API (the development JWT
/// secret is allowed), every projection (fed by the PostgreSQL log), the relay when
/// KAFKA_BROKERS is set and, with --print-events, the committed log as JSON lines.
#[derive(Debug, Args)]
pub struct DevCommand {
    #[command(flatten)]
    serve: ServeArgs,
    /// Kafka for the relay, which `dev` runs only when this is set.
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    #[command(flatten)]
    kafka: KafkaTopicArgs,
    #[command(flatten)]
    relay: RelayArgs,
    /// Print every committed event, in the order projections read them, to stdout.
    #[arg(long)]
    print_events: bool,
    #[command(flatten)]
    realtime: RealTimeArgs,
}

impl DevCommand {
    pub async fn run(self, database: &DatabaseArgs) -> anyhow::Result<()> {
        let Self {
            serve: args,
            kafka_brokers,
            kafka,
            relay,
            print_events: printing,
            realtime,
        } = self;
        // The metrics recorder before the workers and the relay start: what they register
        // or set before it is installed (their zeroed counters, `relay_active`) is lost.
        let _ = api::metrics_handle();
        let pool = database.connect().await?;
        let stop = CancellationToken::new();
        let workers = {
            let workers = realtime
                .connected_workers(&pool, &args.redis, &args.stores, &args.write, true)
                .await?;
            let stop = stop.clone();
            tokio::spawn(async move { workers.run(&["all".to_owned()], &Source::Log, &stop).await })
        };
        let relay = kafka_brokers.map(|brokers| {
            let relay = relay::Relay::new(pool.clone(), relay.settings(brokers, &kafka));
            let stop = stop.clone();
            tokio::spawn(async move { relay.run(stop).await })
        });
        if printing {
            let follower = pool.clone();
            tokio::spawn(async move {
                if let Err(error) = print_events(follower).await {
                    tracing::error!(error = format!("{error:#}"), "Event printer stopped.");
                }
            });
        }
        let served = serve(args, pool, true).await;
        stop.cancel();
        if let Some(relay) = relay {
            relay.await.context("the relay task panicked")?;
        }
        workers.await.context("the projection workers panicked")??;
        served
    }
}

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
