//! `user.*` events: registration, its compensation, profile changes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `user.registered` v1: the first published shape, where the display name was optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRegisteredV1 {
    pub user_id: Uuid,
    /// 3–30 characters of `[a-z0-9_]`, unique across users.
    pub username: String,
    /// Lower-cased; unique across users.
    pub email: String,
    pub display_name: Option<String>,
    /// PHC string of the password hash (Argon2id). Never the password itself.
    pub password_hash: String,
}

/// `user.registered` v2: the display name is always present (v1 events without one take the
/// username, see [`crate::upcast`]). Still carries the password hash; v3 does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRegisteredV2 {
    pub user_id: Uuid,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub password_hash: String,
}

impl From<UserRegisteredV1> for UserRegisteredV2 {
    fn from(v1: UserRegisteredV1) -> Self {
        let display_name = v1.display_name.unwrap_or_else(|| v1.username.clone());
        Self {
            user_id: v1.user_id,
            username: v1.username,
            email: v1.email,
            display_name,
            password_hash: v1.password_hash,
        }
    }
}

/// `user.registered` v3: no secret. The password hash lives in the store's credentials,
/// written in the same transaction as this event; older versions upcast to this one drop it
/// (and every path that shows stored payloads redacts it, see [`crate::redact`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRegisteredV3 {
    pub user_id: Uuid,
    pub username: String,
    pub email: String,
    pub display_name: String,
}

impl From<UserRegisteredV2> for UserRegisteredV3 {
    fn from(v2: UserRegisteredV2) -> Self {
        Self {
            user_id: v2.user_id,
            username: v2.username,
            email: v2.email,
            display_name: v2.display_name,
        }
    }
}

/// `user.registration_rolled_back` v1: the compensation of a registration whose onboarding
/// failed. Frees the username and email again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRegistrationRolledBackV1 {
    pub user_id: Uuid,
    pub reason: String,
}

/// `user.erased` v1: the person's data was erased at their request (or an administrator's).
/// Their data key is destroyed in the same transaction, so the personal fields of their
/// events no longer open; read models drop their profile, posts and comments. Frees the
/// username and email again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserErasedV1 {
    pub user_id: Uuid,
}

/// `user.profile_updated` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserProfileUpdatedV1 {
    pub user_id: Uuid,
    pub display_name: String,
}

/// `user.role_granted` v1: an administrator granted a role (`admin`, `auditor`, `analyst`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRoleGrantedV1 {
    pub user_id: Uuid,
    pub role: String,
}

/// `user.email_verified` v1: the person followed the link emailed to their address, which is
/// the address of their registration (an address change would verify anew).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserEmailVerifiedV1 {
    pub user_id: Uuid,
}

/// `user.password_reset_requested` v1: someone asked for a reset link for this account's
/// address. The link's token is never stored anywhere: it is a MAC, under the server's key,
/// of the person and `request_id`, so only the emailer can make it and only this request
/// (the newest, until `expires_at`) accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPasswordResetRequestedV1 {
    pub user_id: Uuid,
    pub request_id: Uuid,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// `user.password_changed` v1: a new password hash was stored (in the credentials, in the
/// transaction of this event); every login of the person was ended. `via` is `reset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPasswordChangedV1 {
    pub user_id: Uuid,
    pub via: String,
}

/// `user.two_factor_enabled` v1: logins now need a TOTP code or a recovery code. The seed and
/// the recovery codes' hashes are credentials, stored in the transaction of this event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserTwoFactorEnabledV1 {
    pub user_id: Uuid,
}

/// `user.two_factor_disabled` v1: the seed and recovery codes were deleted with this event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserTwoFactorDisabledV1 {
    pub user_id: Uuid,
}

/// `user.notifications_read` v1: the person read their notifications up to `up_to` (the
/// global log position of the newest one they saw): those at or below it are read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserNotificationsReadV1 {
    pub user_id: Uuid,
    pub up_to: i64,
}
