//! `social.*` events: the follow graph. The stream is the follower's social graph.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `social.followed` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FollowedV1 {
    pub follower_id: Uuid,
    pub followee_id: Uuid,
}

/// `social.unfollowed` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnfollowedV1 {
    pub follower_id: Uuid,
    pub followee_id: Uuid,
}
