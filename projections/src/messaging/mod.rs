//! The `messaging` projection and its read model: chat profiles (id, username, display
//! name), each member's inbox, newest activity first, with the unread count, and each
//! conversation's messages — behind [`MessagingStore`], on PostgreSQL for lite
//! ([`postgres::PgMessaging`]) and on Cassandra/ScyllaDB ([`scylla::ScyllaMessaging`]), both
//! held to one contract suite (`tests/contract_messaging.rs`). It pushes `message` to every
//! member's stream and `conversation_read` to the reader's own (their other devices), and
//! takes part in the registration saga: a new user is synced once chat knows their
//! profile.
//!
//! A conversation's events are one stream (one Kafka partition), so they arrive in order,
//! and so do a person's; every write is idempotent (a message is keyed by its id, activity
//! and reads only move forward). Across streams nothing is assumed: a message is stored
//! whatever became of its sender's profile. On `user.erased` the person's profile is
//! deleted, and their messages and the titles they gave keep their place, emptied to
//! `"[erased]"` (titles to `""`); a message applied after the erasure (Kafka order, another
//! process's key cache) is emptied by a check after the write against the committed
//! tombstone, which was committed before its event was published.

pub mod postgres;
#[cfg(feature = "scylla")]
pub mod scylla;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use event_schemas::personal::ERASED;
use event_schemas::{Event, EventEnvelope};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::content::markdown;
use crate::error::ReadResult;
use crate::presence::PresenceHistory;
use projection_runtime::runner::{ApplyError, Projection};
use real_time::live::{user_channel, LivePublisher, Push};
use real_time::onboarding::{report_lost, report_synced, Onboarding};

pub use postgres::PgMessaging;

/// Unread counts stop at this many: an inbox shows "1000+", and counting further would
/// cost a scan of everything unread.
pub const UNREAD_CAP: i64 = 1000;

/// A person as chat shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatProfile {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
}

/// A conversation as started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedConversation {
    pub conversation_id: Uuid,
    pub started_by: Uuid,
    pub members: Vec<Uuid>,
    pub title: String,
    pub started_at: DateTime<Utc>,
    /// The position of `conversation.started`: every member's first activity.
    pub position: i64,
}

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
    /// The position of its `message.sent`: its order, and the cursor of the page after it.
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
    /// Messages of others after the newest one this member marked read, up to
    /// [`UNREAD_CAP`].
    pub unread: i64,
    /// The position of the conversation's newest event: the order, and the cursor of the
    /// page after this item.
    pub activity: i64,
}

/// Storage of the messaging read model. Every write is idempotent and may be retried;
/// reads return the newest first.
#[async_trait::async_trait]
pub trait MessagingStore: Send + Sync + Debug {
    /// Stores (or replaces) a person's chat profile.
    async fn put_profile(&self, profile: &ChatProfile) -> ReadResult<()>;
    /// Changes a known person's display name; an unknown person is left unknown.
    async fn rename(&self, user: Uuid, display_name: &str) -> ReadResult<()>;
    /// Forgets a person's chat profile (a rolled-back registration, an erasure).
    async fn remove_profile(&self, user: Uuid) -> ReadResult<()>;
    /// The chat profiles of those of `users` that chat knows, in no order.
    async fn profiles(&self, users: &[Uuid]) -> ReadResult<Vec<ChatProfile>>;

    /// Stores a conversation and puts it in every member's inbox.
    async fn start(&self, conversation: &StartedConversation) -> ReadResult<()>;
    /// Stores a message of `conversation` and moves the conversation up every member's
    /// inbox; returns the members.
    async fn add_message(&self, conversation: Uuid, message: &MessageView)
        -> ReadResult<Vec<Uuid>>;
    /// [`Self::add_message`] for many messages (in log order) at once; returns the members
    /// of each conversation among them.
    async fn add_messages(
        &self,
        messages: &[(Uuid, MessageView)],
    ) -> ReadResult<HashMap<Uuid, Vec<Uuid>>> {
        let mut members = HashMap::new();
        for (conversation, message) in messages {
            let of = self.add_message(*conversation, message).await?;
            members.insert(*conversation, of);
        }
        Ok(members)
    }
    /// Moves `reader`'s read mark of `conversation` forward to message `up_to` (never back;
    /// an unknown message or a non-member changes nothing).
    async fn mark_read(&self, reader: Uuid, conversation: Uuid, up_to: Uuid) -> ReadResult<()>;
    /// Empties what `user` wrote — their messages' bodies, the titles they gave — and
    /// returns everyone who shares a conversation with them (themselves included).
    async fn forget(&self, user: Uuid) -> ReadResult<Vec<Uuid>>;

    /// Whether `user` is a member of `conversation` (as far as the model knows).
    async fn is_member(&self, user: Uuid, conversation: Uuid) -> ReadResult<bool>;
    /// Up to `limit` conversations of `user`, newest activity first, older than `before`.
    async fn inbox(
        &self,
        user: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<InboxItem>>;
    /// Up to `limit` messages of `conversation`, newest first, older than `before`.
    async fn messages(
        &self,
        conversation: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<MessageView>>;
}

/// The `messaging` projection over a [`MessagingStore`].
#[derive(Debug, Clone)]
pub struct MessagingProjection {
    store: Arc<dyn MessagingStore>,
    /// The log's database: where erasures are checked.
    pool: PgPool,
    live: Option<LivePublisher>,
    onboarding: Option<Onboarding>,
    /// Forgotten with the rest on an erasure.
    presence: Option<Arc<dyn PresenceHistory>>,
}

impl MessagingProjection {
    pub const NAME: &'static str = "messaging";

    pub fn new(store: Arc<dyn MessagingStore>, pool: PgPool) -> Self {
        Self {
            store,
            pool,
            live: None,
            onboarding: None,
            presence: None,
        }
    }

    /// Pushes `message` and `conversation_read` to members' streams.
    #[must_use]
    pub fn with_live(mut self, live: Option<LivePublisher>) -> Self {
        self.live = live;
        self
    }

    /// Takes part in the registration saga.
    #[must_use]
    pub fn with_onboarding(mut self, onboarding: Option<Onboarding>) -> Self {
        self.onboarding = onboarding;
        self
    }

    /// Forgets an erased person's presence history too.
    #[must_use]
    pub fn with_presence(mut self, presence: Option<Arc<dyn PresenceHistory>>) -> Self {
        self.presence = presence;
        self
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

    /// Whether `user` was erased (by the committed tombstone of their data key).
    async fn erased(&self, user: Uuid) -> Result<bool, ApplyError> {
        store::keys::is_erased(&self.pool, user)
            .await
            .map_err(|error| ApplyError::Transient(error.to_string()))
    }
}

/// A `message.sent` as the model stores it, with its conversation.
fn stored_message(envelope: &EventEnvelope) -> Option<(Uuid, MessageView)> {
    let Event::MessageSent(e) = &envelope.event else {
        return None;
    };
    let body_html = if e.body == ERASED {
        String::new()
    } else {
        markdown::to_safe_html(&e.body)
    };
    Some((
        e.conversation_id,
        MessageView {
            message_id: e.message_id,
            sender_id: e.sender_id,
            body: e.body.clone(),
            body_html,
            sent_at: envelope.recorded_at,
            position: envelope.global_position,
        },
    ))
}

impl MessagingProjection {
    /// Stores `message.sent` events (in log order) at once, then pushes each to its
    /// conversation's members: each member's pushes in order, members at once.
    async fn apply_messages(&self, envelopes: &[EventEnvelope]) -> Result<(), ApplyError> {
        let messages: Vec<(Uuid, MessageView)> =
            envelopes.iter().filter_map(stored_message).collect();
        if messages.is_empty() {
            return Ok(());
        }
        let members = self.store.add_messages(&messages).await?;
        // Erased meanwhile (Kafka: their `user.erased` may be applied before this, and
        // another process's key cache may still have opened it): the erasure committed
        // before its event was published, so checking after the write leaves no way
        // around it.
        let mut senders: Vec<Uuid> = messages.iter().map(|(_, m)| m.sender_id).collect();
        senders.sort_unstable();
        senders.dedup();
        let erased = store::keys::erased_among(&self.pool, &senders)
            .await
            .map_err(|error| ApplyError::Transient(error.to_string()))?;
        for sender in &erased {
            self.store.forget(*sender).await?;
        }
        let Some(live) = &self.live else {
            return Ok(());
        };
        let mut pushes: HashMap<Uuid, Vec<(serde_json::Value, Uuid)>> = HashMap::new();
        for ((conversation, message), envelope) in messages.iter().zip(
            envelopes
                .iter()
                .filter(|e| matches!(e.event, Event::MessageSent(_))),
        ) {
            if erased.contains(&message.sender_id) {
                continue;
            }
            let data = serde_json::json!({
                "conversation_id": conversation,
                "message_id": message.message_id,
                "sender_id": message.sender_id,
                "author_id": message.sender_id,
                "body": message.body,
                "body_html": message.body_html,
                "sent_at": message.sent_at,
            });
            for member in members.get(conversation).into_iter().flatten() {
                pushes
                    .entry(*member)
                    .or_default()
                    .push((data.clone(), envelope.event_id));
            }
        }
        futures::future::try_join_all(pushes.into_iter().map(|(user, list)| async move {
            let channel = user_channel(user);
            for (data, event_id) in list {
                let push = Push {
                    once_for: Some(event_id),
                    outcome: false,
                };
                live.push(&channel, "message", &data, push).await?;
            }
            Ok::<(), ApplyError>(())
        }))
        .await?;
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
            "conversation.started"
                | "message.sent"
                | "conversation.read"
                | "user.registered"
                | "user.profile_updated"
                | "user.registration_rolled_back"
                | "user.erased"
        )
    }

    async fn dead_lettered(&self, event: &EventEnvelope, error: &str) -> Result<(), ApplyError> {
        report_lost(self.onboarding.as_ref(), event, Self::NAME, error).await
    }

    fn applies_batches(&self) -> bool {
        true
    }

    /// Runs of `message.sent` are stored and pushed at once; every other event is applied
    /// alone, in its place.
    async fn apply_batch(&self, events: &[EventEnvelope]) -> Result<(), ApplyError> {
        let mut start = 0;
        while start < events.len() {
            let run = events[start..]
                .iter()
                .take_while(|e| matches!(e.event, Event::MessageSent(_)))
                .count();
            if run > 0 {
                self.apply_messages(&events[start..start + run]).await?;
                start += run;
            } else {
                self.apply(&events[start]).await?;
                start += 1;
            }
        }
        Ok(())
    }

    async fn apply(&self, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        match &envelope.event {
            Event::UserRegistered(e) => {
                self.store
                    .put_profile(&ChatProfile {
                        user_id: e.user_id,
                        username: e.username.clone(),
                        display_name: e.display_name.clone(),
                    })
                    .await?;
                if self.erased(e.user_id).await? {
                    self.store.remove_profile(e.user_id).await?;
                }
                report_synced(self.onboarding.as_ref(), envelope, Self::NAME).await
            }
            Event::UserProfileUpdated(e) => {
                self.store.rename(e.user_id, &e.display_name).await?;
                if self.erased(e.user_id).await? {
                    self.store.remove_profile(e.user_id).await?;
                }
                Ok(())
            }
            Event::UserRegistrationRolledBack(e) => {
                Ok(self.store.remove_profile(e.user_id).await?)
            }
            Event::ConversationStarted(e) => {
                self.store
                    .start(&StartedConversation {
                        conversation_id: e.conversation_id,
                        started_by: e.started_by,
                        members: e.members.clone(),
                        title: e.title.clone(),
                        started_at: envelope.recorded_at,
                        position: envelope.global_position,
                    })
                    .await?;
                // As for a message (below): the starter may have been erased meanwhile.
                if self.erased(e.started_by).await? {
                    self.store.forget(e.started_by).await?;
                }
                Ok(())
            }
            Event::MessageSent(_) => self.apply_messages(std::slice::from_ref(envelope)).await,
            Event::ConversationRead(e) => {
                self.store
                    .mark_read(e.reader_id, e.conversation_id, e.up_to)
                    .await?;
                let data = serde_json::json!({
                    "conversation_id": e.conversation_id,
                    "up_to": e.up_to,
                });
                self.push(&[e.reader_id], "conversation_read", &data, envelope)
                    .await
            }
            Event::UserErased(e) => {
                self.store.remove_profile(e.user_id).await?;
                if let Some(presence) = &self.presence {
                    presence.forget(e.user_id).await?;
                }
                let members = self.store.forget(e.user_id).await?;
                if let Some(live) = &self.live {
                    let channels: Vec<String> = members.into_iter().map(user_channel).collect();
                    live.retract(&channels, e.user_id).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
