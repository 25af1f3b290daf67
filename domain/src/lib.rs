//! Hybrid Live's domain: the aggregates, their commands and events, and every business rule.
//!
//! Each aggregate is a plain cqrs-es [`cqrs_es::Aggregate`]: `handle` checks a command
//! against the aggregate's state and decides the events (all rules live there), `apply`
//! folds an event into the state and cannot fail. The application layer (`commands`) loads
//! aggregates from the event store, runs commands and appends the events; checks that span
//! aggregates ("does the post exist?") are its job, so `Services = ()` everywhere.
//!
//! Layering (DESIGN §2): this crate is pure — no IO, no async runtime, no database or
//! transport crates (`secrecy` only wraps secrets). It depends on `event-schemas` only for
//! the wire payloads: every aggregate's event enum wraps the *current* payload type of each
//! of its event types, so an event converts to and from [`event_schemas::Event`] by a move
//! (see `wire`). The read side
//! never sees this crate: `commands`, `api`, `workers` (the saga's commands), the binary,
//! the end-to-end tests and `bench` use it; `store` does not.
//!
//! Invariants:
//! - `Aggregate::TYPE` is the stream type ([`event_schemas::stream_type`]) and every event of
//!   an aggregate belongs to that stream type;
//! - aggregate state is small and serde-serialisable: it is snapshotted as JSON;
//! - commands that would change nothing (follow twice, delete a deleted post) succeed with no
//!   events, so retried requests are harmless; conflicting ones are typed errors;
//! - values unique across streams (usernames, emails) are declared as [`claims`] by events
//!   and enforced by the event store in the append transaction;
//! - no secret is ever in an event: a command's secrets (a password hash) are
//!   [`claims::Credential`]s the store keeps beside the events, in the same transaction.
//!
//! Layout:
//! - [`user`]: [`user::User`] — registration, its rollback, the profile; username/email claims;
//! - [`social_graph`]: [`social_graph::SocialGraph`] — whom one user follows;
//! - [`post`]: [`post::Post`] — publishing and deleting posts;
//! - [`comment`]: [`comment::Comment`] — one comment on a post;
//! - [`conversation`]: [`conversation::Conversation`] — members, messages and reads of a
//!   conversation; one-to-one pairs claimed;
//! - [`like`]: [`like::Like`] — one user's like of one post ([`like::like_stream_id`]);
//! - [`onboarding`]: [`onboarding::Onboarding`] — the registration saga's progress;
//! - [`claims`]: the unique-value claims an aggregate's events make, and the credentials its
//!   commands store;
//! - `wire`: the macro tying each event enum to the wire catalogue;
//! - `text`: text-length rules shared by the aggregates.

pub mod claims;
pub mod comment;
pub mod conversation;
pub mod like;
pub mod onboarding;
pub mod post;
pub mod social_graph;
mod text;
pub mod user;
mod wire;
