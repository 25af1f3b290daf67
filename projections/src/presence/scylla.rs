//! [`ScyllaPresenceHistory`]: the production [`PresenceHistory`] on Cassandra/ScyllaDB, in
//! the chat keyspace ([`crate::messaging::scylla::migrate`] creates its table).
//!
//! `presence_history` is partitioned by person and day (`((user_id, day), at, online)`),
//! so one day of one person is one partition, and every row is written `USING TTL` the
//! retention: Cassandra expires them, [`PresenceHistory::expire`] has nothing to do.
//! Forgetting a person deletes their partitions of every day the retention covers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::{day, days, PresenceHistory, Transition};
use crate::error::{ReadModelError, ReadResult};
use crate::timeline::scylla::{
    parse_consistency, quoted_keyspace, rows, session, Preparer, ScyllaSettings,
};

/// The presence table, as a `CREATE TABLE IF NOT EXISTS` statement in the quoted keyspace.
pub(crate) fn schema(ks: &str) -> Vec<String> {
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {ks}.presence_history ( \
             user_id uuid, day bigint, at bigint, online boolean, \
             PRIMARY KEY ((user_id, day), at, online))"
    )]
}

/// Presence history in the chat keyspace.
#[derive(Debug)]
pub struct ScyllaPresenceHistory {
    session: Session,
    retention: Duration,
    insert: PreparedStatement,
    select: PreparedStatement,
    delete_day: PreparedStatement,
}

impl ScyllaPresenceHistory {
    /// Connects to `settings.nodes`, whose chat keyspace `settings.keyspace` must have
    /// been migrated.
    ///
    /// # Errors
    /// As [`crate::messaging::scylla::ScyllaMessaging::connect`]; a retention past
    /// Cassandra's largest TTL (20 years) is refused.
    pub async fn connect(
        settings: &ScyllaSettings,
        retention: Duration,
    ) -> Result<Self, ReadModelError> {
        if retention.as_secs() == 0 || retention.as_secs() > 630_720_000 {
            return Err(ReadModelError::Rejected(
                "the presence retention must be between 1 second and 20 years".into(),
            ));
        }
        let consistency = parse_consistency(&settings.consistency)?;
        let ks = quoted_keyspace(&settings.keyspace)?;
        let session = session(settings).await?;
        let p = Preparer {
            session: &session,
            consistency,
        };
        let insert = p
            .idempotent(format!(
                "INSERT INTO {ks}.presence_history (user_id, day, at, online) \
                 VALUES (?, ?, ?, ?) USING TTL ?"
            ))
            .await?;
        let select = p
            .idempotent(format!(
                "SELECT at, online FROM {ks}.presence_history \
                  WHERE user_id = ? AND day = ? AND at >= ? AND at < ?"
            ))
            .await?;
        let delete_day = p
            .idempotent(format!(
                "DELETE FROM {ks}.presence_history WHERE user_id = ? AND day = ?"
            ))
            .await?;
        Ok(Self {
            session,
            retention,
            insert,
            select,
            delete_day,
        })
    }
}

#[async_trait::async_trait]
impl PresenceHistory for ScyllaPresenceHistory {
    async fn record(&self, user: Uuid, t: Transition) -> ReadResult<()> {
        let ttl = i32::try_from(self.retention.as_secs()).unwrap_or(i32::MAX);
        self.session
            .execute_unpaged(
                &self.insert,
                (user, day(t.at), t.at.timestamp_micros(), t.online, ttl),
            )
            .await?;
        Ok(())
    }

    async fn history(
        &self,
        user: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> ReadResult<Vec<Transition>> {
        // Rows expire by their TTL, counted from when they were written: a transition
        // recorded late is held to the retention here.
        let oldest = Utc::now()
            - chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let from = from.max(oldest);
        if from >= to {
            return Ok(Vec::new());
        }
        let (from_us, to_us) = (from.timestamp_micros(), to.timestamp_micros());
        let pages: Vec<Vec<(i64, bool)>> = stream::iter(days(from, to))
            .map(|d| async move {
                rows::<(i64, bool)>(
                    self.session
                        .execute_unpaged(&self.select, (user, d, from_us, to_us))
                        .await?,
                )
            })
            .buffered(8)
            .try_collect()
            .await?;
        Ok(pages
            .into_iter()
            .flatten()
            .filter_map(|(at, online)| {
                Some(Transition {
                    online,
                    at: DateTime::from_timestamp_micros(at)?,
                })
            })
            .collect())
    }

    async fn expire(&self) -> ReadResult<u64> {
        Ok(0)
    }

    async fn forget(&self, user: Uuid) -> ReadResult<()> {
        let now = Utc::now();
        let oldest = now
            - chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX)
            - chrono::Duration::days(1);
        stream::iter(days(
            oldest.max(DateTime::UNIX_EPOCH),
            now + chrono::Duration::days(1),
        ))
        .map(|d| async move {
            self.session
                .execute_unpaged(&self.delete_day, (user, d))
                .await
                .map(|_| ())
                .map_err(ReadModelError::from)
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }
}
