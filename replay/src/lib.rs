//! Replay for analysts (DESIGN §1): rebuilds a read model from the PostgreSQL log
//! (never Kafka) into a fresh copy of its tables, then swaps the copy in. On the read side:
//! uses `projections` (the models' own projection code and stores, production drivers on),
//! `projection-runtime` and `store`, never `domain`; used by the binary (`replay`), the
//! tests and `bench replay`.
//!
//! A replay of model `m` ([`models::MODELS`]):
//! 1. creates schema `replay_<m>` with empty copies of the model's tables (`LIKE … INCLUDING
//!    ALL`) and records the run in `replays` — or, when one was interrupted, resumes it;
//! 2. drives the model's own projection code ([`projections::Runner`], checkpoint
//!    `projection:replay:<m>`, dead letters under `replay:<m>`) over the log, in the
//!    gap-free read order, batch by batch, with no side effects: no live updates, no caches,
//!    no saga. Each batch is applied set-wise where the model's store can (the lite
//!    timeline and content stores: [`projections::TimelineStore::write_all`]), to the same
//!    effect as event by event, which is the fallback for a batch that fails. The replay is
//!    the target tables' one writer: it keeps in [`memory::Memory`] what the batches
//!    stored, so that the next ones need not load it back. Events are decoded through the
//!    upcasters, so old versions arrive as current types. Interrupted (SIGINT), it stops after the event in flight with its checkpoint
//!    saved; run again, it goes on from there. Once it has applied its range, it settles
//!    what the batches deferred ([`ModelProjection::settle`]: content derives its posts'
//!    counts from the stored likes and comments in one statement, instead of rewriting a
//!    post row for nearly every like and comment);
//! 3. when it has read the whole log (no `--from` / `--to`), swaps: in one transaction,
//!    under the lock the live projection takes for each batch ([`projection_runtime::runner::swap_lock_key`]),
//!    it catches up to the head of the log (at least the live projection's checkpoint), moves the live tables to
//!    `retired_<m>` and the rebuilt ones into the live schema, and sets the live checkpoint
//!    to where the rebuilt model is. Readers see the old model or the new one, never a mix;
//!    the live projection goes on from the new checkpoint with its next batch.
//!
//! A production model (timelines on ScyllaDB/Cassandra, content on MongoDB:
//! [`ReplayOptions::production`]) is rebuilt the same way into a fresh keyspace or
//! database, the model's next generation `<base>_<n>` ([`projections::generation`]), and
//! swapped in under the same lock by moving the model's generation pointer in PostgreSQL
//! instead of moving tables: the live workers switch at their next batch, readers within a
//! second. The generation swapped out is kept until the next swap, then dropped. A
//! projection fed by Kafka takes the same lock for each batch; it goes on from its
//! consumer offsets, and what it applies again the rebuilt model already holds (every write
//! is idempotent).
//!
//! [`Replay::dry_run`] reads and decodes the range and counts what would be applied,
//! writing nothing. [`export::export`] writes the log as NDJSON for other tools.

pub mod export;
pub mod memory;
pub mod models;

use std::time::{Duration, Instant};

use projections::generation::{Generation, Generations};
use projections::{DeadLetters, PostCache, Runner, TimelineSettings};
use sqlx::PgPool;
use store::{Checkpoints, LogPosition, LogReader, StoreError};
use tokio_util::sync::CancellationToken;

pub use models::{Model, ModelError, ModelProjection, Production, MODELS};

/// `options` for a replay's own pool: `synchronous_commit = off`, so each write does not
/// wait for its WAL flush. Safe for a rebuild: the checkpoint is written on the same
/// connections after its batch, and the WAL is replayed in order after a crash, so a
/// checkpoint that survived a crash never points past writes that were lost; what was lost
/// is applied again on resume. And `enable_seqscan = off`: every read of a replay is a
/// lookup by key, but the rebuilt tables grow from empty faster than autovacuum's
/// statistics follow them, and on stale statistics the planner chose to scan a whole
/// table for a batch's keys (seen: `timelines` by `post_id`, `follows` by `followee_id`).
pub fn pool_options(options: sqlx::postgres::PgConnectOptions) -> sqlx::postgres::PgConnectOptions {
    options.options([("synchronous_commit", "off"), ("enable_seqscan", "off")])
}

/// The pool settings of a replay: a connection is not pinged each time it is taken (sqlx's
/// default), which would double the round trips of a replay's one-statement writes; a
/// broken connection fails its statement instead, and the replay resumes from its
/// checkpoint.
pub fn pool() -> sqlx::postgres::PgPoolOptions {
    sqlx::postgres::PgPoolOptions::new().test_before_acquire(false)
}

/// How a replay runs.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// First global position applied (inclusive); events before it are passed over.
    pub from: Option<i64>,
    /// Last global position applied (inclusive).
    pub to: Option<i64>,
    /// Drops an unfinished replay of the model and starts over.
    pub restart: bool,
    /// Swaps the rebuilt model in when done (only for a replay of the whole log).
    pub swap: bool,
    /// Events per batch (and per checkpoint).
    pub batch_size: u32,
    /// Applies each batch set-wise (the default); when false, event by event, as the live
    /// projection does — slower, for comparison.
    pub set_wise: bool,
    pub timeline: TimelineSettings,
    /// The caches in front of the live model, dropped after a swap of `content`.
    pub cache: Option<PostCache>,
    /// The production store of the model, when it is configured on one: the replay builds
    /// the model's next generation there instead of a PostgreSQL schema.
    pub production: Option<Production>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            from: None,
            to: None,
            restart: false,
            swap: true,
            batch_size: 20_000,
            set_wise: true,
            timeline: TimelineSettings::default(),
            cache: None,
            production: None,
        }
    }
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "a replay of `{model}` over positions {stored} is unfinished; run it with the same \
         range to resume it, or with --restart to start over"
    )]
    OtherRange { model: String, stored: String },
    #[error("--from must not be after --to")]
    EmptyRange,
    #[error("`{model}` is not kept on {store}; only `{holds}` is")]
    WrongStore {
        model: String,
        store: &'static str,
        holds: &'static str,
    },
    #[error("another replay of `{0}` is running; wait for it or stop it")]
    Busy(String),
    #[error(
        "the live `{0}` projection kept the swap lock for 60 s (is its store down?); the \
         rebuilt model is kept, run the replay again to swap"
    )]
    SwapTimeout(String),
    #[error("swapped, but dropping the caches failed (they expire on their own): {0}")]
    Cache(String),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ReplayError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::from(error))
    }
}

/// Where a replay is, for a progress display.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Events read so far, this run and the runs it resumes (estimated on resume).
    pub read: u64,
    /// Events in the range when the run started.
    pub total: u64,
}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub model: &'static str,
    /// Where the rebuilt tables are (the live schema after a swap).
    pub target: String,
    /// Whether it resumed an interrupted replay.
    pub resumed: bool,
    /// Events read by this run (in the range or not).
    pub read: u64,
    /// Events this run's projection could not apply, dead-lettered under `replay:<model>`.
    pub dead_lettered: u64,
    pub elapsed: Duration,
    /// Where it got to.
    pub position: LogPosition,
    /// Stopped before the end (SIGINT): run again to resume.
    pub interrupted: bool,
    pub swap: Option<SwapReport>,
}

impl Summary {
    /// Events read per second.
    pub fn rate(&self) -> f64 {
        self.read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What a swap did.
#[derive(Debug, Clone)]
pub struct SwapReport {
    /// Where the previous tables went.
    pub retired: String,
    /// The live projection's checkpoint before the swap, and after.
    pub live_before: LogPosition,
    pub live_after: LogPosition,
    /// Cached keys dropped.
    pub cache_keys_dropped: u64,
}

/// What a dry run found.
#[derive(Debug, Clone, Default)]
pub struct DryRun {
    pub read: u64,
    /// Events in the range the projection handles, by type.
    pub would_apply: std::collections::BTreeMap<String, u64>,
    /// Events that do not decode (they would be dead-lettered): (position, error).
    pub undecodable: Vec<(i64, String)>,
}

/// One replay of one model.
#[derive(Debug)]
pub struct Replay {
    pool: PgPool,
    model: &'static Model,
    options: ReplayOptions,
}

impl Replay {
    /// # Errors
    /// [`ReplayError::EmptyRange`] when `from` is after `to`.
    pub fn new(
        pool: PgPool,
        model: &'static Model,
        options: ReplayOptions,
    ) -> Result<Self, ReplayError> {
        if let (Some(from), Some(to)) = (options.from, options.to) {
            if from > to {
                return Err(ReplayError::EmptyRange);
            }
        }
        if let Some(production) = &options.production {
            if production.model() != model.name {
                return Err(ReplayError::WrongStore {
                    model: model.name.to_owned(),
                    store: production.kind(),
                    holds: production.model(),
                });
            }
        }
        Ok(Self {
            pool,
            model,
            options,
        })
    }

    /// `replay_<model>`: where a lite model is rebuilt.
    pub fn target_schema(&self) -> String {
        format!("replay_{}", self.model.name)
    }

    /// Where the model is rebuilt: [`Self::target_schema`], or the production model's next
    /// generation.
    async fn target(&self) -> Result<Target, ReplayError> {
        let Some(production) = &self.options.production else {
            return Ok(Target {
                name: self.target_schema(),
                generations: None,
            });
        };
        let live = Generations::new(self.pool.clone())
            .live(self.model.name, production.base())
            .await
            .map_err(|e| ModelError::Store(e.to_string()))?;
        let next = live.next(production.base());
        Ok(Target {
            name: next.name.clone(),
            generations: Some((live, next)),
        })
    }

    /// `retired_<model>`: where a swap moves the previous tables.
    pub fn retired_schema(&self) -> String {
        format!("retired_{}", self.model.name)
    }

    /// `replay:<model>`: the label of its checkpoint and dead letters.
    pub fn label(&self) -> String {
        format!("replay:{}", self.model.name)
    }

    fn range(&self) -> std::ops::RangeInclusive<i64> {
        self.options.from.unwrap_or(0)..=self.options.to.unwrap_or(i64::MAX)
    }

    fn whole_log(&self) -> bool {
        self.options.from.is_none() && self.options.to.is_none()
    }

    /// The runner of the replay into `target`; `fresh` when it starts into empty tables.
    async fn runner(
        &self,
        target: &Target,
        fresh: bool,
    ) -> Result<Runner<ModelProjection>, ReplayError> {
        let projection = match &self.options.production {
            Some(production) => {
                production
                    .projection(&target.name, self.options.timeline)
                    .await?
            }
            None => {
                if !fresh {
                    self.model.repair_resumed(&self.pool, &target.name).await?;
                }
                self.model
                    .projection(&self.pool, &target.name, self.options.timeline, fresh)?
            }
        };
        let runner = Runner::new(
            self.pool.clone(),
            projection,
            projections::RetryPolicy::default(),
        )
        .labelled(self.label())
        .within(self.range())
        .batch_size(self.options.batch_size)
        .untraced();
        Ok(if self.options.set_wise {
            runner
        } else {
            runner.event_by_event()
        })
    }

    /// Rebuilds the model (resuming an interrupted replay), then swaps it in when
    /// [`ReplayOptions::swap`] is set and the whole log was replayed. Calls `progress` after
    /// each batch. Returns early, with the checkpoint saved, when `stop` is cancelled.
    ///
    /// # Errors
    /// [`ReplayError`]: an unfinished replay over another range, the log, the target or the
    /// swap failed.
    pub async fn run(
        &self,
        stop: &CancellationToken,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Summary, ReplayError> {
        let mut exclusive = self.exclusive().await?;
        let result = self.run_exclusive(stop, progress).await;
        // Released now, not whenever the server notices the connection is gone: the same
        // command run again at once must not find its own lock held.
        let released = async {
            sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut exclusive)
                .await?;
            sqlx::Connection::close(exclusive).await
        }
        .await;
        if let Err(error) = released {
            tracing::warn!(%error, "Releasing the replay lock failed; it goes with the connection.");
        }
        result
    }

    async fn run_exclusive(
        &self,
        stop: &CancellationToken,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Summary, ReplayError> {
        let started = Instant::now();
        let target = self.target().await?;
        let resumed = self.prepare(&target).await?;
        let runner = self.runner(&target, !resumed).await?;
        let checkpoints = Checkpoints::new(self.pool.clone());
        let checkpoint = runner.checkpoint_name();
        let label = self.label();
        let letters_before = self.dead_letters(&label).await?;

        // The end: the last event in read order of the range as it is now.
        let end = LogReader::new(self.pool.clone())
            .last_up_to(self.options.to.unwrap_or(i64::MAX))
            .await?;
        let position = checkpoints.load(&checkpoint).await?;
        let (total, done): (i64, i64) = sqlx::query_as(
            "SELECT count(*), \
                    count(*) FILTER (WHERE (transaction_id, global_position) <= ($4::text::xid8, $3)) \
               FROM events WHERE global_position BETWEEN $1 AND $2",
        )
        .bind(self.options.from.unwrap_or(0))
        .bind(self.options.to.unwrap_or(i64::MAX))
        .bind(position.global_position)
        .bind(position.transaction_id.to_string())
        .fetch_one(&self.pool)
        .await?;
        let (total, mut done) = (total.max(0) as u64, done.max(0) as u64);
        progress(Progress { read: done, total });

        let mut read = 0u64;
        if let Some(end) = end {
            runner
                .apply_up_to(end, stop, &mut |n| {
                    read += n as u64;
                    done = (done + n as u64).min(total);
                    progress(Progress { read: done, total });
                })
                .await?;
        }
        let interrupted = stop.is_cancelled();
        if !interrupted {
            runner.projection().settle().await?;
            sqlx::query("UPDATE replays SET finished_at = now() WHERE model = $1")
                .bind(self.model.name)
                .execute(&self.pool)
                .await?;
        }
        let swap = if !interrupted && self.options.swap && self.whole_log() {
            Some(self.swap(&runner, &target, stop).await?)
        } else {
            None
        };
        let position = match &swap {
            Some(report) => report.live_after,
            None => checkpoints.load(&checkpoint).await?,
        };
        Ok(Summary {
            model: self.model.name,
            target: match (&swap, &self.options.production) {
                (Some(_), None) => self.model.schema.to_owned(),
                _ => target.name,
            },
            resumed,
            read,
            dead_lettered: self
                .dead_letters(&label)
                .await?
                .saturating_sub(letters_before),
            elapsed: started.elapsed(),
            position,
            interrupted,
            swap,
        })
    }

    /// Reads and decodes the range; counts what the projection would apply. Writes nothing.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub async fn dry_run(
        &self,
        stop: &CancellationToken,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<DryRun, ReplayError> {
        use projections::Projection as _;
        let projection =
            self.model
                .projection(&self.pool, self.model.schema, self.options.timeline, false)?;
        let range = self.range();
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE global_position BETWEEN $1 AND $2",
        )
        .bind(range.start())
        .bind(range.end())
        .fetch_one(&self.pool)
        .await?;
        let total = total.max(0) as u64;
        let reader = LogReader::new(self.pool.clone());
        let mut position = LogPosition::START;
        let mut report = DryRun::default();
        let mut in_range = 0u64;
        while !stop.is_cancelled() && in_range < total {
            let batch = reader.read_batch(position, self.options.batch_size).await?;
            let Some(last) = batch.last() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            position = LogPosition::of(last);
            for event in &batch {
                report.read += 1;
                if !range.contains(&event.global_position) {
                    continue;
                }
                in_range += 1;
                if !projection.handles(&event.event_type) {
                    continue;
                }
                match event.decode() {
                    Ok(_) => {
                        *report
                            .would_apply
                            .entry(event.event_type.clone())
                            .or_default() += 1;
                    }
                    Err(error) => report
                        .undecodable
                        .push((event.global_position, error.to_string())),
                }
            }
            progress(Progress {
                read: in_range,
                total,
            });
        }
        Ok(report)
    }

    /// A connection holding the lock `hybridlive replay <model>` (released when it closes):
    /// two replays of one model would interleave in one target.
    async fn exclusive(&self) -> Result<sqlx::PgConnection, ReplayError> {
        let mut connection = self.pool.acquire().await?.detach();
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(format!("hybridlive replay {}", self.model.name))
                .fetch_one(&mut connection)
                .await?;
        if locked {
            Ok(connection)
        } else {
            Err(ReplayError::Busy(self.model.name.to_owned()))
        }
    }

    /// Whether an unfinished replay into `target` can be resumed: its row names `target`,
    /// which exists, and (production) its checkpoint was saved once `target` was created.
    async fn resumable(
        &self,
        target: &Target,
    ) -> Result<Option<(Option<i64>, Option<i64>)>, ReplayError> {
        let stored: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT from_position, to_position FROM replays \
              WHERE model = $1 AND target_schema = $2 AND swapped_at IS NULL",
        )
        .bind(self.model.name)
        .bind(&target.name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let exists = match &self.options.production {
            Some(production) => {
                let checkpoint: Option<String> =
                    sqlx::query_scalar("SELECT name FROM checkpoints WHERE name = $1")
                        .bind(format!("projection:{}", self.label()))
                        .fetch_optional(&self.pool)
                        .await?;
                checkpoint.is_some() && production.exists(&target.name).await?
            }
            None => {
                sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
                    .bind(&target.name)
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        Ok(exists.then_some(stored))
    }

    /// Creates the target (or keeps an unfinished one to resume); returns whether it resumes.
    async fn prepare(&self, target: &Target) -> Result<bool, ReplayError> {
        if let Some((from, to)) = self.resumable(target).await? {
            if !self.options.restart {
                if (from, to) != (self.options.from, self.options.to) {
                    let show = |p: Option<i64>| p.map_or_else(String::new, |p| p.to_string());
                    return Err(ReplayError::OtherRange {
                        model: self.model.name.to_owned(),
                        stored: format!("{}..{}", show(from), show(to)),
                    });
                }
                tracing::info!(model = self.model.name, target = %target.name, "Resuming an unfinished replay.");
                return Ok(true);
            }
        }
        let name = &target.name;
        let checkpoint = format!("projection:{}", self.label());
        let mut tx = self.pool.begin().await?;
        if self.options.production.is_none() {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!("CREATE SCHEMA {name}"))
                .execute(&mut *tx)
                .await?;
            for table in self.model.tables {
                sqlx::query(&format!(
                    "CREATE TABLE {name}.{table} (LIKE {live}.{table} INCLUDING ALL)",
                    live = self.model.schema
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query("DELETE FROM checkpoints WHERE name = $1")
            .bind(&checkpoint)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM dead_letters WHERE projection = $1")
            .bind(self.label())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO replays (model, target_schema, from_position, to_position) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (model) DO UPDATE SET target_schema = EXCLUDED.target_schema, \
                from_position = EXCLUDED.from_position, to_position = EXCLUDED.to_position, \
                started_at = now(), finished_at = NULL, swapped_at = NULL",
        )
        .bind(self.model.name)
        .bind(name)
        .bind(self.options.from)
        .bind(self.options.to)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(production) = &self.options.production {
            // The keyspace or database outside the transaction, then the checkpoint that
            // makes it resumable: a run killed in between starts over.
            production.create_empty(name).await?;
            Checkpoints::new(self.pool.clone())
                .save(&checkpoint, LogPosition::START)
                .await?;
        }
        Ok(false)
    }

    async fn dead_letters(&self, label: &str) -> Result<u64, ReplayError> {
        let letters = DeadLetters::new(self.pool.clone())
            .list(Some(label))
            .await?;
        Ok(letters.len() as u64)
    }

    /// The blue/green swap (see the crate docs).
    async fn swap(
        &self,
        runner: &Runner<ModelProjection>,
        target: &Target,
        stop: &CancellationToken,
    ) -> Result<SwapReport, ReplayError> {
        let live_checkpoint = format!("projection:{}", self.model.name);
        let replay_checkpoint = runner.checkpoint_name();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '60s'")
            .execute(&mut *tx)
            .await?;
        // Waits for the live projection's batch in flight; holds its next one back. (No
        // write yet: this transaction must not hold the log readers' watermark back while
        // it catches up below.)
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(projection_runtime::runner::swap_lock_key(self.model.name))
            .execute(&mut *tx)
            .await
            .map_err(|e| match e.as_database_error().and_then(|d| d.code()) {
                Some(code) if code == "55P03" => ReplayError::SwapTimeout(self.model.name.into()),
                _ => e.into(),
            })?;
        let live_before = Checkpoints::load_with(&mut *tx, &live_checkpoint).await?;
        // Catch up with the live projection and with every event committed by now (a
        // projection fed by Kafka keeps no checkpoint here, and cannot have applied one
        // that is not committed), so that the live projection, going on from the new
        // checkpoint or its consumer offsets, misses nothing.
        let head = LogReader::new(self.pool.clone())
            .last_up_to(i64::MAX)
            .await?
            .unwrap_or(LogPosition::START);
        let end = live_before.max(head);
        let checkpoints = Checkpoints::new(self.pool.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let at = checkpoints.load(&replay_checkpoint).await?;
            let n = runner.run_batch(stop).await?;
            if n == 0 && at >= end {
                break;
            }
            if n == 0 {
                if Instant::now() > deadline {
                    return Err(StoreError::Corrupt(format!(
                        "the replay cannot read up to {end:?}"
                    ))
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let live_after = checkpoints.load(&replay_checkpoint).await?;
        let retired = match (&self.options.production, &target.generations) {
            (Some(production), Some((live, next))) => {
                Generations::point_with(&mut *tx, self.model.name, production.base(), next)
                    .await
                    .map_err(|e| ModelError::Store(e.to_string()))?;
                live.name.clone()
            }
            _ => self.swap_tables(&mut tx).await?,
        };
        Checkpoints::save_with(&mut *tx, &live_checkpoint, live_after).await?;
        sqlx::query("DELETE FROM checkpoints WHERE name = $1")
            .bind(&replay_checkpoint)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE replays SET swapped_at = now() WHERE model = $1")
            .bind(self.model.name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(model = self.model.name, ?live_before, ?live_after, %retired, "Swapped the rebuilt model in.");
        if let (Some(production), Some((live, _))) = (&self.options.production, &target.generations)
        {
            // The generation the swap before this one retired: nobody has read it since.
            if let Some(older) = live.previous(production.base()) {
                if let Err(error) = production.drop_generation(&older.name).await {
                    tracing::warn!(%error, generation = %older.name, "Swapped, but the generation retired by the swap before is not dropped; drop it by hand.");
                }
            }
        }
        let cache_keys_dropped = match (&self.options.cache, self.model.name) {
            (Some(cache), projections::ContentProjection::NAME) => cache
                .clear()
                .await
                .map_err(|e| ReplayError::Cache(e.to_string()))?,
            _ => 0,
        };
        Ok(SwapReport {
            retired,
            live_before,
            live_after,
            cache_keys_dropped,
        })
    }

    /// Moves the live tables to `retired_<model>` and the rebuilt ones into the live schema
    /// (lite models), in the swap's transaction; returns where the live ones went.
    async fn swap_tables(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<String, ReplayError> {
        let (live, target, retired) = (
            self.model.schema,
            self.target_schema(),
            self.retired_schema(),
        );
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {retired} CASCADE"))
            .execute(&mut **tx)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {retired}"))
            .execute(&mut **tx)
            .await?;
        for table in self.model.tables {
            sqlx::query(&format!("ALTER TABLE {live}.{table} SET SCHEMA {retired}"))
                .execute(&mut **tx)
                .await?;
        }
        for table in self.model.tables {
            sqlx::query(&format!("ALTER TABLE {target}.{table} SET SCHEMA {live}"))
                .execute(&mut **tx)
                .await?;
        }
        sqlx::query(&format!("DROP SCHEMA {target}"))
            .execute(&mut **tx)
            .await?;
        let tables = self
            .model
            .tables
            .iter()
            .map(|t| format!("{live}.{t}"))
            .collect::<Vec<_>>()
            .join(", ");
        for grant in [
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO hybridlive_writer"),
            format!("GRANT SELECT ON {tables} TO hybridlive_reader"),
        ] {
            sqlx::query(&grant).execute(&mut **tx).await?;
        }
        Ok(retired)
    }
}

/// Where a replay builds.
#[derive(Debug, Clone)]
struct Target {
    /// The schema (lite), or the keyspace or database (production).
    name: String,
    /// Production: the live generation when the replay started, and the one it builds.
    generations: Option<(Generation, Generation)>,
}
