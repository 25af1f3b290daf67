//! `comment.*` events. Each comment is its own stream, so a busy post never serialises its
//! commenters on one stream version.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `comment.added` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentAddedV1 {
    pub comment_id: Uuid,
    pub post_id: Uuid,
    pub author_id: Uuid,
    pub body: String,
}
