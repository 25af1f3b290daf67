//! The [`Comment`] aggregate: one comment on a post.
//!
//! Stream id: the comment's uuid, so a busy post never serialises its commenters on one
//! stream version. Whether the post is live is the application layer's check (it loads the
//! [`crate::post::Post`] first).

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use event_schemas::comment::CommentAddedV1;
use event_schemas::stream_type;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::claims::Claims;
use crate::text::trimmed_within;
use crate::wire::domain_events;

const BODY_MAX: usize = 2000;

/// Commands of a [`Comment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommentCommand {
    /// Adds the comment. `body` is trimmed; 1–2000 characters.
    AddComment {
        comment_id: Uuid,
        post_id: Uuid,
        author_id: Uuid,
        body: String,
    },
}

domain_events! {
    /// Events of a [`Comment`] stream.
    pub enum CommentEvent for Comment {
        Added(CommentAddedV1) = CommentAdded,
    }
}

/// Why a [`CommentCommand`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommentError {
    #[error("comment must be 1 to 2000 characters")]
    InvalidBody,
    #[error("comment was already added")]
    AlreadyAdded,
}

/// A comment: whether it exists, and on what and by whom.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    added: Option<Added>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Added {
    post_id: Uuid,
    author_id: Uuid,
}

impl Comment {
    pub fn is_added(&self) -> bool {
        self.added.is_some()
    }

    /// The post commented on, once added.
    pub fn post_id(&self) -> Option<Uuid> {
        self.added.map(|a| a.post_id)
    }

    /// The comment's author, once added.
    pub fn author_id(&self) -> Option<Uuid> {
        self.added.map(|a| a.author_id)
    }

    fn decide(&self, command: CommentCommand) -> Result<Vec<CommentEvent>, CommentError> {
        match command {
            CommentCommand::AddComment {
                comment_id,
                post_id,
                author_id,
                body,
            } => {
                if self.is_added() {
                    return Err(CommentError::AlreadyAdded);
                }
                let body = trimmed_within(&body, BODY_MAX)
                    .ok_or(CommentError::InvalidBody)?
                    .to_owned();
                Ok(vec![CommentEvent::Added(CommentAddedV1 {
                    comment_id,
                    post_id,
                    author_id,
                    body,
                })])
            }
        }
    }
}

impl Aggregate for Comment {
    const TYPE: &'static str = stream_type::COMMENT;
    type Command = CommentCommand;
    type Event = CommentEvent;
    type Error = CommentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: CommentCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CommentError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: CommentEvent) {
        match event {
            CommentEvent::Added(e) => {
                self.added = Some(Added {
                    post_id: e.post_id,
                    author_id: e.author_id,
                });
            }
        }
    }
}

impl Claims for Comment {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cqrs_es::test::TestFramework;
    use event_schemas::Event;

    use super::*;

    type CommentTest = TestFramework<Comment>;

    const COMMENT: Uuid = Uuid::from_u128(0xc0);
    const POST: Uuid = Uuid::from_u128(0x9057);
    const GRACE: Uuid = Uuid::from_u128(2);

    fn add(body: &str) -> CommentCommand {
        CommentCommand::AddComment {
            comment_id: COMMENT,
            post_id: POST,
            author_id: GRACE,
            body: body.to_owned(),
        }
    }

    fn added(body: &str) -> CommentEvent {
        CommentEvent::Added(CommentAddedV1 {
            comment_id: COMMENT,
            post_id: POST,
            author_id: GRACE,
            body: body.to_owned(),
        })
    }

    fn outcome(body: &str) -> Result<Vec<CommentEvent>, CommentError> {
        CommentTest::with(())
            .given_no_previous_events()
            .when(add(body))
            .inspect_result()
    }

    #[test]
    fn adding_a_new_comment_emits_added() {
        CommentTest::with(())
            .given_no_previous_events()
            .when(add("Brilliant read!"))
            .then_expect_events(vec![added("Brilliant read!")]);
    }

    #[test]
    fn the_body_is_trimmed() {
        assert_eq!(
            outcome("\n  Brilliant read! \t"),
            Ok(vec![added("Brilliant read!")])
        );
    }

    #[test]
    fn bodies_of_1_to_2000_characters_are_accepted() {
        assert_eq!(outcome("!"), Ok(vec![added("!")]));
        let long = "ß".repeat(2000);
        assert_eq!(outcome(&long), Ok(vec![added(&long)]));
        let padded = format!("  {long}  ");
        assert_eq!(outcome(&padded), Ok(vec![added(&long)]));
    }

    #[test]
    fn empty_blank_or_longer_than_2000_character_bodies_are_rejected() {
        for body in [String::new(), " \n ".to_owned(), "x".repeat(2001)] {
            assert_eq!(
                outcome(&body),
                Err(CommentError::InvalidBody),
                "{} chars",
                body.len()
            );
        }
    }

    #[test]
    fn adding_an_already_added_comment_is_rejected() {
        CommentTest::with(())
            .given(vec![added("Brilliant read!")])
            .when(add("Brilliant read!"))
            .then_expect_error(CommentError::AlreadyAdded);
    }

    #[test]
    fn the_state_knows_the_post_and_author() {
        let mut comment = Comment::default();
        assert!(!comment.is_added());
        assert_eq!(comment.post_id(), None);
        assert_eq!(comment.author_id(), None);

        comment.apply(added("Hi"));
        assert!(comment.is_added());
        assert_eq!(comment.post_id(), Some(POST));
        assert_eq!(comment.author_id(), Some(GRACE));

        let snapshot = serde_json::to_value(&comment).unwrap();
        assert_eq!(
            serde_json::from_value::<Comment>(snapshot).unwrap(),
            comment
        );
    }

    #[test]
    fn comment_events_round_trip_through_the_wire_catalogue() {
        crate::wire::testing::assert_wire_round_trip::<Comment>(
            vec![added("Hi")],
            Event::PostDeleted(event_schemas::post::PostDeletedV1 {
                post_id: POST,
                author_id: GRACE,
            }),
        );
    }
}
