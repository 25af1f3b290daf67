//! [`PgPresenceHistory`]: the lite [`PresenceHistory`] (`read_model.presence_history`,
//! migration 18). Retention deletes by age ([`PresenceHistory::expire`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{PresenceHistory, Transition};
use crate::error::ReadResult;

/// Presence history in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgPresenceHistory {
    pool: PgPool,
    retention: Duration,
}

impl PgPresenceHistory {
    pub fn new(pool: PgPool, retention: Duration) -> Self {
        Self { pool, retention }
    }
}

#[async_trait::async_trait]
impl PresenceHistory for PgPresenceHistory {
    async fn record(&self, user: Uuid, t: Transition) -> ReadResult<()> {
        sqlx::query(
            "INSERT INTO read_model.presence_history (user_id, at, online) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(user)
        .bind(t.at)
        .bind(t.online)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn history(
        &self,
        user: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> ReadResult<Vec<Transition>> {
        let rows: Vec<(DateTime<Utc>, bool)> = sqlx::query_as(
            "SELECT at, online FROM read_model.presence_history \
              WHERE user_id = $1 AND at >= $2 AND at < $3 \
                AND at >= now() - make_interval(secs => $4) \
              ORDER BY at, online",
        )
        .bind(user)
        .bind(from)
        .bind(to)
        .bind(self.retention.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at, online)| Transition { online, at })
            .collect())
    }

    async fn expire(&self) -> ReadResult<u64> {
        Ok(sqlx::query(
            "DELETE FROM read_model.presence_history WHERE at < now() - make_interval(secs => $1)",
        )
        .bind(self.retention.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn forget(&self, user: Uuid) -> ReadResult<()> {
        sqlx::query("DELETE FROM read_model.presence_history WHERE user_id = $1")
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
