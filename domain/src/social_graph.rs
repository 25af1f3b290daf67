//! The [`SocialGraph`] aggregate: whom one user follows.
//!
//! Stream id: the follower's user id, so a user's follows are serialised with each other and
//! with nobody else's. Whether the followee exists is the application layer's check.

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use event_schemas::social::{FollowedV1, UnfollowedV1};
use event_schemas::stream_type;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::claims::Claims;
use crate::wire::domain_events;

/// Commands of a [`SocialGraph`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocialGraphCommand {
    /// Starts following `followee_id`; following again is a no-op.
    Follow {
        follower_id: Uuid,
        followee_id: Uuid,
    },
    /// Stops following `followee_id`; unfollowing someone not followed is a no-op.
    Unfollow {
        follower_id: Uuid,
        followee_id: Uuid,
    },
}

domain_events! {
    /// Events of a [`SocialGraph`] stream.
    pub enum SocialGraphEvent for SocialGraph {
        Followed(FollowedV1) = Followed,
        Unfollowed(UnfollowedV1) = Unfollowed,
    }
}

/// Why a [`SocialGraphCommand`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocialGraphError {
    #[error("users cannot follow themselves")]
    CannotFollowSelf,
}

/// The set of users one user follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocialGraph {
    followees: BTreeSet<Uuid>,
}

impl SocialGraph {
    pub fn follows(&self, followee_id: Uuid) -> bool {
        self.followees.contains(&followee_id)
    }

    /// Everyone this user follows, in id order.
    pub fn followees(&self) -> &BTreeSet<Uuid> {
        &self.followees
    }

    fn decide(
        &self,
        command: SocialGraphCommand,
    ) -> Result<Vec<SocialGraphEvent>, SocialGraphError> {
        match command {
            SocialGraphCommand::Follow {
                follower_id,
                followee_id,
            } => {
                if follower_id == followee_id {
                    return Err(SocialGraphError::CannotFollowSelf);
                }
                if self.follows(followee_id) {
                    return Ok(Vec::new());
                }
                Ok(vec![SocialGraphEvent::Followed(FollowedV1 {
                    follower_id,
                    followee_id,
                })])
            }
            SocialGraphCommand::Unfollow {
                follower_id,
                followee_id,
            } => {
                if !self.follows(followee_id) {
                    return Ok(Vec::new());
                }
                Ok(vec![SocialGraphEvent::Unfollowed(UnfollowedV1 {
                    follower_id,
                    followee_id,
                })])
            }
        }
    }
}

impl Aggregate for SocialGraph {
    const TYPE: &'static str = stream_type::SOCIAL_GRAPH;
    type Command = SocialGraphCommand;
    type Event = SocialGraphEvent;
    type Error = SocialGraphError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SocialGraphCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SocialGraphError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: SocialGraphEvent) {
        match event {
            SocialGraphEvent::Followed(e) => {
                self.followees.insert(e.followee_id);
            }
            SocialGraphEvent::Unfollowed(e) => {
                self.followees.remove(&e.followee_id);
            }
        }
    }
}

impl Claims for SocialGraph {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cqrs_es::test::TestFramework;
    use event_schemas::Event;

    use super::*;

    type GraphTest = TestFramework<SocialGraph>;

    const ADA: Uuid = Uuid::from_u128(1);
    const GRACE: Uuid = Uuid::from_u128(2);
    const LINUS: Uuid = Uuid::from_u128(3);

    fn follow(followee_id: Uuid) -> SocialGraphCommand {
        SocialGraphCommand::Follow {
            follower_id: ADA,
            followee_id,
        }
    }

    fn unfollow(followee_id: Uuid) -> SocialGraphCommand {
        SocialGraphCommand::Unfollow {
            follower_id: ADA,
            followee_id,
        }
    }

    fn followed(followee_id: Uuid) -> SocialGraphEvent {
        SocialGraphEvent::Followed(FollowedV1 {
            follower_id: ADA,
            followee_id,
        })
    }

    fn unfollowed(followee_id: Uuid) -> SocialGraphEvent {
        SocialGraphEvent::Unfollowed(UnfollowedV1 {
            follower_id: ADA,
            followee_id,
        })
    }

    #[test]
    fn following_someone_new_emits_followed() {
        GraphTest::with(())
            .given_no_previous_events()
            .when(follow(GRACE))
            .then_expect_events(vec![followed(GRACE)]);
    }

    #[test]
    fn following_another_user_while_following_others_emits_followed() {
        GraphTest::with(())
            .given(vec![followed(GRACE)])
            .when(follow(LINUS))
            .then_expect_events(vec![followed(LINUS)]);
    }

    #[test]
    fn following_someone_already_followed_emits_nothing() {
        GraphTest::with(())
            .given(vec![followed(GRACE)])
            .when(follow(GRACE))
            .then_expect_events(vec![]);
    }

    #[test]
    fn following_oneself_is_rejected() {
        GraphTest::with(())
            .given_no_previous_events()
            .when(follow(ADA))
            .then_expect_error(SocialGraphError::CannotFollowSelf);
    }

    #[test]
    fn following_again_after_unfollowing_emits_followed() {
        GraphTest::with(())
            .given(vec![followed(GRACE), unfollowed(GRACE)])
            .when(follow(GRACE))
            .then_expect_events(vec![followed(GRACE)]);
    }

    #[test]
    fn unfollowing_someone_followed_emits_unfollowed() {
        GraphTest::with(())
            .given(vec![followed(GRACE), followed(LINUS)])
            .when(unfollow(GRACE))
            .then_expect_events(vec![unfollowed(GRACE)]);
    }

    #[test]
    fn unfollowing_someone_not_followed_emits_nothing() {
        GraphTest::with(())
            .given_no_previous_events()
            .when(unfollow(GRACE))
            .then_expect_events(vec![]);
        GraphTest::with(())
            .given(vec![followed(LINUS)])
            .when(unfollow(GRACE))
            .then_expect_events(vec![]);
    }

    #[test]
    fn unfollowing_someone_already_unfollowed_emits_nothing() {
        GraphTest::with(())
            .given(vec![followed(GRACE), unfollowed(GRACE)])
            .when(unfollow(GRACE))
            .then_expect_events(vec![]);
    }

    #[test]
    fn unfollowing_oneself_emits_nothing() {
        GraphTest::with(())
            .given_no_previous_events()
            .when(unfollow(ADA))
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_state_is_the_set_of_followees() {
        let mut graph = SocialGraph::default();
        graph.apply(followed(LINUS));
        graph.apply(followed(GRACE));
        graph.apply(unfollowed(LINUS));
        assert!(graph.follows(GRACE));
        assert!(!graph.follows(LINUS));
        assert_eq!(
            graph.followees().iter().copied().collect::<Vec<_>>(),
            vec![GRACE]
        );

        let snapshot = serde_json::to_value(&graph).unwrap();
        assert_eq!(
            serde_json::from_value::<SocialGraph>(snapshot).unwrap(),
            graph
        );
    }

    #[test]
    fn social_graph_events_round_trip_through_the_wire_catalogue() {
        crate::wire::testing::assert_wire_round_trip::<SocialGraph>(
            vec![followed(GRACE), unfollowed(GRACE)],
            Event::PostLiked(event_schemas::like::PostLikedV1 {
                post_id: GRACE,
                user_id: ADA,
            }),
        );
    }
}
