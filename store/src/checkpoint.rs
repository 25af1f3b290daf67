//! Durable reader positions: one named [`LogPosition`] per reader (relay, projection, replay).

use sqlx::postgres::PgPool;
use sqlx::{Executor, Postgres};

use crate::append::StoreError;
use crate::log::LogPosition;

/// The `checkpoints` table.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    pool: PgPool,
}

impl Checkpoints {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The stored position of `name`, or [`LogPosition::START`].
    ///
    /// # Errors
    /// [`StoreError`] on database failure or a corrupt row.
    pub async fn load(&self, name: &str) -> Result<LogPosition, StoreError> {
        Self::load_with(&self.pool, name).await
    }

    /// [`Self::load`] with any executor (the relay reads on its lease connection).
    ///
    /// # Errors
    /// [`StoreError`] on database failure or a corrupt row.
    pub async fn load_with<'e, E>(executor: E, name: &str) -> Result<LogPosition, StoreError>
    where
        E: Executor<'e, Database = Postgres>,
    {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT transaction_id::text, global_position FROM checkpoints WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(executor)
        .await?;
        match row {
            None => Ok(LogPosition::START),
            Some((xid, global_position)) => Ok(LogPosition {
                transaction_id: xid
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("checkpoint {name}")))?,
                global_position,
            }),
        }
    }

    /// Stores `position` for `name` on the pool.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn save(&self, name: &str, position: LogPosition) -> Result<(), StoreError> {
        Self::save_with(&self.pool, name, position).await
    }

    /// Stores `position` with any executor: a projection whose read model lives in the same
    /// database passes its transaction, so the model and its checkpoint commit together.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub async fn save_with<'e, E>(
        executor: E,
        name: &str,
        position: LogPosition,
    ) -> Result<(), StoreError>
    where
        E: Executor<'e, Database = Postgres>,
    {
        sqlx::query(
            "INSERT INTO checkpoints (name, transaction_id, global_position) \
             VALUES ($1, $2::text::xid8, $3) \
             ON CONFLICT (name) DO UPDATE \
                SET transaction_id = EXCLUDED.transaction_id, \
                    global_position = EXCLUDED.global_position, \
                    updated_at = now()",
        )
        .bind(name)
        .bind(position.transaction_id.to_string())
        .bind(position.global_position)
        .execute(executor)
        .await?;
        Ok(())
    }
}
