//! `onboarding.*` events: the registration saga's progress (DESIGN §7).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `onboarding.user_synced` v1: one required downstream projection has the new user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSyncedV1 {
    pub user_id: Uuid,
    /// Name of the projection that synced the user (`timeline`, `content`, …).
    pub projection: String,
}

/// `onboarding.completed` v1: every required projection synced the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnboardingCompletedV1 {
    pub user_id: Uuid,
}

/// `onboarding.failed` v1: a downstream dead-lettered the user or the deadline passed; the
/// registration is compensated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnboardingFailedV1 {
    pub user_id: Uuid,
    pub reason: String,
}
