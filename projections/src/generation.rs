//! Generations of the production read models: which keyspace (timeline, on
//! ScyllaDB/Cassandra) or database (content, on MongoDB) is live.
//!
//! A replay rebuilds a production model into a fresh keyspace or database, `<base>_<n>`,
//! beside the live one, then swaps it in by moving the model's pointer in PostgreSQL
//! (`read_model_generations`, keyed by model and configured base name). Until a replay
//! swaps one in, the live generation is the configured name itself (generation 0).
//!
//! The stores follow the pointer ([`Following`]):
//! - a projection's writes switch generation only between two batches, under the swap lock
//!   ([`projection_runtime::runner::swap_lock_key`]), which the swap takes exclusively: the runner calls
//!   [`Projection::before_batch`](crate::Projection::before_batch) there, and a projection
//!   over a following store re-reads the pointer. No write reaches a generation after it
//!   was swapped out;
//! - readers (the API) re-read the pointer at most once a second ([`READ_REFRESH`]), when a
//!   query comes: for about a second after a swap, a reader may still see the previous
//!   generation, whole — never a mix of two. The previous generation stays until the next
//!   replay of the model drops it.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sqlx::PgPool;
use uuid::Uuid;

use crate::content::{Change, CommentDoc, ContentStore, ContentWrite, PostDoc, Profile};
use crate::error::ReadResult;
use crate::timeline::{
    Direction, FollowCounts, TimelineEntry, TimelineSettings, TimelineStore, TimelineWrite,
};

/// How stale a reader's view of the pointer may get.
pub const READ_REFRESH: Duration = Duration::from_secs(1);

/// One generation of a model: its number and the keyspace or database that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub number: i32,
    pub name: String,
}

impl Generation {
    /// Generation 0: the configured name itself.
    pub fn first(base: &str) -> Self {
        Self {
            number: 0,
            name: base.to_owned(),
        }
    }

    /// Generation `number` of `base`: `base` itself for 0, else `<base>_<number>`.
    pub fn numbered(base: &str, number: i32) -> Self {
        if number == 0 {
            return Self::first(base);
        }
        Self {
            number,
            name: format!("{base}_{number}"),
        }
    }

    /// The generation a replay builds after this one.
    pub fn next(&self, base: &str) -> Self {
        Self::numbered(base, self.number + 1)
    }

    /// The generation before this one, if any.
    pub fn previous(&self, base: &str) -> Option<Self> {
        (self.number > 0).then(|| Self::numbered(base, self.number - 1))
    }
}

/// The generation pointers in PostgreSQL.
#[derive(Debug, Clone)]
pub struct Generations {
    pool: PgPool,
}

impl Generations {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The live generation of `model` configured as `base`.
    ///
    /// # Errors
    /// [`crate::ReadModelError::Unavailable`] when PostgreSQL cannot be read.
    pub async fn live(&self, model: &str, base: &str) -> ReadResult<Generation> {
        Self::live_with(&self.pool, model, base).await
    }

    /// [`Self::live`], on `executor` (a swap's transaction).
    ///
    /// # Errors
    /// When PostgreSQL cannot be read.
    pub async fn live_with<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        model: &str,
        base: &str,
    ) -> ReadResult<Generation> {
        let row: Option<(i32, String)> = sqlx::query_as(
            "SELECT generation, name FROM read_model_generations WHERE model = $1 AND base = $2",
        )
        .bind(model)
        .bind(base)
        .fetch_optional(executor)
        .await?;
        Ok(row.map_or_else(
            || Generation::first(base),
            |(number, name)| Generation { number, name },
        ))
    }

    /// Points `model` (configured as `base`) at `generation`, on `executor` (the swap's
    /// transaction, which holds the swap lock).
    ///
    /// # Errors
    /// When PostgreSQL cannot be written.
    pub async fn point_with<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        model: &str,
        base: &str,
        generation: &Generation,
    ) -> ReadResult<()> {
        sqlx::query(
            "INSERT INTO read_model_generations (model, base, generation, name) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (model, base) DO UPDATE SET generation = EXCLUDED.generation, \
                name = EXCLUDED.name, swapped_at = now()",
        )
        .bind(model)
        .bind(base)
        .bind(generation.number)
        .bind(&generation.name)
        .execute(executor)
        .await?;
        Ok(())
    }
}

/// Opens the store of one generation, by keyspace or database name.
pub type Open<S> = Box<dyn Fn(String) -> BoxFuture<'static, ReadResult<Arc<S>>> + Send + Sync>;

/// Opens the content of one generation by its database, on MongoDB at `uri`.
#[cfg(feature = "mongodb")]
pub fn content_on_mongo(uri: String) -> Open<dyn ContentStore> {
    Box::new(move |database| {
        let uri = uri.clone();
        Box::pin(async move {
            let store: Arc<dyn ContentStore> =
                Arc::new(crate::content::mongo::MongoContent::connect(&uri, &database).await?);
            Ok(store)
        })
    })
}

/// Opens the timelines of one generation by its keyspace, on the ScyllaDB/Cassandra of
/// `settings`.
#[cfg(feature = "scylla")]
pub fn timelines_on_scylla(
    settings: crate::timeline::scylla::ScyllaSettings,
) -> Open<dyn TimelineStore> {
    Box::new(move |keyspace| {
        let settings = crate::timeline::scylla::ScyllaSettings {
            keyspace,
            ..settings.clone()
        };
        Box::pin(async move {
            let store: Arc<dyn TimelineStore> =
                Arc::new(crate::timeline::scylla::ScyllaTimelines::connect(&settings).await?);
            Ok(store)
        })
    })
}

/// A store that follows its model's generation pointer (see the module docs).
pub struct Following<S: ?Sized> {
    generations: Generations,
    model: &'static str,
    base: String,
    open: Open<S>,
    current: RwLock<Current<S>>,
    /// One refresh at a time; readers that find it taken use the generation they have.
    refreshing: tokio::sync::Mutex<()>,
}

struct Current<S: ?Sized> {
    name: String,
    store: Arc<S>,
    checked: Instant,
}

impl<S: ?Sized + Send + Sync> std::fmt::Debug for Following<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Following")
            .field("model", &self.model)
            .field("base", &self.base)
            .field("live", &self.live_name())
            .finish_non_exhaustive()
    }
}

impl<S: ?Sized + Send + Sync> Following<S> {
    /// The store of `model`'s live generation (configured as `base`), opened by `open`.
    ///
    /// # Errors
    /// When the pointer cannot be read or the store cannot be opened.
    pub async fn open(
        pool: PgPool,
        model: &'static str,
        base: &str,
        open: Open<S>,
    ) -> ReadResult<Self> {
        let generations = Generations::new(pool);
        let live = generations.live(model, base).await?;
        let store = open(live.name.clone()).await?;
        Ok(Self {
            generations,
            model,
            base: base.to_owned(),
            open,
            current: RwLock::new(Current {
                name: live.name,
                store,
                checked: Instant::now(),
            }),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The keyspace or database in use.
    pub fn live_name(&self) -> String {
        self.read(|current| current.name.clone())
    }

    fn read<T>(&self, f: impl FnOnce(&Current<S>) -> T) -> T {
        f(&self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The store to read from: the pointer is re-read when the last look is older than
    /// [`READ_REFRESH`]; while it cannot be read, the generation in use serves.
    async fn reading(&self) -> Arc<S> {
        let (store, fresh) = self.read(|c| (c.store.clone(), c.checked.elapsed() < READ_REFRESH));
        if fresh {
            return store;
        }
        let Ok(_refreshing) = self.refreshing.try_lock() else {
            return store;
        };
        match self.refresh().await {
            Ok(store) => store,
            Err(error) => {
                tracing::warn!(model = self.model, %error, "Cannot read the read model's generation pointer; reading the generation in use.");
                store
            }
        }
    }

    /// Re-reads the pointer and switches to the generation it names.
    async fn refresh(&self) -> ReadResult<Arc<S>> {
        let live = self.generations.live(self.model, &self.base).await?;
        let (store, same) = self.read(|c| (c.store.clone(), c.name == live.name));
        let store = if same {
            store
        } else {
            let store = (self.open)(live.name.clone()).await?;
            tracing::info!(model = self.model, generation = live.number, name = %live.name, "Switched to the read model's live generation.");
            store
        };
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = Current {
            name: live.name,
            store: store.clone(),
            checked: Instant::now(),
        };
        Ok(store)
    }

    /// Switches a writer to the live generation: called under the swap lock, before each
    /// batch.
    ///
    /// # Errors
    /// When the pointer cannot be read or the new generation cannot be opened: the batch
    /// must wait, since it cannot know where to write.
    pub async fn switch_to_live(&self) -> ReadResult<()> {
        let _refreshing = self.refreshing.lock().await;
        self.refresh().await.map(drop)
    }
}

#[async_trait::async_trait]
impl TimelineStore for Following<dyn TimelineStore> {
    async fn follow_generation(&self) -> ReadResult<()> {
        self.switch_to_live().await
    }
    async fn follow(&self, follower: Uuid, followee: Uuid) -> ReadResult<()> {
        self.reading().await.follow(follower, followee).await
    }
    async fn unfollow(&self, follower: Uuid, followee: Uuid) -> ReadResult<()> {
        self.reading().await.unfollow(follower, followee).await
    }
    async fn follows(&self, follower: Uuid, followee: Uuid) -> ReadResult<bool> {
        self.reading().await.follows(follower, followee).await
    }
    async fn followers_among(&self, user: Uuid, candidates: &[Uuid]) -> ReadResult<Vec<Uuid>> {
        self.reading().await.followers_among(user, candidates).await
    }
    async fn followers(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        self.reading().await.followers(user).await
    }
    async fn follows_page(
        &self,
        user: Uuid,
        direction: Direction,
        after: Uuid,
        limit: usize,
    ) -> ReadResult<Vec<Uuid>> {
        self.reading()
            .await
            .follows_page(user, direction, after, limit)
            .await
    }
    async fn counts(&self, user: Uuid) -> ReadResult<FollowCounts> {
        self.reading().await.counts(user).await
    }
    async fn add_author_post(&self, entry: TimelineEntry) -> ReadResult<()> {
        self.reading().await.add_author_post(entry).await
    }
    async fn deliver(&self, users: &[Uuid], entry: TimelineEntry, cap: usize) -> ReadResult<()> {
        self.reading().await.deliver(users, entry, cap).await
    }
    async fn mark_merged_at_read(&self, author: Uuid) -> ReadResult<()> {
        self.reading().await.mark_merged_at_read(author).await
    }
    async fn merged_authors_followed_by(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        self.reading().await.merged_authors_followed_by(user).await
    }
    async fn merged_at_read(&self, author: Uuid) -> ReadResult<bool> {
        self.reading().await.merged_at_read(author).await
    }
    async fn remove_post(&self, author: Uuid, post_id: Uuid) -> ReadResult<()> {
        self.reading().await.remove_post(author, post_id).await
    }
    async fn backfill(&self, user: Uuid, entries: &[TimelineEntry], cap: usize) -> ReadResult<()> {
        self.reading().await.backfill(user, entries, cap).await
    }
    async fn retract(&self, users: &[Uuid], entry: TimelineEntry) -> ReadResult<()> {
        self.reading().await.retract(users, entry).await
    }
    async fn withdraw(&self, user: Uuid, author: Uuid) -> ReadResult<()> {
        self.reading().await.withdraw(user, author).await
    }
    async fn still_listed(&self, author: Uuid, positions: &[i64]) -> ReadResult<Vec<i64>> {
        self.reading().await.still_listed(author, positions).await
    }
    async fn timeline(
        &self,
        user: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<TimelineEntry>> {
        self.reading().await.timeline(user, before, limit).await
    }
    async fn author_posts(
        &self,
        author: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<TimelineEntry>> {
        self.reading()
            .await
            .author_posts(author, before, limit)
            .await
    }
    async fn write_all(
        &self,
        writes: &[TimelineWrite],
        settings: TimelineSettings,
    ) -> ReadResult<Vec<Vec<Uuid>>> {
        self.reading().await.write_all(writes, settings).await
    }
}

#[async_trait::async_trait]
impl ContentStore for Following<dyn ContentStore> {
    async fn follow_generation(&self) -> ReadResult<()> {
        self.switch_to_live().await
    }
    async fn put_profile(&self, profile: &Profile) -> ReadResult<()> {
        self.reading().await.put_profile(profile).await
    }
    async fn rename(&self, user: Uuid, display_name: &str) -> ReadResult<()> {
        self.reading().await.rename(user, display_name).await
    }
    async fn remove_profile(&self, user: Uuid) -> ReadResult<()> {
        self.reading().await.remove_profile(user).await
    }
    async fn profile(&self, user: Uuid) -> ReadResult<Option<Profile>> {
        self.reading().await.profile(user).await
    }
    async fn insert_post(&self, post: &PostDoc) -> ReadResult<()> {
        self.reading().await.insert_post(post).await
    }
    async fn delete_post(&self, post: Uuid) -> ReadResult<()> {
        self.reading().await.delete_post(post).await
    }
    async fn post(&self, post: Uuid) -> ReadResult<Option<PostDoc>> {
        self.reading().await.post(post).await
    }
    async fn posts(&self, ids: &[Uuid]) -> ReadResult<Vec<PostDoc>> {
        self.reading().await.posts(ids).await
    }
    async fn add_comment(&self, comment: &CommentDoc) -> ReadResult<Change> {
        self.reading().await.add_comment(comment).await
    }
    async fn comments(
        &self,
        post: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<CommentDoc>> {
        self.reading().await.comments(post, before, limit).await
    }
    async fn set_like(&self, post: Uuid, user: Uuid, liked: bool) -> ReadResult<Change> {
        self.reading().await.set_like(post, user, liked).await
    }
    async fn write_all(&self, writes: &[ContentWrite]) -> ReadResult<Vec<Option<Change>>> {
        self.reading().await.write_all(writes).await
    }
    async fn erase_user(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        self.reading().await.erase_user(user).await
    }
    async fn erased(&self, users: &[Uuid]) -> ReadResult<HashSet<Uuid>> {
        self.reading().await.erased(users).await
    }
}
