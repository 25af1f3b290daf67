//! The read side's runtime and read models (DESIGN §5–§6).
//!
//! - [`runtime`]: the [`Projection`] trait and [`Runner`], which feeds a projection from the
//!   PostgreSQL log (gap-free [`store::LogReader`], checkpoint per batch), retries failures
//!   with exponential backoff and jitter — transient ones forever, poison ones a bounded
//!   number of times — and dead-letters what cannot be applied ([`DeadLetters`]);
//! - [`kafka`]: the same runner fed by a Kafka consumer group (`Runner::run_kafka`).
//!
//! Not written yet: `hybridlive project` and `dlq retry`, a circuit breaker, the read models
//! (issues #4 and #5). Layering: only `event-schemas` types, never `domain`.

pub mod kafka;
pub mod runtime;

pub use kafka::{KafkaSource, KafkaSourceError};
pub use runtime::{ApplyError, DeadLetter, DeadLetters, Projection, RetryPolicy, Runner};
