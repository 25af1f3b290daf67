//! Real time on the read side (DESIGN §7): live pushes to the SSE clients of every API
//! instance, and the registration saga's projection.
//!
//! Its room: what projections publish while they apply events — [`LivePublisher`] (a capped
//! Redis Stream per channel behind a Redis Pub/Sub fan-out, like counts aggregated) — and
//! the onboarding saga: downstream projections report a new user synced
//! ([`Onboarding::synced`]), the last one completes it through a [`Saga`], a dead letter
//! or the deadline fails it, and [`OnboardingProjection`] pushes the outcome. It uses
//! `projection-runtime`, `event-schemas` and Redis; the saga's steps are commands, so the
//! [`Saga`] is implemented on the write side (`workers::CommandSaga`). Used by the read
//! models (`projections`), `api` (which reads the channels this writes) and `workers`.
//!
//! - [`live`]: channels, [`LiveMessage`], [`LivePublisher`], [`LiveSettings`];
//! - [`onboarding`]: [`Onboarding`], [`OnboardingProjection`], [`OnboardingSettings`],
//!   [`Saga`];
//! - [`presence`]: who is online, shared between API instances through Redis heartbeats,
//!   each transition handed to a [`presence::PresenceSink`].

pub mod live;
pub mod onboarding;
pub mod presence;

pub use live::{LiveMessage, LivePublisher, LiveSettings};
pub use onboarding::{Onboarding, OnboardingProjection, OnboardingSettings, Saga};

use projection_runtime::ApplyError;

/// What a live push or a step of the saga returns: it fails as the projection applying the
/// event would — Redis unreachable is [`ApplyError::Transient`] (retried, never skipped),
/// data that does not serialise is [`ApplyError::Poison`].
pub type LiveResult<T> = Result<T, ApplyError>;

/// Redis is unreachable or refused a command: transient.
pub(crate) fn unavailable(error: redis::RedisError) -> ApplyError {
    ApplyError::Transient(format!("redis: {error}"))
}

/// A push whose data does not serialise: poison (it never will).
pub(crate) fn undeliverable(error: serde_json::Error) -> ApplyError {
    ApplyError::Poison(format!("live push: {error}"))
}
