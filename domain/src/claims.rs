//! Unique claims: values (usernames, emails) that at most one stream may hold at a time.
//!
//! Uniqueness across aggregates cannot be decided inside one aggregate, so an aggregate
//! declares, per event, what the event claims or releases; the event store applies those
//! claims in the same transaction as the append (DESIGN §3), and a value already held by
//! another stream rejects the whole append with [`ClaimTaken`].

use cqrs_es::Aggregate;

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

/// Implemented by every aggregate; the defaults fit aggregates that claim nothing.
pub trait Claims: Aggregate {
    /// The claims `event` makes; applied atomically with its append.
    fn claims(_event: &Self::Event) -> Vec<Claim> {
        Vec::new()
    }

    /// The domain rejection for a claim another stream holds; `None` for aggregates that
    /// never claim anything (the store then reports an unexpected error).
    fn claim_rejected(_taken: ClaimTaken) -> Option<Self::Error> {
        None
    }
}
