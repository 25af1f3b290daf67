//! `bench replay`: a synthetic social log of about `--events` events
//! ([`testkit::social::SocialLog`]), replayed from scratch into the lite timeline and the
//! lite content models (`hybridlive replay <model> --no-swap` does the same), timed; and
//! the log exported as NDJSON the way `hybridlive replay export` does.

use std::time::{Duration, Instant};

use anyhow::Context;
use replay::{Model, Replay, ReplayOptions};
use testkit::social::SocialLog;
use tokio_util::sync::CancellationToken;

use crate::setup::BenchDatabase;

#[derive(Debug, Clone, Copy)]
pub struct ReplayLoad {
    pub events: usize,
    pub batch_size: u32,
    /// Also replays the whole log event by event, for comparison.
    pub baseline: bool,
    /// Set-wise replays of each model, one after another on the same log.
    pub repeat: u32,
    /// The log is already in the database ([`kept_log`]): not appended again.
    pub log_kept: bool,
}

/// Users of the synthetic log of about `events` events (about 42 events a user).
pub fn users(events: usize) -> usize {
    (events / 42).max(2)
}

/// Whether `db` holds the whole log of `users` users, appended by a run that kept it.
pub async fn kept_log(db: &BenchDatabase, users: usize) -> bool {
    let Ok(pool) = db.pool(1, None).await else {
        return false;
    };
    let kept: Result<i64, _> = sqlx::query_scalar("SELECT users FROM bench_replay_log")
        .fetch_one(&pool)
        .await;
    pool.close().await;
    kept.is_ok_and(|kept| usize::try_from(kept) == Ok(users))
}

#[derive(Debug)]
pub struct ModelResult {
    pub model: &'static str,
    /// Set-wise batches, or event by event.
    pub set_wise: bool,
    pub events: u64,
    pub elapsed: Duration,
    pub rows: i64,
}

#[derive(Debug)]
pub struct ReplayResult {
    pub events: usize,
    /// How long appending the log took; `None` when it was kept from an earlier run.
    pub generated_in: Option<Duration>,
    pub models: Vec<ModelResult>,
    pub export: (u64, u64, Duration),
}

pub async fn run(db: &BenchDatabase, load: &ReplayLoad) -> anyhow::Result<ReplayResult> {
    let pool = replay::pool()
        .max_connections(16)
        .connect_with(replay::pool_options(db.connect_options()))
        .await
        .context("connecting to the benchmark database")?;
    let log = SocialLog::new(users(load.events));
    let (events, generated_in) = if load.log_kept {
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await?;
        eprintln!("Replaying the kept log of {events} events.");
        (usize::try_from(events)?, None)
    } else {
        eprintln!("Appending about {} events (untimed)…", log.events());
        let started = Instant::now();
        let events = log.append(&pool).await.context("appending the log")?;
        let generated_in = started.elapsed();
        eprintln!(
            "Appended {events} events in {:.1} s.",
            generated_in.as_secs_f64()
        );
        // Written once the whole log is: a run interrupted before is not mistaken for one.
        sqlx::raw_sql("CREATE TABLE bench_replay_log (users bigint NOT NULL)")
            .execute(&pool)
            .await?;
        sqlx::query("INSERT INTO bench_replay_log (users) VALUES ($1)")
            .bind(i64::try_from(users(load.events))?)
            .execute(&pool)
            .await?;
        (events, Some(generated_in))
    };
    db.settle().await?;

    let mut models = Vec::new();
    for name in ["timeline", "content"] {
        let model = Model::named(name)?;
        let mut runs = vec![true; load.repeat.max(1) as usize];
        if load.baseline {
            runs.push(false);
        }
        for set_wise in runs {
            let options = ReplayOptions {
                swap: false,
                restart: true,
                batch_size: load.batch_size,
                set_wise,
                ..ReplayOptions::default()
            };
            let summary = Replay::new(pool.clone(), model, options)?
                .run(&CancellationToken::new(), &mut |_| {})
                .await
                .with_context(|| format!("replaying {name}"))?;
            anyhow::ensure!(!summary.interrupted && summary.dead_lettered == 0);
            if summary.read != events as u64 {
                let end = store::LogReader::new(pool.clone())
                    .last_up_to(i64::MAX)
                    .await?;
                let beyond: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM events \
                      WHERE (transaction_id, global_position) > ($1::text::xid8, $2)",
                )
                .bind(summary.position.transaction_id.to_string())
                .bind(summary.position.global_position)
                .fetch_one(&pool)
                .await?;
                anyhow::bail!(
                    "the replay of {name} read {} of the {events} events: it stopped at {:?}, \
                     the log ends at {end:?}, {beyond} events after where it stopped",
                    summary.read,
                    summary.position
                );
            }
            let mut rows = 0;
            for table in model.tables {
                let n: i64 =
                    sqlx::query_scalar(&format!("SELECT count(*) FROM replay_{name}.{table}"))
                        .fetch_one(&pool)
                        .await?;
                rows += n;
            }
            eprintln!(
                "Replayed {name} ({}): {} events in {:.1} s ({:.0} events/s), {rows} rows.",
                if set_wise {
                    "set-wise"
                } else {
                    "event by event"
                },
                summary.read,
                summary.elapsed.as_secs_f64(),
                summary.rate()
            );
            models.push(ModelResult {
                model: model.name,
                set_wise,
                events: summary.read,
                elapsed: summary.elapsed,
                rows,
            });
        }
    }

    let export = export(&pool).await?;
    Ok(ReplayResult {
        events,
        generated_in,
        models,
        export,
    })
}

/// Exports the whole log as `hybridlive replay export` does, to a sink; returns (events,
/// bytes, elapsed).
async fn export(pool: &sqlx::PgPool) -> anyhow::Result<(u64, u64, Duration)> {
    let mut out = CountingSink::default();
    let started = Instant::now();
    let (events, _) = replay::export::export(
        pool,
        &store::audit::AuditFilter::default(),
        store::AuditCursor::START,
        &mut out,
    )
    .await?;
    Ok((events, out.0, started.elapsed()))
}

#[derive(Default)]
struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
