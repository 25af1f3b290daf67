//! The application layer of the write side: runs a command against its aggregate and
//! appends the resulting events.
//!
//! Sits between `api` (which turns HTTP into commands) and `store` (which persists events);
//! knows `domain`, and nothing of HTTP, Kafka or read models. Used by `api`, `workers` (the
//! saga's steps), the binary (`admin`), the end-to-end tests and `bench`.
//!
//! Invariants:
//! - every rule is decided by the aggregate's `handle`; this layer only loads, runs, appends;
//! - a version conflict is retried (reload, decide again) a bounded number of times, unless
//!   the caller pinned the version it decided on (`If-Match`), which makes it final;
//! - a command with a `command_id` gets deterministic event ids, so a retried command that
//!   already committed appends nothing.
//!
//! Layout:
//! - [`aggregate`]: [`AggregateStore`], cqrs-es aggregates on the event store: the fold from
//!   snapshot and events, the claims of each append, snapshots;
//! - [`handler`]: [`CommandHandler`], [`CommandContext`], [`Executed`], [`CommandError`];
//! - [`write_side`]: [`WriteSide`], a handler per aggregate over one pool.

pub mod aggregate;
pub mod handler;
pub mod write_side;

pub use aggregate::{AggregateStore, LoadedAggregate};
pub use handler::{CommandContext, CommandError, CommandHandler, Executed};
pub use write_side::{Settings, WriteSide};
