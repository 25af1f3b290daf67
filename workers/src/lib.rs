//! The projection workers as `hybridlive dev` and `project` run them (and the tests and
//! benchmarks that run the same): the read models' projections with live pushes into Redis
//! and the registration saga ([`real_time`]).
//!
//! Its room: the one place where the read side's workers meet the write side. The saga's
//! steps ([`projections::Saga`]) are commands on the `onboarding` and `user` aggregates
//! ([`CommandSaga`]), so this crate uses `commands` and `domain` besides `projections`;
//! nothing on the read side uses it, and `api` serves without it.
//!
//! Each step has a deterministic command id, so its events have deterministic ids and a
//! step repeated after a crash appends nothing new. A rejection means the saga already
//! ended the other way (a completion after a failure, say): the step is then done.
//! Conflicts and database errors are transient: the projection that runs the step retries.

use std::collections::BTreeSet;
use std::sync::Arc;

use commands::{CommandContext, CommandError, WriteSide};
use domain::onboarding::OnboardingCommand;
use domain::user::UserCommand;
use event_schemas::Metadata;
use projections::ApplyError;
use uuid::Uuid;

/// [`projections::Saga`] over the command handlers.
#[derive(Debug, Clone)]
pub struct CommandSaga {
    write: Arc<WriteSide>,
    required: BTreeSet<String>,
}

impl CommandSaga {
    pub fn new(write: Arc<WriteSide>, required: BTreeSet<String>) -> Self {
        Self { write, required }
    }
}

fn context(user: Uuid, step: &str) -> CommandContext {
    CommandContext {
        metadata: Metadata {
            correlation_id: Some(format!("onboarding:{user}")),
            causation_id: None,
            actor: Some("system:onboarding".to_owned()),
            request_id: None,
            traceparent: None,
        },
        command_id: Some(format!("onboarding:{user}:{step}")),
        ..CommandContext::default()
    }
}

fn settled<E: std::error::Error>(
    result: Result<commands::Executed, CommandError<E>>,
    user: Uuid,
    step: &str,
) -> Result<(), ApplyError> {
    match result {
        Ok(_) => Ok(()),
        Err(CommandError::Rejected(reason)) => {
            tracing::debug!(user_id = %user, step, %reason, "Saga step refused: the saga already ended.");
            Ok(())
        }
        Err(error) => Err(ApplyError::Transient(format!("saga step {step}: {error}"))),
    }
}

#[async_trait::async_trait]
impl projections::Saga for CommandSaga {
    async fn complete(&self, user: Uuid) -> Result<(), ApplyError> {
        let id = user.to_string();
        for projection in &self.required {
            let step = format!("sync:{projection}");
            let command = OnboardingCommand::RecordSync {
                user_id: user,
                projection: projection.clone(),
                required: self.required.clone(),
            };
            let result = self
                .write
                .onboarding
                .execute(&id, command, &context(user, &step))
                .await;
            settled(result, user, &step)?;
        }
        Ok(())
    }

    async fn fail(&self, user: Uuid, reason: &str) -> Result<(), ApplyError> {
        let command = OnboardingCommand::FailOnboarding {
            user_id: user,
            reason: reason.to_owned(),
        };
        let result = self
            .write
            .onboarding
            .execute(&user.to_string(), command, &context(user, "fail"))
            .await;
        settled(result, user, "fail")
    }

    async fn roll_back(&self, user: Uuid, reason: &str) -> Result<(), ApplyError> {
        let command = UserCommand::RollBackRegistration {
            reason: reason.to_owned(),
        };
        let result = self
            .write
            .users
            .execute(&user.to_string(), command, &context(user, "roll_back"))
            .await;
        settled(result, user, "roll_back")
    }
}

/// The settings of the workers' real time: live pushes, the registration saga, and the
/// write side the saga's commands go through (`SNAPSHOT_EVERY`, as for the API's).
#[derive(Debug, Clone, Default)]
pub struct RealTimeSettings {
    pub live: projections::LiveSettings,
    pub onboarding: projections::OnboardingSettings,
    pub commands: commands::Settings,
}

/// Everything the projection workers need for real time: live updates into Redis and the
/// registration saga through a write side on `pool` (what `hybridlive dev` and `project`
/// run; replays use plain [`projections::Workers::new`]).
pub fn real_time(
    pool: &sqlx::PgPool,
    models: projections::ReadModels,
    timeline: projections::TimelineSettings,
    redis: redis::aio::ConnectionManager,
    redis_prefix: &str,
    settings: RealTimeSettings,
) -> projections::Workers {
    let RealTimeSettings {
        live,
        onboarding,
        commands,
    } = settings;
    let publisher = projections::LivePublisher::new(redis.clone(), redis_prefix, live);
    let write = Arc::new(WriteSide::new(pool.clone(), commands));
    let saga = Arc::new(CommandSaga::new(write, onboarding.required.clone()));
    let onboarding = projections::Onboarding::new(redis, redis_prefix, onboarding, saga);
    projections::Workers::new(pool.clone(), models, timeline).with_real_time(publisher, onboarding)
}
