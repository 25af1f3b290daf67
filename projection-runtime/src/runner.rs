//! The projection runtime over the PostgreSQL log (DESIGN §5).
//!
//! A [`Runner`] reads the log after the projection's checkpoint (`projection:<name>` in
//! `checkpoints`), decodes (and upcasts) each event the projection handles, applies it, and
//! saves the checkpoint after each batch. Delivery is at least once (a crash re-applies the
//! last batch), so `apply` must be idempotent. [`Runner::run`] is the one active instance of
//! its projection (a [`store::lease`]); other instances stand by and take over when it dies.
//! It reads its checkpoint before each batch, under a shared advisory lock
//! ([`swap_lock_key`]) that a replay's blue/green swap takes exclusively: the swap replaces
//! the model's tables and moves the checkpoint between two batches (the `replay` crate).
//! A projection that [`Projection::applies_batches`] gets each batch whole
//! ([`Projection::apply_batch`]); the Kafka source (`kafka`) feeds it the same way.
//!
//! Failures, as the projection classifies them:
//! - [`ApplyError::Transient`] (its store is down): retried with exponential backoff and
//!   jitter, forever — never skipped; the runner stops only when asked to. Events are
//!   retried one at a time (a projection that [`Projection::applies_batches`] tries each
//!   batch whole first), so while the store is down the projection sends it one probe per
//!   backoff interval and nothing else: the breaker is open
//!   (`projection_store_unavailable` = 1) until a probe succeeds;
//! - [`ApplyError::Poison`] (this event cannot be applied): retried up to
//!   [`RetryPolicy::max_attempts`], then written to `dead_letters` with the error, and the
//!   projection moves on. An event that cannot be decoded is poison at once.
//!
//! Metrics, labelled by projection: `projection_applied_total`, `projection_retries_total`,
//! `projection_dead_lettered_total`, `projection_lag_seconds` (age of the last applied event),
//! `projection_lag_events` (here: events committed after the checkpoint, every 5 s; on
//! Kafka: the assigned partitions' high watermarks less the applied offsets),
//! `projection_active` (this instance holds the lease), `projection_store_unavailable`.

use std::future::Future;
use std::ops::RangeInclusive;
use std::time::Duration;

use event_schemas::EventEnvelope;
use rand::Rng;
use sqlx::postgres::PgPool;
use store::{Checkpoints, Keyring, LogPosition, LogReader, LogWaiter, RecordedEvent, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Why an event was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    /// The read-model store is unavailable: retry later, never skip.
    #[error("transient: {0}")]
    Transient(String),
    /// The event itself cannot be applied: after the retries, dead-letter it.
    #[error("poison: {0}")]
    Poison(String),
}

/// A read model built from the log.
pub trait Projection: Send + Sync {
    /// Unique; names the checkpoint and the dead letters.
    fn name(&self) -> &str;
    /// Whether `apply` wants events of this type; the others only advance the checkpoint.
    fn handles(&self, event_type: &str) -> bool;
    /// Applies one event. Must be idempotent: an event may be applied again after a crash.
    fn apply(&self, event: &EventEnvelope) -> impl Future<Output = Result<(), ApplyError>> + Send;
    /// Whether [`Self::apply_batch`] applies a batch set-wise (its store writes in one go);
    /// when false, the runner calls `apply` event by event.
    fn applies_batches(&self) -> bool {
        false
    }
    /// Applies `events` (those it handles, in log order, more than one) as `apply` would
    /// one after another, when [`Self::applies_batches`]. Must be idempotent, and should be
    /// all or nothing: on an error the runner applies the batch again one event at a time,
    /// which retries a store outage and dead-letters a poison event alone.
    fn apply_batch(
        &self,
        events: &[EventEnvelope],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send {
        async move {
            for event in events {
                self.apply(event).await?;
            }
            Ok(())
        }
    }
    /// Called before each batch, under the swap lock ([`swap_lock_key`]): a projection whose
    /// store follows a replay's generation pointer switches to the live generation here.
    /// An error holds the batch back (retried like a store outage).
    fn before_batch(&self) -> impl Future<Output = Result<(), ApplyError>> + Send {
        std::future::ready(Ok(()))
    }
    /// Called after `event` was dead-lettered with `error` (the registration saga fails a
    /// user whom a required projection lost). A failure here is logged, not retried.
    fn dead_lettered(
        &self,
        _event: &EventEnvelope,
        _error: &str,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send {
        std::future::ready(Ok(()))
    }
}

/// How failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts at a poison event before it is dead-lettered.
    pub max_attempts: u32,
    /// First backoff; doubled after each failure up to `max_backoff`, with ±50% jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, failures: u32) -> Duration {
        let exponential = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
            .min(self.max_backoff);
        exponential.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
    }
}

/// The decodings of a batch's events done ahead, by index: `None` where not done.
pub(crate) type Decoded = Vec<Option<Result<EventEnvelope, StoreError>>>;

/// What became of one event.
pub(crate) enum Outcome {
    Applied,
    /// With the error it was dead-lettered with (the Kafka source forwards it to the
    /// dead-letter topic).
    DeadLettered(#[cfg_attr(not(feature = "kafka"), allow(dead_code))] String),
    Stopped,
}

/// Feeds one projection from the PostgreSQL log.
#[derive(Debug)]
pub struct Runner<P> {
    pool: PgPool,
    projection: P,
    policy: RetryPolicy,
    /// Events per batch: read from the log, or taken from the consumer's queue.
    pub(crate) batch_size: u32,
    poll_interval: Duration,
    standby_interval: Duration,
    /// Names its checkpoint (`projection:<name>`) and its dead letters.
    label: String,
    /// Only events whose global position is in this range are applied; the others are
    /// passed over (replay `--from` / `--to`).
    range: RangeInclusive<i64>,
    /// Offers each batch whole to a projection that [`Projection::applies_batches`].
    batches: bool,
    /// Opens a span per event (and per batch) while spans are exported.
    traced: bool,
    /// The event types seen that the projection does not handle: the log reader leaves
    /// their payloads out.
    skipped: std::sync::Mutex<Vec<String>>,
    /// Opens the personal fields of the events it reads (`store::keys`).
    pub(crate) keyring: Keyring,
}

/// How often the log source counts its lag in events.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// The advisory lock (on `hashtextextended(<key>, 0)`) a running projection holds shared
/// for each batch, and a replay's swap takes exclusively: the swap happens between two
/// batches, never in the middle of one.
pub fn swap_lock_key(projection: &str) -> String {
    format!("hybridlive swap {projection}")
}

impl<P: Projection> Runner<P> {
    pub fn new(pool: PgPool, projection: P, policy: RetryPolicy) -> Self {
        Self {
            keyring: Keyring::new(pool.clone()),
            pool,
            policy,
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            standby_interval: Duration::from_millis(500),
            label: projection.name().to_owned(),
            range: 0..=i64::MAX,
            batches: true,
            traced: true,
            skipped: std::sync::Mutex::default(),
            projection,
        }
    }

    /// Keeps its checkpoint (`projection:<label>`) and dead letters under `label` instead of
    /// the projection's name: a replay builds the same projection beside the live one.
    #[must_use]
    pub fn labelled(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Applies only the events whose global position is in `range`.
    #[must_use]
    pub fn within(mut self, range: RangeInclusive<i64>) -> Self {
        self.range = range;
        self
    }

    /// Events per batch (and per checkpoint).
    #[must_use]
    pub fn batch_size(mut self, events: u32) -> Self {
        self.batch_size = events.max(1);
        self
    }

    /// Applies each event alone even where the projection could apply a whole batch at once
    /// (tests compare the two; `replay --event-by-event`).
    #[must_use]
    pub fn event_by_event(mut self) -> Self {
        self.batches = false;
        self
    }

    /// Opens no span per event or batch, even while spans are exported: a replay applies
    /// history again, whose traces ended long ago, and would add a span for every event of
    /// the log to them.
    #[must_use]
    pub fn untraced(mut self) -> Self {
        self.traced = false;
        self
    }

    pub fn projection(&self) -> &P {
        &self.projection
    }

    #[cfg(feature = "kafka")]
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Registers the projection's counters at zero (and its store as available) when it
    /// starts on a source: a projection that has not retried or dead-lettered anything
    /// exports `0`, so `increase(...)` in an alert sees the first one.
    pub(crate) fn register_metrics(&self) {
        let projection = self.projection.name().to_owned();
        metrics::counter!("projection_applied_total", "projection" => projection.clone())
            .increment(0);
        metrics::counter!("projection_retries_total", "projection" => projection.clone())
            .increment(0);
        metrics::counter!("projection_dead_lettered_total", "projection" => self.label.clone())
            .increment(0);
        // Added to, not set: a restart must not clear an outage the apply loop reported.
        metrics::gauge!("projection_store_unavailable", "projection" => projection).increment(0.0);
    }

    /// The name of its row in `checkpoints`.
    pub fn checkpoint_name(&self) -> String {
        format!("projection:{}", self.label)
    }

    /// Follows the log until `stop`, as the one active instance of this projection: waits
    /// (standing by) for the projection's lease, then applies batch after batch, saving
    /// the checkpoint on the lease connection — an instance that lost its lease cannot move
    /// the checkpoint. Finishes the event in flight and saves what was done on `stop`
    /// (graceful shutdown).
    ///
    /// # Errors
    /// [`StoreError`] when the log or the checkpoint cannot be read or written (the lease
    /// connection may be gone): the caller restarts it, from the checkpoint.
    pub async fn run(&self, stop: &CancellationToken) -> Result<(), StoreError> {
        self.register_metrics();
        let name = self.checkpoint_name();
        let Some(mut lease) = store::lease::acquire(
            &self.pool,
            "projection",
            self.projection.name(),
            self.standby_interval,
            stop,
        )
        .await
        else {
            return Ok(());
        };
        let active =
            metrics::gauge!("projection_active", "projection" => self.projection.name().to_owned());
        active.set(1.0);
        tracing::info!(projection = self.projection.name(), "Projection is active.");
        let swap_key = swap_lock_key(self.projection.name());
        let result = async {
            let mut waiter = LogWaiter::new(self.pool.clone(), self.poll_interval);
            let mut measured = std::time::Instant::now() - LAG_INTERVAL;
            loop {
                if measured.elapsed() >= LAG_INTERVAL {
                    self.measure_lag().await?;
                    measured = std::time::Instant::now();
                }
                // A replay's swap may have replaced the model and moved the checkpoint
                // since the last batch: take the lock it takes, then read the checkpoint.
                sqlx::query("SELECT pg_advisory_lock_shared(hashtextextended($1, 0))")
                    .bind(&swap_key)
                    .execute(&mut lease)
                    .await?;
                let batch = async {
                    let position = Checkpoints::load_with(&mut lease, &name).await?;
                    let (done, next) = self.batch_from(position, stop).await?;
                    if done > 0 {
                        Checkpoints::save_with(&mut lease, &name, next).await?;
                    }
                    Ok::<_, StoreError>(done)
                }
                .await;
                sqlx::query("SELECT pg_advisory_unlock_shared(hashtextextended($1, 0))")
                    .bind(&swap_key)
                    .execute(&mut lease)
                    .await?;
                let done = batch?;
                if stop.is_cancelled() {
                    return Ok(());
                }
                if done == 0 {
                    tokio::select! {
                        () = waiter.wait() => {}
                        () = stop.cancelled() => return Ok(()),
                    }
                }
            }
        }
        .await;
        active.set(0.0);
        result
    }

    /// Sets `projection_lag_events`: the events committed after the checkpoint (counted up
    /// to a million, to keep the count cheap).
    async fn measure_lag(&self) -> Result<(), StoreError> {
        let position = Checkpoints::new(self.pool.clone())
            .load(&self.checkpoint_name())
            .await?;
        let lag = LogReader::new(self.pool.clone())
            .count_after(position)
            .await?;
        metrics::gauge!("projection_lag_events", "projection" => self.projection.name().to_owned())
            .set(lag as f64);
        Ok(())
    }

    /// Processes one batch after the stored checkpoint and saves it; returns how many events
    /// it read. Takes no lease: for tests and tools that drive a runner step by step.
    ///
    /// # Errors
    /// [`StoreError`] when the log or the checkpoint cannot be read or written.
    pub async fn run_batch(&self, stop: &CancellationToken) -> Result<usize, StoreError> {
        let name = self.checkpoint_name();
        let checkpoints = Checkpoints::new(self.pool.clone());
        let position = checkpoints.load(&name).await?;
        let (done, next) = self.batch_from(position, stop).await?;
        if done > 0 {
            checkpoints.save(&name, next).await?;
        }
        Ok(done)
    }

    /// Applies the log up to its end as of this call, batch after batch, without a lease
    /// (tests, tools). An empty batch does not prove the end was reached — a transaction
    /// open anywhere on the server holds log readers back — so it checks the checkpoint.
    ///
    /// # Errors
    /// [`StoreError`] when the log or the checkpoint cannot be read or written.
    pub async fn catch_up(&self, stop: &CancellationToken) -> Result<(), StoreError> {
        let reader = LogReader::new(self.pool.clone());
        let Some(end) = reader.last_up_to(i64::MAX).await? else {
            return Ok(());
        };
        let checkpoints = Checkpoints::new(self.pool.clone());
        let name = self.checkpoint_name();
        while !stop.is_cancelled() && checkpoints.load(&name).await? < end {
            if self.run_batch(stop).await? == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// Applies the log from its checkpoint up to `end` (a position it has read), batch after
    /// batch, reading and decoding each batch while the one before is applied
    /// ([`Self::read_ahead`]); saves the checkpoint after each and calls `progress` with the
    /// events read. Takes no lease: for a replay, the one writer of its target. Returns early, checkpoint saved, when `stop` is cancelled.
    ///
    /// # Errors
    /// [`StoreError`] when the log or the checkpoint cannot be read or written.
    pub async fn apply_up_to(
        &self,
        end: LogPosition,
        stop: &CancellationToken,
        progress: &mut (dyn FnMut(usize) + Send),
    ) -> Result<(), StoreError> {
        let reader = LogReader::new(self.pool.clone());
        let checkpoints = Checkpoints::new(self.pool.clone());
        let name = self.checkpoint_name();
        let mut position = checkpoints.load(&name).await?;
        let mut batch = (self.read(&reader, position).await?, Vec::new());
        while position < end && !stop.is_cancelled() {
            let Some(last) = batch.0.last() else {
                // Open transactions hold the reader back; they end soon.
                progress(0);
                tokio::time::sleep(Duration::from_millis(20)).await;
                batch = (self.read(&reader, position).await?, Vec::new());
                continue;
            };
            let next = self.read_ahead(&reader, LogPosition::of(last));
            let (events, decoded) = batch;
            let outcomes = self.apply_events(&events, decoded, stop).await?;
            let (done, after) = Self::done(&events, &outcomes, position);
            if done > 0 {
                checkpoints.save(&name, after).await?;
            }
            progress(done);
            if done < events.len() {
                break;
            }
            position = after;
            batch = match next.await {
                Ok(read) => read?,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                // Cancelled: only by a runtime shutting down.
                Err(error) => return Err(StoreError::Corrupt(format!("reading ahead: {error}"))),
            };
        }
        Ok(())
    }

    /// The batch after `after`, read and decoded on a task of its own, so on another core
    /// while the batch before is applied: on the runner's task, turning the rows into
    /// events took a fifth of a replay's CPU samples (`perf`) and decoding them about a
    /// sixth of a timeline batch's time. It decodes the events in this runner's range whose types are not
    /// known to be passed over, which are those [`Self::apply_events`] would decode.
    /// Dropped, it stops.
    fn read_ahead(
        &self,
        reader: &LogReader,
        after: LogPosition,
    ) -> tokio_util::task::AbortOnDropHandle<Result<(Vec<RecordedEvent>, Decoded), StoreError>>
    {
        let (reader, skipped, limit) = (reader.clone(), self.skipped_types(), self.batch_size);
        let (range, keyring) = (self.range.clone(), self.keyring.clone());
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut events = reader.read_batch_skipping(after, limit, &skipped).await?;
            keyring.open(&mut events).await?;
            let decoded = events
                .iter()
                .map(|event| {
                    let wanted = range.contains(&event.global_position)
                        && !skipped.contains(&event.event_type);
                    wanted.then(|| event.decode())
                })
                .collect();
            Ok((events, decoded))
        }))
    }

    /// Applies one batch after `position`; returns how many events it read and the position
    /// after the last one done.
    async fn batch_from(
        &self,
        start: LogPosition,
        stop: &CancellationToken,
    ) -> Result<(usize, LogPosition), StoreError> {
        let batch = self.read(&LogReader::new(self.pool.clone()), start).await?;
        self.apply_read(&batch, start, stop).await
    }

    /// The next batch after `after`, without the payloads of the types the projection
    /// passes over, opened.
    async fn read(
        &self,
        reader: &LogReader,
        after: LogPosition,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = reader
            .read_batch_skipping(after, self.batch_size, &self.skipped_types())
            .await?;
        self.keyring.open(&mut events).await?;
        Ok(events)
    }

    /// The event types seen that the projection does not handle.
    fn skipped_types(&self) -> Vec<String> {
        self.skipped.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Applies `batch`, read after `start`; returns how many of its events are done and the
    /// position after the last of them.
    async fn apply_read(
        &self,
        batch: &[RecordedEvent],
        start: LogPosition,
        stop: &CancellationToken,
    ) -> Result<(usize, LogPosition), StoreError> {
        let outcomes = self.apply_events(batch, Vec::new(), stop).await?;
        Ok(Self::done(batch, &outcomes, start))
    }

    /// How many events of `batch` (read after `start`) are done, by their `outcomes`, and
    /// the position after the last of them.
    fn done(
        batch: &[RecordedEvent],
        outcomes: &[Outcome],
        start: LogPosition,
    ) -> (usize, LogPosition) {
        let done = outcomes
            .iter()
            .position(|o| matches!(o, Outcome::Stopped))
            .unwrap_or(batch.len());
        match done.checked_sub(1) {
            Some(last) => (done, LogPosition::of(&batch[last])),
            None => (0, start),
        }
    }

    /// Applies the events of `events` in this runner's range that the projection handles,
    /// in order: the whole batch at once where the projection can, else (or when that
    /// fails) one at a time with retries, until `stop`. Returns an outcome for each event of
    /// `events` (those it skips count as applied) up to the first [`Outcome::Stopped`],
    /// which ends the list.
    /// `decoded` holds, at the index of an event, its decoding when it was done ahead
    /// ([`Self::read_ahead`]); the others are decoded here.
    pub(crate) async fn apply_events(
        &self,
        events: &[RecordedEvent],
        mut decoded: Decoded,
        stop: &CancellationToken,
    ) -> Result<Vec<Outcome>, StoreError> {
        if !events.is_empty() && !self.before_batch(stop).await {
            return Ok(vec![Outcome::Stopped]);
        }
        let mut outcomes: Vec<Outcome> = events.iter().map(|_| Outcome::Applied).collect();
        // The events to apply, decoded; one that does not decode is poison at once.
        let (mut indices, mut envelopes) = (Vec::new(), Vec::new());
        let mut passed_over: Vec<&str> = Vec::new();
        for (index, event) in events.iter().enumerate() {
            if !self.projection.handles(&event.event_type) {
                if !passed_over.contains(&event.event_type.as_str()) {
                    passed_over.push(&event.event_type);
                }
                continue;
            }
            if self.range.contains(&event.global_position) {
                let ahead = decoded.get_mut(index).and_then(Option::take);
                match ahead.unwrap_or_else(|| event.decode()) {
                    Ok(envelope) => {
                        indices.push(index);
                        envelopes.push(envelope);
                    }
                    Err(error) => {
                        let error = error.to_string();
                        self.dead_letter(event, &error, 1).await?;
                        outcomes[index] = Outcome::DeadLettered(error);
                    }
                }
            }
        }
        self.remember_skipped(&passed_over);
        if self.batches && self.projection.applies_batches() && envelopes.len() > 1 {
            // A span per event, in its command's trace, while the batch is applied.
            let spans: Vec<tracing::Span> = envelopes.iter().map(|e| self.event_span(e)).collect();
            let applied = self
                .projection
                .apply_batch(&envelopes)
                .instrument(self.batch_span(&envelopes))
                .await;
            drop(spans);
            match applied {
                Ok(()) => {
                    if let Some(&last) = indices.last() {
                        self.report_applied(envelopes.len() as u64, &events[last]);
                    }
                    return Ok(outcomes);
                }
                Err(error) => {
                    tracing::warn!(projection = %self.label, %error, "Applying a batch at once failed; applying it event by event.");
                }
            }
        }
        for (&index, envelope) in indices.iter().zip(&envelopes) {
            let outcome = if stop.is_cancelled() {
                Outcome::Stopped
            } else {
                self.process_decoded(&events[index], envelope, stop).await?
            };
            let stopped = matches!(outcome, Outcome::Stopped);
            outcomes[index] = outcome;
            if stopped {
                outcomes.truncate(index + 1);
                break;
            }
        }
        Ok(outcomes)
    }

    /// Lets the projection prepare the batch ([`Projection::before_batch`]), retrying with
    /// backoff while it fails; false when `stop` came first.
    async fn before_batch(&self, stop: &CancellationToken) -> bool {
        let mut failures = 0u32;
        loop {
            let error = match self.projection.before_batch().await {
                Ok(()) => return true,
                Err(error) => error,
            };
            failures += 1;
            tracing::warn!(projection = %self.label, %error, failures, "Cannot prepare the next batch; retrying.");
            tokio::select! {
                () = tokio::time::sleep(self.policy.backoff(failures)) => {}
                () = stop.cancelled() => return false,
            }
        }
    }

    /// Remembers that the projection passes the `passed_over` types over (one lock a batch).
    fn remember_skipped(&self, passed_over: &[&str]) {
        if passed_over.is_empty() {
            return;
        }
        if let Ok(mut skipped) = self.skipped.lock() {
            for event_type in passed_over {
                if !skipped.iter().any(|t| t == event_type) {
                    skipped.push((*event_type).to_owned());
                }
            }
        }
    }

    /// The span of applying `envelope` (`apply <projection>`), a child of the span that
    /// appended it: made only when traces are exported and the event carries a trace.
    fn event_span(&self, envelope: &EventEnvelope) -> tracing::Span {
        let Some(traceparent) = envelope.metadata.traceparent.as_deref() else {
            return tracing::Span::none();
        };
        if !self.traced {
            return tracing::Span::none();
        }
        telemetry::when_exporting(|| {
            let span = tracing::info_span!(
                "apply",
                otel.name = %format_args!("apply {}", self.projection.name()),
                otel.kind = "consumer",
                projection = %self.label,
                event_type = envelope.event.event_type(),
                global_position = envelope.global_position,
            );
            telemetry::continue_trace(&span, Some(traceparent));
            span
        })
    }

    /// The span of applying `envelopes` at once, linked to each event's trace: what the
    /// batch does on behalf of every event (live pushes among it) is found from any of them.
    fn batch_span(&self, envelopes: &[EventEnvelope]) -> tracing::Span {
        if !self.traced {
            return tracing::Span::none();
        }
        telemetry::when_exporting(|| {
            let span = tracing::info_span!(
                "apply batch",
                otel.name = %format_args!("apply {} batch", self.projection.name()),
                projection = %self.label,
                events = envelopes.len(),
            );
            for traceparent in envelopes
                .iter()
                .filter_map(|e| e.metadata.traceparent.as_deref())
            {
                telemetry::link_trace(&span, traceparent);
            }
            span
        })
    }

    /// Counts `n` events applied, `last` the latest.
    fn report_applied(&self, n: u64, last: &RecordedEvent) {
        let projection = self.projection.name().to_owned();
        metrics::counter!("projection_applied_total", "projection" => projection.clone())
            .increment(n);
        let lag = chrono::Utc::now() - last.recorded_at;
        metrics::gauge!("projection_lag_seconds", "projection" => projection)
            .set(lag.as_seconds_f64().max(0.0));
    }

    async fn process_decoded(
        &self,
        event: &RecordedEvent,
        envelope: &EventEnvelope,
        stop: &CancellationToken,
    ) -> Result<Outcome, StoreError> {
        let projection = self.projection.name().to_owned();
        let span = self.event_span(envelope);
        let mut failures = 0u32;
        loop {
            let error = match self
                .projection
                .apply(envelope)
                .instrument(span.clone())
                .await
            {
                Ok(()) => {
                    if failures > 0 {
                        metrics::gauge!("projection_store_unavailable", "projection" => projection.clone())
                            .set(0.0);
                    }
                    self.report_applied(1, event);
                    return Ok(Outcome::Applied);
                }
                Err(error) => error,
            };
            failures += 1;
            if matches!(error, ApplyError::Transient(_)) {
                metrics::gauge!("projection_store_unavailable", "projection" => projection.clone())
                    .set(1.0);
            }
            if let ApplyError::Poison(message) = &error {
                if failures >= self.policy.max_attempts {
                    self.dead_letter(event, message, failures).await?;
                    if let Err(error) = self.projection.dead_lettered(envelope, message).await {
                        tracing::warn!(projection = %projection, position = event.global_position, %error, "Reacting to a dead letter failed.");
                    }
                    return Ok(Outcome::DeadLettered(message.clone()));
                }
            }
            metrics::counter!("projection_retries_total", "projection" => projection.clone())
                .increment(1);
            let backoff = self.policy.backoff(failures);
            tracing::warn!(projection = %projection, position = event.global_position, %error, failures, retry_in_ms = backoff.as_millis(), "Apply failed; retrying.");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return Ok(Outcome::Stopped),
            }
        }
    }

    async fn dead_letter(
        &self,
        event: &RecordedEvent,
        error: &str,
        attempts: u32,
    ) -> Result<(), StoreError> {
        tracing::error!(projection = %self.label, position = event.global_position, event_id = %event.event_id, error, "Dead-lettered an event.");
        metrics::counter!("projection_dead_lettered_total", "projection" => self.label.clone())
            .increment(1);
        sqlx::query(
            "INSERT INTO dead_letters (projection, event_id, global_position, error, attempts) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (projection, event_id) DO UPDATE \
                SET error = EXCLUDED.error, attempts = dead_letters.attempts + EXCLUDED.attempts, \
                    dead_lettered_at = now()",
        )
        .bind(&self.label)
        .bind(event.event_id)
        .bind(event.global_position)
        .bind(error)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// A dead-lettered event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetter {
    pub projection: String,
    pub event_id: Uuid,
    pub global_position: i64,
    pub error: String,
    pub attempts: i32,
}

/// The `dead_letters` table.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    pool: PgPool,
}

impl DeadLetters {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The dead letters of `projection` (all projections when `None`), in log order.
    ///
    /// # Errors
    /// On database failure.
    pub async fn list(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>, sqlx::Error> {
        sqlx::query_as(
            "SELECT projection, event_id, global_position, error, attempts FROM dead_letters \
              WHERE $1::text IS NULL OR projection = $1 ORDER BY global_position",
        )
        .bind(projection)
        .fetch_all(&self.pool)
        .await
    }

    /// Applies every dead letter of the runner's projection once more, in log order;
    /// deletes those that succeed and records the new error of those that do not. Returns
    /// (retried, still dead).
    ///
    /// # Errors
    /// [`StoreError`] on database failure or an event missing from the log.
    pub async fn retry<P: Projection>(
        &self,
        runner: &Runner<P>,
    ) -> Result<(usize, usize), StoreError> {
        let name = runner.label.as_str();
        let letters = self.list(Some(name)).await?;
        let mut still_dead = 0;
        for letter in &letters {
            let event: Option<RecordedEvent> = store::PgEventStore::new(self.pool.clone())
                .event(letter.event_id)
                .await?;
            let event = event.ok_or_else(|| {
                StoreError::Corrupt(format!("dead letter {} is not in the log", letter.event_id))
            })?;
            let result = match event.decode() {
                Ok(envelope) => runner
                    .projection
                    .apply(&envelope)
                    .await
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match result {
                Ok(()) => {
                    sqlx::query("DELETE FROM dead_letters WHERE projection = $1 AND event_id = $2")
                        .bind(name)
                        .bind(letter.event_id)
                        .execute(&self.pool)
                        .await?;
                }
                Err(error) => {
                    still_dead += 1;
                    runner.dead_letter(&event, &error, 1).await?;
                }
            }
        }
        Ok((letters.len(), still_dead))
    }
}
