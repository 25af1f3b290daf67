//! The registration saga (DESIGN §7): every required downstream projection syncs a new
//! user, the last one completes the onboarding, a failure rolls the registration back.
//!
//! 1. `user.registered`: each downstream projection in [`OnboardingSettings::required`]
//!    (`timeline`, `content`, `messaging` by default) applies it and calls [`Onboarding::synced`]. One
//!    Lua script adds the projection to the user's set and answers whether every required
//!    one is there now: the last one to sync sees it, atomically, whatever the order.
//! 2. That projection asks the write side ([`Saga::complete`]) to record the syncs in the
//!    user's `onboarding` stream; the aggregate emits `onboarding.completed` exactly once
//!    (a redelivered `user.registered` finds it completed and appends nothing), so the log
//!    records it for audit.
//! 3. The `onboarding` projection ([`OnboardingProjection`]) pushes `onboarding_completed`
//!    to the user's live channel (once per event id; the entry is remembered as the user's
//!    outcome so a client that connects late still gets it).
//!
//! Failure: a downstream that dead-letters the user's `user.registered`, or the deadline
//! ([`OnboardingSettings::deadline`], swept by [`OnboardingProjection::sweep_deadlines`])
//! calls [`Saga::fail`] (`onboarding.failed`); the `onboarding` projection then compensates
//! — [`Saga::roll_back`] appends `user.registration_rolled_back`, which frees the username
//! and email — and pushes `onboarding_failed`. A completion and a failure race in the
//! aggregate: whichever is appended first wins, the other is refused.
//!
//! Deadlines are only set for registrations younger than the deadline when the `onboarding`
//! projection applies them: catching up on an old log must not roll back users who
//! registered before the saga existed.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use event_schemas::{Event, EventEnvelope};
use redis::aio::ConnectionManager;
use redis::Script;
use uuid::Uuid;

use crate::live::{user_channel, LivePublisher, Push};
use projection_runtime::{ApplyError, Projection};

use crate::{unavailable, LiveResult};

/// The saga's configuration.
#[derive(Debug, Clone)]
pub struct OnboardingSettings {
    /// Projections that must sync a new user (`ONBOARDING_REQUIRED`).
    pub required: BTreeSet<String>,
    /// A registration not completed this long after it was recorded is rolled back
    /// (`ONBOARDING_DEADLINE_SECS`).
    pub deadline: Duration,
}

impl Default for OnboardingSettings {
    fn default() -> Self {
        Self {
            required: ["timeline", "content", "messaging"]
                .map(str::to_owned)
                .into(),
            deadline: Duration::from_secs(60),
        }
    }
}

/// The saga's steps on the write side (implemented over the command handlers by the
/// application, so this crate stays free of `domain`). Every step is idempotent, and a step
/// the aggregate refuses because the saga already ended the other way is `Ok`.
#[async_trait::async_trait]
pub trait Saga: Send + Sync + Debug {
    /// Records that every required projection synced `user` (appends
    /// `onboarding.completed` once).
    async fn complete(&self, user: Uuid) -> Result<(), ApplyError>;
    /// Fails `user`'s onboarding (appends `onboarding.failed` once).
    async fn fail(&self, user: Uuid, reason: &str) -> Result<(), ApplyError>;
    /// Compensates the registration of `user` (appends `user.registration_rolled_back`).
    async fn roll_back(&self, user: Uuid, reason: &str) -> Result<(), ApplyError>;
}

/// KEYS: the user's synced set. ARGV: projection, ttl seconds, then every required
/// projection. Returns 1 when every required projection has synced the user.
const RECORD_SYNC: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 3, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then return 0 end
end
return 1
";

/// What downstream projections use to report a user synced or lost.
#[derive(Clone)]
pub struct Onboarding {
    redis: ConnectionManager,
    prefix: String,
    settings: OnboardingSettings,
    saga: Arc<dyn Saga>,
    record_sync: Script,
}

impl Debug for Onboarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Onboarding")
            .field("prefix", &self.prefix)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Onboarding {
    pub fn new(
        redis: ConnectionManager,
        prefix: &str,
        settings: OnboardingSettings,
        saga: Arc<dyn Saga>,
    ) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            settings,
            saga,
            record_sync: Script::new(RECORD_SYNC),
        }
    }

    pub fn settings(&self) -> &OnboardingSettings {
        &self.settings
    }

    /// `projection` has applied `user.registered` of `user`. A projection that is not
    /// required does nothing.
    ///
    /// # Errors
    /// Redis or the write side unavailable: transient, the event is applied again.
    pub async fn synced(&self, user: Uuid, projection: &str) -> Result<(), ApplyError> {
        if !self.settings.required.contains(projection) {
            return Ok(());
        }
        let mut invocation = self
            .record_sync
            .key(format!("{}onboarding:{{{user}}}:synced", self.prefix));
        invocation.arg(projection).arg(7 * 24 * 3600);
        for required in &self.settings.required {
            invocation.arg(required);
        }
        let complete: i64 = invocation
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        if complete == 1 {
            self.saga.complete(user).await?;
        }
        Ok(())
    }

    /// `projection` dead-lettered `user.registered` of `user`: the onboarding fails.
    ///
    /// # Errors
    /// The write side unavailable.
    pub async fn lost(&self, user: Uuid, projection: &str, error: &str) -> Result<(), ApplyError> {
        if !self.settings.required.contains(projection) {
            return Ok(());
        }
        self.saga
            .fail(
                user,
                &format!("{projection} could not sync the user: {error}"),
            )
            .await
    }
}

/// Calls `onboarding.synced` for a `user.registered` event, when there is a saga.
pub async fn report_synced(
    onboarding: Option<&Onboarding>,
    envelope: &EventEnvelope,
    projection: &str,
) -> Result<(), ApplyError> {
    match (onboarding, &envelope.event) {
        (Some(onboarding), Event::UserRegistered(e)) => {
            onboarding.synced(e.user_id, projection).await
        }
        _ => Ok(()),
    }
}

/// Calls `onboarding.lost` for a dead-lettered `user.registered` event, when there is a
/// saga.
pub async fn report_lost(
    onboarding: Option<&Onboarding>,
    envelope: &EventEnvelope,
    projection: &str,
    error: &str,
) -> Result<(), ApplyError> {
    match (onboarding, &envelope.event) {
        (Some(onboarding), Event::UserRegistered(e)) => {
            onboarding.lost(e.user_id, projection, error).await
        }
        _ => Ok(()),
    }
}

/// The `onboarding` projection: deadlines, compensation, and the pushes to the user.
#[derive(Debug, Clone)]
pub struct OnboardingProjection {
    onboarding: Onboarding,
    live: Option<LivePublisher>,
}

impl OnboardingProjection {
    pub const NAME: &'static str = "onboarding";

    pub fn new(onboarding: Onboarding, live: Option<LivePublisher>) -> Self {
        Self { onboarding, live }
    }

    fn pending_key(&self) -> String {
        format!("{}onboarding:pending", self.onboarding.prefix)
    }

    async fn push(
        &self,
        envelope: &EventEnvelope,
        user: Uuid,
        event: &str,
        data: serde_json::Value,
    ) -> LiveResult<()> {
        if let Some(live) = &self.live {
            let push = Push {
                once_for: Some(envelope.event_id),
                outcome: true,
            };
            live.push(&user_channel(user), event, &data, push).await?;
        }
        Ok(())
    }

    async fn forget(&self, user: Uuid) -> LiveResult<()> {
        let _: () = redis::cmd("ZREM")
            .arg(self.pending_key())
            .arg(user.to_string())
            .query_async(&mut self.onboarding.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Fails every pending registration whose deadline passed; returns how many.
    ///
    /// # Errors
    /// Redis or the write side unavailable.
    pub async fn sweep_deadlines(&self) -> Result<usize, ApplyError> {
        let now = chrono::Utc::now().timestamp_millis();
        let due: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.pending_key())
            .arg("-inf")
            .arg(now)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(100)
            .query_async(&mut self.onboarding.redis.clone())
            .await
            .map_err(unavailable)?;
        for user in &due {
            let Ok(id) = user.parse::<Uuid>() else {
                continue;
            };
            tracing::warn!(user_id = %id, "Onboarding deadline passed; failing the registration.");
            self.onboarding
                .saga
                .fail(id, "the onboarding deadline passed")
                .await?;
            // The `onboarding.failed` (or an earlier completion) ends it for good.
            self.forget(id).await?;
        }
        Ok(due.len())
    }

    /// Calls [`OnboardingProjection::sweep_deadlines`] every second until `stop`.
    pub async fn run_deadlines(&self, stop: &tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => return,
            }
            if let Err(error) = self.sweep_deadlines().await {
                tracing::warn!(%error, "Sweeping onboarding deadlines failed; will retry.");
            }
        }
    }
}

impl Projection for OnboardingProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            "user.registered" | "onboarding.completed" | "onboarding.failed"
        )
    }

    async fn apply(&self, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        match &envelope.event {
            Event::UserRegistered(e) => {
                let deadline = envelope.recorded_at
                    + chrono::Duration::from_std(self.onboarding.settings.deadline)
                        .unwrap_or(chrono::Duration::MAX);
                if deadline > chrono::Utc::now() {
                    // NX: a redelivery keeps the first deadline.
                    let _: () = redis::cmd("ZADD")
                        .arg(self.pending_key())
                        .arg("NX")
                        .arg(deadline.timestamp_millis())
                        .arg(e.user_id.to_string())
                        .query_async(&mut self.onboarding.redis.clone())
                        .await
                        .map_err(unavailable)?;
                }
            }
            Event::OnboardingCompleted(e) => {
                self.forget(e.user_id).await?;
                let data = serde_json::json!({ "user_id": e.user_id });
                self.push(envelope, e.user_id, "onboarding_completed", data)
                    .await?;
            }
            Event::OnboardingFailed(e) => {
                self.onboarding.saga.roll_back(e.user_id, &e.reason).await?;
                self.forget(e.user_id).await?;
                let data = serde_json::json!({ "user_id": e.user_id, "reason": e.reason });
                self.push(envelope, e.user_id, "onboarding_failed", data)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}
