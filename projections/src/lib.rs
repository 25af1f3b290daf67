//! The read models (DESIGN §6) and the queries the API serves from them.
//!
//! Its room: each read model's store trait with its lite (PostgreSQL) and production
//! implementations, its projection, and the queries over it. The projections run on
//! `projection-runtime` and push live updates and report the registration saga through
//! `real-time`; this crate re-exports what its users need of both, so a worker is wired from
//! one place. It sees only `event-schemas` types, never `domain`. Used by `api` (queries),
//! `replay` (rebuilds), `workers` and the binary.
//!
//! - [`timeline`]: the social graph and home timelines — [`TimelineStore`] (PostgreSQL for
//!   lite, ScyllaDB) and the `timeline` projection (hybrid fan-out on write);
//! - [`content`]: posts, comments, likes, profiles — [`ContentStore`] (PostgreSQL jsonb for
//!   lite, MongoDB) and the `content` projection, which also keeps the Redis caches;
//! - [`documents`]: the content model's documents (profile, post, comment), shared by its
//!   stores, the caches and the queries;
//! - [`cache`]: the Redis caches (previews, counts, comment lists) with lease-guarded fills;
//! - [`messaging`]: chat profiles, inboxes and messages — [`MessagingStore`] (PostgreSQL for
//!   lite, Cassandra/ScyllaDB) and the `messaging` projection;
//! - [`presence`]: the history of who was online when — [`PresenceHistory`] (PostgreSQL for
//!   lite, Cassandra/ScyllaDB); presence itself is shared through Redis (`real_time`);
//! - [`people`]: finding people by name (PostgreSQL trigram indexes, both profiles);
//! - [`analytics`]: signups, posts and likes per day and the most liked posts —
//!   [`AnalyticsProjection`] (PostgreSQL tables of one schema), built only by replay;
//! - [`query`]: the queries the API serves from these models, and the `X-Min-Position` wait;
//! - [`workers`]: the projections by name, as `hybridlive project`, `dlq retry` and `dev`
//!   run them;
//! - [`generation`]: which keyspace or database of a production model is live, after a
//!   replay swapped a rebuilt one in ([`generation::Following`] stores follow it);
//! - [`lite`]: what the lite PostgreSQL stores share (their schema, pair helpers, the
//!   [`lite::SoleWriter`] hook through which a replay, their one writer, drives their
//!   batches);
//! - [`error`]: [`ReadModelError`], how every read-model store fails (transient or not),
//!   and how it becomes the runtime's `ApplyError`.
//!
//! Features: `scylla` and `mongodb`, the production stores (`timeline::scylla`,
//! `messaging::scylla`, `presence::scylla`, `content::mongo`; the lite PostgreSQL ones are always built); `kafka`, the runtime's
//! Kafka source. `api` builds with none of them.

pub mod analytics;
pub mod cache;
pub mod content;
pub mod documents;
pub mod email;
pub mod error;
pub mod generation;
pub mod lite;
pub mod messaging;
pub mod notifications;
pub mod people;
pub mod presence;
pub mod query;
pub mod timeline;
pub mod workers;

pub use analytics::AnalyticsProjection;
pub use cache::{CacheSettings, PostCache};
pub use content::{ContentProjection, ContentStore, ContentWrite};
pub use email::{EmailProjection, EmailSettings};
pub use error::{ReadModelError, ReadResult};
pub use messaging::{MessagingProjection, MessagingStore};
pub use notifications::{Notifications, NotificationsProjection};
pub use people::{People, PeopleProjection, Person};
pub use presence::PresenceHistory;
#[cfg(feature = "kafka")]
pub use projection_runtime::{kafka, KafkaSource, KafkaSourceError};
pub use projection_runtime::{
    ApplyError, DeadLetter, DeadLetters, Projection, RetryPolicy, Runner,
};
pub use query::ReadModels;
pub use real_time::{
    live, onboarding, LiveMessage, LivePublisher, LiveSettings, Onboarding, OnboardingProjection,
    OnboardingSettings, Saga,
};
pub use timeline::{TimelineProjection, TimelineSettings, TimelineStore, TimelineWrite};
pub use workers::{Source, Workers};
