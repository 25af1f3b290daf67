//! The results as a markdown table (for the README and docs/performance.md) and as JSON.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::scenarios::{Kind, Load, Scenario};
use crate::setup::ServerFacts;

/// Everything a run measured, with what it ran on.
#[derive(Debug)]
pub struct Report {
    /// The command that reproduces the run (without the database URL).
    pub command: String,
    pub load: Load,
    pub cores: usize,
    pub server: ServerFacts,
    pub single: Vec<Scenario>,
    pub batch: Vec<Scenario>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let load = &self.load;
        let mut out = String::new();
        out.push_str("### Single-event command appends\n\n");
        out.push_str("| scenario | ops/s | p50 ms | p99 ms | conflicts | errors |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|\n");
        for s in &self.single {
            let m = &s.measured;
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.2} | {:.2} | {} | {} |",
                s.name(),
                m.ops_per_sec(),
                m.latency_ms(0.5),
                m.latency_ms(0.99),
                m.conflicts,
                m.failures
            );
        }
        let ratio = |scenarios: &[Scenario], ours: Kind, theirs: Kind| {
            let rate = |kind: Kind| {
                scenarios
                    .iter()
                    .find(|s| s.kind == kind)
                    .map(Scenario::events_per_sec)
            };
            match (rate(ours), rate(theirs)) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "n/a".to_owned(),
            }
        };
        let _ = writeln!(
            out,
            "\nThroughput ratios: CommandHandler / postgres-es = {}, \
             ours via CqrsFramework / postgres-es = {}, CommandHandler / raw = {}.\n",
            ratio(&self.single, Kind::CommandHandler, Kind::PostgresEs),
            ratio(&self.single, Kind::OurFramework, Kind::PostgresEs),
            ratio(&self.single, Kind::CommandHandler, Kind::RawInsert),
        );

        let _ = writeln!(out, "### {}-event batch appends\n", load.batch_size);
        out.push_str(
            "| scenario | batches/s | events/s | p50 ms | p99 ms | conflicts | errors |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for s in &self.batch {
            let m = &s.measured;
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} |",
                s.name(),
                m.ops_per_sec(),
                s.events_per_sec(),
                m.latency_ms(0.5),
                m.latency_ms(0.99),
                m.conflicts,
                m.failures
            );
        }
        let _ = writeln!(
            out,
            "\nEvents/s ratios: ours / postgres-es = {}, ours / raw = {}.\n",
            ratio(&self.batch, Kind::OurBatch, Kind::PostgresEsBatch),
            ratio(&self.batch, Kind::OurBatch, Kind::RawBatch),
        );

        let _ = writeln!(
            out,
            "Parameters: C = {} concurrent clients, each scenario with its own pool of {} \
             connections; N = {} streams (registered users, picked uniformly at random); \
             {} s measured per scenario in {} interleaved slices (order reversed every other \
             round), each after an untimed {} s warm-up and VACUUM ANALYZE + CHECKPOINT; both \
             aggregate stores snapshot every {} events; one attempt per operation (conflicts counted, not \
             retried); batch scenarios: {} events per append, each client to its own stream. \
             Machine: {} cores, PostgreSQL {} on the same machine (synchronous_commit = {}, \
             shared_buffers = {}).",
            load.clients,
            load.clients,
            load.streams,
            load.duration.as_secs_f64(),
            load.rounds,
            load.warmup.as_secs_f64(),
            load.snapshot_every,
            load.batch_size,
            self.cores,
            self.server.server_version,
            self.server.synchronous_commit,
            self.server.shared_buffers,
        );
        let _ = writeln!(out, "\nCommand: `{}`", self.command);
        for s in self.single.iter().chain(&self.batch) {
            if let Some(error) = &s.measured.first_failure {
                let _ = writeln!(out, "\nFirst error of {}: {error}", s.name());
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let scenario = |s: &Scenario| {
            let m = &s.measured;
            json!({
                "scenario": s.name(),
                "events_per_op": s.events_per_op,
                "ops": m.done,
                "seconds": m.elapsed.as_secs_f64(),
                "ops_per_sec": m.ops_per_sec(),
                "events_per_sec": s.events_per_sec(),
                "p50_ms": m.latency_ms(0.5),
                "p99_ms": m.latency_ms(0.99),
                "max_ms": m.latency_us.max() as f64 / 1000.0,
                "conflicts": m.conflicts,
                "errors": m.failures,
                "first_error": m.first_failure,
            })
        };
        json!({
            "command": self.command,
            "clients": self.load.clients,
            "streams": self.load.streams,
            "seconds": self.load.duration.as_secs_f64(),
            "rounds": self.load.rounds,
            "warmup_seconds": self.load.warmup.as_secs_f64(),
            "snapshot_every": self.load.snapshot_every,
            "batch_size": self.load.batch_size,
            "cores": self.cores,
            "server_version": self.server.server_version,
            "synchronous_commit": self.server.synchronous_commit,
            "shared_buffers": self.server.shared_buffers,
            "single_event": self.single.iter().map(scenario).collect::<Vec<_>>(),
            "batch": self.batch.iter().map(scenario).collect::<Vec<_>>(),
        })
    }
}
