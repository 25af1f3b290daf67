//! [`Event`]: the union of the current version of every event type, and the only way to
//! turn stored payloads into typed events ([`Event::decode`]) and back ([`Event::encode`]).

use schemars::{schema_for, Schema};
use serde_json::Value;

use crate::comment::CommentAddedV1;
use crate::like::{PostLikedV1, PostUnlikedV1};
use crate::messaging::{ConversationReadV1, ConversationStartedV1, MessageSentV1};
use crate::onboarding::{OnboardingCompletedV1, OnboardingFailedV1, UserSyncedV1};
use crate::post::{PostDeletedV1, PostPublishedV1};
use crate::social::{FollowedV1, UnfollowedV1};
use crate::stream_type;
use crate::upcast;
use crate::user::{
    UserEmailVerifiedV1, UserErasedV1, UserNotificationsReadV1, UserPasswordChangedV1,
    UserPasswordResetRequestedV1, UserProfileUpdatedV1, UserRegisteredV1, UserRegisteredV2,
    UserRegisteredV3, UserRegistrationRolledBackV1, UserRoleGrantedV1, UserTwoFactorDisabledV1,
    UserTwoFactorEnabledV1,
};

/// A stored payload could not be turned into an [`Event`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("unknown schema version {schema_version} of `{event_type}`")]
    UnknownVersion {
        event_type: String,
        schema_version: u32,
    },
    #[error("payload of `{event_type}` v{schema_version} does not match its schema: {source}")]
    Invalid {
        event_type: String,
        schema_version: u32,
        #[source]
        source: serde_json::Error,
    },
}

/// An event could not be serialised (never expected for these plain types).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode `{event_type}`: {source}")]
pub struct EncodeError {
    pub event_type: &'static str,
    #[source]
    pub source: serde_json::Error,
}

/// An [`Event`] was handed to an aggregate or stream it does not belong to.
#[derive(Debug, thiserror::Error)]
#[error("event `{event_type}` does not belong to a `{stream_type}` stream")]
pub struct UnexpectedEvent {
    pub event_type: &'static str,
    pub stream_type: &'static str,
}

/// One table drives the whole catalogue: the variant, its current payload type, the stable
/// `event_type` string, the current `schema_version` and the stream type it lives on.
macro_rules! catalogue {
    ($( $variant:ident($payload:ty) = $name:literal, v $version:literal, $stream:expr; )*) => {
        /// Every event type in its current schema version.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Event {
            $( $variant($payload), )*
        }

        /// The type of an [`Event`], without its payload (what a projection subscribes to).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $( $variant, )*
        }

        impl EventKind {
            /// Every event type, in catalogue order.
            pub const ALL: &'static [EventKind] = &[$( EventKind::$variant, )*];

            /// The stable `event_type` string.
            pub const fn as_str(self) -> &'static str {
                match self { $( EventKind::$variant => $name, )* }
            }

            /// The schema version that [`Event::encode`] writes and [`Event::decode`] returns.
            pub const fn current_version(self) -> u32 {
                match self { $( EventKind::$variant => $version, )* }
            }

            /// The stream type events of this kind are appended to.
            pub const fn stream_type(self) -> &'static str {
                match self { $( EventKind::$variant => $stream, )* }
            }

            /// Looks an `event_type` string up.
            pub fn parse(event_type: &str) -> Option<EventKind> {
                match event_type { $( $name => Some(EventKind::$variant), )* _ => None }
            }
        }

        impl Event {
            pub const fn kind(&self) -> EventKind {
                match self { $( Event::$variant(_) => EventKind::$variant, )* }
            }

            /// Serialises the payload in its current schema version.
            ///
            /// # Errors
            /// Only if serde_json fails on the payload, which these plain types never do.
            pub fn encode(&self) -> Result<Value, EncodeError> {
                let encoded = match self { $( Event::$variant(p) => serde_json::to_value(p), )* };
                encoded.map_err(|source| EncodeError { event_type: self.event_type(), source })
            }

            /// Turns a stored `(event_type, schema_version, payload)` into the current typed
            /// event, upcasting older versions first.
            ///
            /// # Errors
            /// [`DecodeError`] for an unknown type or version or a payload that does not
            /// match its schema.
            pub fn decode(event_type: &str, schema_version: u32, payload: Value) -> Result<Event, DecodeError> {
                let kind = EventKind::parse(event_type)
                    .ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?;
                let (version, payload) = upcast::to_current(kind, schema_version, payload)?;
                if version != kind.current_version() {
                    return Err(DecodeError::UnknownVersion {
                        event_type: event_type.to_owned(),
                        schema_version,
                    });
                }
                let invalid = |source| DecodeError::Invalid {
                    event_type: event_type.to_owned(),
                    schema_version,
                    source,
                };
                Ok(match kind {
                    $( EventKind::$variant => Event::$variant(serde_json::from_value(payload).map_err(invalid)?), )*
                })
            }
        }

        $(
            impl From<$payload> for Event {
                fn from(payload: $payload) -> Self {
                    Event::$variant(payload)
                }
            }
        )*
    };
}

catalogue! {
    UserRegistered(UserRegisteredV3) = "user.registered", v 3, stream_type::USER;
    UserRegistrationRolledBack(UserRegistrationRolledBackV1) = "user.registration_rolled_back", v 1, stream_type::USER;
    UserProfileUpdated(UserProfileUpdatedV1) = "user.profile_updated", v 1, stream_type::USER;
    UserRoleGranted(UserRoleGrantedV1) = "user.role_granted", v 1, stream_type::USER;
    UserErased(UserErasedV1) = "user.erased", v 1, stream_type::USER;
    UserEmailVerified(UserEmailVerifiedV1) = "user.email_verified", v 1, stream_type::USER;
    UserPasswordResetRequested(UserPasswordResetRequestedV1) = "user.password_reset_requested", v 1, stream_type::USER;
    UserPasswordChanged(UserPasswordChangedV1) = "user.password_changed", v 1, stream_type::USER;
    UserTwoFactorEnabled(UserTwoFactorEnabledV1) = "user.two_factor_enabled", v 1, stream_type::USER;
    UserTwoFactorDisabled(UserTwoFactorDisabledV1) = "user.two_factor_disabled", v 1, stream_type::USER;
    UserNotificationsRead(UserNotificationsReadV1) = "user.notifications_read", v 1, stream_type::USER;
    Followed(FollowedV1) = "social.followed", v 1, stream_type::SOCIAL_GRAPH;
    Unfollowed(UnfollowedV1) = "social.unfollowed", v 1, stream_type::SOCIAL_GRAPH;
    PostPublished(PostPublishedV1) = "post.published", v 1, stream_type::POST;
    PostDeleted(PostDeletedV1) = "post.deleted", v 1, stream_type::POST;
    CommentAdded(CommentAddedV1) = "comment.added", v 1, stream_type::COMMENT;
    PostLiked(PostLikedV1) = "post.liked", v 1, stream_type::LIKE;
    PostUnliked(PostUnlikedV1) = "post.unliked", v 1, stream_type::LIKE;
    UserSynced(UserSyncedV1) = "onboarding.user_synced", v 1, stream_type::ONBOARDING;
    OnboardingCompleted(OnboardingCompletedV1) = "onboarding.completed", v 1, stream_type::ONBOARDING;
    OnboardingFailed(OnboardingFailedV1) = "onboarding.failed", v 1, stream_type::ONBOARDING;
    ConversationStarted(ConversationStartedV1) = "conversation.started", v 1, stream_type::CONVERSATION;
    MessageSent(MessageSentV1) = "message.sent", v 1, stream_type::CONVERSATION;
    ConversationRead(ConversationReadV1) = "conversation.read", v 1, stream_type::CONVERSATION;
}

impl Event {
    /// The stable `event_type` string.
    pub const fn event_type(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The schema version [`Event::encode`] writes.
    pub const fn schema_version(&self) -> u32 {
        self.kind().current_version()
    }
}

/// Every `(event_type, schema_version)` ever published, with the JSON Schema of its Rust
/// type. A version stays here forever once events of it may be stored; the files under
/// `schemas/` and `fixtures/` are checked against this list.
pub fn published_schemas() -> Vec<(&'static str, u32, Schema)> {
    vec![
        ("user.registered", 1, schema_for!(UserRegisteredV1)),
        ("user.registered", 2, schema_for!(UserRegisteredV2)),
        ("user.registered", 3, schema_for!(UserRegisteredV3)),
        (
            "user.registration_rolled_back",
            1,
            schema_for!(UserRegistrationRolledBackV1),
        ),
        ("user.profile_updated", 1, schema_for!(UserProfileUpdatedV1)),
        ("user.role_granted", 1, schema_for!(UserRoleGrantedV1)),
        ("user.erased", 1, schema_for!(UserErasedV1)),
        ("user.email_verified", 1, schema_for!(UserEmailVerifiedV1)),
        (
            "user.password_reset_requested",
            1,
            schema_for!(UserPasswordResetRequestedV1),
        ),
        (
            "user.password_changed",
            1,
            schema_for!(UserPasswordChangedV1),
        ),
        (
            "user.two_factor_enabled",
            1,
            schema_for!(UserTwoFactorEnabledV1),
        ),
        (
            "user.two_factor_disabled",
            1,
            schema_for!(UserTwoFactorDisabledV1),
        ),
        (
            "user.notifications_read",
            1,
            schema_for!(UserNotificationsReadV1),
        ),
        ("social.followed", 1, schema_for!(FollowedV1)),
        ("social.unfollowed", 1, schema_for!(UnfollowedV1)),
        ("post.published", 1, schema_for!(PostPublishedV1)),
        ("post.deleted", 1, schema_for!(PostDeletedV1)),
        ("comment.added", 1, schema_for!(CommentAddedV1)),
        ("post.liked", 1, schema_for!(PostLikedV1)),
        ("post.unliked", 1, schema_for!(PostUnlikedV1)),
        ("onboarding.user_synced", 1, schema_for!(UserSyncedV1)),
        (
            "onboarding.completed",
            1,
            schema_for!(OnboardingCompletedV1),
        ),
        ("onboarding.failed", 1, schema_for!(OnboardingFailedV1)),
        (
            "conversation.started",
            1,
            schema_for!(ConversationStartedV1),
        ),
        ("message.sent", 1, schema_for!(MessageSentV1)),
        ("conversation.read", 1, schema_for!(ConversationReadV1)),
    ]
}
