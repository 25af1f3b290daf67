//! Running one command: load, decide, append, retry on conflict.

use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use domain::claims::Claims;
use event_schemas::{Event, Metadata, UnexpectedEvent};
use store::{AppendError, StoreError};

use crate::aggregate::{domain_claim_taken, AggregateStore, LoadedAggregate};
use uuid::Uuid;

/// Who issues a command and under which conditions.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    pub metadata: Metadata,
    /// Makes event ids deterministic: the same id never appends twice.
    pub command_id: Option<String>,
    /// The version the caller decided on (`If-Match`): a mismatch is a final conflict.
    pub expected_version: Option<u64>,
    /// The caller just minted the aggregate's id, so the stream is almost surely new: the
    /// first attempt decides on the empty aggregate without reading the stream. Safe either
    /// way: the append expects version 0, so if the stream does exist it conflicts, and a
    /// refusal by the empty aggregate is not trusted; both make the next attempt load the
    /// stream and decide as usual.
    pub new_stream: bool,
}

/// A command that was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Executed {
    /// The aggregate's version after the command.
    pub version: u64,
    /// The global position of the last event appended; `None` when the command was a no-op
    /// (idempotent repeat) and appended nothing.
    pub last_position: Option<i64>,
    /// Events appended by this call (0 for a no-op or an already committed command id).
    pub appended: usize,
}

/// Why a command was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// A business rule said no.
    #[error(transparent)]
    Rejected(E),
    /// The aggregate is not at the version the caller expected, or kept changing under
    /// every retry.
    #[error("version conflict: expected {expected}, found {actual}")]
    Conflict { expected: u64, actual: u64 },
    #[error(transparent)]
    Store(StoreError),
}

/// Executes the commands of aggregate type `A`.
#[derive(Debug)]
pub struct CommandHandler<A: Aggregate> {
    store: AggregateStore<A>,
    services: A::Services,
    max_attempts: u32,
}

impl<A> CommandHandler<A>
where
    A: Claims,
    A::Event: Into<Event> + TryFrom<Event, Error = UnexpectedEvent>,
    A::Command: Clone,
{
    /// `max_attempts` bounds the decide-and-append attempts of one command under conflicts.
    pub fn new(store: AggregateStore<A>, services: A::Services, max_attempts: u32) -> Self {
        Self {
            store,
            services,
            max_attempts: max_attempts.max(1),
        }
    }

    pub fn store(&self) -> &AggregateStore<A> {
        &self.store
    }

    /// Runs `command` on aggregate `id`.
    ///
    /// # Errors
    /// [`CommandError::Rejected`] when a rule (or a unique claim) refuses it,
    /// [`CommandError::Conflict`] for a pinned version that does not match or conflicts that
    /// outlast every attempt, [`CommandError::Store`] for database failures.
    #[tracing::instrument(skip_all, fields(aggregate = A::TYPE, %id))]
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Executed, CommandError<A::Error>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let guessed_new =
                attempt == 1 && context.new_stream && context.expected_version.unwrap_or(0) == 0;
            let mut loaded = if guessed_new {
                LoadedAggregate {
                    aggregate: A::default(),
                    stream_id: id.to_owned(),
                    version: 0,
                }
            } else {
                self.store.load(id).await.map_err(CommandError::Store)?
            };
            if let Some(expected) = context.expected_version {
                if expected != loaded.version {
                    return Err(CommandError::Conflict {
                        expected,
                        actual: loaded.version,
                    });
                }
            }
            let sink = EventSink::default();
            let decided = loaded
                .aggregate
                .handle(command.clone(), &self.services, &sink)
                .await;
            match decided {
                // Refused by the guessed empty state: only the real state may refuse.
                Err(_) if guessed_new => continue,
                Err(rejection) => return Err(CommandError::Rejected(rejection)),
                Ok(()) => {}
            }
            let events = sink.collect().await;
            if events.is_empty() && guessed_new {
                // Nothing to do on the guessed empty state proves nothing: check the real one.
                continue;
            }
            if events.is_empty() {
                return Ok(Executed {
                    version: loaded.version,
                    last_position: None,
                    appended: 0,
                });
            }
            let count = events.len();
            let outcome = self
                .store
                .append(
                    &loaded,
                    events,
                    context.metadata.clone(),
                    context.command_id.as_deref(),
                    A::credentials(&command),
                )
                .await;
            match outcome {
                // The stream was not new after all: load it and decide again, at once.
                Err(AppendError::Conflict { .. }) if guessed_new => {}
                Ok(appended) => {
                    return Ok(Executed {
                        version: appended.stream_version,
                        last_position: Some(appended.last_position),
                        appended: if appended.duplicate { 0 } else { count },
                    })
                }
                Err(AppendError::Conflict {
                    expected, actual, ..
                }) if context.expected_version.is_some() || attempt >= self.max_attempts => {
                    return Err(CommandError::Conflict { expected, actual });
                }
                Err(AppendError::Conflict { .. }) => {
                    metrics::counter!("commands_conflict_retries_total", "aggregate" => A::TYPE)
                        .increment(1);
                    tokio::time::sleep(jitter(attempt)).await;
                }
                Err(AppendError::Taken(taken)) => {
                    return Err(match A::claim_rejected(domain_claim_taken(&taken)) {
                        Some(rejection) => CommandError::Rejected(rejection),
                        None => CommandError::Store(StoreError::Corrupt(format!(
                            "{} claims nothing, yet: {taken}",
                            A::TYPE
                        ))),
                    });
                }
                Err(AppendError::Store(error)) => return Err(CommandError::Store(error)),
                Err(other @ (AppendError::EventIdReused(_) | AppendError::Empty)) => {
                    return Err(CommandError::Store(StoreError::Corrupt(other.to_string())))
                }
            }
        }
    }
}

/// A short random pause so that writers who conflicted do not collide again in lockstep.
fn jitter(attempt: u32) -> Duration {
    let random = u64::from(Uuid::new_v4().as_u128() as u16);
    Duration::from_micros(random % (200 * u64::from(attempt.min(20))))
}
