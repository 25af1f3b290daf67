//! The `messaging` projection and its lite read model (`read_model.conversations`,
//! `conversation_members`, `messages`, migration 17): each member's inbox, newest activity
//! first, with the unread count, and each conversation's messages. It pushes `message` to
//! every member's stream and `conversation_read` to the reader's own (their other devices).
//!
//! A conversation's events are one stream (one Kafka partition), so they arrive in order;
//! every write is idempotent (a message is keyed by its id, a read only moves forward). On
//! `user.erased` the person's messages and the titles they gave keep their place, emptied
//! to `"[erased]"`.

use chrono::{DateTime, Utc};
use event_schemas::personal::ERASED;
use event_schemas::{Event, EventEnvelope};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::content::markdown;
use crate::error::{ReadModelError, ReadResult};
use projection_runtime::runner::{ApplyError, Projection};
use real_time::live::{user_channel, LivePublisher, Push};

/// One message as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    pub message_id: Uuid,
    pub sender_id: Uuid,
    /// Markdown as written.
    pub body: String,
    /// `body` rendered and sanitised.
    pub body_html: String,
    pub sent_at: DateTime<Utc>,
    /// The cursor of the page after this message (its position).
    #[serde(skip)]
    pub position: i64,
}

/// One conversation of an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxItem {
    pub conversation_id: Uuid,
    pub members: Vec<Uuid>,
    pub title: String,
    pub last_message: Option<MessageView>,
    /// Messages of others after the newest one this member marked read.
    pub unread: i64,
    /// The cursor of the page after this item.
    pub activity: i64,
}

type InboxRow = (
    Uuid,
    Vec<Uuid>,
    String,
    i64,
    i64,
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<i64>,
);

type MessageRow = (Uuid, Uuid, String, String, DateTime<Utc>, i64);

fn message((message_id, sender_id, body, body_html, sent_at, position): MessageRow) -> MessageView {
    MessageView {
        message_id,
        sender_id,
        body,
        body_html,
        sent_at,
        position,
    }
}

/// The queries of the lite messaging model.
#[derive(Debug, Clone)]
pub struct Messaging {
    pool: PgPool,
}

impl Messaging {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Whether `user` is a member of `conversation` (as far as the model knows).
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn is_member(&self, user: Uuid, conversation: Uuid) -> ReadResult<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM read_model.conversation_members \
                             WHERE user_id = $1 AND conversation_id = $2)",
        )
        .bind(user)
        .bind(conversation)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Up to `limit` conversations of `user`, newest activity first, older than `before`.
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn inbox(
        &self,
        user: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<InboxItem>> {
        let rows: Vec<InboxRow> = sqlx::query_as(
            "SELECT c.conversation_id, c.members, c.title, m.last_activity, \
                    (SELECT count(*) FROM read_model.messages x \
                      WHERE x.conversation_id = m.conversation_id \
                        AND x.position > m.read_position AND x.sender_id <> m.user_id), \
                    l.message_id, l.sender_id, l.body, l.body_html, l.sent_at, l.position \
               FROM read_model.conversation_members m \
               JOIN read_model.conversations c ON c.conversation_id = m.conversation_id \
               LEFT JOIN LATERAL (SELECT * FROM read_model.messages x \
                                   WHERE x.conversation_id = m.conversation_id \
                                   ORDER BY x.position DESC LIMIT 1) l ON true \
              WHERE m.user_id = $1 AND ($2::bigint IS NULL OR m.last_activity < $2) \
              ORDER BY m.last_activity DESC LIMIT $3",
        )
        .bind(user)
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    conversation_id,
                    members,
                    title,
                    activity,
                    unread,
                    id,
                    sender,
                    body,
                    html,
                    at,
                    position,
                )| {
                    let last_message = match (id, sender, body, html, at, position) {
                        (
                            Some(id),
                            Some(sender),
                            Some(body),
                            Some(html),
                            Some(at),
                            Some(position),
                        ) => Some(message((id, sender, body, html, at, position))),
                        _ => None,
                    };
                    InboxItem {
                        conversation_id,
                        members,
                        title,
                        last_message,
                        unread,
                        activity,
                    }
                },
            )
            .collect())
    }

    /// Up to `limit` messages of `conversation`, newest first, older than `before`.
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn messages(
        &self,
        conversation: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<MessageView>> {
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT message_id, sender_id, body, body_html, sent_at, position \
               FROM read_model.messages \
              WHERE conversation_id = $1 AND ($2::bigint IS NULL OR position < $2) \
              ORDER BY position DESC LIMIT $3",
        )
        .bind(conversation)
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(message).collect())
    }
}

/// The `messaging` projection.
#[derive(Debug, Clone)]
pub struct MessagingProjection {
    pool: PgPool,
    live: Option<LivePublisher>,
}

impl MessagingProjection {
    pub const NAME: &'static str = "messaging";

    pub fn new(pool: PgPool, live: Option<LivePublisher>) -> Self {
        Self { pool, live }
    }

    async fn push(
        &self,
        users: &[Uuid],
        event: &str,
        data: &serde_json::Value,
        envelope: &EventEnvelope,
    ) -> Result<(), ApplyError> {
        let Some(live) = &self.live else {
            return Ok(());
        };
        for user in users {
            let push = Push {
                once_for: Some(envelope.event_id),
                outcome: false,
            };
            live.push(&user_channel(*user), event, data, push).await?;
        }
        Ok(())
    }
}

impl MessagingProjection {
    /// Empties what `user` wrote: their messages' bodies and the titles they gave.
    async fn forget(&self, user: Uuid) -> Result<(), ApplyError> {
        sqlx::query(
            "UPDATE read_model.messages SET body = $2, body_html = '' \
              WHERE sender_id = $1 AND body <> $2",
        )
        .bind(user)
        .bind(ERASED)
        .execute(&self.pool)
        .await
        .map_err(ReadModelError::from)?;
        sqlx::query(
            "UPDATE read_model.conversations SET title = '' \
              WHERE started_by = $1 AND title <> ''",
        )
        .bind(user)
        .execute(&self.pool)
        .await
        .map_err(ReadModelError::from)?;
        Ok(())
    }
}

impl Projection for MessagingProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            "conversation.started" | "message.sent" | "conversation.read" | "user.erased"
        )
    }

    async fn apply(&self, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        let position = envelope.global_position;
        match &envelope.event {
            Event::ConversationStarted(e) => {
                let mut tx = self.pool.begin().await.map_err(ReadModelError::from)?;
                sqlx::query(
                    "INSERT INTO read_model.conversations \
                         (conversation_id, started_by, members, title, started_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(e.conversation_id)
                .bind(e.started_by)
                .bind(&e.members)
                .bind(&e.title)
                .bind(envelope.recorded_at)
                .execute(&mut *tx)
                .await
                .map_err(ReadModelError::from)?;
                sqlx::query(
                    "INSERT INTO read_model.conversation_members \
                         (user_id, conversation_id, last_activity) \
                     SELECT member, $2, $3 FROM unnest($1::uuid[]) AS member \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&e.members)
                .bind(e.conversation_id)
                .bind(position)
                .execute(&mut *tx)
                .await
                .map_err(ReadModelError::from)?;
                tx.commit().await.map_err(ReadModelError::from)?;
                // As for a message (below): the starter may have been erased meanwhile.
                if store::keys::is_erased(&self.pool, e.started_by)
                    .await
                    .map_err(|error| ApplyError::Transient(error.to_string()))?
                {
                    self.forget(e.started_by).await?;
                }
                Ok(())
            }
            Event::MessageSent(e) => {
                let html = if e.body == ERASED {
                    String::new()
                } else {
                    markdown::to_safe_html(&e.body)
                };
                let members: Vec<Uuid> = sqlx::query_scalar(
                    "WITH stored AS ( \
                         INSERT INTO read_model.messages \
                             (conversation_id, position, message_id, sender_id, body, body_html, sent_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1) \
                     UPDATE read_model.conversation_members \
                        SET last_activity = greatest(last_activity, $2) \
                      WHERE conversation_id = $1 RETURNING user_id",
                )
                .bind(e.conversation_id)
                .bind(position)
                .bind(e.message_id)
                .bind(e.sender_id)
                .bind(&e.body)
                .bind(&html)
                .bind(envelope.recorded_at)
                .fetch_all(&self.pool)
                .await
                .map_err(ReadModelError::from)?;
                // Erased meanwhile (Kafka: their `user.erased` may be applied before this,
                // and another process's key cache may still have opened it): the erasure
                // committed before its event was published, so checking after the write
                // leaves no way around it.
                if store::keys::is_erased(&self.pool, e.sender_id)
                    .await
                    .map_err(|error| ApplyError::Transient(error.to_string()))?
                {
                    self.forget(e.sender_id).await?;
                    return Ok(());
                }
                let data = serde_json::json!({
                    "conversation_id": e.conversation_id,
                    "message_id": e.message_id,
                    "sender_id": e.sender_id,
                    "author_id": e.sender_id,
                    "body": e.body,
                    "body_html": html,
                    "sent_at": envelope.recorded_at,
                });
                self.push(&members, "message", &data, envelope).await
            }
            Event::ConversationRead(e) => {
                sqlx::query(
                    "UPDATE read_model.conversation_members m \
                        SET read_position = greatest(m.read_position, x.position) \
                       FROM read_model.messages x \
                      WHERE m.user_id = $1 AND m.conversation_id = $2 \
                        AND x.conversation_id = $2 AND x.message_id = $3",
                )
                .bind(e.reader_id)
                .bind(e.conversation_id)
                .bind(e.up_to)
                .execute(&self.pool)
                .await
                .map_err(ReadModelError::from)?;
                let data = serde_json::json!({
                    "conversation_id": e.conversation_id,
                    "up_to": e.up_to,
                });
                self.push(&[e.reader_id], "conversation_read", &data, envelope)
                    .await
            }
            Event::UserErased(e) => {
                self.forget(e.user_id).await?;
                if let Some(live) = &self.live {
                    let members: Vec<Uuid> = sqlx::query_scalar(
                        "SELECT DISTINCT m.user_id FROM read_model.conversation_members m \
                           JOIN read_model.conversation_members me \
                             ON me.conversation_id = m.conversation_id AND me.user_id = $1",
                    )
                    .bind(e.user_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(ReadModelError::from)?;
                    let channels: Vec<String> = members.into_iter().map(user_channel).collect();
                    live.retract(&channels, e.user_id).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
