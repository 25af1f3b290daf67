//! The emailer: a projection that sends the account emails over SMTP — the verification
//! link on `user.registered`, the welcome on `onboarding.completed`, the reset link on
//! `user.password_reset_requested`.
//!
//! **Once each.** An email is (kind, person, triggering event). Sending one inserts that key
//! into `mail.sent` in a transaction that stays open while the SMTP server takes the
//! message, and commits after it accepted it: a redelivery, a restarted worker or a second
//! worker finds the key (or waits on its row lock, then finds it) and sends nothing. A worker
//! killed before the commit leaves no key, and the email goes out on the retry; only a kill
//! between the server's acceptance and the commit — a window of one round trip — repeats it,
//! and then with the same `Message-ID` (`<kind.event@domain>`), by which mail clients
//! recognise the copy.
//!
//! **Retries.** An unreachable SMTP server is transient (retried with the runner's backoff,
//! never skipped); a message the server refuses for good (5xx) is poison and ends in the
//! dead letters after the runner's attempts, as with every projection.
//!
//! **Order.** Whom to write to comes from the person's own stream (`mail.recipients`),
//! which is one Kafka partition, in order. A welcome can be consumed before the registration
//! it follows (another topic): it waits in `mail.waiting` until the address arrives.
//!
//! **No history.** An event older than [`EmailSettings::max_age`] sends nothing (it is
//! recorded as skipped): a new emailer on an old log, or one back after a long outage, does
//! not mail links that expired long ago.
//!
//! Tokens are never stored: [`auth::account_token`] makes the same one from the event again.

mod templates;

use std::time::Duration;

use auth::account_token::{AccountTokens, Purpose};
use chrono::{DateTime, Utc};
use event_schemas::{Event, EventEnvelope};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ReadModelError;
use projection_runtime::runner::{ApplyError, Projection};
pub use templates::Rendered;

/// Kinds of email (the `kind` of `mail.sent`).
pub mod kind {
    pub const VERIFY_EMAIL: &str = "verify_email";
    pub const WELCOME: &str = "welcome";
    pub const PASSWORD_RESET: &str = "password_reset";
}

/// Registers the emailer's counters at zero for every kind (a short, fixed list), so that a
/// worker that has not sent an email yet exports `0` rather than no series.
fn register_metrics() {
    for kind in [kind::VERIFY_EMAIL, kind::WELCOME, kind::PASSWORD_RESET] {
        metrics::counter!("emails_sent_total", "kind" => kind).increment(0);
        metrics::counter!("email_failures_total", "kind" => kind).increment(0);
    }
    metrics::counter!("emails_skipped_total", "reason" => "too_old").increment(0);
}

/// How the emailer reaches its SMTP server and what it writes.
#[derive(Clone)]
pub struct EmailSettings {
    /// `smtp://host:port` (plain, as Mailpit), `smtp://…?tls=required` (STARTTLS) or
    /// `smtps://host` (TLS), with `user:password@` if the server wants them.
    pub smtp_url: SecretString,
    /// The sender, `Name <address>`.
    pub from: String,
    /// Where links point: the demo page's origin, e.g. `https://hybrid.example`.
    pub public_url: String,
    /// The token keys (from the server's secret, as the API's).
    pub tokens: AccountTokens,
    /// Events older than this send nothing.
    pub max_age: Duration,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSettings")
            .field("from", &self.from)
            .field("public_url", &self.public_url)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

/// Why the emailer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EmailConfigError {
    #[error("SMTP_URL is not a usable SMTP URL: {0}")]
    SmtpUrl(String),
    #[error("MAIL_FROM must be an address, optionally with a name (`Hybrid Live <no-reply@example.com>`): {0}")]
    From(String),
}

/// A person as the emailer knows them.
#[derive(Debug)]
struct Recipient {
    email: String,
    username: String,
    display_name: String,
}

/// What `mail.recipients` says of a person.
enum Known {
    Recipient(Recipient),
    /// Erased or rolled back: never written to.
    Gone,
    /// Not consumed yet.
    Unknown,
}

/// The `email` projection.
#[derive(Clone)]
pub struct EmailProjection {
    pool: PgPool,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    settings: EmailSettings,
}

impl std::fmt::Debug for EmailProjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailProjection")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// How long one SMTP exchange may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

impl EmailProjection {
    pub const NAME: &'static str = "email";

    /// # Errors
    /// An unusable `smtp_url` or `from`.
    pub fn new(pool: PgPool, settings: EmailSettings) -> Result<Self, EmailConfigError> {
        let transport =
            AsyncSmtpTransport::<Tokio1Executor>::from_url(settings.smtp_url.expose_secret())
                .map_err(|e| EmailConfigError::SmtpUrl(e.to_string()))?
                .timeout(Some(SMTP_TIMEOUT))
                .build();
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e: lettre::address::AddressError| EmailConfigError::From(e.to_string()))?;
        register_metrics();
        Ok(Self {
            pool,
            transport,
            from,
            settings,
        })
    }

    fn link(&self, param: &str, token: &str) -> String {
        format!(
            "{}/?{param}={token}",
            self.settings.public_url.trim_end_matches('/')
        )
    }

    async fn recipient(&self, user_id: Uuid) -> Result<Known, ApplyError> {
        let row: Option<(String, String, String, bool)> = sqlx::query_as(
            "SELECT email, username, display_name, gone FROM mail.recipients WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(ReadModelError::from)?;
        Ok(match row {
            None => Known::Unknown,
            Some((_, _, _, true)) => Known::Gone,
            Some((email, username, display_name, false)) => Known::Recipient(Recipient {
                email,
                username,
                display_name,
            }),
        })
    }

    /// The email of `kind` for `user_id`, triggered by `event_id`, to `to`.
    fn render(
        &self,
        kind: &str,
        user_id: Uuid,
        to: &Recipient,
        reset: Option<(Uuid, DateTime<Utc>)>,
    ) -> Option<Rendered> {
        let tokens = &self.settings.tokens;
        let name = to.display_name.as_str();
        match (kind, reset) {
            (kind::VERIFY_EMAIL, _) => {
                let token = tokens.make(Purpose::VerifyEmail, user_id, Uuid::nil(), &to.email);
                Some(templates::verify_email(
                    name,
                    &self.link("verify_email", &token),
                ))
            }
            (kind::WELCOME, _) => Some(templates::welcome(
                name,
                &to.username,
                self.settings.public_url.trim_end_matches('/'),
            )),
            (kind::PASSWORD_RESET, Some((request_id, expires_at))) => {
                let token = tokens.make(Purpose::ResetPassword, user_id, request_id, "");
                Some(templates::password_reset(
                    name,
                    &self.link("reset_password", &token),
                    expires_at,
                ))
            }
            _ => None,
        }
    }

    /// Sends email `kind` for `user_id` triggered by `event`, unless it went out already.
    async fn send_once(
        &self,
        kind: &'static str,
        user_id: Uuid,
        event_id: Uuid,
        to: &Recipient,
        reset: Option<(Uuid, DateTime<Utc>)>,
    ) -> Result<(), ApplyError> {
        let Some(rendered) = self.render(kind, user_id, to, reset) else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await.map_err(ReadModelError::from)?;
        // Waits on the row lock of a worker sending the same email right now.
        let fresh: Option<i32> = sqlx::query_scalar(
            "INSERT INTO mail.sent (kind, user_id, event_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING RETURNING 1",
        )
        .bind(kind)
        .bind(user_id)
        .bind(event_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ReadModelError::from)?;
        if fresh.is_none() {
            return Ok(());
        }
        let message = self.message(kind, event_id, to, rendered)?;
        self.transport.send(message).await.map_err(|e| {
            metrics::counter!("email_failures_total", "kind" => kind).increment(1);
            let detail = format!("SMTP: {e}");
            if e.is_permanent() {
                ApplyError::Poison(detail)
            } else {
                ApplyError::Transient(detail)
            }
        })?;
        tx.commit().await.map_err(ReadModelError::from)?;
        metrics::counter!("emails_sent_total", "kind" => kind).increment(1);
        tracing::info!(kind, %user_id, %event_id, "Email sent.");
        Ok(())
    }

    fn message(
        &self,
        kind: &str,
        event_id: Uuid,
        to: &Recipient,
        rendered: Rendered,
    ) -> Result<Message, ApplyError> {
        let to: Mailbox = format!(
            "{} <{}>",
            to.display_name.replace(['<', '>', '"'], ""),
            to.email
        )
        .parse()
        .or_else(|_| to.email.parse())
        .map_err(|e: lettre::address::AddressError| {
            ApplyError::Poison(format!("the recipient's address: {e}"))
        })?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .message_id(Some(format!(
                "<{kind}.{event_id}@{}>",
                self.from.email.domain()
            )))
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(rendered.text),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(rendered.html),
                    ),
            )
            .map_err(|e| ApplyError::Poison(format!("building the message: {e}")))
    }

    /// The email `kind` for `user_id` once the person is known; queued until then.
    async fn send_or_wait(
        &self,
        kind: &'static str,
        user_id: Uuid,
        event_id: Uuid,
    ) -> Result<(), ApplyError> {
        match self.recipient(user_id).await? {
            Known::Recipient(to) => self.send_once(kind, user_id, event_id, &to, None).await,
            Known::Gone => Ok(()),
            Known::Unknown => {
                sqlx::query(
                    "INSERT INTO mail.waiting (kind, user_id, event_id) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(kind)
                .bind(user_id)
                .bind(event_id)
                .execute(&self.pool)
                .await
                .map_err(ReadModelError::from)?;
                Ok(())
            }
        }
    }

    /// Sends what waited for `user_id`'s address.
    async fn release_waiting(&self, user_id: Uuid, to: &Recipient) -> Result<(), ApplyError> {
        let waiting: Vec<(String, Uuid)> =
            sqlx::query_as("SELECT kind, event_id FROM mail.waiting WHERE user_id = $1")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await
                .map_err(ReadModelError::from)?;
        for (waiting_kind, event_id) in waiting {
            if waiting_kind == kind::WELCOME {
                self.send_once(kind::WELCOME, user_id, event_id, to, None)
                    .await?;
            }
            sqlx::query(
                "DELETE FROM mail.waiting WHERE kind = $1 AND user_id = $2 AND event_id = $3",
            )
            .bind(&waiting_kind)
            .bind(user_id)
            .bind(event_id)
            .execute(&self.pool)
            .await
            .map_err(ReadModelError::from)?;
        }
        Ok(())
    }

    /// Forgets the person: their address and name go, a tombstone stays so that a late
    /// welcome is dropped rather than queued.
    async fn forget(&self, user_id: Uuid) -> Result<(), ApplyError> {
        let mut tx = self.pool.begin().await.map_err(ReadModelError::from)?;
        sqlx::query(
            "INSERT INTO mail.recipients (user_id, email, username, display_name, gone) \
             VALUES ($1, '', '', '', true) \
             ON CONFLICT (user_id) DO UPDATE \
                SET email = '', username = '', display_name = '', gone = true",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(ReadModelError::from)?;
        sqlx::query("DELETE FROM mail.waiting WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(ReadModelError::from)?;
        tx.commit().await.map_err(ReadModelError::from)?;
        Ok(())
    }

    fn too_old(&self, envelope: &EventEnvelope) -> bool {
        let age = Utc::now().signed_duration_since(envelope.recorded_at);
        let old = age.to_std().is_ok_and(|age| age > self.settings.max_age);
        if old {
            metrics::counter!("emails_skipped_total", "reason" => "too_old").increment(1);
            tracing::info!(event_id = %envelope.event_id, event_type = envelope.event.event_type(),
                "No email for an event older than the emailer's max age.");
        }
        old
    }
}

impl Projection for EmailProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            "user.registered"
                | "user.profile_updated"
                | "user.registration_rolled_back"
                | "user.erased"
                | "user.password_reset_requested"
                | "onboarding.completed"
        )
    }

    async fn apply(&self, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        let event_id = envelope.event_id;
        match &envelope.event {
            Event::UserRegistered(e) => {
                sqlx::query(
                    "INSERT INTO mail.recipients (user_id, email, username, display_name) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(e.user_id)
                .bind(&e.email)
                .bind(&e.username)
                .bind(&e.display_name)
                .execute(&self.pool)
                .await
                .map_err(ReadModelError::from)?;
                // The registration is the person's first event: they are who it says.
                let to = Recipient {
                    email: e.email.clone(),
                    username: e.username.clone(),
                    display_name: e.display_name.clone(),
                };
                if !self.too_old(envelope) {
                    self.send_once(kind::VERIFY_EMAIL, e.user_id, event_id, &to, None)
                        .await?;
                }
                self.release_waiting(e.user_id, &to).await
            }
            Event::UserProfileUpdated(e) => {
                sqlx::query(
                    "UPDATE mail.recipients SET display_name = $2 WHERE user_id = $1 AND NOT gone",
                )
                .bind(e.user_id)
                .bind(&e.display_name)
                .execute(&self.pool)
                .await
                .map_err(ReadModelError::from)?;
                Ok(())
            }
            Event::UserRegistrationRolledBack(e) => self.forget(e.user_id).await,
            Event::UserErased(e) => self.forget(e.user_id).await,
            Event::UserPasswordResetRequested(e) => {
                if self.too_old(envelope) || e.expires_at <= Utc::now() {
                    return Ok(());
                }
                match self.recipient(e.user_id).await? {
                    Known::Recipient(to) => {
                        self.send_once(
                            kind::PASSWORD_RESET,
                            e.user_id,
                            event_id,
                            &to,
                            Some((e.request_id, e.expires_at)),
                        )
                        .await
                    }
                    // The request follows the registration in the person's own stream.
                    Known::Gone | Known::Unknown => Ok(()),
                }
            }
            Event::OnboardingCompleted(e) => {
                if self.too_old(envelope) {
                    return Ok(());
                }
                self.send_or_wait(kind::WELCOME, e.user_id, event_id).await
            }
            _ => Ok(()),
        }
    }
}
