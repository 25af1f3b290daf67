//! The read models replay can rebuild, by name.
//!
//! To add one (an analyst's new read model): implement [`projections::Projection`] over
//! tables in one PostgreSQL schema — idempotent `apply`, since a resumed replay applies the
//! last batch again — create that schema and its (empty) tables in a migration, then add a
//! [`Model`] to [`MODELS`] and a variant to [`ModelProjection`]. `hybridlive replay <name>`
//! then builds it into a fresh copy of its tables and swaps them in; the `analytics` model
//! is built this way only.

use std::sync::Arc;

use event_schemas::EventEnvelope;
use projections::analytics::{self, AnalyticsProjection};
use projections::content::mongo::{self, MongoContent};
use projections::content::postgres::{KnownContent, PgContent};
use projections::lite::LITE_SCHEMA;
use projections::messaging::postgres::PgMessaging;
use projections::timeline::postgres::{KnownTimelines, PgTimelines};
use projections::timeline::scylla::{self, ScyllaSettings, ScyllaTimelines};
use projections::{
    ApplyError, ContentProjection, MessagingProjection, NotificationsProjection, PeopleProjection,
    Projection, TimelineProjection, TimelineSettings,
};
use sqlx::PgPool;

use crate::memory::Memory;

/// A read model replay can rebuild: a projection over a set of tables of one schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Model {
    /// Its name on the command line, and its projection's name.
    pub name: &'static str,
    /// The schema readers use.
    pub schema: &'static str,
    /// Its tables there; a replay copies them (`LIKE … INCLUDING ALL`) and swaps them.
    pub tables: &'static [&'static str],
    /// One line for `--help` and errors.
    pub about: &'static str,
}

/// Every model replay can rebuild.
pub const MODELS: &[Model] = &[
    Model {
        name: TimelineProjection::NAME,
        schema: LITE_SCHEMA,
        tables: PgTimelines::TABLES,
        about: "the social graph and home timelines (lite)",
    },
    Model {
        name: ContentProjection::NAME,
        schema: LITE_SCHEMA,
        tables: PgContent::TABLES,
        about: "posts, comments, likes and profiles (lite)",
    },
    Model {
        name: NotificationsProjection::NAME,
        schema: LITE_SCHEMA,
        tables: NotificationsProjection::TABLES,
        about: "in-app notifications: follows, likes and comments on one's posts, read marks",
    },
    Model {
        name: PeopleProjection::NAME,
        schema: LITE_SCHEMA,
        tables: PeopleProjection::TABLES,
        about: "finding people by username or display name",
    },
    Model {
        name: MessagingProjection::NAME,
        schema: LITE_SCHEMA,
        tables: PgMessaging::TABLES,
        about: "chat profiles, conversations, inboxes and messages (lite)",
    },
    Model {
        name: AnalyticsProjection::NAME,
        schema: analytics::LIVE_SCHEMA,
        tables: analytics::TABLES,
        about: "daily signups, posts and likes per day, top posts (built only by replay)",
    },
];

/// Why a model cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "`onboarding` is the registration saga, not a read model: replaying it would message \
         users again, so it cannot be replayed; replayable: {known}",
        known = names()
    )]
    Saga,
    #[error("unknown read model `{name}`; replayable: {known}", name = .0, known = names())]
    Unknown(String),
    #[error("{0}")]
    Store(String),
}

fn names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

impl Model {
    /// The model called `name`.
    ///
    /// # Errors
    /// [`ModelError`] for the saga or an unknown name.
    pub fn named(name: &str) -> Result<&'static Model, ModelError> {
        match MODELS.iter().find(|m| m.name == name) {
            Some(model) => Ok(model),
            None if name == projections::OnboardingProjection::NAME => Err(ModelError::Saga),
            None => Err(ModelError::Unknown(name.to_owned())),
        }
    }

    /// Its projection writing to the tables in `schema`, with no side effects: no live
    /// updates, no caches, no saga. Its lite store is written by this replay alone
    /// ([`PgContent::written_by`], [`PgTimelines::written_by`]); `fresh`: the tables are
    /// empty (a replay that did not resume), so the replay keeps in [`Memory`] what the
    /// batches stored instead of loading it back. Content leaves its posts' counts to
    /// [`ModelProjection::settle`]: nobody reads the tables before then.
    ///
    /// # Errors
    /// When `schema` is not a plain identifier.
    pub fn projection(
        &self,
        pool: &PgPool,
        schema: &str,
        timeline: TimelineSettings,
        fresh: bool,
    ) -> Result<ModelProjection, ModelError> {
        Ok(match self.name {
            TimelineProjection::NAME => {
                let store = PgTimelines::new(pool.clone(), schema)
                    .map_err(|e| ModelError::Store(e.to_string()))?;
                let store = if fresh {
                    store.written_by(Arc::new(Memory::<KnownTimelines>::fresh()))
                } else {
                    store
                };
                ModelProjection::Timeline(TimelineProjection::new(Arc::new(store), timeline))
            }
            ContentProjection::NAME => {
                let memory = Arc::new(
                    if fresh {
                        Memory::<KnownContent>::fresh()
                    } else {
                        Memory::loading()
                    }
                    .deferring(),
                );
                let store = PgContent::new(pool.clone(), schema)
                    .map_err(|e| ModelError::Store(e.to_string()))?
                    .written_by(memory.clone());
                let store = Arc::new(store);
                let deferred = Deferred {
                    store: store.clone(),
                    memory,
                };
                ModelProjection::Content(ContentProjection::uncached(store), Some(deferred))
            }
            NotificationsProjection::NAME => ModelProjection::Notifications(
                NotificationsProjection::in_schema(pool.clone(), schema)
                    .map_err(|e| ModelError::Store(e.to_string()))?,
            ),
            PeopleProjection::NAME => ModelProjection::People(
                PeopleProjection::in_schema(pool.clone(), schema)
                    .map_err(|e| ModelError::Store(e.to_string()))?,
            ),
            MessagingProjection::NAME => {
                let store = PgMessaging::in_schema(pool.clone(), schema)
                    .map_err(|e| ModelError::Store(e.to_string()))?;
                ModelProjection::Messaging(MessagingProjection::new(Arc::new(store), pool.clone()))
            }
            AnalyticsProjection::NAME => ModelProjection::Analytics(
                AnalyticsProjection::new(pool.clone(), schema)
                    .map_err(|e| ModelError::Store(e.to_string()))?,
            ),
            other => return Err(ModelError::Unknown(other.to_owned())),
        })
    }

    /// Repairs what a killed run of a replay into `schema` may have left half-stored and
    /// the batches applied again do not: the timelines' lengths are recounted from their
    /// rows. Run before a resumed replay writes.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn repair_resumed(&self, pool: &PgPool, schema: &str) -> Result<(), ModelError> {
        if self.name == TimelineProjection::NAME {
            PgTimelines::new(pool.clone(), schema)
                .map_err(|e| ModelError::Store(e.to_string()))?
                .recount_lengths()
                .await
                .map_err(|e| ModelError::Store(format!("recounting the timelines: {e}")))?;
        }
        Ok(())
    }
}

/// Where a production model lives: the store `hybridlive` is configured with for it.
/// A replay rebuilds it into a fresh keyspace or database, the model's next generation
/// ([`projections::generation`]), and swaps it in by moving the generation pointer.
#[derive(Debug, Clone)]
pub enum Production {
    /// The timelines on ScyllaDB/Cassandra; `keyspace` is the configured (base) name.
    Scylla(ScyllaSettings),
    /// The content on MongoDB at `uri`; `database` is the configured (base) name.
    Mongo { uri: String, database: String },
}

impl Production {
    /// The model it holds.
    pub fn model(&self) -> &'static str {
        match self {
            Self::Scylla(_) => TimelineProjection::NAME,
            Self::Mongo { .. } => ContentProjection::NAME,
        }
    }

    /// The configured name, which the generation pointer is kept under.
    pub fn base(&self) -> &str {
        match self {
            Self::Scylla(settings) => &settings.keyspace,
            Self::Mongo { database, .. } => database,
        }
    }

    /// What a keyspace or database is called in messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Scylla(_) => "keyspace",
            Self::Mongo { .. } => "database",
        }
    }

    fn scylla(settings: &ScyllaSettings, keyspace: &str) -> ScyllaSettings {
        ScyllaSettings {
            keyspace: keyspace.to_owned(),
            ..settings.clone()
        }
    }

    /// Creates `name` empty, with the model's tables or indexes (dropping what was there).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn create_empty(&self, name: &str) -> Result<(), ModelError> {
        self.drop_generation(name).await?;
        match self {
            Self::Scylla(settings) => scylla::migrate(&Self::scylla(settings, name)).await,
            Self::Mongo { uri, .. } => mongo::migrate(uri, name).await,
        }
        .map_err(|e| ModelError::Store(format!("creating {} `{name}`: {e}", self.kind())))
    }

    /// Whether `name` exists.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn exists(&self, name: &str) -> Result<bool, ModelError> {
        match self {
            Self::Scylla(settings) => scylla::keyspace_exists(&Self::scylla(settings, name)).await,
            Self::Mongo { uri, .. } => mongo::database_exists(uri, name).await,
        }
        .map_err(|e| ModelError::Store(e.to_string()))
    }

    /// Drops `name` and everything in it.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn drop_generation(&self, name: &str) -> Result<(), ModelError> {
        match self {
            Self::Scylla(settings) => scylla::drop_keyspace(&Self::scylla(settings, name)).await,
            Self::Mongo { uri, .. } => mongo::drop_database(uri, name).await,
        }
        .map_err(|e| ModelError::Store(format!("dropping {} `{name}`: {e}", self.kind())))
    }

    /// The model's projection writing to `name`, with no side effects (no live updates,
    /// no caches, no saga).
    ///
    /// # Errors
    /// When the store cannot be reached.
    pub async fn projection(
        &self,
        name: &str,
        timeline: TimelineSettings,
    ) -> Result<ModelProjection, ModelError> {
        let connected = |e: projections::ReadModelError| {
            ModelError::Store(format!("connecting to {} `{name}`: {e}", self.kind()))
        };
        Ok(match self {
            Self::Scylla(settings) => {
                let store = ScyllaTimelines::connect(&Self::scylla(settings, name))
                    .await
                    .map_err(connected)?;
                ModelProjection::Timeline(TimelineProjection::new(Arc::new(store), timeline))
            }
            Self::Mongo { uri, .. } => {
                let store = MongoContent::connect(uri, name).await.map_err(connected)?;
                ModelProjection::Content(ContentProjection::uncached(Arc::new(store)), None)
            }
        })
    }
}

/// The projection of a [`Model`].
#[derive(Debug)]
pub enum ModelProjection {
    Timeline(TimelineProjection),
    /// With its lite store, whose counts are deferred (the MongoDB store counts as it goes).
    Content(ContentProjection, Option<Deferred>),
    Notifications(NotificationsProjection),
    People(PeopleProjection),
    Messaging(MessagingProjection),
    Analytics(AnalyticsProjection),
}

/// A lite content store whose batches leave the posts' counts to [`ModelProjection::settle`].
#[derive(Debug)]
pub struct Deferred {
    store: Arc<PgContent>,
    memory: Arc<Memory<KnownContent>>,
}

impl ModelProjection {
    /// Completes what the batches deferred ([`PgContent::settle_counts`]); run after the
    /// last batch of a run and before a swap. Batches after it are complete on their own.
    ///
    /// # Errors
    /// When the store fails; what was deferred stays deferred.
    pub async fn settle(&self) -> Result<(), ModelError> {
        if let Self::Content(_, Some(Deferred { store, memory })) = self {
            if !memory.deferred() {
                return Ok(());
            }
            let started = std::time::Instant::now();
            let posts = store
                .settle_counts()
                .await
                .map_err(|e| ModelError::Store(format!("settling the posts' counts: {e}")))?;
            memory.settled();
            let elapsed = started.elapsed();
            tracing::info!(
                posts,
                ?elapsed,
                "Counted the likes and comments of the rebuilt posts."
            );
        }
        Ok(())
    }
}

impl Projection for ModelProjection {
    fn name(&self) -> &str {
        match self {
            Self::Timeline(p) => p.name(),
            Self::Content(p, _) => p.name(),
            Self::Notifications(p) => p.name(),
            Self::People(p) => p.name(),
            Self::Messaging(p) => p.name(),
            Self::Analytics(p) => p.name(),
        }
    }

    fn handles(&self, event_type: &str) -> bool {
        match self {
            Self::Timeline(p) => p.handles(event_type),
            Self::Content(p, _) => p.handles(event_type),
            Self::Notifications(p) => p.handles(event_type),
            Self::People(p) => p.handles(event_type),
            Self::Messaging(p) => p.handles(event_type),
            Self::Analytics(p) => p.handles(event_type),
        }
    }

    fn applies_batches(&self) -> bool {
        match self {
            Self::Timeline(p) => p.applies_batches(),
            Self::Content(p, _) => p.applies_batches(),
            Self::Notifications(p) => p.applies_batches(),
            Self::People(p) => p.applies_batches(),
            Self::Messaging(p) => p.applies_batches(),
            Self::Analytics(p) => p.applies_batches(),
        }
    }

    async fn apply_batch(&self, events: &[EventEnvelope]) -> Result<(), ApplyError> {
        match self {
            Self::Timeline(p) => p.apply_batch(events).await,
            Self::Content(p, _) => p.apply_batch(events).await,
            Self::Notifications(p) => p.apply_batch(events).await,
            Self::People(p) => p.apply_batch(events).await,
            Self::Messaging(p) => p.apply_batch(events).await,
            Self::Analytics(p) => p.apply_batch(events).await,
        }
    }

    async fn apply(&self, event: &EventEnvelope) -> Result<(), ApplyError> {
        match self {
            Self::Timeline(p) => p.apply(event).await,
            Self::Content(p, _) => p.apply(event).await,
            Self::Notifications(p) => p.apply(event).await,
            Self::People(p) => p.apply(event).await,
            Self::Messaging(p) => p.apply(event).await,
            Self::Analytics(p) => p.apply(event).await,
        }
    }
}
