//! What an append writes besides its events: unique claims and credentials.
//!
//! Unique claims: values (usernames, emails) that at most one stream may hold at a time.
//!
//! Uniqueness across aggregates cannot be decided inside one aggregate, so an aggregate
//! declares, per event, what the event claims or releases; the event store applies those
//! claims in the same transaction as the append (DESIGN §3), and a value already held by
//! another stream rejects the whole append with [`ClaimTaken`].

//!
//! Credentials: secrets (a password hash) that a command stores for its stream beside its
//! events, never in them (DESIGN §8a): the log is immutable and published, so a secret in an
//! event could never be taken back. The store writes them in the append's transaction.

use cqrs_es::Aggregate;
use secrecy::SecretString;

/// What an event does to the unique values of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Take `value` in `scope` (`"username"`, `"email"`) for this stream.
    Reserve { scope: &'static str, value: String },
    /// Give back every value this stream holds (a rolled-back registration).
    ReleaseAll,
}

/// A claimed value is held by another stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{scope} `{value}` is already taken")]
pub struct ClaimTaken {
    pub scope: String,
    pub value: String,
}

/// A secret of kind `kind` (`"password"`) a command stores for its stream (or, with no
/// secret, deletes).
#[derive(Debug, Clone)]
pub struct Credential {
    pub kind: &'static str,
    /// `None` deletes the stream's secret of this kind.
    pub secret: Option<SecretString>,
}

impl Credential {
    /// Stores `secret` as the stream's `kind`, replacing the one it had.
    pub fn set(kind: &'static str, secret: SecretString) -> Self {
        Self {
            kind,
            secret: Some(secret),
        }
    }

    /// Deletes the stream's `kind`, if it has one.
    pub fn delete(kind: &'static str) -> Self {
        Self { kind, secret: None }
    }
}

/// Implemented by every aggregate; the defaults fit aggregates that claim nothing and store
/// no credential.
pub trait Claims: Aggregate {
    /// The claims `event` makes; applied atomically with its append.
    fn claims(_event: &Self::Event) -> Vec<Claim> {
        Vec::new()
    }

    /// The credentials `command` stores, in the transaction of its events, if it appends any.
    fn credentials(_command: &Self::Command) -> Vec<Credential> {
        Vec::new()
    }

    /// Whether `event` erases the person whose id is its stream's id: the store destroys
    /// their data key and deletes the stream's credentials and snapshot with its append.
    fn erases(_event: &Self::Event) -> bool {
        false
    }

    /// The domain rejection for a claim another stream holds; `None` for aggregates that
    /// never claim anything (the store then reports an unexpected error).
    fn claim_rejected(_taken: ClaimTaken) -> Option<Self::Error> {
        None
    }
}
