//! `conversation.*` and `message.*` events: one stream per conversation, so its messages
//! are ordered, and the members' reads with them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `conversation.started` v1: a conversation between `members` (the starter among them).
/// `title` is empty when none was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationStartedV1 {
    pub conversation_id: Uuid,
    pub started_by: Uuid,
    pub members: Vec<Uuid>,
    pub title: String,
}

/// `message.sent` v1: `body` is the sender's Markdown, as written; the read side sanitises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageSentV1 {
    pub conversation_id: Uuid,
    pub message_id: Uuid,
    pub sender_id: Uuid,
    pub body: String,
}

/// `conversation.read` v1: `reader_id` has read every message up to `up_to` (a message id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationReadV1 {
    pub conversation_id: Uuid,
    pub reader_id: Uuid,
    pub up_to: Uuid,
}
