//! Presence history: each online/offline transition of a person, kept for a configurable
//! time (`PRESENCE_RETENTION_DAYS`) — [`PresenceHistory`], on PostgreSQL for lite
//! ([`postgres::PgPresenceHistory`]) and on Cassandra/ScyllaDB, partitioned by person and
//! day ([`scylla::ScyllaPresenceHistory`]), both held to one contract suite
//! (`tests/contract_presence.rs`).
//!
//! Presence itself is not an event of the log: who is online is shared between API
//! instances through Redis (`real_time::presence`), and the instance that sees a transition
//! records it here. A transition recorded twice is stored once.

pub mod postgres;
#[cfg(feature = "scylla")]
pub mod scylla;

use std::fmt::Debug;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::error::ReadResult;

pub use postgres::PgPresenceHistory;

/// How long transitions are kept unless configured (`PRESENCE_RETENTION_DAYS`): 30 days.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// The longest span one history query may cover.
pub const MAX_SPAN_DAYS: i64 = 31;

/// One transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub online: bool,
    pub at: DateTime<Utc>,
}

/// Storage of presence transitions.
#[async_trait::async_trait]
pub trait PresenceHistory: Send + Sync + Debug {
    /// Stores a transition of `user` (idempotent), to be kept for the retention.
    async fn record(&self, user: Uuid, transition: Transition) -> ReadResult<()>;
    /// The transitions of `user` from `from` (inclusive) to `to` (exclusive), oldest first;
    /// at most [`MAX_SPAN_DAYS`] are read (callers check the span).
    async fn history(
        &self,
        user: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> ReadResult<Vec<Transition>>;
    /// Deletes what is older than the retention; returns how many rows went (where the
    /// store does not expire them itself).
    async fn expire(&self) -> ReadResult<u64>;
    /// Deletes everything of `user` (an erasure).
    async fn forget(&self, user: Uuid) -> ReadResult<()>;
}

/// The days (since the Unix epoch) that `from..to` touches, oldest first.
pub fn days(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<i64> {
    let first = day(from);
    let last = day(to - chrono::Duration::microseconds(1)).max(first);
    (first..=last).collect()
}

/// The day (since the Unix epoch) of `at`.
pub fn day(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(86_400)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_span_touches_each_day_it_covers_once() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let d = day(at("2026-12-06T00:00:00Z"));
        assert_eq!(
            days(at("2026-12-06T00:00:00Z"), at("2026-12-07T00:00:00Z")),
            vec![d]
        );
        assert_eq!(
            days(at("2026-12-05T23:59:00Z"), at("2026-12-07T00:00:01Z")),
            vec![d - 1, d, d + 1]
        );
        assert_eq!(
            days(at("2026-12-06T10:00:00Z"), at("2026-12-06T10:00:00Z")),
            vec![d]
        );
    }
}
