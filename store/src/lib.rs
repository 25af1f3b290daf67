//! The PostgreSQL event store (DESIGN §3), the source of truth of Hybrid Live.
//!
//! Sits under `commands` (the write side) and under the read side's `relay`, `projections`
//! and `replay`: it knows `event-schemas` (the wire contract) and no domain, HTTP, Kafka or
//! read-model crate. Aggregates are the write side's: the store loads a stream's snapshot and
//! events ([`snapshot`]) and appends events with their unique claims ([`claims`]) and
//! credentials ([`credentials`]).
//!
//! Invariants, enforced by the database where it can:
//! - one append is one statement, so one transaction, whose first write locks the stream's
//!   row; a stale expected version is an [`AppendError::Conflict`], never a duplicate version;
//! - an append whose event ids are already stored is an idempotent no-op that returns the
//!   original [`Appended`];
//! - personal data is stored sealed with its person's data key (when a key-encryption key is
//!   installed): the raw log, the relay's records and a database dump hold ciphertext;
//! - no secret is stored in an event: secrets are [`credentials`], and every stored payload
//!   read back passes through `event_schemas::redact` (old versions held a password hash);
//! - the `events` table is append-only (trigger and privileges) and hash-chained per stream;
//!   [`PgEventStore::verify_log`] recomputes the chain and checks the seals over the
//!   stream heads;
//! - [`LogReader`] never skips a committed event: it reads in `(transaction_id,
//!   global_position)` order and only below the oldest running transaction; the audit
//!   listing pages the same way, so neither does a client following its [`AuditCursor`].
//!
//! Layout:
//! - [`append`]: [`PgEventStore`], appends and stream reads;
//! - [`audit`]: [`AuditLog`], filtered listings of the log for auditors, paged in the
//!   reader's order with an [`AuditCursor`];
//! - [`snapshot`]: a stream's latest snapshot and later events in one round trip, and
//!   saving snapshots;
//! - [`claims`]: the unique values (usernames, emails) an append reserves or releases, and
//!   lookups of who holds one;
//! - [`credentials`]: the secrets (password hashes) an append stores beside its events;
//! - [`keys`]: the people's data keys; an append seals the personal fields of its events,
//!   readers that decode events open them ([`keys::Keyring`]);
//! - [`log`]: [`LogReader`] and [`LogPosition`], the gap-free catch-up reader;
//! - [`checkpoint`]: [`Checkpoints`], where readers persist their [`LogPosition`];
//! - [`lease`]: one active instance per reader name (an advisory lock on its own connection);
//! - [`seal`]: [`Sealer`], periodic seals chaining every stream's head into the log's
//!   global checkpoints;
//! - [`verify`]: verification of the hash chain and the seals;
//! - [`wakeup`]: `NOTIFY` after commits and [`LogWaiter`], what readers wait on.

pub mod append;
pub mod audit;
pub mod checkpoint;
pub mod claims;
pub mod credentials;
pub mod keys;
pub mod lease;
pub mod log;
pub mod seal;
pub mod snapshot;
pub mod verify;
pub mod wakeup;

pub use append::{
    AppendError, AppendRequest, Appended, NewEvent, PgEventStore, RecordedEvent, StoreError,
};
pub use audit::{AuditCursor, AuditEvent, AuditFilter, AuditLog, AuditPage, InvalidCursor};
pub use checkpoint::Checkpoints;
pub use keys::Keyring;
pub use log::{LogPosition, LogReader};
pub use seal::{Seal, SealOutcome, Sealer};
pub use snapshot::{Snapshot, StreamTail};
pub use verify::Verification;
pub use wakeup::{LogWaiter, EVENTS_CHANNEL};

/// The schema migrations of `migrations/`, embedded; run by `hybridlive migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
