//! [`ScyllaMessaging`]: the production [`MessagingStore`] on Cassandra/ScyllaDB.
//!
//! # Tables
//!
//! They live in the chat keyspace (`SCYLLA_CHAT_KEYSPACE`, its own so that a replay of the
//! timelines, which swaps the timeline keyspace, never touches conversations), next to the
//! presence history ([`crate::presence::scylla`]). Every read starts from one partition:
//!
//! | table | primary key | serves |
//! |---|---|---|
//! | `chat_profiles` | `(user_id)` | names in inboxes |
//! | `conversations` | `(conversation_id)` | members, title, starter |
//! | `memberships` | `(user_id, conversation_id)` | membership; newest activity and read mark |
//! | `inbox` | `(user_id, last_activity DESC, conversation_id)` | the inbox's order |
//! | `messages` | `((conversation_id, bucket), position DESC)` | a conversation's messages |
//! | `message_buckets` | `(conversation_id, bucket DESC)` | which buckets hold messages |
//! | `messages_by_id` | `(message_id)` | a read mark's position |
//! | `messages_by_sender` | `(sender_id, conversation_id, position)` | an erasure's messages |
//!
//! # Buckets
//!
//! A conversation's messages are partitioned by time bucket, the bucket being a range of
//! [`BUCKET_POSITIONS`] positions of the log — the log's own clock, so a message's bucket
//! follows from its cursor, and the order across buckets is exactly the order of
//! positions (buckets of wall-clock time could put a message of a later position into an
//! earlier bucket at a boundary, and cursor paging would skip it). A bucket holds at most
//! that many messages, and in practice a conversation's share of them.
//!
//! # Writes that commute
//!
//! `memberships.last_activity` and `memberships.read_position` are written `USING
//! TIMESTAMP <position>`: Cassandra keeps the cell written with the highest timestamp, so
//! each keeps the highest position whatever order writes arrive in, redeliveries
//! and concurrent consumers included (no read-before-write). Those two cells are only
//! ever written this way, and rows of `memberships` are never deleted.
//!
//! The inbox's order needs a row per `(user, activity)`: moving a conversation up inserts
//! the new row, then deletes the row at the activity read from `memberships` before the
//! write, if lower. Two writers racing can both read the same old activity and leave an
//! extra, lower row; a read keeps the first (highest) row of each conversation and
//! deletes the others it passes, so the inbox stays right and cleans itself.
//!
//! Unread counts read the messages after the member's read mark, from the bucket of the
//! mark on, up to [`UNREAD_CAP`].

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use event_schemas::personal::ERASED;
use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::{ChatProfile, InboxItem, MessageView, MessagingStore, StartedConversation, UNREAD_CAP};
use crate::error::{ReadModelError, ReadResult};
use crate::timeline::scylla::{
    cql_limit, create_keyspace, parse_consistency, quoted_keyspace, rows, session, Preparer,
    ScyllaSettings,
};

/// Positions of the log per message bucket.
pub const BUCKET_POSITIONS: i64 = 1 << 20;

/// [`UNREAD_CAP`] as a CQL `LIMIT`.
const UNREAD_LIMIT: i32 = 1000;

/// Requests of one inbox read or erasure in flight at once.
const PARALLELISM: usize = 32;

/// The bucket of a position.
pub fn bucket(position: i64) -> i64 {
    position.div_euclid(BUCKET_POSITIONS)
}

/// The chat tables (messaging and presence), as `CREATE TABLE IF NOT EXISTS` statements in
/// the quoted keyspace `ks`.
fn schema(ks: &str) -> Vec<String> {
    let mut tables = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.chat_profiles ( \
                 user_id uuid PRIMARY KEY, username text, display_name text)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.conversations ( \
                 conversation_id uuid PRIMARY KEY, started_by uuid, members list<uuid>, \
                 title text, started_at bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.memberships ( \
                 user_id uuid, conversation_id uuid, last_activity bigint, read_position bigint, \
                 PRIMARY KEY (user_id, conversation_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.inbox ( \
                 user_id uuid, last_activity bigint, conversation_id uuid, \
                 PRIMARY KEY (user_id, last_activity, conversation_id)) \
             WITH CLUSTERING ORDER BY (last_activity DESC, conversation_id ASC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.messages ( \
                 conversation_id uuid, bucket bigint, position bigint, message_id uuid, \
                 sender_id uuid, body text, body_html text, sent_at bigint, \
                 PRIMARY KEY ((conversation_id, bucket), position)) \
             WITH CLUSTERING ORDER BY (position DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.message_buckets ( \
                 conversation_id uuid, bucket bigint, \
                 PRIMARY KEY (conversation_id, bucket)) \
             WITH CLUSTERING ORDER BY (bucket DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.messages_by_id ( \
                 message_id uuid PRIMARY KEY, conversation_id uuid, position bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.messages_by_sender ( \
                 sender_id uuid, conversation_id uuid, position bigint, \
                 PRIMARY KEY (sender_id, conversation_id, position))"
        ),
    ];
    tables.extend(crate::presence::scylla::schema(ks));
    tables
}

/// Creates the chat keyspace and its tables (messaging and presence) if they do not exist,
/// and waits for schema agreement. Run by `hybridlive migrate`, never by workers.
///
/// # Errors
/// As [`crate::timeline::scylla::migrate`].
#[tracing::instrument(skip_all, fields(keyspace = %settings.keyspace))]
pub async fn migrate(settings: &ScyllaSettings) -> Result<(), ReadModelError> {
    create_keyspace(settings, schema).await?;
    tracing::info!("Chat keyspace is migrated.");
    Ok(())
}

/// Drops the chat keyspace (a test's).
pub use crate::timeline::scylla::drop_keyspace;

/// The messaging model in one keyspace of a Cassandra/ScyllaDB cluster.
#[derive(Debug)]
pub struct ScyllaMessaging {
    session: Session,
    s: Statements,
}

#[derive(Debug)]
struct Statements {
    insert_profile: PreparedStatement,
    rename: PreparedStatement,
    delete_profile: PreparedStatement,
    select_profiles: PreparedStatement,
    insert_conversation: PreparedStatement,
    select_conversation: PreparedStatement,
    clear_title: PreparedStatement,
    raise_activity: PreparedStatement,
    select_membership: PreparedStatement,
    select_memberships: PreparedStatement,
    raise_read: PreparedStatement,
    insert_inbox: PreparedStatement,
    delete_inbox: PreparedStatement,
    select_inbox: PreparedStatement,
    select_inbox_before: PreparedStatement,
    insert_message: PreparedStatement,
    insert_bucket: PreparedStatement,
    insert_message_by_id: PreparedStatement,
    insert_message_by_sender: PreparedStatement,
    select_message_by_id: PreparedStatement,
    select_messages_by_sender: PreparedStatement,
    empty_message: PreparedStatement,
    select_buckets_to: PreparedStatement,
    select_buckets_from: PreparedStatement,
    select_messages_before: PreparedStatement,
    select_senders_after: PreparedStatement,
}

impl Statements {
    async fn prepare(p: &Preparer<'_>, ks: &str) -> ReadResult<Self> {
        let message_columns = "message_id, sender_id, body, body_html, sent_at, position";
        Ok(Self {
            insert_profile: p
                .idempotent(format!(
                    "INSERT INTO {ks}.chat_profiles (user_id, username, display_name) \
                     VALUES (?, ?, ?)"
                ))
                .await?,
            // `IF EXISTS` would cost a Paxos round; a display name alone is harmless, and
            // `profiles` skips a row without a username.
            rename: p
                .idempotent(format!(
                    "UPDATE {ks}.chat_profiles SET display_name = ? WHERE user_id = ?"
                ))
                .await?,
            delete_profile: p
                .idempotent(format!("DELETE FROM {ks}.chat_profiles WHERE user_id = ?"))
                .await?,
            select_profiles: p
                .idempotent(format!(
                    "SELECT user_id, username, display_name FROM {ks}.chat_profiles \
                      WHERE user_id IN ?"
                ))
                .await?,
            insert_conversation: p
                .idempotent(format!(
                    "INSERT INTO {ks}.conversations \
                         (conversation_id, started_by, members, title, started_at) \
                     VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
                ))
                .await?,
            select_conversation: p
                .idempotent(format!(
                    "SELECT started_by, members, title FROM {ks}.conversations \
                      WHERE conversation_id = ?"
                ))
                .await?,
            clear_title: p
                .idempotent(format!(
                    "UPDATE {ks}.conversations SET title = '' WHERE conversation_id = ?"
                ))
                .await?,
            raise_activity: p
                .idempotent(format!(
                    "UPDATE {ks}.memberships USING TIMESTAMP ? SET last_activity = ? \
                      WHERE user_id = ? AND conversation_id = ?"
                ))
                .await?,
            select_membership: p
                .idempotent(format!(
                    "SELECT last_activity, read_position FROM {ks}.memberships \
                      WHERE user_id = ? AND conversation_id = ?"
                ))
                .await?,
            select_memberships: p
                .idempotent(format!(
                    "SELECT conversation_id FROM {ks}.memberships WHERE user_id = ?"
                ))
                .await?,
            raise_read: p
                .idempotent(format!(
                    "UPDATE {ks}.memberships USING TIMESTAMP ? SET read_position = ? \
                      WHERE user_id = ? AND conversation_id = ?"
                ))
                .await?,
            insert_inbox: p
                .idempotent(format!(
                    "INSERT INTO {ks}.inbox (user_id, last_activity, conversation_id) \
                     VALUES (?, ?, ?)"
                ))
                .await?,
            delete_inbox: p
                .idempotent(format!(
                    "DELETE FROM {ks}.inbox \
                      WHERE user_id = ? AND last_activity = ? AND conversation_id = ?"
                ))
                .await?,
            select_inbox: p
                .idempotent(format!(
                    "SELECT last_activity, conversation_id FROM {ks}.inbox WHERE user_id = ?"
                ))
                .await?,
            select_inbox_before: p
                .idempotent(format!(
                    "SELECT last_activity, conversation_id FROM {ks}.inbox \
                      WHERE user_id = ? AND last_activity < ?"
                ))
                .await?,
            insert_message: p
                .idempotent(format!(
                    "INSERT INTO {ks}.messages (conversation_id, bucket, position, message_id, \
                         sender_id, body, body_html, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                ))
                .await?,
            insert_bucket: p
                .idempotent(format!(
                    "INSERT INTO {ks}.message_buckets (conversation_id, bucket) VALUES (?, ?)"
                ))
                .await?,
            insert_message_by_id: p
                .idempotent(format!(
                    "INSERT INTO {ks}.messages_by_id (message_id, conversation_id, position) \
                     VALUES (?, ?, ?)"
                ))
                .await?,
            insert_message_by_sender: p
                .idempotent(format!(
                    "INSERT INTO {ks}.messages_by_sender (sender_id, conversation_id, position) \
                     VALUES (?, ?, ?)"
                ))
                .await?,
            select_message_by_id: p
                .idempotent(format!(
                    "SELECT conversation_id, position FROM {ks}.messages_by_id WHERE message_id = ?"
                ))
                .await?,
            select_messages_by_sender: p
                .idempotent(format!(
                    "SELECT conversation_id, position FROM {ks}.messages_by_sender \
                      WHERE sender_id = ?"
                ))
                .await?,
            empty_message: p
                .idempotent(format!(
                    "UPDATE {ks}.messages SET body = ?, body_html = '' \
                      WHERE conversation_id = ? AND bucket = ? AND position = ? IF EXISTS"
                ))
                .await?,
            select_buckets_to: p
                .idempotent(format!(
                    "SELECT bucket FROM {ks}.message_buckets \
                      WHERE conversation_id = ? AND bucket <= ?"
                ))
                .await?,
            select_buckets_from: p
                .idempotent(format!(
                    "SELECT bucket FROM {ks}.message_buckets \
                      WHERE conversation_id = ? AND bucket >= ?"
                ))
                .await?,
            select_messages_before: p
                .idempotent(format!(
                    "SELECT {message_columns} FROM {ks}.messages \
                      WHERE conversation_id = ? AND bucket = ? AND position < ? LIMIT ?"
                ))
                .await?,
            select_senders_after: p
                .idempotent(format!(
                    "SELECT sender_id FROM {ks}.messages \
                      WHERE conversation_id = ? AND bucket = ? AND position > ? LIMIT ?"
                ))
                .await?,
        })
    }
}

type MessageRow = (Uuid, Uuid, String, String, i64, i64);

fn message((message_id, sender_id, body, body_html, sent_at, position): MessageRow) -> MessageView {
    MessageView {
        message_id,
        sender_id,
        body,
        body_html,
        sent_at: from_millis(sent_at),
        position,
    }
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl ScyllaMessaging {
    /// Connects to `settings.nodes` and prepares every statement against the chat tables
    /// of `settings.keyspace`, which [`migrate`] must have created.
    ///
    /// # Errors
    /// As [`crate::timeline::scylla::ScyllaTimelines::connect`].
    #[tracing::instrument(skip_all, fields(keyspace = %settings.keyspace))]
    pub async fn connect(settings: &ScyllaSettings) -> Result<Self, ReadModelError> {
        let consistency = parse_consistency(&settings.consistency)?;
        let ks = quoted_keyspace(&settings.keyspace)?;
        let session = session(settings).await?;
        let s = Statements::prepare(
            &Preparer {
                session: &session,
                consistency,
            },
            &ks,
        )
        .await?;
        Ok(Self { session, s })
    }

    /// Every row of `statement` for `values`, page by page.
    async fn all<R>(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow + Send + 'static,
    ) -> ReadResult<Vec<R>>
    where
        R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>
            + Send
            + 'static,
    {
        Ok(self
            .session
            .execute_iter(statement.clone(), values)
            .await?
            .rows_stream::<R>()?
            .try_collect()
            .await?)
    }

    /// `(last_activity, read_position)` of a member; `None` for a non-member.
    async fn membership(
        &self,
        user: Uuid,
        conversation: Uuid,
    ) -> ReadResult<Option<(Option<i64>, Option<i64>)>> {
        let found = rows::<(Option<i64>, Option<i64>)>(
            self.session
                .execute_unpaged(&self.s.select_membership, (user, conversation))
                .await?,
        )?;
        Ok(found.into_iter().next())
    }

    /// Moves `conversation` up `user`'s inbox to `activity` (see the module's notes).
    async fn raise_activity(
        &self,
        user: Uuid,
        conversation: Uuid,
        activity: i64,
    ) -> ReadResult<()> {
        let old = self
            .membership(user, conversation)
            .await?
            .and_then(|(activity, _)| activity);
        self.session
            .execute_unpaged(
                &self.s.raise_activity,
                (activity, activity, user, conversation),
            )
            .await?;
        self.session
            .execute_unpaged(&self.s.insert_inbox, (user, activity, conversation))
            .await?;
        if let Some(old) = old.filter(|old| *old < activity) {
            self.session
                .execute_unpaged(&self.s.delete_inbox, (user, old, conversation))
                .await?;
        }
        Ok(())
    }

    /// The conversation's newest message, if any.
    async fn last_message(&self, conversation: Uuid) -> ReadResult<Option<MessageView>> {
        Ok(self
            .messages(conversation, None, 1)
            .await?
            .into_iter()
            .next())
    }

    /// Messages of others after `read`, up to [`UNREAD_CAP`].
    async fn unread(&self, user: Uuid, conversation: Uuid, read: i64) -> ReadResult<i64> {
        let buckets: Vec<(i64,)> = self
            .all(&self.s.select_buckets_from, (conversation, bucket(read)))
            .await?;
        let mut unread = 0;
        for (b,) in buckets {
            let senders = rows::<(Uuid,)>(
                self.session
                    .execute_unpaged(
                        &self.s.select_senders_after,
                        (conversation, b, read, UNREAD_LIMIT),
                    )
                    .await?,
            )?;
            unread += i64::try_from(senders.iter().filter(|(s,)| *s != user).count()).unwrap_or(0);
            if unread >= UNREAD_CAP {
                return Ok(UNREAD_CAP);
            }
        }
        Ok(unread)
    }

    async fn inbox_item(
        &self,
        user: Uuid,
        conversation: Uuid,
        activity: i64,
        read: i64,
    ) -> ReadResult<Option<InboxItem>> {
        let found = rows::<(Option<Uuid>, Option<Vec<Uuid>>, Option<String>)>(
            self.session
                .execute_unpaged(&self.s.select_conversation, (conversation,))
                .await?,
        )?;
        let Some((_, members, title)) = found.into_iter().next() else {
            return Ok(None);
        };
        let (last_message, unread) = futures::try_join!(
            self.last_message(conversation),
            self.unread(user, conversation, read)
        )?;
        Ok(Some(InboxItem {
            conversation_id: conversation,
            members: members.unwrap_or_default(),
            title: title.unwrap_or_default(),
            last_message,
            unread,
            activity,
        }))
    }
}

#[async_trait::async_trait]
impl MessagingStore for ScyllaMessaging {
    async fn put_profile(&self, p: &ChatProfile) -> ReadResult<()> {
        self.session
            .execute_unpaged(
                &self.s.insert_profile,
                (p.user_id, &p.username, &p.display_name),
            )
            .await?;
        Ok(())
    }

    async fn rename(&self, user: Uuid, display_name: &str) -> ReadResult<()> {
        self.session
            .execute_unpaged(&self.s.rename, (display_name, user))
            .await?;
        Ok(())
    }

    async fn remove_profile(&self, user: Uuid) -> ReadResult<()> {
        self.session
            .execute_unpaged(&self.s.delete_profile, (user,))
            .await?;
        Ok(())
    }

    async fn profiles(&self, users: &[Uuid]) -> ReadResult<Vec<ChatProfile>> {
        let mut found = Vec::new();
        for chunk in users.chunks(100) {
            let chunk: Vec<Uuid> = chunk.to_vec();
            let page = rows::<(Uuid, Option<String>, Option<String>)>(
                self.session
                    .execute_unpaged(&self.s.select_profiles, (chunk,))
                    .await?,
            )?;
            found.extend(
                page.into_iter()
                    .filter_map(|(user_id, username, display_name)| {
                        Some(ChatProfile {
                            user_id,
                            username: username?,
                            display_name: display_name.unwrap_or_default(),
                        })
                    }),
            );
        }
        Ok(found)
    }

    async fn start(&self, c: &StartedConversation) -> ReadResult<()> {
        self.session
            .execute_unpaged(
                &self.s.insert_conversation,
                (
                    c.conversation_id,
                    c.started_by,
                    &c.members,
                    &c.title,
                    c.started_at.timestamp_millis(),
                ),
            )
            .await?;
        stream::iter(c.members.iter().copied())
            .map(|member| self.raise_activity(member, c.conversation_id, c.position))
            .buffer_unordered(PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn add_message(&self, conversation: Uuid, m: &MessageView) -> ReadResult<Vec<Uuid>> {
        let b = bucket(m.position);
        // The lookups first: a message is never readable without the rows that find it.
        self.session
            .execute_unpaged(&self.s.insert_bucket, (conversation, b))
            .await?;
        self.session
            .execute_unpaged(
                &self.s.insert_message_by_id,
                (m.message_id, conversation, m.position),
            )
            .await?;
        self.session
            .execute_unpaged(
                &self.s.insert_message_by_sender,
                (m.sender_id, conversation, m.position),
            )
            .await?;
        self.session
            .execute_unpaged(
                &self.s.insert_message,
                (
                    conversation,
                    b,
                    m.position,
                    m.message_id,
                    m.sender_id,
                    &m.body,
                    &m.body_html,
                    m.sent_at.timestamp_millis(),
                ),
            )
            .await?;
        let found = rows::<(Option<Uuid>, Option<Vec<Uuid>>, Option<String>)>(
            self.session
                .execute_unpaged(&self.s.select_conversation, (conversation,))
                .await?,
        )?;
        let members = found
            .into_iter()
            .next()
            .and_then(|(_, members, _)| members)
            .unwrap_or_default();
        stream::iter(members.iter().copied())
            .map(|member| self.raise_activity(member, conversation, m.position))
            .buffer_unordered(PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(members)
    }

    async fn mark_read(&self, reader: Uuid, conversation: Uuid, up_to: Uuid) -> ReadResult<()> {
        let found = rows::<(Uuid, i64)>(
            self.session
                .execute_unpaged(&self.s.select_message_by_id, (up_to,))
                .await?,
        )?;
        let Some((of, position)) = found.into_iter().next() else {
            return Ok(());
        };
        // An update would create the row: only a member's mark moves.
        if of != conversation || self.membership(reader, conversation).await?.is_none() {
            return Ok(());
        }
        self.session
            .execute_unpaged(
                &self.s.raise_read,
                (position, position, reader, conversation),
            )
            .await?;
        Ok(())
    }

    async fn forget(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        let written: Vec<(Uuid, i64)> =
            self.all(&self.s.select_messages_by_sender, (user,)).await?;
        stream::iter(written)
            .map(|(conversation, position)| async move {
                self.session
                    .execute_unpaged(
                        &self.s.empty_message,
                        (ERASED, conversation, bucket(position), position),
                    )
                    .await
                    .map(|_| ())
                    .map_err(ReadModelError::from)
            })
            .buffer_unordered(PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        let conversations: Vec<(Uuid,)> = self.all(&self.s.select_memberships, (user,)).await?;
        let mut members = HashSet::from([user]);
        for (conversation,) in conversations {
            let found = rows::<(Option<Uuid>, Option<Vec<Uuid>>, Option<String>)>(
                self.session
                    .execute_unpaged(&self.s.select_conversation, (conversation,))
                    .await?,
            )?;
            if let Some((started_by, of, title)) = found.into_iter().next() {
                members.extend(of.unwrap_or_default());
                if started_by == Some(user) && title.is_some_and(|t| !t.is_empty()) {
                    self.session
                        .execute_unpaged(&self.s.clear_title, (conversation,))
                        .await?;
                }
            }
        }
        Ok(members.into_iter().collect())
    }

    async fn is_member(&self, user: Uuid, conversation: Uuid) -> ReadResult<bool> {
        Ok(self.membership(user, conversation).await?.is_some())
    }

    async fn inbox(
        &self,
        user: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<InboxItem>> {
        let mut pages = match before {
            None => {
                self.session
                    .execute_iter(self.s.select_inbox.clone(), (user,))
                    .await?
            }
            Some(before) => {
                self.session
                    .execute_iter(self.s.select_inbox_before.clone(), (user, before))
                    .await?
            }
        }
        .rows_stream::<(i64, Uuid)>()?;
        let mut order = Vec::new();
        while order.len() < limit {
            let Some((activity, conversation)) = pages.try_next().await? else {
                break;
            };
            let Some((current, read)) = self.membership(user, conversation).await? else {
                continue;
            };
            if current.is_some_and(|current| current > activity) {
                // A lower row two writers left behind (see the module's notes).
                self.session
                    .execute_unpaged(&self.s.delete_inbox, (user, activity, conversation))
                    .await?;
                continue;
            }
            order.push((conversation, activity, read.unwrap_or(0)));
        }
        let items: Vec<Option<InboxItem>> = stream::iter(order)
            .map(|(conversation, activity, read)| {
                self.inbox_item(user, conversation, activity, read)
            })
            .buffered(PARALLELISM)
            .try_collect()
            .await?;
        Ok(items.into_iter().flatten().collect())
    }

    async fn messages(
        &self,
        conversation: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<MessageView>> {
        let before = before.unwrap_or(i64::MAX);
        let mut buckets = self
            .session
            .execute_iter(
                self.s.select_buckets_to.clone(),
                (conversation, bucket(before)),
            )
            .await?
            .rows_stream::<(i64,)>()?;
        let mut found = Vec::new();
        while found.len() < limit {
            let Some((b,)) = buckets.try_next().await? else {
                break;
            };
            let page = rows::<MessageRow>(
                self.session
                    .execute_unpaged(
                        &self.s.select_messages_before,
                        (conversation, b, before, cql_limit(limit - found.len())),
                    )
                    .await?,
            )?;
            found.extend(page.into_iter().map(message));
        }
        Ok(found)
    }
}
