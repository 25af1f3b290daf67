//! The load loop: C clients, each issuing one operation after another until a deadline, every
//! operation timed into an HDR histogram.
//!
//! Closed loop on purpose: a client sends its next operation only when the previous one is
//! answered, so C is the number of operations in flight and throughput and latency are two
//! views of the same run (Little's law: ops/s ≈ C / mean latency).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, from 1 µs to an hour, to 3 significant digits.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// What one operation came to.
#[derive(Debug)]
pub enum Outcome {
    /// Written and committed.
    Done,
    /// Refused because another client wrote the stream first. Counted, not retried, so every
    /// scenario pays the same for contention.
    Conflict,
    /// Anything else; the text of the first one is reported.
    Failed(String),
}

/// One client of a scenario: each call issues one operation and waits for its answer.
pub trait Client: Send + 'static {
    fn step(&mut self) -> impl Future<Output = Outcome> + Send;
}

/// The merged result of all clients over one phase.
#[derive(Debug)]
pub struct Measurement {
    /// From the start of the phase until the last client's last operation was answered.
    pub elapsed: Duration,
    pub done: u64,
    pub conflicts: u64,
    pub failures: u64,
    pub first_failure: Option<String>,
    /// Latency of the operations that were [`Outcome::Done`], in microseconds.
    pub latency_us: Histogram<u64>,
}

impl Measurement {
    /// Nothing measured yet.
    ///
    /// # Errors
    /// Never in practice: only if the histogram's bounds were invalid.
    pub fn empty() -> anyhow::Result<Self> {
        Ok(Self {
            elapsed: Duration::ZERO,
            done: 0,
            conflicts: 0,
            failures: 0,
            first_failure: None,
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .context("latency histogram bounds")?,
        })
    }

    /// Adds a later slice of the same scenario: counts, latencies and measured time add up.
    ///
    /// # Errors
    /// If the histograms cannot be merged.
    pub fn absorb(&mut self, other: Self) -> anyhow::Result<()> {
        self.elapsed += other.elapsed;
        self.merge(other)
    }

    /// Adds a concurrent client's part of the same slice (same wall-clock time).
    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.done += other.done;
        self.conflicts += other.conflicts;
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.latency_us
            .add(&other.latency_us)
            .context("merging latency histograms")
    }

    /// Successful operations per second of wall-clock time.
    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at `quantile` (0.5 for p50), in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Runs every client concurrently, each on its own task, until `duration` has passed, and
/// hands the clients back so that a measured phase can continue where a warm-up stopped.
///
/// # Errors
/// If a client task panicked.
pub async fn run<C: Client>(
    clients: Vec<C>,
    duration: Duration,
) -> anyhow::Result<(Vec<C>, Measurement)> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(drive(client, deadline)))
        .collect();
    let mut total = Measurement::empty()?;
    let mut clients = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (client, measured) = task.await.context("a benchmark client panicked")??;
        total.merge(measured)?;
        clients.push(client);
    }
    total.elapsed = started.elapsed();
    Ok((clients, total))
}

async fn drive<C: Client>(mut client: C, deadline: Instant) -> anyhow::Result<(C, Measurement)> {
    let mut measured = Measurement::empty()?;
    while Instant::now() < deadline {
        let sent = Instant::now();
        let outcome = client.step().await;
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        match outcome {
            Outcome::Done => {
                measured.done += 1;
                measured.latency_us.saturating_record(micros.max(1));
            }
            Outcome::Conflict => measured.conflicts += 1,
            Outcome::Failed(error) => {
                measured.failures += 1;
                measured.first_failure.get_or_insert(error);
            }
        }
    }
    Ok((client, measured))
}
