//! [`PgMessaging`]: the lite [`MessagingStore`] in PostgreSQL (`read_model.chat_profiles`,
//! `conversations`, `conversation_members`, `messages`; migrations 17 and 18).
//!
//! A member's row holds the position of the conversation's newest event (the inbox's
//! order) and of the newest message they read; both only move forward (`greatest`), so a
//! redelivered event changes nothing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use event_schemas::personal::ERASED;
use sqlx::PgPool;
use uuid::Uuid;

use super::{ChatProfile, InboxItem, MessageView, MessagingStore, StartedConversation, UNREAD_CAP};
use crate::error::ReadResult;

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

/// The lite messaging model.
#[derive(Debug, Clone)]
pub struct PgMessaging {
    pool: PgPool,
    schema: String,
}

impl PgMessaging {
    /// Its tables, in every schema that holds a copy (replay copies and swaps them).
    pub const TABLES: &'static [&'static str] = &[
        "chat_profiles",
        "conversations",
        "conversation_members",
        "messages",
    ];

    /// The live lite model, in [`crate::lite::LITE_SCHEMA`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            schema: crate::lite::LITE_SCHEMA.to_owned(),
        }
    }

    /// The model in `schema` (a replay's).
    ///
    /// # Errors
    /// [`crate::ReadModelError::Rejected`] when `schema` is not a plain identifier.
    pub fn in_schema(pool: PgPool, schema: &str) -> ReadResult<Self> {
        Ok(Self {
            pool,
            schema: crate::lite::checked_schema(schema)?,
        })
    }
}

#[async_trait::async_trait]
impl MessagingStore for PgMessaging {
    async fn put_profile(&self, profile: &ChatProfile) -> ReadResult<()> {
        let s = &self.schema;
        sqlx::query(&format!(
            "INSERT INTO {s}.chat_profiles (user_id, username, display_name) \
             VALUES ($1, $2, $3) ON CONFLICT (user_id) DO UPDATE \
                SET username = excluded.username, display_name = excluded.display_name"
        ))
        .bind(profile.user_id)
        .bind(&profile.username)
        .bind(&profile.display_name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn rename(&self, user: Uuid, display_name: &str) -> ReadResult<()> {
        let s = &self.schema;
        sqlx::query(&format!(
            "UPDATE {s}.chat_profiles SET display_name = $2 WHERE user_id = $1"
        ))
        .bind(user)
        .bind(display_name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn remove_profile(&self, user: Uuid) -> ReadResult<()> {
        let s = &self.schema;
        sqlx::query(&format!("DELETE FROM {s}.chat_profiles WHERE user_id = $1"))
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn profiles(&self, users: &[Uuid]) -> ReadResult<Vec<ChatProfile>> {
        let s = &self.schema;
        let rows: Vec<(Uuid, String, String)> = sqlx::query_as(&format!(
            "SELECT user_id, username, display_name FROM {s}.chat_profiles \
              WHERE user_id = ANY($1)"
        ))
        .bind(users)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(user_id, username, display_name)| ChatProfile {
                user_id,
                username,
                display_name,
            })
            .collect())
    }

    async fn start(&self, c: &StartedConversation) -> ReadResult<()> {
        let s = &self.schema;
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO {s}.conversations \
                 (conversation_id, started_by, members, title, started_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
        ))
        .bind(c.conversation_id)
        .bind(c.started_by)
        .bind(&c.members)
        .bind(&c.title)
        .bind(c.started_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {s}.conversation_members (user_id, conversation_id, last_activity) \
             SELECT member, $2, $3 FROM unnest($1::uuid[]) AS member ON CONFLICT DO NOTHING"
        ))
        .bind(&c.members)
        .bind(c.conversation_id)
        .bind(c.position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_message(&self, conversation: Uuid, m: &MessageView) -> ReadResult<Vec<Uuid>> {
        let s = &self.schema;
        Ok(sqlx::query_scalar(&format!(
            "WITH stored AS ( \
                 INSERT INTO {s}.messages \
                     (conversation_id, position, message_id, sender_id, body, body_html, sent_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1) \
             UPDATE {s}.conversation_members \
                SET last_activity = greatest(last_activity, $2) \
              WHERE conversation_id = $1 RETURNING user_id"
        ))
        .bind(conversation)
        .bind(m.position)
        .bind(m.message_id)
        .bind(m.sender_id)
        .bind(&m.body)
        .bind(&m.body_html)
        .bind(m.sent_at)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One statement: the messages, then each conversation's members moved to its newest.
    async fn add_messages(
        &self,
        messages: &[(Uuid, MessageView)],
    ) -> ReadResult<HashMap<Uuid, Vec<Uuid>>> {
        let s = &self.schema;
        let column =
            |f: fn(&(Uuid, MessageView)) -> Uuid| messages.iter().map(f).collect::<Vec<_>>();
        let conversations = column(|(c, _)| *c);
        let ids = column(|(_, m)| m.message_id);
        let senders = column(|(_, m)| m.sender_id);
        let positions: Vec<i64> = messages.iter().map(|(_, m)| m.position).collect();
        let bodies: Vec<&str> = messages.iter().map(|(_, m)| m.body.as_str()).collect();
        let html: Vec<&str> = messages.iter().map(|(_, m)| m.body_html.as_str()).collect();
        let sent: Vec<DateTime<Utc>> = messages.iter().map(|(_, m)| m.sent_at).collect();
        let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(&format!(
            "WITH stored AS ( \
                 INSERT INTO {s}.messages \
                     (conversation_id, position, message_id, sender_id, body, body_html, sent_at) \
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[], \
                                      $5::text[], $6::text[], $7::timestamptz[]) \
                 ON CONFLICT DO NOTHING RETURNING 1), \
             newest AS ( \
                 SELECT c AS conversation_id, max(p) AS position \
                   FROM unnest($1::uuid[], $2::bigint[]) AS m(c, p) GROUP BY c) \
             UPDATE {s}.conversation_members m \
                SET last_activity = greatest(m.last_activity, n.position) \
               FROM newest n WHERE m.conversation_id = n.conversation_id \
             RETURNING m.conversation_id, m.user_id"
        ))
        .bind(&conversations)
        .bind(&positions)
        .bind(&ids)
        .bind(&senders)
        .bind(&bodies)
        .bind(&html)
        .bind(&sent)
        .fetch_all(&self.pool)
        .await?;
        let mut members: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for (conversation, user) in rows {
            members.entry(conversation).or_default().push(user);
        }
        Ok(members)
    }

    async fn mark_read(&self, reader: Uuid, conversation: Uuid, up_to: Uuid) -> ReadResult<()> {
        let s = &self.schema;
        sqlx::query(&format!(
            "UPDATE {s}.conversation_members m \
                SET read_position = greatest(m.read_position, x.position) \
               FROM {s}.messages x \
              WHERE m.user_id = $1 AND m.conversation_id = $2 \
                AND x.conversation_id = $2 AND x.message_id = $3"
        ))
        .bind(reader)
        .bind(conversation)
        .bind(up_to)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn forget(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        let s = &self.schema;
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "UPDATE {s}.messages SET body = $2, body_html = '' \
              WHERE sender_id = $1 AND body <> $2"
        ))
        .bind(user)
        .bind(ERASED)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "UPDATE {s}.conversations SET title = '' WHERE started_by = $1 AND title <> ''"
        ))
        .bind(user)
        .execute(&mut *tx)
        .await?;
        let members = sqlx::query_scalar(&format!(
            "SELECT DISTINCT m.user_id FROM {s}.conversation_members m \
               JOIN {s}.conversation_members me \
                 ON me.conversation_id = m.conversation_id AND me.user_id = $1"
        ))
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(members)
    }

    async fn is_member(&self, user: Uuid, conversation: Uuid) -> ReadResult<bool> {
        let s = &self.schema;
        Ok(sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {s}.conversation_members \
                             WHERE user_id = $1 AND conversation_id = $2)"
        ))
        .bind(user)
        .bind(conversation)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn inbox(
        &self,
        user: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<InboxItem>> {
        let s = &self.schema;
        let rows: Vec<InboxRow> = sqlx::query_as(&format!(
            "SELECT c.conversation_id, c.members, c.title, m.last_activity, \
                    (SELECT count(*) FROM (SELECT 1 FROM {s}.messages x \
                      WHERE x.conversation_id = m.conversation_id \
                        AND x.position > m.read_position AND x.sender_id <> m.user_id \
                      LIMIT $4) unread), \
                    l.message_id, l.sender_id, l.body, l.body_html, l.sent_at, l.position \
               FROM {s}.conversation_members m \
               JOIN {s}.conversations c ON c.conversation_id = m.conversation_id \
               LEFT JOIN LATERAL (SELECT * FROM {s}.messages x \
                                   WHERE x.conversation_id = m.conversation_id \
                                   ORDER BY x.position DESC LIMIT 1) l ON true \
              WHERE m.user_id = $1 AND ($2::bigint IS NULL OR m.last_activity < $2) \
              ORDER BY m.last_activity DESC LIMIT $3"
        ))
        .bind(user)
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(UNREAD_CAP)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(inbox_item).collect())
    }

    async fn messages(
        &self,
        conversation: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<MessageView>> {
        let s = &self.schema;
        let rows: Vec<MessageRow> = sqlx::query_as(&format!(
            "SELECT message_id, sender_id, body, body_html, sent_at, position \
               FROM {s}.messages \
              WHERE conversation_id = $1 AND ($2::bigint IS NULL OR position < $2) \
              ORDER BY position DESC LIMIT $3"
        ))
        .bind(conversation)
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(message).collect())
    }
}

fn inbox_item(
    (conversation_id, members, title, activity, unread, id, sender, body, html, at, position): InboxRow,
) -> InboxItem {
    let last_message = match (id, sender, body, html, at, position) {
        (Some(id), Some(sender), Some(body), Some(html), Some(at), Some(position)) => {
            Some(message((id, sender, body, html, at, position)))
        }
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
}
