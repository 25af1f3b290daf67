//! `post.liked` / `post.unliked` events. The stream is one user's like of one post
//! (`<post_id>:<user_id>`), so concurrent likers never conflict with each other.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `post.liked` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostLikedV1 {
    pub post_id: Uuid,
    pub user_id: Uuid,
}

/// `post.unliked` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostUnlikedV1 {
    pub post_id: Uuid,
    pub user_id: Uuid,
}
