//! `hybridlive dlq`: the projections' dead letters, listed and retried.

use anyhow::Context;
use clap::Subcommand;

use crate::process::{DatabaseArgs, RedisArgs, WriteArgs};
use crate::workers::{ReadStoreArgs, RealTimeArgs};

// Parsed once per process: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Lists dead letters (one JSON object per line), in log order.
    List {
        /// Only this projection's.
        #[arg(long)]
        projection: Option<String>,
    },
    /// Applies a projection's dead letters again (after the cause was fixed); removes those
    /// that succeed. Exits 1 when some are still dead.
    Retry {
        /// The projection (timeline, content, onboarding, people, messaging).
        #[arg(long)]
        projection: String,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        stores: ReadStoreArgs,
        #[command(flatten)]
        realtime: RealTimeArgs,
        #[command(flatten)]
        write: WriteArgs,
    },
}

impl DlqCommand {
    pub async fn run(self, database: &DatabaseArgs) -> anyhow::Result<()> {
        match self {
            Self::List { projection } => {
                let pool = database.connect().await?;
                let letters = projections::DeadLetters::new(pool)
                    .list(projection.as_deref())
                    .await
                    .context("reading dead_letters")?;
                for letter in letters {
                    let line = serde_json::json!({
                        "projection": letter.projection,
                        "event_id": letter.event_id,
                        "global_position": letter.global_position,
                        "attempts": letter.attempts,
                        "error": letter.error,
                    });
                    println!("{line}");
                }
                Ok(())
            }
            Self::Retry {
                projection,
                redis,
                stores,
                realtime,
                write,
            } => {
                let pool = database.connect().await?;
                let (retried, still_dead) = realtime
                    .connected_workers(&pool, &redis, &stores, &write, false)
                    .await?
                    .retry_dead_letters(&projection)
                    .await?;
                println!(
                    "{}",
                    serde_json::json!({"projection": projection, "retried": retried, "still_dead": still_dead})
                );
                if still_dead > 0 {
                    std::process::exit(1);
                }
                Ok(())
            }
        }
    }
}
