//! `post.*` events: publishing and deleting posts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `post.published` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostPublishedV1 {
    pub post_id: Uuid,
    pub author_id: Uuid,
    pub title: String,
    /// Raw markdown as the author wrote it; rendering and sanitising is the read side's job.
    pub body_markdown: String,
    /// Absolute `http(s)` URLs of attached media.
    pub media: Vec<String>,
}

/// `post.deleted` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostDeletedV1 {
    pub post_id: Uuid,
    pub author_id: Uuid,
}
