//! The published wire contract of Hybrid Live.
//!
//! Everything that leaves the write side — rows of the `events` table, Kafka records, replay
//! input, audit exports — is described here and only here. The read side (projections,
//! replay, audit) depends on these types and never on `domain`, so the domain can be
//! refactored without changing what is on the wire (DESIGN §2). It uses no other crate of
//! the workspace; every other crate may use it.
//!
//! Invariants:
//! - every event has a stable `event_type` string (`post.published`) and an integer
//!   `schema_version`; a published `(event_type, schema_version)` never changes shape;
//! - every historical version has a JSON Schema file in `schemas/` and a golden fixture in
//!   `fixtures/`, both checked against the Rust types by this crate's tests;
//! - [`Event::decode`] is the one way in: it runs the upcasters, so every load sees the
//!   current version of each type, and an unknown type or version is a typed
//!   [`DecodeError`], never a panic.
//!
//! Layout:
//! - [`user`], [`social`], [`post`], [`comment`], [`like`], [`onboarding`]: the payload types,
//!   one struct per type and version (`UserRegisteredV1` … `UserRegisteredV3`);
//! - [`event`]: [`Event`], the union of the current versions, with encode/decode;
//! - [`upcast`]: the upcaster chain from old versions to current ones;
//! - [`redact`]: the secrets old versions carried, and their redaction on every way out;
//! - [`personal`]: the personal fields of each event type, which the store seals;
//! - [`envelope`]: [`Metadata`] and the decoded [`EventEnvelope`] the read side consumes;
//! - `schemas/` and `fixtures/` (files, next to `src/`): one JSON Schema and at least one
//!   golden payload per published version; `tests/contract/` checks them.
//!
//! The schema files are generated from the Rust types; after adding a version (see
//! [`upcast`]) regenerate them and review the diff — only new files should appear:
//!
//! ```sh
//! UPDATE_SCHEMAS=1 cargo test -p event-schemas --test contract schema_files_match_the_rust_types
//! ```

pub mod comment;
pub mod envelope;
pub mod event;
pub mod like;
pub mod messaging;
pub mod onboarding;
pub mod personal;
pub mod post;
pub mod redact;
pub mod social;
pub mod upcast;
pub mod user;

pub use envelope::{EventEnvelope, Metadata};
pub use event::{DecodeError, EncodeError, Event, EventKind, UnexpectedEvent};

/// Stream (aggregate) types; also the Kafka topic suffix of each stream's events.
pub mod stream_type {
    pub const USER: &str = "user";
    pub const SOCIAL_GRAPH: &str = "social_graph";
    pub const POST: &str = "post";
    pub const COMMENT: &str = "comment";
    pub const LIKE: &str = "like";
    pub const ONBOARDING: &str = "onboarding";
    pub const CONVERSATION: &str = "conversation";
}
