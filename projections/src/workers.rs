//! The projection workers by name: what `hybridlive project <name>|all`, `dlq retry` and
//! `dev` run, and what the end-to-end tests start next to the API.

use std::time::Duration;

use event_schemas::EventKind;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::content::ContentProjection;
use crate::email::{EmailConfigError, EmailProjection, EmailSettings};
use crate::messaging::MessagingProjection;
use crate::notifications::NotificationsProjection;
use crate::people::PeopleProjection;
use crate::query::ReadModels;
use crate::timeline::{TimelineProjection, TimelineSettings};
use projection_runtime::runner::{DeadLetters, Projection, RetryPolicy, Runner};
use real_time::live::LivePublisher;
use real_time::onboarding::{Onboarding, OnboardingProjection};

/// Every projection, by name.
pub const PROJECTIONS: &[&str] = &[
    TimelineProjection::NAME,
    ContentProjection::NAME,
    OnboardingProjection::NAME,
    PeopleProjection::NAME,
    MessagingProjection::NAME,
    NotificationsProjection::NAME,
    EmailProjection::NAME,
];

/// Where projections read events from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The PostgreSQL log directly (lite; checkpoint table).
    Log,
    /// The relay's topics (consumer group = projection name).
    #[cfg(feature = "kafka")]
    Kafka {
        brokers: String,
        topic_prefix: String,
        /// Replication factor of the dead-letter topics.
        replication: i32,
        /// The consumers' `fetch.wait.max.ms` ([`projection_runtime::kafka::KafkaSource::fetch_wait`]).
        fetch_wait: Duration,
        /// Consume only the topics of these stream types (empty: every topic a projection
        /// reads); a projection left with none idles.
        only: Vec<String>,
        /// The relay publishing the topics ([`projection_runtime::kafka::KafkaSource::relay`]).
        relay: String,
    },
}

/// Why the workers could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error(
        "unknown projection `{0}`; known: timeline, content, onboarding, people, messaging, notifications, email (or `all` where allowed)"
    )]
    UnknownProjection(String),
    #[error("the `email` projection is not configured: it needs SMTP_URL (and JWT_SECRET, but for `dev`)")]
    NoMail,
    #[error(transparent)]
    Mail(#[from] EmailConfigError),
    #[error(
        "the `onboarding` projection needs the registration saga, which is not configured here"
    )]
    NoSaga,
    #[error("a projection worker panicked: {0}")]
    Panicked(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// The projections over one set of read models.
#[derive(Debug, Clone)]
pub struct Workers {
    pub pool: PgPool,
    pub models: ReadModels,
    pub timeline: TimelineSettings,
    pub retry: RetryPolicy,
    /// Live updates to SSE clients; `None` pushes nothing.
    pub live: Option<LivePublisher>,
    /// The registration saga; `None` leaves onboarding out (and `onboarding` cannot run).
    pub onboarding: Option<Onboarding>,
    /// The emailer's SMTP server and words; `None` leaves `email` out of `all` (and it
    /// cannot run).
    pub email: Option<EmailSettings>,
}

impl Workers {
    pub fn new(pool: PgPool, models: ReadModels, timeline: TimelineSettings) -> Self {
        Self {
            pool,
            models,
            timeline,
            retry: RetryPolicy::default(),
            live: None,
            onboarding: None,
            email: None,
        }
    }

    /// Sends the account emails (the `email` projection).
    #[must_use]
    pub fn with_email(mut self, email: Option<EmailSettings>) -> Self {
        self.email = email;
        self
    }

    fn notifications_projection(&self) -> NotificationsProjection {
        NotificationsProjection::new(self.pool.clone()).with_live(self.live.clone())
    }

    fn email_projection(&self) -> Result<EmailProjection, WorkersError> {
        let settings = self.email.clone().ok_or(WorkersError::NoMail)?;
        Ok(EmailProjection::new(self.pool.clone(), settings)?)
    }

    /// Pushes live updates and runs the registration saga.
    #[must_use]
    pub fn with_real_time(mut self, live: LivePublisher, onboarding: Onboarding) -> Self {
        self.live = Some(live);
        self.onboarding = Some(onboarding);
        self
    }

    fn timeline_projection(&self) -> TimelineProjection {
        TimelineProjection::new(self.models.timelines.clone(), self.timeline)
            .with_live(self.live.clone())
            .with_onboarding(self.onboarding.clone())
    }

    fn content_projection(&self) -> ContentProjection {
        ContentProjection::new(self.models.content.clone(), self.models.cache.clone())
            .with_live(self.live.clone())
            .with_onboarding(self.onboarding.clone())
    }

    fn messaging_projection(&self) -> MessagingProjection {
        MessagingProjection::new(self.models.messaging.clone(), self.pool.clone())
            .with_live(self.live.clone())
            .with_onboarding(self.onboarding.clone())
            .with_presence(Some(self.models.presence.clone()))
    }

    fn onboarding_projection(&self) -> Result<OnboardingProjection, WorkersError> {
        let onboarding = self.onboarding.clone().ok_or(WorkersError::NoSaga)?;
        Ok(OnboardingProjection::new(onboarding, self.live.clone()))
    }

    /// Runs the named projections (`all` = every one) until `stop`, each on its own task;
    /// a worker whose log or checkpoint is unreachable restarts from its checkpoint.
    ///
    /// # Errors
    /// An unknown name, or a worker that panicked.
    pub async fn run(
        &self,
        names: &[String],
        source: &Source,
        stop: &CancellationToken,
    ) -> Result<(), WorkersError> {
        let selected: Vec<&str> = if names.iter().any(|n| n == "all") {
            PROJECTIONS
                .iter()
                .copied()
                .filter(|name| *name != OnboardingProjection::NAME || self.onboarding.is_some())
                .filter(|name| *name != EmailProjection::NAME || self.email.is_some())
                .collect()
        } else {
            names.iter().map(String::as_str).collect()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for name in selected {
            let (pool, source, stop) = (self.pool.clone(), source.clone(), stop.clone());
            match name {
                TimelineProjection::NAME => {
                    let runner = Runner::new(pool, self.timeline_projection(), self.retry);
                    tasks.spawn(run_one(runner, source, stop));
                }
                ContentProjection::NAME => {
                    let runner = Runner::new(pool, self.content_projection(), self.retry);
                    tasks.spawn(run_one(runner, source, stop.clone()));
                    if let Some(live) = self.live.clone() {
                        tasks.spawn(async move { live.run_likes(&stop).await });
                    }
                }
                PeopleProjection::NAME => {
                    let runner = Runner::new(pool.clone(), PeopleProjection::new(pool), self.retry);
                    tasks.spawn(run_one(runner, source, stop));
                }
                MessagingProjection::NAME => {
                    let runner = Runner::new(pool, self.messaging_projection(), self.retry);
                    tasks.spawn(run_one(runner, source, stop));
                }
                NotificationsProjection::NAME => {
                    let runner = Runner::new(pool, self.notifications_projection(), self.retry);
                    tasks.spawn(run_one(runner, source, stop));
                }
                EmailProjection::NAME => {
                    let runner = Runner::new(pool, self.email_projection()?, self.retry);
                    tasks.spawn(run_one(runner, source, stop));
                }
                OnboardingProjection::NAME => {
                    let projection = self.onboarding_projection()?;
                    let deadlines = projection.clone();
                    let runner = Runner::new(pool, projection, self.retry);
                    tasks.spawn(run_one(runner, source, stop.clone()));
                    tasks.spawn(async move { deadlines.run_deadlines(&stop).await });
                }
                other => return Err(WorkersError::UnknownProjection(other.to_owned())),
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| WorkersError::Panicked(e.to_string()))?;
        }
        Ok(())
    }

    /// Applies the dead letters of projection `name` again; returns (retried, still dead).
    ///
    /// # Errors
    /// An unknown name, or the database failed.
    pub async fn retry_dead_letters(&self, name: &str) -> Result<(usize, usize), WorkersError> {
        let letters = DeadLetters::new(self.pool.clone());
        let pool = self.pool.clone();
        Ok(match name {
            TimelineProjection::NAME => {
                letters
                    .retry(&Runner::new(pool, self.timeline_projection(), self.retry))
                    .await?
            }
            ContentProjection::NAME => {
                letters
                    .retry(&Runner::new(pool, self.content_projection(), self.retry))
                    .await?
            }
            MessagingProjection::NAME => {
                letters
                    .retry(&Runner::new(pool, self.messaging_projection(), self.retry))
                    .await?
            }
            PeopleProjection::NAME => {
                letters
                    .retry(&Runner::new(
                        pool.clone(),
                        PeopleProjection::new(pool),
                        self.retry,
                    ))
                    .await?
            }
            EmailProjection::NAME => {
                letters
                    .retry(&Runner::new(pool, self.email_projection()?, self.retry))
                    .await?
            }
            NotificationsProjection::NAME => {
                letters
                    .retry(&Runner::new(
                        pool,
                        self.notifications_projection(),
                        self.retry,
                    ))
                    .await?
            }
            OnboardingProjection::NAME => {
                letters
                    .retry(&Runner::new(
                        pool,
                        self.onboarding_projection()?,
                        self.retry,
                    ))
                    .await?
            }
            other => return Err(WorkersError::UnknownProjection(other.to_owned())),
        })
    }
}

/// The stream types whose events `projection` handles (its Kafka topics).
pub fn stream_types(projection: &impl Projection) -> Vec<String> {
    let mut types: Vec<String> = EventKind::ALL
        .iter()
        .filter(|kind| projection.handles(kind.as_str()))
        .map(|kind| kind.stream_type().to_owned())
        .collect();
    types.sort();
    types.dedup();
    types
}

async fn run_one<P: Projection + 'static>(
    runner: Runner<P>,
    source: Source,
    stop: CancellationToken,
) {
    let name = runner.projection().name().to_owned();
    tracing::info!(projection = %name, ?source, "Projection started.");
    loop {
        let result: Result<(), String> = match &source {
            Source::Log => runner.run(&stop).await.map_err(|e| e.to_string()),
            #[cfg(feature = "kafka")]
            Source::Kafka {
                brokers,
                topic_prefix,
                replication,
                fetch_wait,
                only,
                relay,
            } => {
                let mut types = stream_types(runner.projection());
                types.retain(|t| only.is_empty() || only.contains(t));
                let kafka = projection_runtime::kafka::KafkaSource {
                    brokers: brokers.clone(),
                    topic_prefix: topic_prefix.clone(),
                    stream_types: types,
                    dlq_replication: *replication,
                    fetch_wait: *fetch_wait,
                    relay: relay.clone(),
                };
                if kafka.stream_types.is_empty() {
                    tracing::info!(projection = %name, ?only, "None of the projection's topics is to be consumed here; idle.");
                    stop.cancelled().await;
                    Ok(())
                } else {
                    runner
                        .run_kafka(&kafka, &stop)
                        .await
                        .map_err(|e| e.to_string())
                }
            }
        };
        match result {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(projection = %name, %error, "Projection worker failed; resuming from its checkpoint in 1 s.");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => break,
                }
            }
        }
    }
    tracing::info!(projection = %name, "Projection stopped.");
}
