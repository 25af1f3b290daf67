//! The projection runtime (DESIGN §5): what feeds a read model its events, whatever the
//! model.
//!
//! Its room: the [`Projection`] trait and the [`Runner`] that feeds one from the PostgreSQL
//! log (gap-free [`store::LogReader`], a checkpoint per batch, one active instance per
//! projection) or, with the feature `kafka`, from the relay's topics through a consumer
//! group ([`kafka`]); retries with exponential backoff and jitter — transient failures
//! forever, poison ones a bounded number of times — and dead letters ([`DeadLetters`]).
//! It uses `store` and `event-schemas` only; the read models (`projections`), real time (`real-time`), replay and the binary
//! use it.
//!
//! - [`runner`]: [`Projection`], [`Runner`], [`RetryPolicy`], [`DeadLetters`];
//! - [`kafka`] (feature `kafka`): `Runner::run_kafka`, the dead-letter topic and the
//!   read-your-writes watermark; `api` builds without it (it must not depend on Kafka).

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod runner;

#[cfg(feature = "kafka")]
pub use kafka::{KafkaSource, KafkaSourceError};
pub use runner::{ApplyError, DeadLetter, DeadLetters, Projection, RetryPolicy, Runner};
