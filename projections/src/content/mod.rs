//! Post content, comments, likes and profiles (DESIGN §6), and the Redis caches in front of
//! them.
//!
//! The content store is the durable source of every count: a like or comment changes the
//! store first (idempotently: a like is a `(post, user)` pair, a comment its id), and only a
//! change that really happened is then applied to the Redis caches — the comment pushed
//! onto a cached comment list (`LPUSHX`), the count the store now holds written onto a
//! cached count (a Lua update-if-exists) — so a cold key is never created by a write, and a
//! reader that filled a key from the store after the write is not counted twice (an
//! increment would be). A redelivered event changes nothing in the store, and since an
//! earlier delivery may have died between the store and Redis, it drops the cached keys of
//! that post instead (the next read refills them).
//!
//! The caches are updated by this projection, right after the store, rather than by a
//! separate counters worker (DESIGN §1 draws one): a cache filled by a reader from the
//! store while a separate worker's increment lands on the still-cold key would keep a stale
//! count for its whole TTL. Fills take a lease that every write invalidates
//! ([`crate::cache::PostCache`]).
//!
//! The runner offers what it read as one batch ([`Projection::apply_batch`]): the store
//! applies the writes set-wise ([`ContentStore::write_all`], one transaction on
//! PostgreSQL), then the caches, live updates and the saga follow write by write, in order
//! per post (per user for profiles), as after single writes; different posts' at once.
//!
//! A deleted post is a tombstone: reads skip it, and a replayed `post.published` cannot
//! bring it back.
//!
//! **Order-independence** (DESIGN §5). Fed by Kafka, the projection reads several topics,
//! whose order Kafka does not keep: a comment or like can come before its post. The writes
//! commute instead of waiting: such a comment or like is stored, uncounted, and the post's
//! insert counts what is stored for it (a write that found no post counts again once done,
//! in case the post was stored meanwhile by another consumer of the group). Everything else
//! the model keeps per key is ordered by its stream's partition: a user's profile events,
//! a post's publication and deletion, one user's likes and unlikes of one post. A comment or
//! like that comes after its post's deletion is not stored, as on the log; one that came
//! before it is stored and counted on a post that is then deleted — out of reach of every
//! query either way.
//!
//! **Erasure** (`user.erased`, DESIGN §8a): the store records the person as erased, then
//! deletes their profile and comments and empties and tombstones their posts
//! ([`ContentStore::erase_user`]); the caches of those posts and what live streams keep of the
//! person go with it. A profile, post or comment of an erased person is not stored after
//! that; one stored while the erasure ran (another consumer, another partition) is erased
//! again by its writer, which checks after its write.
//!
//! Implementations: [`postgres::PgContent`] (lite, jsonb) and `mongo::MongoContent` (feature `mongodb`).

pub mod markdown;
#[cfg(feature = "mongodb")]
pub mod mongo;
pub mod postgres;

pub use crate::documents::{Change, CommentDoc, PostDoc, Profile};

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use event_schemas::{Event, EventEnvelope};
use futures::{StreamExt, TryStreamExt};
use uuid::Uuid;

use crate::cache::PostCache;
use crate::error::ReadResult;
use projection_runtime::runner::{ApplyError, Projection};
use real_time::live::{post_channel, LivePublisher, Push};
use real_time::onboarding::{report_lost, report_synced, Onboarding};
use real_time::LiveResult;

/// Keys of a batch whose side effects (caches, live pushes, the saga) run at once.
const SIDE_EFFECTS_AT_ONCE: usize = 32;

/// Storage of posts, comments, likes and profiles. Every write is idempotent.
#[async_trait::async_trait]
pub trait ContentStore: Send + Sync + Debug {
    /// Switches to the generation readers use now, for a store that follows a replay's
    /// generation pointer ([`crate::generation::Following`]); the runner calls it before
    /// each batch, under the swap lock. Nothing to do for the others.
    async fn follow_generation(&self) -> ReadResult<()> {
        Ok(())
    }

    /// Stores a profile unless one exists for this user.
    async fn put_profile(&self, profile: &Profile) -> ReadResult<()>;
    async fn rename(&self, user: Uuid, display_name: &str) -> ReadResult<()>;
    async fn remove_profile(&self, user: Uuid) -> ReadResult<()>;
    async fn profile(&self, user: Uuid) -> ReadResult<Option<Profile>>;

    /// Stores a post unless it exists, deleted or not; counts the comments and likes stored
    /// before it (also when it existed: the delivery that stored it may have died before).
    async fn insert_post(&self, post: &PostDoc) -> ReadResult<()>;
    /// Tombstones a post; its comments and likes stay stored but unreachable.
    async fn delete_post(&self, post: Uuid) -> ReadResult<()>;
    /// A post that exists and is not deleted.
    async fn post(&self, post: Uuid) -> ReadResult<Option<PostDoc>>;
    /// The posts among `ids` that exist and are not deleted, in any order.
    async fn posts(&self, ids: &[Uuid]) -> ReadResult<Vec<PostDoc>>;

    /// Stores a comment unless its post is deleted, and counts it on a live post; the count
    /// is the post's comment count. A comment that comes before its post (Kafka orders no
    /// two topics) is stored uncounted, and reported unchanged: the post's insert counts it.
    async fn add_comment(&self, comment: &CommentDoc) -> ReadResult<Change>;
    /// Up to `limit` comments of `post` older than `before` (a position), newest first.
    async fn comments(
        &self,
        post: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<CommentDoc>>;
    /// Records that `user` likes (or no longer likes) `post` unless it is deleted; the
    /// count is its like count. Before its post, as a comment: stored, reported unchanged.
    async fn set_like(&self, post: Uuid, user: Uuid, liked: bool) -> ReadResult<Change>;

    /// Erases `user` (`user.erased`): records them as erased first (see
    /// [`ContentStore::erased`]), then deletes their profile, tombstones their posts with
    /// every personal field emptied, and deletes their comments, counting the comments of
    /// those posts again. Idempotent. Returns the posts whose content changed: theirs, and
    /// those they had commented on.
    async fn erase_user(&self, user: Uuid) -> ReadResult<Vec<Uuid>>;
    /// The users among `users` that [`ContentStore::erase_user`] erased.
    async fn erased(&self, users: &[Uuid]) -> ReadResult<HashSet<Uuid>>;

    /// Applies `writes` in order, to the same effect as one after another — which is what
    /// this default does; a store may apply them set-wise (a projection's batches). Returns
    /// what each write returns alone ([`ContentWrite::apply_to`]), in the order of `writes`.
    async fn write_all(&self, writes: &[ContentWrite]) -> ReadResult<Vec<Option<Change>>> {
        let mut changes = Vec::with_capacity(writes.len());
        for write in writes {
            changes.push(write.apply_to(self).await?);
        }
        Ok(changes)
    }
}

/// One write of the content projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentWrite {
    PutProfile(Profile),
    Rename { user: Uuid, display_name: String },
    RemoveProfile(Uuid),
    InsertPost(PostDoc),
    DeletePost(Uuid),
    AddComment(CommentDoc),
    SetLike { post: Uuid, user: Uuid, liked: bool },
    EraseUser(Uuid),
}

impl ContentWrite {
    /// What its side effects are ordered by: the post it writes to, or the user.
    fn key(&self) -> Uuid {
        match self {
            Self::PutProfile(Profile { user_id: key, .. })
            | Self::Rename { user: key, .. }
            | Self::RemoveProfile(key)
            | Self::EraseUser(key)
            | Self::InsertPost(PostDoc { post_id: key, .. })
            | Self::DeletePost(key)
            | Self::AddComment(CommentDoc { post_id: key, .. })
            | Self::SetLike { post: key, .. } => *key,
        }
    }

    /// The write `envelope` makes, if any.
    pub fn of(envelope: &EventEnvelope) -> Option<Self> {
        let at = envelope.recorded_at;
        Some(match &envelope.event {
            Event::UserRegistered(e) => Self::PutProfile(Profile {
                user_id: e.user_id,
                username: e.username.clone(),
                display_name: e.display_name.clone(),
                registered_at: at,
            }),
            Event::UserProfileUpdated(e) => Self::Rename {
                user: e.user_id,
                display_name: e.display_name.clone(),
            },
            Event::UserRegistrationRolledBack(e) => Self::RemoveProfile(e.user_id),
            Event::UserErased(e) => Self::EraseUser(e.user_id),
            Event::PostPublished(e) => Self::InsertPost(PostDoc {
                post_id: e.post_id,
                author_id: e.author_id,
                position: envelope.global_position,
                title: e.title.clone(),
                body_html: markdown::to_safe_html(&e.body_markdown),
                preview: markdown::preview(&e.body_markdown),
                body_markdown: e.body_markdown.clone(),
                media: e.media.clone(),
                like_count: 0,
                comment_count: 0,
                created_at: at,
            }),
            Event::PostDeleted(e) => Self::DeletePost(e.post_id),
            Event::CommentAdded(e) => Self::AddComment(CommentDoc {
                comment_id: e.comment_id,
                post_id: e.post_id,
                author_id: e.author_id,
                position: envelope.global_position,
                body: e.body.clone(),
                created_at: at,
            }),
            Event::PostLiked(e) => Self::SetLike {
                post: e.post_id,
                user: e.user_id,
                liked: true,
            },
            Event::PostUnliked(e) => Self::SetLike {
                post: e.post_id,
                user: e.user_id,
                liked: false,
            },
            _ => return None,
        })
    }

    /// Applies it alone; the change of a counted write (comment, like).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn apply_to<S: ContentStore + ?Sized>(
        &self,
        store: &S,
    ) -> ReadResult<Option<Change>> {
        match self {
            Self::PutProfile(profile) => store.put_profile(profile).await?,
            Self::Rename { user, display_name } => store.rename(*user, display_name).await?,
            Self::RemoveProfile(user) => store.remove_profile(*user).await?,
            Self::InsertPost(post) => store.insert_post(post).await?,
            Self::DeletePost(post) => store.delete_post(*post).await?,
            Self::AddComment(comment) => return Ok(Some(store.add_comment(comment).await?)),
            Self::SetLike { post, user, liked } => {
                return Ok(Some(store.set_like(*post, *user, *liked).await?))
            }
            Self::EraseUser(user) => {
                store.erase_user(*user).await?;
            }
        }
        Ok(None)
    }
}

/// The `content` projection: the content store, then the caches. With a
/// [`LivePublisher`] it also pushes `comment_added` to a post's viewers at once (once per
/// comment) and records like counts for the aggregated `likes` push; with an
/// [`Onboarding`] it reports each new user's profile synced.
#[derive(Debug, Clone)]
pub struct ContentProjection {
    store: Arc<dyn ContentStore>,
    /// `None` while replaying into a fresh target: the caches front the live model.
    cache: Option<PostCache>,
    live: Option<LivePublisher>,
    onboarding: Option<Onboarding>,
}

impl ContentProjection {
    pub const NAME: &'static str = "content";

    pub fn new(store: Arc<dyn ContentStore>, cache: PostCache) -> Self {
        Self {
            store,
            cache: Some(cache),
            live: None,
            onboarding: None,
        }
    }

    /// The store alone, without the caches, live updates or the saga: what a replay builds.
    pub fn uncached(store: Arc<dyn ContentStore>) -> Self {
        Self {
            store,
            cache: None,
            live: None,
            onboarding: None,
        }
    }

    /// Pushes live updates (not while replaying).
    #[must_use]
    pub fn with_live(mut self, live: Option<LivePublisher>) -> Self {
        self.live = live;
        self
    }

    /// Takes part in the registration saga.
    #[must_use]
    pub fn with_onboarding(mut self, onboarding: Option<Onboarding>) -> Self {
        self.onboarding = onboarding;
        self
    }

    async fn push_comment(&self, envelope: &EventEnvelope, comment: &CommentDoc) -> LiveResult<()> {
        let Some(live) = &self.live else {
            return Ok(());
        };
        let data = serde_json::json!({
            "post_id": comment.post_id,
            "comment_id": comment.comment_id,
            "author_id": comment.author_id,
            "body": comment.body,
            "created_at": comment.created_at,
        });
        let push = Push {
            once_for: Some(envelope.event_id),
            outcome: false,
        };
        live.push(&post_channel(comment.post_id), "comment_added", &data, push)
            .await?;
        Ok(())
    }

    /// Records the stored like count for the aggregated `likes` push — also when this
    /// delivery changed nothing: it may be a redelivery whose first delivery died before
    /// its push, and the push carries the count, not a change, so a repeat is harmless.
    async fn push_likes(&self, post: Uuid, change: Change) -> LiveResult<()> {
        match &self.live {
            Some(live) => live.likes_changed(post, change.count).await,
            None => Ok(()),
        }
    }

    /// Applies a counted change to the cache, or drops the post's cached keys when the
    /// store had it already (see the module docs). Returns the count written when one was
    /// cached, for [`Self::check_cached`].
    async fn write_cached_count(
        &self,
        post: Uuid,
        change: Change,
        apply: CacheWrite<'_>,
    ) -> ReadResult<Option<CachedCount>> {
        let Some(cache) = &self.cache else {
            return Ok(None);
        };
        if !change.changed {
            cache.invalidate(post).await?;
            return Ok(None);
        }
        let (held, likes) = match apply {
            CacheWrite::Likes => (cache.like_count_is(post, change.count).await?, true),
            CacheWrite::Comment(comment) => {
                (cache.comment_added(comment, change.count).await?, false)
            }
        };
        Ok(held.then_some(CachedCount {
            post,
            likes,
            count: change.count,
        }))
    }

    /// Checks counts written onto cached ones against the store, and drops a post's keys
    /// where they differ. Two consumers of a Kafka group apply likes and comments of one
    /// post at once (their streams are spread over partitions), so their cache writes can
    /// land in the other order than their store writes. The last cache write reads the
    /// store after every store write before it, so a stale last write is seen and dropped.
    /// A cold count stays cold and costs no read; a batch is checked once, by its last
    /// write of each count.
    async fn check_cached(&self, written: &[CachedCount]) -> ReadResult<()> {
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        let mut last: HashMap<(Uuid, bool), i64> = HashMap::new();
        for w in written {
            last.insert((w.post, w.likes), w.count);
        }
        if last.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<Uuid> = last.keys().map(|(post, _)| *post).collect();
        ids.sort_unstable();
        ids.dedup();
        let stored: HashMap<Uuid, PostDoc> = self
            .store
            .posts(&ids)
            .await?
            .into_iter()
            .map(|post| (post.post_id, post))
            .collect();
        for post in ids {
            let differs =
                [true, false].iter().any(|&likes| {
                    last.get(&(post, likes)).is_some_and(|&count| {
                        let now = stored.get(&post).map(|p| {
                            if likes {
                                p.like_count
                            } else {
                                p.comment_count
                            }
                        });
                        now != Some(count)
                    })
                });
            if differs {
                cache.invalidate(post).await?;
            }
        }
        Ok(())
    }
}

/// A count written onto a cached one ([`ContentProjection::counted`]).
struct CachedCount {
    post: Uuid,
    /// The like count; else the comment count.
    likes: bool,
    count: i64,
}

enum CacheWrite<'a> {
    Likes,
    Comment(&'a CommentDoc),
}

impl Projection for ContentProjection {
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
                | "post.published"
                | "post.deleted"
                | "comment.added"
                | "post.liked"
                | "post.unliked"
        )
    }

    async fn dead_lettered(&self, event: &EventEnvelope, error: &str) -> Result<(), ApplyError> {
        report_lost(self.onboarding.as_ref(), event, Self::NAME, error).await
    }

    async fn before_batch(&self) -> Result<(), ApplyError> {
        Ok(self.store.follow_generation().await?)
    }

    /// A batch's writes go to the store set-wise, in one transaction; then the caches,
    /// live updates and the saga follow each write in order, as after a single write.
    fn applies_batches(&self) -> bool {
        true
    }

    async fn apply_batch(&self, events: &[EventEnvelope]) -> Result<(), ApplyError> {
        let (envelopes, writes): (Vec<&EventEnvelope>, Vec<ContentWrite>) = events
            .iter()
            .filter_map(|e| Some((e, ContentWrite::of(e)?)))
            .unzip();
        let erased = self.store.erased(&subjects(&writes)).await?;
        let (envelopes, writes): (Vec<&EventEnvelope>, Vec<ContentWrite>) = envelopes
            .into_iter()
            .zip(writes)
            .filter(|(_, write)| !write.subject().is_some_and(|user| erased.contains(&user)))
            .unzip();
        let (changes, mut erasures) = write_around_erasures(&*self.store, &writes).await?;
        erasures.extend(self.erase_again_if_erased_meanwhile(&writes).await?);
        // The side effects of one key's writes (a post's, a user's) follow each other in
        // order, as after single writes; different keys' go at once, so that their Redis
        // commands share round trips instead of waiting for one another.
        let mut keys: HashMap<Uuid, usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            let group = *keys.entry(write.key()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push(i);
        }
        let (envelopes, writes, changes) = (&envelopes, &writes, &changes);
        let cached: Vec<Vec<CachedCount>> = futures::stream::iter(groups)
            .map(|group| async move {
                let mut cached = Vec::new();
                for i in group {
                    cached.extend(
                        self.after_write(envelopes[i], &writes[i], changes[i])
                            .await?,
                    );
                }
                Ok::<_, ApplyError>(cached)
            })
            .buffered(SIDE_EFFECTS_AT_ONCE)
            .try_collect()
            .await?;
        let cached: Vec<CachedCount> = cached.into_iter().flatten().collect();
        self.check_cached(&cached).await?;
        for (user, posts) in erasures {
            self.after_erasure(user, &posts).await?;
        }
        Ok(())
    }

    async fn apply(&self, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        let Some(write) = ContentWrite::of(envelope) else {
            return Ok(());
        };
        if let ContentWrite::EraseUser(user) = write {
            let posts = self.store.erase_user(user).await?;
            return self.after_erasure(user, &posts).await;
        }
        if let Some(user) = write.subject() {
            if !self.store.erased(&[user]).await?.is_empty() {
                return Ok(());
            }
        }
        let change = write.apply_to(&*self.store).await?;
        let cached = self.after_write(envelope, &write, change).await?;
        self.check_cached(cached.as_slice()).await?;
        for (user, posts) in self
            .erase_again_if_erased_meanwhile(std::slice::from_ref(&write))
            .await?
        {
            self.after_erasure(user, &posts).await?;
        }
        Ok(())
    }
}

/// An erased person, and the posts the erasure changed.
pub type Erasure = (Uuid, Vec<Uuid>);

/// Applies `writes` in order: erasures one by one, the writes between them with
/// [`ContentStore::write_all`]. Returns what each write returns alone, and the erasures.
///
/// # Errors
/// When the store fails.
pub async fn write_around_erasures<S: ContentStore + ?Sized>(
    store: &S,
    writes: &[ContentWrite],
) -> ReadResult<(Vec<Option<Change>>, Vec<Erasure>)> {
    let mut changes = Vec::with_capacity(writes.len());
    let mut erasures = Vec::new();
    let mut start = 0;
    for (i, write) in writes.iter().enumerate() {
        if let ContentWrite::EraseUser(user) = write {
            changes.extend(store.write_all(&writes[start..i]).await?);
            erasures.push((*user, store.erase_user(*user).await?));
            changes.push(None);
            start = i + 1;
        }
    }
    if start == 0 {
        return Ok((store.write_all(writes).await?, erasures));
    }
    changes.extend(store.write_all(&writes[start..]).await?);
    Ok((changes, erasures))
}

/// The people whose personal data `writes` store.
fn subjects(writes: &[ContentWrite]) -> Vec<Uuid> {
    let mut users: Vec<Uuid> = writes.iter().filter_map(ContentWrite::subject).collect();
    users.sort_unstable();
    users.dedup();
    users
}

impl ContentWrite {
    /// The person whose personal data this write stores, if any.
    fn subject(&self) -> Option<Uuid> {
        match self {
            Self::PutProfile(Profile { user_id: user, .. })
            | Self::Rename { user, .. }
            | Self::InsertPost(PostDoc {
                author_id: user, ..
            })
            | Self::AddComment(CommentDoc {
                author_id: user, ..
            }) => Some(*user),
            Self::RemoveProfile(_)
            | Self::DeletePost(_)
            | Self::SetLike { .. }
            | Self::EraseUser(_) => None,
        }
    }
}

impl ContentProjection {
    /// Erases again the people whose data `writes` stored and who were erased meanwhile
    /// (by another consumer of the group, their `user.erased` on another partition): the
    /// erasure did not see those writes, or this check sees the erasure (it is recorded
    /// before it runs). Returns each erasure with the posts it changed.
    async fn erase_again_if_erased_meanwhile(
        &self,
        writes: &[ContentWrite],
    ) -> ReadResult<Vec<Erasure>> {
        let written: Vec<Uuid> = subjects(writes);
        if written.is_empty() {
            return Ok(Vec::new());
        }
        let mut erasures = Vec::new();
        for user in self.store.erased(&written).await? {
            erasures.push((user, self.store.erase_user(user).await?));
        }
        Ok(erasures)
    }

    /// What follows an erasure: the caches of the posts it changed are dropped, and what
    /// live updates keep of the person (their channel, their posts' channels, their
    /// comments in others') is deleted.
    async fn after_erasure(&self, user: Uuid, posts: &[Uuid]) -> Result<(), ApplyError> {
        if let Some(cache) = &self.cache {
            for post in posts {
                cache.invalidate(*post).await?;
            }
        }
        if let Some(live) = &self.live {
            let channels: Vec<String> = posts.iter().map(|p| post_channel(*p)).collect();
            live.retract(&channels, user).await?;
            live.close_erased(user).await?;
        }
        Ok(())
    }

    /// What follows a stored write: the caches, live updates and the saga. Returns the
    /// count it wrote onto a cached one, to be checked ([`Self::check_cached`]).
    async fn after_write(
        &self,
        envelope: &EventEnvelope,
        write: &ContentWrite,
        change: Option<Change>,
    ) -> Result<Option<CachedCount>, ApplyError> {
        let mut cached = None;
        match (write, change) {
            (ContentWrite::PutProfile(_), _) => {
                report_synced(self.onboarding.as_ref(), envelope, Self::NAME).await?;
            }
            // A post's counts may have been recounted as it was stored (comments or likes
            // that came before it): a reader that filled the caches just before must not
            // keep the counts it saw.
            (
                ContentWrite::InsertPost(PostDoc { post_id: post, .. })
                | ContentWrite::DeletePost(post),
                _,
            ) => {
                if let Some(cache) = &self.cache {
                    cache.invalidate(*post).await?;
                }
            }
            (ContentWrite::AddComment(comment), Some(change)) => {
                cached = self
                    .write_cached_count(comment.post_id, change, CacheWrite::Comment(comment))
                    .await?;
                self.push_comment(envelope, comment).await?;
            }
            (ContentWrite::SetLike { post, .. }, Some(change)) => {
                cached = self
                    .write_cached_count(*post, change, CacheWrite::Likes)
                    .await?;
                self.push_likes(*post, change).await?;
            }
            _ => {}
        }
        Ok(cached)
    }
}
