//! The social graph and home timelines (DESIGN §6): fan-out on write of post ids, hybrid for
//! authors with very many followers.
//!
//! - `social.followed` (F follows A): the relation is stored, then A's newest posts (up to
//!   [`TimelineSettings::cap`]) go into F's home timeline — unless A is merged at read, whose
//!   list the feed merges anyway. A follow brings the followee's recent posts.
//! - `social.unfollowed`: the relation is removed, then every entry of A leaves F's timeline.
//! - `post.published`: the post id goes into the author's own list and, when the author has
//!   at most [`TimelineSettings::fanout_max_followers`] followers, into the home timeline of
//!   the author and of every follower, each trimmed to about [`TimelineSettings::cap`]
//!   entries. An author above the threshold is marked *merged at read*: the feed query
//!   merges that author's own list into the timelines of their followers instead (hybrid
//!   fan-out). The mark is sticky, so posts skipped while popular are never lost.
//! - `post.deleted`: the post leaves the author's list and every timeline.
//!
//! Entries are ordered by the global position of `post.published` (post ids minted from an
//! `Idempotency-Key` are v5, not time-ordered). Every write is idempotent.
//!
//! # Order-independence
//!
//! Fed by Kafka, the projection sees a publication before the follow that preceded it in
//! the log, or after the unfollow that followed it (one topic per stream type), and two
//! consumers of its group write at once (DESIGN §5). The writes above commute: a home
//! timeline ends as "the user's own posts and the listed posts of those they follow and
//! who are not merged at read", whatever the order of the events. Two exceptions, both at
//! the edges of the model: a timeline over its cap keeps its newest entries at each trim,
//! so where deletions or unfollows later shrink it, which older entries remain depends on
//! the order; and the merged-at-read mark is set by the publication that finds its author
//! past the threshold, so when it comes (and which posts were fanned out before it) depends
//! on the order too — the feed, which merges that author's list, shows the same posts.
//!
//! Events of one stream are applied one after another (the follows of one follower, the
//! publication and deletion of one post); events of different streams may be applied at
//! once. Each write therefore stores its own fact first and reads the other side's after,
//! so that of two writes at once at least one sees the other ("write, then read"):
//! - follow ∥ publish: the follow stores the relation, then reads A's list; the publication
//!   lists the post, then reads A's followers. Whichever reads second sees the other's
//!   write, so the post reaches F (by the backfill or by the fan-out).
//! - unfollow ∥ publish: the unfollow removes the relation, then A's entries from F's
//!   timeline; the publication, after delivering, reads the followers again and takes the
//!   post back from those it delivered to who no longer follow. A delivery after the
//!   unfollow's removal is followed by a read that misses the relation.
//! - follow ∥ delete: the deletion unlists the post, then removes it from every timeline;
//!   the follow, after its backfill, asks which of the posts it brought are still listed
//!   and takes back the others. A backfill the deletion's removal missed is followed by a
//!   check that misses the listing.
//!
//! A store makes each step visible to the other writers before the next step reads (see
//! [`postgres::PgTimelines`] for batches in one transaction).
//!
//! Implementations: [`postgres::PgTimelines`] (lite) and `scylla::ScyllaTimelines` (feature `scylla`).

pub mod postgres;
#[cfg(feature = "scylla")]
pub mod scylla;

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use event_schemas::{Event, EventEnvelope};
use uuid::Uuid;

use crate::error::ReadResult;
use projection_runtime::runner::{ApplyError, Projection};
use real_time::live::{user_channel, LivePublisher};
use real_time::onboarding::{report_lost, report_synced, Onboarding};

/// One post in a timeline or an author's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimelineEntry {
    /// Global position of the `post.published` event: the sort key, newest first.
    pub position: i64,
    pub post_id: Uuid,
    pub author_id: Uuid,
}

/// Which side of a user's follows: who follows them, or whom they follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Followers,
    Following,
}

/// Follower and following counts of one user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowCounts {
    pub followers: u64,
    pub following: u64,
}

/// Storage of the social graph and the timelines. Every write is idempotent; reads return
/// entries newest first.
#[async_trait::async_trait]
pub trait TimelineStore: Send + Sync + Debug {
    /// Switches to the generation readers use now, for a store that follows a replay's
    /// generation pointer ([`crate::generation::Following`]); the runner calls it before
    /// each batch, under the swap lock. Nothing to do for the others.
    async fn follow_generation(&self) -> ReadResult<()> {
        Ok(())
    }

    /// Records that `follower` follows `followee`.
    async fn follow(&self, follower: Uuid, followee: Uuid) -> ReadResult<()>;
    /// Records that `follower` no longer follows `followee`.
    async fn unfollow(&self, follower: Uuid, followee: Uuid) -> ReadResult<()>;
    /// Whether `follower` follows `followee`.
    async fn follows(&self, follower: Uuid, followee: Uuid) -> ReadResult<bool>;
    /// Those of `candidates` who follow `user`, in no order (a read as large as the
    /// candidates, not as `user`'s followers).
    async fn followers_among(&self, user: Uuid, candidates: &[Uuid]) -> ReadResult<Vec<Uuid>>;
    /// Everyone who follows `user` (the fan-out targets).
    async fn followers(&self, user: Uuid) -> ReadResult<Vec<Uuid>>;
    /// Up to `limit` of those who follow `user` (or whom `user` follows), in the store's
    /// order of their ids, after `after` (the last id of the previous page; the nil id for
    /// the first page).
    async fn follows_page(
        &self,
        user: Uuid,
        direction: Direction,
        after: Uuid,
        limit: usize,
    ) -> ReadResult<Vec<Uuid>>;
    async fn counts(&self, user: Uuid) -> ReadResult<FollowCounts>;

    /// Adds `entry` to the author's own list.
    async fn add_author_post(&self, entry: TimelineEntry) -> ReadResult<()>;
    /// Adds `entry` to the home timeline of every user in `users`, keeping each timeline
    /// at `cap` entries (an implementation may let it grow by up to `cap / 8` before it
    /// trims, never more).
    async fn deliver(&self, users: &[Uuid], entry: TimelineEntry, cap: usize) -> ReadResult<()>;
    /// Marks `author`'s posts as merged into their followers' feeds at read time.
    async fn mark_merged_at_read(&self, author: Uuid) -> ReadResult<()>;
    /// Those whom `user` follows and whose posts are merged at read time.
    async fn merged_authors_followed_by(&self, user: Uuid) -> ReadResult<Vec<Uuid>>;
    /// Whether `author`'s posts are merged into their followers' feeds at read time.
    async fn merged_at_read(&self, author: Uuid) -> ReadResult<bool>;
    /// Removes the post from its author's list, then from every timeline (in that order:
    /// see "Order-independence" in the module docs).
    async fn remove_post(&self, author: Uuid, post_id: Uuid) -> ReadResult<()>;

    /// Adds `entries` to `user`'s home timeline (a follow's backfill), kept at `cap`
    /// entries as by [`Self::deliver`], trimmed once after all of them.
    async fn backfill(&self, user: Uuid, entries: &[TimelineEntry], cap: usize) -> ReadResult<()>;
    /// Removes `entry` from the home timeline of every user in `users` that holds it.
    async fn retract(&self, users: &[Uuid], entry: TimelineEntry) -> ReadResult<()>;
    /// Removes every entry of `author` from `user`'s home timeline (an unfollow).
    async fn withdraw(&self, user: Uuid, author: Uuid) -> ReadResult<()>;
    /// Those of `positions` still in `author`'s list. A store whose removals become visible
    /// only when their transaction commits waits here for one under way.
    async fn still_listed(&self, author: Uuid, positions: &[i64]) -> ReadResult<Vec<i64>>;

    /// Up to `limit` entries of `user`'s home timeline older than `before` (a position).
    async fn timeline(
        &self,
        user: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<TimelineEntry>>;
    /// Up to `limit` of `author`'s own posts older than `before`.
    async fn author_posts(
        &self,
        author: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<TimelineEntry>>;

    /// Applies `writes` in order, to the same effect as one after another — which is what
    /// this default does; a store may apply them set-wise (a projection's batches). Returns
    /// what each write returns alone ([`TimelineWrite::apply_to`]), in the order of `writes`.
    async fn write_all(
        &self,
        writes: &[TimelineWrite],
        settings: TimelineSettings,
    ) -> ReadResult<Vec<Vec<Uuid>>> {
        let mut delivered = Vec::with_capacity(writes.len());
        for write in writes {
            delivered.push(write.apply_to(self, settings).await?);
        }
        Ok(delivered)
    }
}

/// One write of the timeline projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineWrite {
    Follow {
        follower: Uuid,
        followee: Uuid,
    },
    Unfollow {
        follower: Uuid,
        followee: Uuid,
    },
    /// Into the author's list, and fanned out (or the author marked merged at read).
    Publish(TimelineEntry),
    Remove {
        author: Uuid,
        post_id: Uuid,
    },
}

impl TimelineWrite {
    /// The write `envelope` makes, if any.
    pub fn of(envelope: &EventEnvelope) -> Option<Self> {
        Some(match &envelope.event {
            Event::Followed(e) => Self::Follow {
                follower: e.follower_id,
                followee: e.followee_id,
            },
            Event::Unfollowed(e) => Self::Unfollow {
                follower: e.follower_id,
                followee: e.followee_id,
            },
            Event::PostPublished(e) => Self::Publish(TimelineEntry {
                position: envelope.global_position,
                post_id: e.post_id,
                author_id: e.author_id,
            }),
            Event::PostDeleted(e) => Self::Remove {
                author: e.author_id,
                post_id: e.post_id,
            },
            _ => return None,
        })
    }

    /// Applies it alone; for a publication, the users whose timelines received the post.
    /// Each write stores its own fact, then reads what concurrent writes of other streams
    /// may have changed (see "Order-independence" in the module docs).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn apply_to<S: TimelineStore + ?Sized>(
        &self,
        store: &S,
        settings: TimelineSettings,
    ) -> ReadResult<Vec<Uuid>> {
        match *self {
            Self::Follow { follower, followee } => {
                store.follow(follower, followee).await?;
                bring_posts(store, follower, followee, settings.cap).await?;
            }
            Self::Unfollow { follower, followee } => {
                store.unfollow(follower, followee).await?;
                store.withdraw(follower, followee).await?;
            }
            Self::Publish(entry) => return publish(store, entry, settings).await,
            Self::Remove { author, post_id } => store.remove_post(author, post_id).await?,
        }
        Ok(Vec::new())
    }
}

/// A follow's backfill: `followee`'s newest posts into `follower`'s timeline, then those
/// no longer listed (deleted meanwhile by another writer) taken back.
async fn bring_posts<S: TimelineStore + ?Sized>(
    store: &S,
    follower: Uuid,
    followee: Uuid,
    cap: usize,
) -> ReadResult<()> {
    if store.merged_at_read(followee).await? {
        return Ok(());
    }
    let entries = store.author_posts(followee, None, cap).await?;
    if entries.is_empty() {
        return Ok(());
    }
    store.backfill(follower, &entries, cap).await?;
    let positions: Vec<i64> = entries.iter().map(|e| e.position).collect();
    let listed: HashSet<i64> = store
        .still_listed(followee, &positions)
        .await?
        .into_iter()
        .collect();
    for entry in entries.iter().filter(|e| !listed.contains(&e.position)) {
        store.retract(&[follower], *entry).await?;
    }
    Ok(())
}

/// A publication: listed, fanned out to the followers of the moment (or the author marked
/// merged at read), then taken back from those who unfollowed meanwhile.
async fn publish<S: TimelineStore + ?Sized>(
    store: &S,
    entry: TimelineEntry,
    settings: TimelineSettings,
) -> ReadResult<Vec<Uuid>> {
    let author = entry.author_id;
    store.add_author_post(entry).await?;
    let mut users = store.followers(author).await?;
    let fanned_out = users.len() <= settings.fanout_max_followers;
    if !fanned_out {
        store.mark_merged_at_read(author).await?;
        users.clear();
    }
    users.push(author);
    store.deliver(&users, entry, settings.cap).await?;
    if fanned_out {
        let now: HashSet<Uuid> = store.followers(author).await?.into_iter().collect();
        let gone: Vec<Uuid> = users
            .iter()
            .filter(|u| **u != author && !now.contains(u))
            .copied()
            .collect();
        if !gone.is_empty() {
            store.retract(&gone, entry).await?;
        }
    }
    Ok(users)
}

/// Tunables of the timeline projection.
#[derive(Debug, Clone, Copy)]
pub struct TimelineSettings {
    /// Entries kept per home timeline (`TIMELINE_CAP`).
    pub cap: usize,
    /// Authors with more followers than this are merged at read time instead of fanned out
    /// (`FANOUT_MAX_FOLLOWERS`).
    pub fanout_max_followers: usize,
}

impl Default for TimelineSettings {
    fn default() -> Self {
        Self {
            cap: 800,
            fanout_max_followers: 20_000,
        }
    }
}

/// The `timeline` projection. With a [`LivePublisher`] it also pushes `feed_item` to every
/// timeline a post was delivered to (not to the followers of an author merged at read);
/// with an [`Onboarding`] it reports each new user synced.
#[derive(Debug, Clone)]
pub struct TimelineProjection {
    store: Arc<dyn TimelineStore>,
    settings: TimelineSettings,
    live: Option<LivePublisher>,
    onboarding: Option<Onboarding>,
}

impl TimelineProjection {
    pub const NAME: &'static str = "timeline";

    pub fn new(store: Arc<dyn TimelineStore>, settings: TimelineSettings) -> Self {
        Self {
            store,
            settings,
            live: None,
            onboarding: None,
        }
    }

    /// Pushes `feed_item`s (not while replaying).
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

    /// A new user has an empty timeline and follows nobody: nothing to store, only the saga
    /// to tell.
    async fn report_registered_synced(&self, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        if matches!(envelope.event, Event::UserRegistered(_)) {
            report_synced(self.onboarding.as_ref(), envelope, Self::NAME).await?;
        }
        Ok(())
    }

    /// Pushes `feed_item` to the timelines `users` that received a post.
    async fn push_feed_item(
        &self,
        users: Vec<Uuid>,
        envelope: &EventEnvelope,
    ) -> Result<(), ApplyError> {
        if let (Some(live), Some((channels, item))) = (&self.live, feed_item(users, envelope)) {
            live.push_many(channels, "feed_item", &item).await?;
        }
        Ok(())
    }
}

/// The channels of the timelines `users` that received a post, and its `feed_item`; none
/// for other events.
fn feed_item(
    users: Vec<Uuid>,
    envelope: &EventEnvelope,
) -> Option<(Vec<String>, serde_json::Value)> {
    let Event::PostPublished(e) = &envelope.event else {
        return None;
    };
    let item = serde_json::json!({
        "post_id": e.post_id,
        "author_id": e.author_id,
        "title": e.title,
        "preview": crate::content::markdown::preview(&e.body_markdown),
        "created_at": envelope.recorded_at,
    });
    Some((users.into_iter().map(user_channel).collect(), item))
}

impl Projection for TimelineProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            "social.followed"
                | "social.unfollowed"
                | "post.published"
                | "post.deleted"
                | "user.registered"
                | "user.erased"
        )
    }

    async fn dead_lettered(&self, event: &EventEnvelope, error: &str) -> Result<(), ApplyError> {
        report_lost(self.onboarding.as_ref(), event, Self::NAME, error).await
    }

    async fn before_batch(&self) -> Result<(), ApplyError> {
        Ok(self.store.follow_generation().await?)
    }

    /// A batch's writes go to the store set-wise, in one transaction; then the live updates
    /// and the saga follow each event in order, as after a single write.
    fn applies_batches(&self) -> bool {
        true
    }

    /// Erasures one by one, the events between them set-wise.
    async fn apply_batch(&self, events: &[EventEnvelope]) -> Result<(), ApplyError> {
        let mut start = 0;
        for (i, envelope) in events.iter().enumerate() {
            if let Event::UserErased(e) = &envelope.event {
                self.write_batch(&events[start..i]).await?;
                self.erase(e.user_id).await?;
                start = i + 1;
            }
        }
        self.write_batch(&events[start..]).await
    }

    async fn apply(&self, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        if let Event::UserErased(e) = &envelope.event {
            return self.erase(e.user_id).await;
        }
        match TimelineWrite::of(envelope) {
            Some(write) => {
                let delivered = write.apply_to(&*self.store, self.settings).await?;
                self.push_feed_item(delivered, envelope).await
            }
            None => self.report_registered_synced(envelope).await,
        }
    }
}

impl TimelineProjection {
    /// An erased person's posts leave every timeline, and the `feed_item`s pushed for them
    /// leave their followers' live streams. Timelines hold only ids; follows stay.
    async fn erase(&self, user: Uuid) -> Result<(), ApplyError> {
        let followers = self.store.followers(user).await?;
        loop {
            let posts = self.store.author_posts(user, None, 500).await?;
            if posts.is_empty() {
                break;
            }
            for entry in posts {
                self.store.remove_post(user, entry.post_id).await?;
            }
        }
        if let Some(live) = &self.live {
            let channels: Vec<String> = followers.into_iter().map(user_channel).collect();
            live.retract(&channels, user).await?;
        }
        Ok(())
    }

    async fn write_batch(&self, events: &[EventEnvelope]) -> Result<(), ApplyError> {
        if events.is_empty() {
            return Ok(());
        }
        let writes: Vec<Option<TimelineWrite>> = events.iter().map(TimelineWrite::of).collect();
        let stored: Vec<TimelineWrite> = writes.iter().flatten().copied().collect();
        let mut delivered = self
            .store
            .write_all(&stored, self.settings)
            .await?
            .into_iter();
        // The side effects: every feed item of the batch in one ordered round trip, and
        // the registrations' saga steps (one per person) at once.
        let mut feed_items = Vec::new();
        let mut registered = Vec::new();
        for (envelope, write) in events.iter().zip(&writes) {
            match write {
                Some(_) => {
                    let users = delivered.next().unwrap_or_default();
                    feed_items.extend(feed_item(users, envelope));
                }
                None => registered.push(self.report_registered_synced(envelope)),
            }
        }
        if let Some(live) = &self.live {
            live.push_many_in_order("feed_item", feed_items).await?;
        }
        futures::future::try_join_all(registered).await?;
        Ok(())
    }
}
