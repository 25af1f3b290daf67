//! The [`Like`] aggregate: one user's like of one post.
//!
//! Stream id: [`like_stream_id`] (`<post_id>:<user_id>`), so concurrent likers of one post
//! never conflict and a user's double click is decided on one stream. Whether the post is
//! live is the application layer's check.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use event_schemas::like::{PostLikedV1, PostUnlikedV1};
use event_schemas::stream_type;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::claims::Claims;
use crate::wire::domain_events;

/// The stream id of `user_id`'s like of `post_id`: `<post_id>:<user_id>` (hyphenated uuids).
pub fn like_stream_id(post_id: Uuid, user_id: Uuid) -> String {
    format!("{post_id}:{user_id}")
}

/// Commands of a [`Like`]. Both are idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LikeCommand {
    LikePost { post_id: Uuid, user_id: Uuid },
    UnlikePost { post_id: Uuid, user_id: Uuid },
}

domain_events! {
    /// Events of a [`Like`] stream.
    pub enum LikeEvent for Like {
        Liked(PostLikedV1) = PostLiked,
        Unliked(PostUnlikedV1) = PostUnliked,
    }
}

/// Why a [`LikeCommand`] was rejected: it never is (both commands are idempotent), so this
/// enum has no values; it exists because every aggregate names its rejections.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LikeError {}

/// Whether the user currently likes the post.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Like {
    liked: bool,
}

impl Like {
    pub fn is_liked(&self) -> bool {
        self.liked
    }

    fn decide(&self, command: LikeCommand) -> Vec<LikeEvent> {
        match command {
            LikeCommand::LikePost { post_id, user_id } if !self.liked => {
                vec![LikeEvent::Liked(PostLikedV1 { post_id, user_id })]
            }
            LikeCommand::UnlikePost { post_id, user_id } if self.liked => {
                vec![LikeEvent::Unliked(PostUnlikedV1 { post_id, user_id })]
            }
            LikeCommand::LikePost { .. } | LikeCommand::UnlikePost { .. } => Vec::new(),
        }
    }
}

impl Aggregate for Like {
    const TYPE: &'static str = stream_type::LIKE;
    type Command = LikeCommand;
    type Event = LikeEvent;
    type Error = LikeError;
    type Services = ();

    async fn handle(
        &mut self,
        command: LikeCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), LikeError> {
        for event in self.decide(command) {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: LikeEvent) {
        self.liked = matches!(event, LikeEvent::Liked(_));
    }
}

impl Claims for Like {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cqrs_es::test::TestFramework;
    use event_schemas::Event;

    use super::*;

    type LikeTest = TestFramework<Like>;

    const POST: Uuid = Uuid::from_u128(0x9057);
    const GRACE: Uuid = Uuid::from_u128(2);

    fn like() -> LikeCommand {
        LikeCommand::LikePost {
            post_id: POST,
            user_id: GRACE,
        }
    }

    fn unlike() -> LikeCommand {
        LikeCommand::UnlikePost {
            post_id: POST,
            user_id: GRACE,
        }
    }

    fn liked() -> LikeEvent {
        LikeEvent::Liked(PostLikedV1 {
            post_id: POST,
            user_id: GRACE,
        })
    }

    fn unliked() -> LikeEvent {
        LikeEvent::Unliked(PostUnlikedV1 {
            post_id: POST,
            user_id: GRACE,
        })
    }

    #[test]
    fn the_stream_id_is_post_then_user() {
        let post = Uuid::parse_str("0190f5c2-3e4f-7a5b-9c6d-7e8f9a0b1c2d").unwrap();
        let user = Uuid::parse_str("0190f5b1-1d2e-7f3a-8b4c-5d6e7f8a9b0c").unwrap();
        assert_eq!(
            like_stream_id(post, user),
            "0190f5c2-3e4f-7a5b-9c6d-7e8f9a0b1c2d:0190f5b1-1d2e-7f3a-8b4c-5d6e7f8a9b0c"
        );
    }

    #[test]
    fn liking_a_post_not_yet_liked_emits_liked() {
        LikeTest::with(())
            .given_no_previous_events()
            .when(like())
            .then_expect_events(vec![liked()]);
    }

    #[test]
    fn liking_a_liked_post_again_emits_nothing() {
        LikeTest::with(())
            .given(vec![liked()])
            .when(like())
            .then_expect_events(vec![]);
    }

    #[test]
    fn liking_an_unliked_post_again_emits_liked() {
        LikeTest::with(())
            .given(vec![liked(), unliked()])
            .when(like())
            .then_expect_events(vec![liked()]);
    }

    #[test]
    fn unliking_a_liked_post_emits_unliked() {
        LikeTest::with(())
            .given(vec![liked()])
            .when(unlike())
            .then_expect_events(vec![unliked()]);
    }

    #[test]
    fn unliking_a_post_never_liked_emits_nothing() {
        LikeTest::with(())
            .given_no_previous_events()
            .when(unlike())
            .then_expect_events(vec![]);
    }

    #[test]
    fn unliking_an_unliked_post_again_emits_nothing() {
        LikeTest::with(())
            .given(vec![liked(), unliked()])
            .when(unlike())
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_state_is_whether_the_post_is_liked() {
        let mut like = Like::default();
        assert!(!like.is_liked());
        like.apply(liked());
        assert!(like.is_liked());
        like.apply(unliked());
        assert!(!like.is_liked());
        like.apply(liked());
        let snapshot = serde_json::to_value(&like).unwrap();
        assert_eq!(serde_json::from_value::<Like>(snapshot).unwrap(), like);
    }

    #[test]
    fn like_events_round_trip_through_the_wire_catalogue() {
        crate::wire::testing::assert_wire_round_trip::<Like>(
            vec![liked(), unliked()],
            Event::Followed(event_schemas::social::FollowedV1 {
                follower_id: GRACE,
                followee_id: POST,
            }),
        );
    }
}
