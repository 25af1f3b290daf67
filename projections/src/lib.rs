//! The read side's runtime and read models (DESIGN §5–§6).
//!
//! - [`runtime`]: the [`Projection`] trait and [`Runner`], which feeds a projection from the
//!   PostgreSQL log (gap-free [`store::LogReader`], checkpoint per batch), retries failures
//!   with exponential backoff and jitter — transient ones forever, poison ones a bounded
//!   number of times — and dead-letters what cannot be applied ([`DeadLetters`]);
//! - [`kafka`] (feature `kafka`): the same runner fed by a Kafka consumer group
//!   (`Runner::run_kafka`); `api` builds this crate without it (it must not depend on Kafka);
//! - [`timeline`]: the social graph and home timelines — [`TimelineStore`] (PostgreSQL for
//!   lite, ScyllaDB) and the `timeline` projection (hybrid fan-out on write);
//! - [`content`]: posts, comments, likes, profiles — [`ContentStore`] (PostgreSQL jsonb for
//!   lite, MongoDB) and the `content` projection, which also keeps the Redis caches;
//! - [`cache`]: the Redis caches (previews, counts, comment lists) with lease-guarded fills;
//! - [`live`]: live updates for SSE clients — a capped Redis Stream per channel behind a
//!   Redis Pub/Sub fan-out ([`LivePublisher`]), aggregated like counts;
//! - [`onboarding`]: the registration saga — downstream projections report a new user
//!   synced, the last one completes it, a dead letter or the deadline rolls it back; the
//!   `onboarding` projection pushes the outcome;
//! - [`analytics`]: signups, posts and likes per day and the most liked posts —
//!   [`AnalyticsProjection`] (PostgreSQL tables of one schema), built only by replay;
//! - [`query`]: the queries the API serves from these models, and the `X-Min-Position` wait;
//! - [`workers`]: the projections by name, as `hybridlive project`, `dlq retry` and `dev`
//!   run them;
//! - [`generation`]: which keyspace or database of a production model is live, after a
//!   replay swapped a rebuilt one in ([`generation::Following`] stores follow it);
//! - [`error`]: [`ReadModelError`], transient or not.
//!
//! Layering: only `event-schemas` types, never `domain`.

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod runtime;

pub mod analytics;
pub mod cache;
pub mod content;
pub mod error;
pub mod generation;
pub mod live;
mod mirror;
pub mod onboarding;
pub mod query;
pub mod timeline;
pub mod workers;

pub use analytics::AnalyticsProjection;
pub use cache::{CacheSettings, PostCache};
pub use content::{ContentProjection, ContentStore, ContentWrite};
pub use error::{ReadModelError, ReadResult};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaSource, KafkaSourceError};
pub use live::{LiveMessage, LivePublisher, LiveSettings};
pub use onboarding::{Onboarding, OnboardingProjection, OnboardingSettings, Saga};
pub use query::ReadModels;
pub use runtime::{ApplyError, DeadLetter, DeadLetters, Projection, RetryPolicy, Runner};
pub use timeline::{TimelineProjection, TimelineSettings, TimelineStore, TimelineWrite};
pub use workers::{Source, Workers};
