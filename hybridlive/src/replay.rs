//! `hybridlive replay <model>`: rebuilds a read model from the log and swaps it in (the
//! `replay` crate), with a progress bar (events/s, ETA) and a summary; SIGINT stops it
//! with its checkpoint saved, and the same command resumes it.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use replay::{Model, Progress, Replay, ReplayOptions};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::process::{self, DatabaseArgs, RedisArgs};
use crate::workers::ReadStoreArgs;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The read model to rebuild: timeline, content or analytics.
    #[arg(required = true)]
    model: Option<String>,
    /// Reads and decodes the range and counts what would be applied; writes nothing.
    #[arg(long)]
    dry_run: bool,
    /// First global position applied (inclusive). A partial replay is not swapped in.
    #[arg(long)]
    from: Option<i64>,
    /// Last global position applied (inclusive). A partial replay is not swapped in.
    #[arg(long)]
    to: Option<i64>,
    /// Drops an unfinished replay of this model and starts over.
    #[arg(long)]
    restart: bool,
    /// Leaves the rebuilt model in `replay_<model>` instead of swapping it in.
    #[arg(long)]
    no_swap: bool,
    /// Events per batch (and per checkpoint).
    #[arg(long, default_value_t = 20_000)]
    batch_size: u32,
    /// Applies events one at a time, as the live projection does, instead of each batch
    /// set-wise: slower, the same model (to compare).
    #[arg(long)]
    event_by_event: bool,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    stores: ReadStoreArgs,
}

/// For analysts: `replay <model>` rebuilds a read model (timeline, content, notifications, people,
/// messaging, analytics)
/// from the log into fresh tables and swaps them in, resumably; `replay export` writes
/// the log for use in other tools.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ReplayCommandArgs {
    #[command(subcommand)]
    command: Option<ReplayCommand>,
    #[command(flatten)]
    rebuild: ReplayArgs,
}

impl ReplayCommandArgs {
    pub async fn run(self, database: &DatabaseArgs) -> anyhow::Result<()> {
        match self.command {
            None => run(self.rebuild, database).await,
            Some(ReplayCommand::Export {
                format: ExportFormat::Ndjson,
                filter,
                after_position,
            }) => export(database, &filter.into(), after_position).await,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Writes the events matching the audit filters to stdout, one JSON object per line, in
    /// log order, as stored (payloads at their recorded `schema_version`, hash in hex):
    /// those settled when it starts. Ends with the cursor a later export continues from, on
    /// stderr.
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
        format: ExportFormat,
        #[command(flatten)]
        filter: ExportFilter,
        /// Where to continue: the cursor an earlier export printed (or the API's
        /// `next_cursor`), or an integer N for only the events after global position N.
        #[arg(long, default_value = "0")]
        after_position: store::AuditCursor,
    },
}

/// The audit filters of `replay export` (`store::audit::AuditFilter`).
#[derive(Debug, Args)]
pub struct ExportFilter {
    #[arg(long)]
    stream_type: Option<String>,
    /// Only together with --stream-type.
    #[arg(long, requires = "stream_type")]
    stream_id: Option<String>,
    #[arg(long)]
    event_type: Option<String>,
    #[arg(long)]
    correlation_id: Option<String>,
    /// e.g. `user:<uuid>`.
    #[arg(long)]
    actor: Option<String>,
    /// Recorded at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// Recorded before this time (RFC 3339).
    #[arg(long)]
    to: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<ExportFilter> for store::audit::AuditFilter {
    fn from(filter: ExportFilter) -> Self {
        Self {
            stream_type: filter.stream_type,
            stream_id: filter.stream_id,
            event_type: filter.event_type,
            correlation_id: filter.correlation_id,
            actor: filter.actor,
            from: filter.from,
            to: filter.to,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// Newline-delimited JSON.
    Ndjson,
}

/// Pages through the audit listing (one page in memory at a time) to stdout, up to the
/// watermark read at the start, so the export ends under any write load.
async fn export(
    database: &DatabaseArgs,
    filter: &store::audit::AuditFilter,
    after: store::AuditCursor,
) -> anyhow::Result<()> {
    let pool = database.connect().await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (exported, after) = replay::export::export(&pool, filter, after, &mut out)
        .await
        .context("exporting the log")?;
    eprintln!("Exported {exported} events. Continue with --after-position {after}");
    Ok(())
}

async fn run(args: ReplayArgs, database: &DatabaseArgs) -> anyhow::Result<()> {
    let database_url = database.database_url.expose_secret();
    let name = args.model.clone().unwrap_or_default();
    let model = Model::named(&name)?;
    if args.stores.unreplayable(model.name) {
        anyhow::bail!(
            "`{name}` is configured on ScyllaDB/Cassandra (SCYLLA_NODES), and replay rebuilds \
             only its PostgreSQL tables so far"
        );
    }
    let options: sqlx::postgres::PgConnectOptions =
        database_url.parse().context("parsing DATABASE_URL")?;
    // The lock, the next batch's read, and a content batch's statements at once.
    let pool = replay::pool()
        .max_connections(database.database_max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(replay::pool_options(options))
        .await
        .context("connecting to DATABASE_URL")?;
    let production = args.stores.production(model.name);
    let stop = CancellationToken::new();
    tokio::spawn(process::cancel_on_signal(stop.clone()));
    let swap = !args.no_swap && args.from.is_none() && args.to.is_none();
    let cache = if swap && model.name == projections::ContentProjection::NAME {
        match args.redis.connect().await {
            Ok(redis) => Some(projections::PostCache::new(
                redis,
                format!("{}rm:", args.redis.redis_prefix),
                projections::CacheSettings::default(),
            )),
            Err(error) => {
                tracing::warn!(%error, "Redis is unreachable: after the swap the post caches keep serving the old model until they expire.");
                None
            }
        }
    } else {
        None
    };
    let options = ReplayOptions {
        from: args.from,
        to: args.to,
        restart: args.restart,
        swap,
        batch_size: args.batch_size,
        set_wise: !args.event_by_event,
        timeline: args.stores.timeline_settings(),
        cache,
        production,
    };
    let options_store = options.production.as_ref().map(replay::Production::kind);
    let replay = Replay::new(pool, model, options)?;
    let mut bar = Bar::new(model.name);
    if args.dry_run {
        let report = replay
            .dry_run(&stop, &mut |p| bar.update(p))
            .await
            .context("dry run")?;
        bar.finish();
        println!(
            "Dry run of `{}`: read {} events; would apply {}:",
            model.name,
            report.read,
            report.would_apply.values().sum::<u64>()
        );
        for (event_type, count) in &report.would_apply {
            println!("  {event_type:<32} {count}");
        }
        if !report.undecodable.is_empty() {
            println!(
                "{} events do not decode and would be dead-lettered:",
                report.undecodable.len()
            );
            for (position, error) in report.undecodable.iter().take(20) {
                println!("  position {position}: {error}");
            }
        }
        return Ok(());
    }
    let summary = replay
        .run(&stop, &mut |p| bar.update(p))
        .await
        .with_context(|| format!("replaying `{}`", model.name))?;
    bar.finish();
    println!(
        "Replay of `{}`{}: read {} events in {:.1} s ({:.0} events/s), {} dead-lettered, at position {}.",
        summary.model,
        if summary.resumed { " (resumed)" } else { "" },
        summary.read,
        summary.elapsed.as_secs_f64(),
        summary.rate(),
        summary.dead_lettered,
        summary.position.global_position,
    );
    let place = match &options_store {
        Some(kind) => format!("{kind} `{}`", summary.target),
        None => format!("schema `{}`", summary.target),
    };
    if summary.interrupted {
        println!(
            "Interrupted: the rebuilt part is kept in {place}; run the same command again to resume."
        );
    } else if let Some(swap) = &summary.swap {
        println!(
            "Swapped in: readers now use the rebuilt model in {place}; the previous {} is `{}`; the live projection goes on from position {} (it was at {}); {} cached keys dropped.",
            if options_store.is_some() { "generation" } else { "tables' schema" },
            swap.retired,
            swap.live_after.global_position,
            swap.live_before.global_position,
            swap.cache_keys_dropped,
        );
    } else {
        println!("Built in {place} (not swapped in).");
    }
    if summary.dead_lettered > 0 {
        println!(
            "See them with `hybridlive dlq list --projection replay:{}`.",
            summary.model
        );
    }
    Ok(())
}

/// A progress bar on a terminal; a line every 2 s otherwise (logs, CI).
struct Bar {
    name: &'static str,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    first: Option<u64>,
    last_line: Instant,
}

impl Bar {
    fn new(name: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!("replay {name}"));
            bar
        });
        Self {
            name,
            bar,
            started: Instant::now(),
            first: None,
            last_line: Instant::now()
                .checked_sub(Duration::from_secs(2))
                .unwrap_or_else(Instant::now),
        }
    }

    fn update(&mut self, progress: Progress) {
        let first = *self.first.get_or_insert(progress.read);
        if let Some(bar) = &self.bar {
            bar.set_length(progress.total);
            bar.set_position(progress.read);
            return;
        }
        if self.last_line.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last_line = Instant::now();
        let rate = (progress.read - first) as f64 / self.started.elapsed().as_secs_f64();
        let left = progress.total.saturating_sub(progress.read) as f64;
        let eta = if rate > 0.0 {
            format!("{:.0} s", left / rate)
        } else {
            "?".into()
        };
        eprintln!(
            "replay {}: {}/{} events ({:.0}%), {:.0} events/s, ETA {eta}",
            self.name,
            progress.read,
            progress.total,
            100.0 * progress.read as f64 / progress.total.max(1) as f64,
            rate,
        );
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
