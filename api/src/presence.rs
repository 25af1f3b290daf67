//! Where this instance's presence transitions go ([`real_time::presence`] decides them):
//! the history store, and a `presence` push to each mutual follower of the person — the
//! people who may see their presence (`GET /v1/users/{id}/presence` answers the same
//! people), so the stream never tells what the route hides.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use projections::live::{user_channel, LivePublisher};
use projections::presence::{PresenceHistory, Transition};
use projections::timeline::{Direction, TimelineStore};
use real_time::presence::PresenceSink;
use uuid::Uuid;

/// Follows read per page when gathering whom a person follows.
const PAGE: usize = 1000;

/// The API's [`PresenceSink`].
#[derive(Debug, Clone)]
pub struct PresenceFeed {
    pub history: Arc<dyn PresenceHistory>,
    pub timelines: Arc<dyn TimelineStore>,
    pub live: LivePublisher,
}

impl PresenceFeed {
    /// Everyone `user` follows who follows them back: whom they follow, page by page, each
    /// page checked against their followers — never the whole follower list, which for a
    /// popular person is the large side.
    async fn mutual_followers(&self, user: Uuid) -> projections::ReadResult<Vec<Uuid>> {
        let (mut mutual, mut after) = (Vec::new(), Uuid::nil());
        loop {
            let page = self
                .timelines
                .follows_page(user, Direction::Following, after, PAGE)
                .await?;
            if !page.is_empty() {
                mutual.extend(self.timelines.followers_among(user, &page).await?);
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = *last,
                _ => return Ok(mutual),
            }
        }
    }
}

/// Whether `viewer` may see `user`'s presence: themself, or someone who follows them and
/// whom they follow back.
///
/// # Errors
/// When the timeline store fails.
pub async fn may_see(
    timelines: &dyn TimelineStore,
    viewer: Uuid,
    user: Uuid,
) -> projections::ReadResult<bool> {
    if viewer == user {
        return Ok(true);
    }
    let (follows, followed) = futures::try_join!(
        timelines.follows(viewer, user),
        timelines.follows(user, viewer)
    )?;
    Ok(follows && followed)
}

#[async_trait::async_trait]
impl PresenceSink for PresenceFeed {
    async fn record(&self, user: Uuid, online: bool, at: DateTime<Utc>) {
        if let Err(error) = self.history.record(user, Transition { online, at }).await {
            tracing::warn!(%error, %user, online, "Storing a presence transition failed.");
        }
    }

    async fn announce(&self, user: Uuid, online: bool, last_seen: Option<DateTime<Utc>>) {
        let followers = match self.mutual_followers(user).await {
            Ok(followers) => followers,
            Err(error) => {
                tracing::warn!(%error, %user, "Finding whom to tell about a presence failed.");
                return;
            }
        };
        if followers.is_empty() {
            return;
        }
        let data = serde_json::json!({
            "user_id": user,
            "online": online,
            "last_seen": last_seen,
        });
        if let Err(error) = self
            .live
            .push_many(followers.into_iter().map(user_channel), "presence", &data)
            .await
        {
            tracing::warn!(%error, %user, "Pushing a presence change failed.");
        }
    }
}
