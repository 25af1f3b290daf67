//! `hybridlive audit`: checks and seals the tamper-evident log (`store`'s hash chain).

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use crate::process::DatabaseArgs;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recomputes the hash chain of every event in a range of positions and checks the
    /// seals ending in it; prints the result as JSON and exits 1 when the log was altered.
    Verify {
        #[arg(long, default_value_t = 0)]
        from_position: i64,
        #[arg(long, default_value_t = i64::MAX)]
        to_position: i64,
    },
    /// Seals the log now (what `serve` does every SEAL_INTERVAL_SECS); prints each new seal
    /// as a JSON line.
    Seal {
        /// Longest wait for running write transactions, seconds; exits 1 when exceeded.
        #[arg(long, default_value_t = 30)]
        settle_secs: u64,
    },
}

impl AuditCommand {
    pub async fn run(self, database: &DatabaseArgs) -> anyhow::Result<()> {
        match self {
            Self::Verify {
                from_position,
                to_position,
            } => verify(database, from_position, to_position).await,
            Self::Seal { settle_secs } => seal(database, Duration::from_secs(settle_secs)).await,
        }
    }
}

async fn verify(database: &DatabaseArgs, from: i64, to: i64) -> anyhow::Result<()> {
    let store = store::PgEventStore::new(database.connect().await?);
    let verification = store
        .verify_log(from, to)
        .await
        .context("verifying the log")?;
    println!("{}", serde_json::to_string(&verification)?);
    if !verification.ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn seal(database: &DatabaseArgs, settle: Duration) -> anyhow::Result<()> {
    let sealer = store::Sealer::new(database.connect().await?);
    match sealer.seal_now(settle).await.context("sealing the log")? {
        store::SealOutcome::Sealed(seals) => {
            for seal in seals {
                println!("{}", serde_json::to_string(&seal)?);
            }
            Ok(())
        }
        store::SealOutcome::UpToDate => {
            eprintln!("The log is already sealed up to its last position.");
            Ok(())
        }
        store::SealOutcome::Unsettled => {
            anyhow::bail!("a write transaction was still running after {settle:?}; try again")
        }
    }
}
