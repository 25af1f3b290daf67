//! The documents of the content model as readers see them — a profile, a post, a comment —
//! and what a counted write did. A leaf: the content stores, the caches and the queries
//! share them (also re-exported from [`crate::content`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user's public profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
    pub registered_at: DateTime<Utc>,
}

/// A post as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostDoc {
    pub post_id: Uuid,
    pub author_id: Uuid,
    /// Global position of `post.published`.
    pub position: i64,
    pub title: String,
    pub body_markdown: String,
    /// `body_markdown` rendered and sanitised.
    pub body_html: String,
    /// Plain text of the body, shortened, for feed items.
    pub preview: String,
    pub media: Vec<String>,
    pub like_count: i64,
    pub comment_count: i64,
    pub created_at: DateTime<Utc>,
}

/// A comment as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentDoc {
    pub comment_id: Uuid,
    pub post_id: Uuid,
    pub author_id: Uuid,
    /// Global position of `comment.added`: the sort key and the pagination cursor.
    pub position: i64,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// What a counted write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// False when the write was already applied (a redelivery) or the post is unknown or
    /// deleted.
    pub changed: bool,
    /// The count after the write.
    pub count: i64,
}
