//! The [`User`] aggregate: registration, its compensation, and the profile.
//!
//! Stream id: the user's uuid. Username and email uniqueness spans users, so it is not decided
//! here: a registration *claims* both values ([`Claims`]) and the event store rejects the
//! append when another user holds one, which surfaces as [`UserError::UsernameTaken`] or
//! [`UserError::EmailTaken`].

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use event_schemas::stream_type;
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use event_schemas::user::{
    UserEmailVerifiedV1, UserErasedV1, UserNotificationsReadV1, UserPasswordChangedV1,
    UserPasswordResetRequestedV1, UserProfileUpdatedV1, UserRegisteredV3,
    UserRegistrationRolledBackV1, UserRoleGrantedV1, UserTwoFactorDisabledV1,
    UserTwoFactorEnabledV1,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::claims::{Claim, ClaimTaken, Claims, Credential};
use crate::text::trimmed_within;
use crate::wire::domain_events;

/// Claim scope of usernames.
pub const USERNAME_CLAIM: &str = "username";
/// Claim scope of (lower-cased) email addresses.
pub const EMAIL_CLAIM: &str = "email";
/// Credential kind of the password hash.
pub const PASSWORD_CREDENTIAL: &str = "password";
/// Credential kind of the TOTP seed (RFC 6238) of a person with two-factor login.
pub const TOTP_CREDENTIAL: &str = "totp";
/// Credential kind of the hashes of a person's unused-or-used recovery codes.
pub const RECOVERY_CODES_CREDENTIAL: &str = "recovery_codes";
/// Credential kind of a TOTP seed offered but not yet confirmed with a code.
pub const TOTP_PENDING_CREDENTIAL: &str = "totp_pending";

const USERNAME_MIN: usize = 3;
const USERNAME_MAX: usize = 30;
const EMAIL_MAX: usize = 254;
const DISPLAY_NAME_MAX: usize = 50;

/// Commands of a [`User`].
#[derive(Debug, Clone)]
pub enum UserCommand {
    /// Registers a new user. `display_name` defaults to the username.
    RegisterUser {
        user_id: Uuid,
        /// 3–30 characters of `[a-z0-9_]`; not normalised, so `Ada` is rejected.
        username: String,
        /// `local@domain.tld`, at most 254 characters; stored lower-cased.
        email: String,
        /// Trimmed; 1–50 characters.
        display_name: Option<String>,
        /// The PHC string of the password hash, computed by the application layer. Stored
        /// as the user's [`PASSWORD_CREDENTIAL`], never in an event ([`Claims::credentials`]).
        password_hash: SecretString,
    },
    /// Changes the display name (trimmed; 1–50 characters).
    UpdateProfile { display_name: String },
    /// Compensates a registration whose onboarding failed; frees username and email.
    RollBackRegistration { reason: String },
    /// Grants one of [`ROLES`]; granting a held role changes nothing.
    GrantRole { role: String },
    /// Erases the person: their data key is destroyed with the event (their personal data
    /// in the log no longer opens), their password and claims are dropped. Erasing an
    /// erased user changes nothing.
    Erase,
    /// The person proved they read their address (the caller checked the emailed token).
    /// Verifying a verified address changes nothing.
    VerifyEmail,
    /// Opens password reset `request_id` until `expires_at`; it replaces an open one.
    RequestPasswordReset {
        request_id: Uuid,
        expires_at: DateTime<Utc>,
    },
    /// Sets a new password through reset `request_id`, which must be the open one and not
    /// expired at `now`; it closes the request (a token works once).
    ResetPassword {
        request_id: Uuid,
        now: DateTime<Utc>,
        password_hash: SecretString,
    },
    /// Turns two-factor login on with the confirmed `seed` and the hashes of the recovery
    /// codes (credentials, never in the event).
    EnableTwoFactor {
        seed: SecretString,
        recovery_code_hashes: SecretString,
    },
    /// Turns two-factor login off; the seed and the recovery codes are deleted.
    DisableTwoFactor,
    /// Marks the notifications up to log position `up_to` read; marking an older position
    /// changes nothing (marks never go back).
    MarkNotificationsRead { up_to: i64 },
}

/// The roles a user can be granted.
pub const ROLES: &[&str] = &["admin", "auditor", "analyst"];

domain_events! {
    /// Events of a [`User`] stream.
    pub enum UserEvent for User {
        Registered(UserRegisteredV3) = UserRegistered,
        RegistrationRolledBack(UserRegistrationRolledBackV1) = UserRegistrationRolledBack,
        ProfileUpdated(UserProfileUpdatedV1) = UserProfileUpdated,
        RoleGranted(UserRoleGrantedV1) = UserRoleGranted,
        Erased(UserErasedV1) = UserErased,
        EmailVerified(UserEmailVerifiedV1) = UserEmailVerified,
        PasswordResetRequested(UserPasswordResetRequestedV1) = UserPasswordResetRequested,
        PasswordChanged(UserPasswordChangedV1) = UserPasswordChanged,
        TwoFactorEnabled(UserTwoFactorEnabledV1) = UserTwoFactorEnabled,
        TwoFactorDisabled(UserTwoFactorDisabledV1) = UserTwoFactorDisabled,
        NotificationsRead(UserNotificationsReadV1) = UserNotificationsRead,
    }
}

/// Why a [`UserCommand`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("username must be 3 to 30 characters of a-z, 0-9 and _")]
    InvalidUsername,
    #[error("email must look like name@example.com and be at most 254 characters")]
    InvalidEmail,
    #[error("display name must be 1 to 50 characters")]
    InvalidDisplayName,
    #[error("password hash must not be empty")]
    EmptyPasswordHash,
    #[error("username is already taken")]
    UsernameTaken,
    #[error("email is already taken")]
    EmailTaken,
    #[error("user is already registered")]
    AlreadyRegistered,
    #[error("user is not registered")]
    NotRegistered,
    #[error("user registration was rolled back")]
    RolledBack,
    #[error("user was erased")]
    Erased,
    #[error("unknown role; roles are admin, auditor and analyst")]
    UnknownRole,
    #[error("the reset link is used, expired or replaced by a newer one")]
    ResetClosed,
    #[error("two-factor login is already on")]
    TwoFactorOn,
    #[error("two-factor login is off")]
    TwoFactorOff,
}

/// Where a user is in its life cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserStatus {
    /// No registration yet (a fresh stream).
    #[default]
    Unregistered,
    Registered,
    /// The registration was compensated; the stream is closed for good.
    RolledBack,
    /// The person was erased; the stream is closed for good and holds no personal data.
    Erased,
}

/// A user account. State is what the rules need, no more (it is snapshotted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    user_id: Uuid,
    status: UserStatus,
    username: String,
    display_name: String,
    email: String,
    roles: BTreeSet<String>,
    #[serde(default)]
    email_verified: bool,
    #[serde(default)]
    two_factor: bool,
    /// The open password reset: its id and when it expires.
    #[serde(default)]
    reset: Option<(Uuid, DateTime<Utc>)>,
    /// The position up to which notifications are read.
    #[serde(default)]
    notifications_read: i64,
}

impl User {
    /// The user's id; nil before registration.
    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    pub fn status(&self) -> UserStatus {
        self.status
    }

    /// Registered and not rolled back.
    pub fn is_active(&self) -> bool {
        self.status == UserStatus::Registered
    }

    /// Empty before registration.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Empty before registration.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// Lower-cased; empty before registration.
    pub fn email(&self) -> &str {
        &self.email
    }

    pub fn roles(&self) -> &BTreeSet<String> {
        &self.roles
    }

    /// Whether the person followed the link emailed to their address.
    pub fn email_verified(&self) -> bool {
        self.email_verified
    }

    /// Whether reset `request_id` is the open one and not expired at `now` (what
    /// `ResetPassword` requires).
    pub fn reset_open(&self, request_id: Uuid, now: DateTime<Utc>) -> bool {
        matches!(self.reset, Some((open, expires_at)) if open == request_id && now < expires_at)
    }

    /// Whether logging in needs a TOTP or recovery code.
    pub fn two_factor(&self) -> bool {
        self.two_factor
    }

    fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        match command {
            UserCommand::RegisterUser {
                user_id,
                username,
                email,
                display_name,
                password_hash,
            } => {
                if self.status != UserStatus::Unregistered {
                    return Err(UserError::AlreadyRegistered);
                }
                if !is_valid_username(&username) {
                    return Err(UserError::InvalidUsername);
                }
                let email = normalise_email(&email).ok_or(UserError::InvalidEmail)?;
                let display_name = match display_name {
                    Some(name) => valid_display_name(&name)?,
                    None => username.clone(),
                };
                if password_hash.expose_secret().is_empty() {
                    return Err(UserError::EmptyPasswordHash);
                }
                Ok(vec![UserEvent::Registered(UserRegisteredV3 {
                    user_id,
                    username,
                    email,
                    display_name,
                })])
            }
            UserCommand::UpdateProfile { display_name } => {
                self.ensure_active()?;
                let display_name = valid_display_name(&display_name)?;
                if display_name == self.display_name {
                    return Ok(Vec::new());
                }
                Ok(vec![UserEvent::ProfileUpdated(UserProfileUpdatedV1 {
                    user_id: self.user_id,
                    display_name,
                })])
            }
            UserCommand::GrantRole { role } => {
                self.ensure_active()?;
                if !ROLES.contains(&role.as_str()) {
                    return Err(UserError::UnknownRole);
                }
                if self.roles.contains(&role) {
                    return Ok(Vec::new());
                }
                Ok(vec![UserEvent::RoleGranted(UserRoleGrantedV1 {
                    user_id: self.user_id,
                    role,
                })])
            }
            UserCommand::VerifyEmail => {
                self.ensure_active()?;
                Ok(if self.email_verified {
                    Vec::new()
                } else {
                    vec![UserEvent::EmailVerified(UserEmailVerifiedV1 {
                        user_id: self.user_id,
                    })]
                })
            }
            UserCommand::RequestPasswordReset {
                request_id,
                expires_at,
            } => {
                self.ensure_active()?;
                Ok(vec![UserEvent::PasswordResetRequested(
                    UserPasswordResetRequestedV1 {
                        user_id: self.user_id,
                        request_id,
                        expires_at,
                    },
                )])
            }
            UserCommand::ResetPassword {
                request_id,
                now,
                password_hash,
            } => {
                self.ensure_active()?;
                if !self.reset_open(request_id, now) {
                    return Err(UserError::ResetClosed);
                }
                if password_hash.expose_secret().is_empty() {
                    return Err(UserError::EmptyPasswordHash);
                }
                Ok(vec![UserEvent::PasswordChanged(UserPasswordChangedV1 {
                    user_id: self.user_id,
                    via: "reset".to_owned(),
                })])
            }
            UserCommand::EnableTwoFactor { .. } => {
                self.ensure_active()?;
                if self.two_factor {
                    return Err(UserError::TwoFactorOn);
                }
                Ok(vec![UserEvent::TwoFactorEnabled(UserTwoFactorEnabledV1 {
                    user_id: self.user_id,
                })])
            }
            UserCommand::DisableTwoFactor => {
                self.ensure_active()?;
                if !self.two_factor {
                    return Err(UserError::TwoFactorOff);
                }
                Ok(vec![UserEvent::TwoFactorDisabled(
                    UserTwoFactorDisabledV1 {
                        user_id: self.user_id,
                    },
                )])
            }
            UserCommand::MarkNotificationsRead { up_to } => {
                self.ensure_active()?;
                Ok(if up_to > self.notifications_read {
                    vec![UserEvent::NotificationsRead(UserNotificationsReadV1 {
                        user_id: self.user_id,
                        up_to,
                    })]
                } else {
                    Vec::new()
                })
            }
            UserCommand::RollBackRegistration { reason } => match self.status {
                UserStatus::Unregistered => Err(UserError::NotRegistered),
                UserStatus::RolledBack | UserStatus::Erased => Ok(Vec::new()),
                UserStatus::Registered => Ok(vec![UserEvent::RegistrationRolledBack(
                    UserRegistrationRolledBackV1 {
                        user_id: self.user_id,
                        reason,
                    },
                )]),
            },
            // A rolled-back registration is erased too: its events hold personal data.
            UserCommand::Erase => match self.status {
                UserStatus::Unregistered => Err(UserError::NotRegistered),
                UserStatus::Erased => Ok(Vec::new()),
                UserStatus::Registered | UserStatus::RolledBack => {
                    Ok(vec![UserEvent::Erased(UserErasedV1 {
                        user_id: self.user_id,
                    })])
                }
            },
        }
    }

    fn ensure_active(&self) -> Result<(), UserError> {
        match self.status {
            UserStatus::Unregistered => Err(UserError::NotRegistered),
            UserStatus::RolledBack => Err(UserError::RolledBack),
            UserStatus::Erased => Err(UserError::Erased),
            UserStatus::Registered => Ok(()),
        }
    }
}

impl Aggregate for User {
    const TYPE: &'static str = stream_type::USER;
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: UserCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: UserEvent) {
        match event {
            UserEvent::Registered(e) => {
                self.user_id = e.user_id;
                self.status = UserStatus::Registered;
                self.username = e.username;
                self.display_name = e.display_name;
                self.email = e.email;
            }
            UserEvent::RegistrationRolledBack(_) => self.status = UserStatus::RolledBack,
            UserEvent::ProfileUpdated(e) => self.display_name = e.display_name,
            UserEvent::RoleGranted(e) => {
                self.roles.insert(e.role);
            }
            UserEvent::EmailVerified(_) => self.email_verified = true,
            UserEvent::PasswordResetRequested(e) => self.reset = Some((e.request_id, e.expires_at)),
            UserEvent::PasswordChanged(_) => self.reset = None,
            UserEvent::TwoFactorEnabled(_) => self.two_factor = true,
            UserEvent::TwoFactorDisabled(_) => self.two_factor = false,
            UserEvent::NotificationsRead(e) => self.notifications_read = e.up_to,
            // Nothing personal is kept: the state is snapshotted.
            UserEvent::Erased(e) => {
                *self = Self {
                    user_id: e.user_id,
                    status: UserStatus::Erased,
                    ..Self::default()
                };
            }
        }
    }
}

impl Claims for User {
    fn claims(event: &UserEvent) -> Vec<Claim> {
        match event {
            UserEvent::Registered(e) => vec![
                Claim::Reserve {
                    scope: USERNAME_CLAIM,
                    value: e.username.clone(),
                },
                Claim::Reserve {
                    scope: EMAIL_CLAIM,
                    // Already lower-cased by the rules; repeated so that a historical event
                    // can never claim a differently cased duplicate.
                    value: e.email.to_lowercase(),
                },
            ],
            UserEvent::RegistrationRolledBack(_) | UserEvent::Erased(_) => vec![Claim::ReleaseAll],
            UserEvent::ProfileUpdated(_)
            | UserEvent::RoleGranted(_)
            | UserEvent::EmailVerified(_)
            | UserEvent::PasswordResetRequested(_)
            | UserEvent::PasswordChanged(_)
            | UserEvent::TwoFactorEnabled(_)
            | UserEvent::TwoFactorDisabled(_)
            | UserEvent::NotificationsRead(_) => Vec::new(),
        }
    }

    /// A registration and a reset store the password hash; two-factor login stores its seed
    /// and recovery codes, and deletes them when turned off.
    fn credentials(command: &UserCommand) -> Vec<Credential> {
        match command {
            UserCommand::RegisterUser { password_hash, .. }
            | UserCommand::ResetPassword { password_hash, .. } => {
                vec![Credential::set(PASSWORD_CREDENTIAL, password_hash.clone())]
            }
            UserCommand::EnableTwoFactor {
                seed,
                recovery_code_hashes,
            } => vec![
                Credential::set(TOTP_CREDENTIAL, seed.clone()),
                Credential::set(RECOVERY_CODES_CREDENTIAL, recovery_code_hashes.clone()),
                Credential::delete(TOTP_PENDING_CREDENTIAL),
            ],
            UserCommand::DisableTwoFactor => vec![
                Credential::delete(TOTP_CREDENTIAL),
                Credential::delete(RECOVERY_CODES_CREDENTIAL),
            ],
            _ => Vec::new(),
        }
    }

    fn erases(event: &UserEvent) -> bool {
        matches!(event, UserEvent::Erased(_))
    }

    fn claim_rejected(taken: ClaimTaken) -> Option<UserError> {
        match taken.scope.as_str() {
            USERNAME_CLAIM => Some(UserError::UsernameTaken),
            EMAIL_CLAIM => Some(UserError::EmailTaken),
            _ => None,
        }
    }
}

/// 3–30 characters of `[a-z0-9_]` (the rule `RegisterUser` applies; exposed so callers can
/// refuse a bad name before doing expensive work such as hashing a password).
pub fn is_valid_username(username: &str) -> bool {
    (USERNAME_MIN..=USERNAME_MAX).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The lower-cased address if `email` looks like `local@domain.tld`: one `@`, a non-empty
/// local part, a domain of at least two non-empty dot-separated labels, no whitespace or
/// control characters, at most 254 characters. Deliverability is not this layer's business.
pub fn normalise_email(email: &str) -> Option<String> {
    if email.chars().count() > EMAIL_MAX
        || email.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return None;
    }
    let (local, domain) = email.split_once('@')?;
    let well_formed = !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty());
    well_formed.then(|| email.to_lowercase())
}

fn valid_display_name(name: &str) -> Result<String, UserError> {
    trimmed_within(name, DISPLAY_NAME_MAX)
        .map(str::to_owned)
        .ok_or(UserError::InvalidDisplayName)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cqrs_es::test::TestFramework;
    use event_schemas::Event;

    use super::*;

    type UserTest = TestFramework<User>;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";

    fn ada() -> Uuid {
        Uuid::from_u128(0xada)
    }

    fn register(username: &str, email: &str, display_name: Option<&str>) -> UserCommand {
        UserCommand::RegisterUser {
            user_id: ada(),
            username: username.to_owned(),
            email: email.to_owned(),
            display_name: display_name.map(str::to_owned),
            password_hash: HASH.into(),
        }
    }

    fn registered(username: &str, email: &str, display_name: &str) -> UserEvent {
        UserEvent::Registered(UserRegisteredV3 {
            user_id: ada(),
            username: username.to_owned(),
            email: email.to_owned(),
            display_name: display_name.to_owned(),
        })
    }

    fn ada_registered() -> UserEvent {
        registered("ada", "ada@example.com", "Ada Lovelace")
    }

    fn rolled_back() -> UserEvent {
        UserEvent::RegistrationRolledBack(UserRegistrationRolledBackV1 {
            user_id: ada(),
            reason: "timeline dead-lettered the user".to_owned(),
        })
    }

    fn profile_updated(display_name: &str) -> UserEvent {
        UserEvent::ProfileUpdated(UserProfileUpdatedV1 {
            user_id: ada(),
            display_name: display_name.to_owned(),
        })
    }

    fn update_profile(display_name: &str) -> UserCommand {
        UserCommand::UpdateProfile {
            display_name: display_name.to_owned(),
        }
    }

    fn roll_back() -> UserCommand {
        UserCommand::RollBackRegistration {
            reason: "timeline dead-lettered the user".to_owned(),
        }
    }

    fn username_outcome(username: &str) -> Result<(), UserError> {
        UserTest::with(())
            .given_no_previous_events()
            .when(register(username, "a@example.com", Some("A")))
            .inspect_result()
            .map(|_| ())
    }

    fn email_outcome(email: &str) -> Result<Vec<UserEvent>, UserError> {
        UserTest::with(())
            .given_no_previous_events()
            .when(register("ada", email, Some("Ada")))
            .inspect_result()
    }

    fn registered_display_name(display_name: Option<&str>) -> Result<String, UserError> {
        let events = UserTest::with(())
            .given_no_previous_events()
            .when(register("ada", "ada@example.com", display_name))
            .inspect_result()?;
        match events.as_slice() {
            [UserEvent::Registered(e)] => Ok(e.display_name.clone()),
            other => panic!("expected one Registered event, got {other:?}"),
        }
    }

    // Email verification, password reset, two-factor login

    fn request(id: u128, expires_at: DateTime<Utc>) -> UserEvent {
        UserEvent::PasswordResetRequested(UserPasswordResetRequestedV1 {
            user_id: ada(),
            request_id: Uuid::from_u128(id),
            expires_at,
        })
    }

    fn reset(id: u128, now: DateTime<Utc>) -> UserCommand {
        UserCommand::ResetPassword {
            request_id: Uuid::from_u128(id),
            now,
            password_hash: HASH.into(),
        }
    }

    fn changed() -> UserEvent {
        UserEvent::PasswordChanged(UserPasswordChangedV1 {
            user_id: ada(),
            via: "reset".to_owned(),
        })
    }

    #[test]
    fn verifying_an_address_once_records_it_and_again_changes_nothing() {
        let verified = UserEvent::EmailVerified(UserEmailVerifiedV1 { user_id: ada() });
        UserTest::with(())
            .given(vec![ada_registered()])
            .when(UserCommand::VerifyEmail)
            .then_expect_events(vec![verified.clone()]);
        UserTest::with(())
            .given(vec![ada_registered(), verified])
            .when(UserCommand::VerifyEmail)
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_reset_works_for_the_open_request_once_before_it_expires() {
        let now = Utc::now();
        let later = now + chrono::Duration::minutes(30);
        UserTest::with(())
            .given(vec![ada_registered(), request(1, later)])
            .when(reset(1, now))
            .then_expect_events(vec![changed()]);
        // Used.
        UserTest::with(())
            .given(vec![ada_registered(), request(1, later), changed()])
            .when(reset(1, now))
            .then_expect_error(UserError::ResetClosed);
        // Expired.
        UserTest::with(())
            .given(vec![ada_registered(), request(1, later)])
            .when(reset(1, later))
            .then_expect_error(UserError::ResetClosed);
        // Replaced by a newer request.
        UserTest::with(())
            .given(vec![ada_registered(), request(1, later), request(2, later)])
            .when(reset(1, now))
            .then_expect_error(UserError::ResetClosed);
        // Never requested.
        UserTest::with(())
            .given(vec![ada_registered()])
            .when(reset(1, now))
            .then_expect_error(UserError::ResetClosed);
    }

    #[test]
    fn a_reset_stores_the_new_hash_and_two_factor_stores_and_deletes_its_secrets() {
        let stored = |command: &UserCommand| -> Vec<(&'static str, bool)> {
            User::credentials(command)
                .into_iter()
                .map(|c| (c.kind, c.secret.is_some()))
                .collect()
        };
        assert_eq!(
            stored(&reset(1, Utc::now())),
            vec![(PASSWORD_CREDENTIAL, true)]
        );
        let enable = UserCommand::EnableTwoFactor {
            seed: "SEED".into(),
            recovery_code_hashes: "h1\nh2".into(),
        };
        assert_eq!(
            stored(&enable),
            vec![
                (TOTP_CREDENTIAL, true),
                (RECOVERY_CODES_CREDENTIAL, true),
                (TOTP_PENDING_CREDENTIAL, false)
            ]
        );
        assert_eq!(
            stored(&UserCommand::DisableTwoFactor),
            vec![(TOTP_CREDENTIAL, false), (RECOVERY_CODES_CREDENTIAL, false)]
        );
    }

    #[test]
    fn two_factor_turns_on_and_off_once_each() {
        let on = UserEvent::TwoFactorEnabled(UserTwoFactorEnabledV1 { user_id: ada() });
        let off = UserEvent::TwoFactorDisabled(UserTwoFactorDisabledV1 { user_id: ada() });
        let enable = || UserCommand::EnableTwoFactor {
            seed: "SEED".into(),
            recovery_code_hashes: "h".into(),
        };
        UserTest::with(())
            .given(vec![ada_registered()])
            .when(enable())
            .then_expect_events(vec![on.clone()]);
        UserTest::with(())
            .given(vec![ada_registered(), on.clone()])
            .when(enable())
            .then_expect_error(UserError::TwoFactorOn);
        UserTest::with(())
            .given(vec![ada_registered(), on.clone()])
            .when(UserCommand::DisableTwoFactor)
            .then_expect_events(vec![off.clone()]);
        UserTest::with(())
            .given(vec![ada_registered(), on, off])
            .when(UserCommand::DisableTwoFactor)
            .then_expect_error(UserError::TwoFactorOff);
    }

    // RegisterUser

    #[test]
    fn registering_a_fresh_user_emits_registered() {
        UserTest::with(())
            .given_no_previous_events()
            .when(register("ada", "ada@example.com", Some("Ada Lovelace")))
            .then_expect_events(vec![ada_registered()]);
    }

    #[test]
    fn registering_an_already_registered_user_is_rejected() {
        UserTest::with(())
            .given(vec![ada_registered()])
            .when(register("ada", "ada@example.com", Some("Ada Lovelace")))
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn registering_a_rolled_back_user_again_is_rejected() {
        UserTest::with(())
            .given(vec![ada_registered(), rolled_back()])
            .when(register("ada", "ada@example.com", None))
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn usernames_of_3_to_30_characters_are_accepted() {
        assert_eq!(username_outcome("abc"), Ok(()));
        assert_eq!(username_outcome(&"a".repeat(30)), Ok(()));
        assert_eq!(username_outcome("ada_lovelace_1815"), Ok(()));
        assert_eq!(username_outcome("___"), Ok(()));
        assert_eq!(username_outcome("007"), Ok(()));
    }

    #[test]
    fn usernames_shorter_than_3_or_longer_than_30_characters_are_rejected() {
        assert_eq!(username_outcome(""), Err(UserError::InvalidUsername));
        assert_eq!(username_outcome("ab"), Err(UserError::InvalidUsername));
        assert_eq!(
            username_outcome(&"a".repeat(31)),
            Err(UserError::InvalidUsername)
        );
    }

    #[test]
    fn usernames_with_uppercase_letters_are_rejected() {
        assert_eq!(username_outcome("Ada"), Err(UserError::InvalidUsername));
        assert_eq!(username_outcome("ADA"), Err(UserError::InvalidUsername));
    }

    #[test]
    fn usernames_with_other_characters_are_rejected() {
        for username in [
            "ada lovelace",
            " ada",
            "ada-l",
            "ada.l",
            "ada@l",
            "adé",
            "ада",
            "ada\n",
            "ab\u{301}",
        ] {
            assert_eq!(
                username_outcome(username),
                Err(UserError::InvalidUsername),
                "{username:?}"
            );
        }
    }

    #[test]
    fn a_unicode_username_is_rejected_even_within_the_byte_length() {
        // Three characters, six bytes: neither count makes it valid.
        assert_eq!(username_outcome("ééé"), Err(UserError::InvalidUsername));
    }

    #[test]
    fn well_formed_emails_are_accepted() {
        for email in [
            "a@b.co",
            "ada.lovelace+feed@mail.example.org",
            "x_y-z@sub.domain.example",
            "ünïcode@exämple.de",
        ] {
            assert!(email_outcome(email).is_ok(), "{email:?}");
        }
    }

    #[test]
    fn emails_are_stored_lower_cased() {
        UserTest::with(())
            .given_no_previous_events()
            .when(register(
                "ada",
                "Ada.Lovelace@Example.COM",
                Some("Ada Lovelace"),
            ))
            .then_expect_events(vec![registered(
                "ada",
                "ada.lovelace@example.com",
                "Ada Lovelace",
            )]);
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for email in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@example.",
            "ada@.example.com",
            "ada@example..com",
            "ada@@example.com",
            "ada@b@example.com",
            "ada lovelace@example.com",
            " ada@example.com",
            "ada@example.com ",
            "ada@exa\tmple.com",
            "ada@example.com\n",
            "ada\u{0}@example.com",
        ] {
            assert_eq!(
                email_outcome(email),
                Err(UserError::InvalidEmail),
                "{email:?}"
            );
        }
    }

    #[test]
    fn an_email_of_254_characters_is_accepted_and_255_is_rejected() {
        let domain = "@example.com";
        let at_limit = format!("{}{domain}", "a".repeat(254 - domain.len()));
        let over_limit = format!("{}{domain}", "a".repeat(255 - domain.len()));
        assert_eq!(at_limit.len(), 254);
        assert!(email_outcome(&at_limit).is_ok());
        assert_eq!(email_outcome(&over_limit), Err(UserError::InvalidEmail));
    }

    #[test]
    fn a_missing_display_name_defaults_to_the_username() {
        assert_eq!(registered_display_name(None), Ok("ada".to_owned()));
    }

    #[test]
    fn the_display_name_is_trimmed() {
        assert_eq!(
            registered_display_name(Some("  Ada Lovelace \t")),
            Ok("Ada Lovelace".to_owned())
        );
    }

    #[test]
    fn display_names_of_1_to_50_characters_are_accepted() {
        assert_eq!(registered_display_name(Some("A")), Ok("A".to_owned()));
        let fifty = "é".repeat(50);
        assert_eq!(registered_display_name(Some(&fifty)), Ok(fifty.clone()));
        assert_eq!(
            registered_display_name(Some("Ада 🚀")),
            Ok("Ада 🚀".to_owned())
        );
    }

    #[test]
    fn empty_blank_or_longer_than_50_character_display_names_are_rejected() {
        for name in [
            String::new(),
            "   ".to_owned(),
            "\n\t".to_owned(),
            "a".repeat(51),
        ] {
            assert_eq!(
                registered_display_name(Some(&name)),
                Err(UserError::InvalidDisplayName),
                "{name:?}"
            );
        }
    }

    #[test]
    fn an_empty_password_hash_is_rejected() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::RegisterUser {
                user_id: ada(),
                username: "ada".to_owned(),
                email: "ada@example.com".to_owned(),
                display_name: None,
                password_hash: SecretString::default(),
            })
            .then_expect_error(UserError::EmptyPasswordHash);
    }

    // UpdateProfile

    #[test]
    fn updating_the_profile_of_a_registered_user_emits_profile_updated() {
        UserTest::with(())
            .given(vec![ada_registered()])
            .when(update_profile("Countess of Lovelace"))
            .then_expect_events(vec![profile_updated("Countess of Lovelace")]);
    }

    #[test]
    fn the_updated_display_name_is_trimmed() {
        UserTest::with(())
            .given(vec![ada_registered()])
            .when(update_profile("  Countess  "))
            .then_expect_events(vec![profile_updated("Countess")]);
    }

    #[test]
    fn updating_to_the_current_display_name_emits_nothing() {
        UserTest::with(())
            .given(vec![ada_registered()])
            .when(update_profile("Ada Lovelace"))
            .then_expect_events(vec![]);
        UserTest::with(())
            .given(vec![ada_registered(), profile_updated("Countess")])
            .when(update_profile(" Countess "))
            .then_expect_events(vec![]);
    }

    #[test]
    fn updating_back_to_an_earlier_display_name_emits_profile_updated() {
        UserTest::with(())
            .given(vec![ada_registered(), profile_updated("Countess")])
            .when(update_profile("Ada Lovelace"))
            .then_expect_events(vec![profile_updated("Ada Lovelace")]);
    }

    #[test]
    fn updating_the_profile_with_an_invalid_display_name_is_rejected() {
        for name in [String::new(), " ".to_owned(), "x".repeat(51)] {
            UserTest::with(())
                .given(vec![ada_registered()])
                .when(update_profile(&name))
                .then_expect_error(UserError::InvalidDisplayName);
        }
    }

    #[test]
    fn updating_the_profile_of_an_unregistered_user_is_rejected() {
        UserTest::with(())
            .given_no_previous_events()
            .when(update_profile("Ada"))
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn updating_the_profile_of_a_rolled_back_user_is_rejected() {
        UserTest::with(())
            .given(vec![ada_registered(), rolled_back()])
            .when(update_profile("Ada"))
            .then_expect_error(UserError::RolledBack);
    }

    // RollBackRegistration

    #[test]
    fn rolling_back_a_registered_user_emits_registration_rolled_back() {
        UserTest::with(())
            .given(vec![ada_registered(), profile_updated("Countess")])
            .when(roll_back())
            .then_expect_events(vec![rolled_back()]);
    }

    #[test]
    fn rolling_back_an_unregistered_user_is_rejected() {
        UserTest::with(())
            .given_no_previous_events()
            .when(roll_back())
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn rolling_back_a_rolled_back_user_again_emits_nothing() {
        UserTest::with(())
            .given(vec![ada_registered(), rolled_back()])
            .when(roll_back())
            .then_expect_events(vec![]);
    }

    // Erase

    fn erased() -> UserEvent {
        UserEvent::Erased(UserErasedV1 { user_id: ada() })
    }

    #[test]
    fn erasing_a_registered_or_rolled_back_user_emits_erased() {
        UserTest::with(())
            .given(vec![ada_registered()])
            .when(UserCommand::Erase)
            .then_expect_events(vec![erased()]);
        UserTest::with(())
            .given(vec![ada_registered(), rolled_back()])
            .when(UserCommand::Erase)
            .then_expect_events(vec![erased()]);
    }

    #[test]
    fn erasing_twice_emits_nothing_and_an_unregistered_user_cannot_be_erased() {
        UserTest::with(())
            .given(vec![ada_registered(), erased()])
            .when(UserCommand::Erase)
            .then_expect_events(vec![]);
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::Erase)
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn an_erased_user_keeps_nothing_personal_and_accepts_no_change() {
        let mut user = User::default();
        user.apply(ada_registered());
        user.apply(UserEvent::RoleGranted(UserRoleGrantedV1 {
            user_id: ada(),
            role: "admin".into(),
        }));
        user.apply(erased());
        assert_eq!(user.status(), UserStatus::Erased);
        assert!(!user.is_active());
        let snapshot = serde_json::to_string(&user).unwrap();
        for personal in ["ada@example.com", "Ada Lovelace", "\"ada\"", "admin"] {
            assert!(!snapshot.contains(personal), "{personal} in {snapshot}");
        }
        UserTest::with(())
            .given(vec![ada_registered(), erased()])
            .when(update_profile("Ada"))
            .then_expect_error(UserError::Erased);
        assert_eq!(User::claims(&erased()), vec![Claim::ReleaseAll]);
        assert!(User::erases(&erased()));
        assert!(!User::erases(&ada_registered()));
    }

    // State

    #[test]
    fn the_state_follows_the_life_cycle() {
        let mut user = User::default();
        assert_eq!(user.status(), UserStatus::Unregistered);
        assert!(!user.is_active());

        user.apply(ada_registered());
        assert_eq!(user.status(), UserStatus::Registered);
        assert!(user.is_active());
        assert_eq!(user.user_id(), ada());
        assert_eq!(user.username(), "ada");
        assert_eq!(user.display_name(), "Ada Lovelace");

        user.apply(profile_updated("Countess"));
        assert_eq!(user.display_name(), "Countess");

        user.apply(rolled_back());
        assert_eq!(user.status(), UserStatus::RolledBack);
        assert!(!user.is_active());
    }

    #[test]
    fn the_state_survives_a_json_snapshot() {
        let mut user = User::default();
        user.apply(ada_registered());
        let snapshot = serde_json::to_value(&user).unwrap();
        assert_eq!(serde_json::from_value::<User>(snapshot).unwrap(), user);
    }

    // Claims

    #[test]
    fn registering_claims_the_username_and_the_lower_cased_email() {
        let event = registered("ada", "Ada@Example.com", "Ada");
        assert_eq!(
            User::claims(&event),
            vec![
                Claim::Reserve {
                    scope: "username",
                    value: "ada".to_owned()
                },
                Claim::Reserve {
                    scope: "email",
                    value: "ada@example.com".to_owned()
                },
            ]
        );
    }

    #[test]
    fn rolling_back_releases_every_claim() {
        assert_eq!(User::claims(&rolled_back()), vec![Claim::ReleaseAll]);
    }

    #[test]
    fn updating_the_profile_claims_nothing() {
        assert_eq!(User::claims(&profile_updated("Ada")), vec![]);
    }

    #[test]
    fn a_taken_username_or_email_becomes_the_matching_rejection() {
        let taken = |scope: &str| ClaimTaken {
            scope: scope.to_owned(),
            value: "ada".to_owned(),
        };
        assert_eq!(
            User::claim_rejected(taken("username")),
            Some(UserError::UsernameTaken)
        );
        assert_eq!(
            User::claim_rejected(taken("email")),
            Some(UserError::EmailTaken)
        );
        assert_eq!(User::claim_rejected(taken("phone")), None);
    }

    // Wire

    #[test]
    fn user_events_round_trip_through_the_wire_catalogue() {
        crate::wire::testing::assert_wire_round_trip::<User>(
            vec![ada_registered(), profile_updated("Countess"), rolled_back()],
            Event::OnboardingCompleted(event_schemas::onboarding::OnboardingCompletedV1 {
                user_id: ada(),
            }),
        );
    }

    // GrantRole

    fn grant(role: &str) -> UserCommand {
        UserCommand::GrantRole {
            role: role.to_owned(),
        }
    }

    fn role_granted(role: &str) -> UserEvent {
        UserEvent::RoleGranted(UserRoleGrantedV1 {
            user_id: ada(),
            role: role.to_owned(),
        })
    }

    #[test]
    fn granting_a_known_role_to_a_registered_user_grants_it() {
        UserTest::with(())
            .given(vec![ada_registered()])
            .when(grant("auditor"))
            .then_expect_events(vec![role_granted("auditor")]);
    }

    #[test]
    fn granting_a_held_role_again_changes_nothing() {
        UserTest::with(())
            .given(vec![ada_registered(), role_granted("admin")])
            .when(grant("admin"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn granting_an_unknown_role_is_rejected() {
        UserTest::with(())
            .given(vec![ada_registered()])
            .when(grant("superuser"))
            .then_expect_error(UserError::UnknownRole);
    }

    #[test]
    fn granting_a_role_to_an_unregistered_or_rolled_back_user_is_rejected() {
        UserTest::with(())
            .given_no_previous_events()
            .when(grant("admin"))
            .then_expect_error(UserError::NotRegistered);
        UserTest::with(())
            .given(vec![ada_registered(), rolled_back()])
            .when(grant("admin"))
            .then_expect_error(UserError::RolledBack);
    }

    #[test]
    fn a_registration_stores_its_hash_as_a_credential_and_never_in_an_event() {
        let command = register("ada", "ada@example.com", None);
        assert!(!format!("{command:?}").contains(HASH), "Debug hides it");
        let credentials = User::credentials(&command);
        assert_eq!(credentials.len(), 1);
        assert_eq!(credentials[0].kind, PASSWORD_CREDENTIAL);
        assert_eq!(
            credentials[0]
                .secret
                .as_ref()
                .map(|s| s.expose_secret())
                .unwrap_or_default(),
            HASH
        );
        let events = User::default().decide(command).unwrap();
        for event in events {
            let wire = Event::from(event).encode().unwrap().to_string();
            assert!(!wire.contains(HASH) && !wire.contains("password"), "{wire}");
        }
        assert!(User::credentials(&update_profile("Ada")).is_empty());
    }

    #[test]
    fn login_data_and_roles_are_kept_in_the_state() {
        let mut user = User::default();
        user.apply(ada_registered());
        user.apply(role_granted("auditor"));
        assert_eq!(user.email(), "ada@example.com");
        assert!(user.roles().contains("auditor"));
    }
}
