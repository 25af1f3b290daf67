//! The read side's runtime and read models (DESIGN §5–§6).
//!
//! - [`runtime`]: the [`Projection`] trait and [`Runner`], which feeds a projection from the
//!   PostgreSQL log (gap-free [`store::LogReader`], checkpoint per batch), retries failures
//!   with exponential backoff and jitter — transient ones forever, poison ones a bounded
//!   number of times — and dead-letters what cannot be applied ([`DeadLetters`]).
//!
//! Not written yet: the Kafka source, `hybridlive project` and `dlq retry`, the read models
//! (issues #4 and #5). Layering: only `event-schemas` types, never `domain`.

pub mod runtime;

pub use runtime::{ApplyError, DeadLetter, DeadLetters, Projection, RetryPolicy, Runner};
