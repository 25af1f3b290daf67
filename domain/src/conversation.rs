//! The [`Conversation`] aggregate: who talks in it, their messages and how far each member
//! has read.
//!
//! Stream id: the conversation's uuid. Its messages are one stream, so they are ordered,
//! and a read marker follows the messages it covers. A one-to-one conversation claims the
//! pair of its members ([`DIRECT_CLAIM`]), so two people never get two of them, even when
//! both start one at the same moment: the second start is refused with
//! [`ConversationError::DirectExists`], and the application answers with the first.
//! Whether the members exist is the application layer's check.

use std::collections::{BTreeMap, BTreeSet};

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use event_schemas::messaging::{ConversationReadV1, ConversationStartedV1, MessageSentV1};
use event_schemas::stream_type;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::claims::{Claim, ClaimTaken, Claims};
use crate::text::trimmed_within;
use crate::wire::domain_events;

/// Members of a conversation, the starter included.
pub const MEMBERS: std::ops::RangeInclusive<usize> = 2..=50;
const TITLE_MAX: usize = 100;
const BODY_MAX: usize = 4000;

/// The claim scope of one-to-one conversations: the value is [`direct_key`] of the pair.
pub const DIRECT_CLAIM: &str = "direct_conversation";

/// The claim value of the one-to-one conversation between `a` and `b` (in either order).
pub fn direct_key(a: Uuid, b: Uuid) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{low}:{high}")
}

/// Commands of a [`Conversation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationCommand {
    /// Starts it. `members` may or may not name the starter (who is a member either way);
    /// 2–50 members in all. `title` is trimmed, at most 100 characters; empty is none.
    Start {
        conversation_id: Uuid,
        started_by: Uuid,
        members: Vec<Uuid>,
        title: Option<String>,
    },
    /// A member sends a message: `body` is trimmed, 1–4000 characters.
    Send {
        message_id: Uuid,
        sender_id: Uuid,
        body: String,
    },
    /// A member has read every message up to `up_to`; marking the same message again
    /// changes nothing.
    MarkRead { reader_id: Uuid, up_to: Uuid },
}

domain_events! {
    /// Events of a [`Conversation`] stream.
    pub enum ConversationEvent for Conversation {
        Started(ConversationStartedV1) = ConversationStarted,
        MessageSent(MessageSentV1) = MessageSent,
        Read(ConversationReadV1) = ConversationRead,
    }
}

/// Why a [`ConversationCommand`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    #[error("a conversation has 2 to 50 members, the caller included")]
    InvalidMembers,
    #[error("title must be at most 100 characters")]
    InvalidTitle,
    #[error("message must be 1 to 4000 characters")]
    InvalidBody,
    #[error("conversation was already started")]
    AlreadyStarted,
    #[error("conversation does not exist")]
    NotFound,
    #[error("not a member of the conversation")]
    NotMember,
    #[error("a one-to-one conversation between them exists")]
    DirectExists,
}

/// A conversation: its members and how far each has read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    conversation_id: Uuid,
    members: BTreeSet<Uuid>,
    /// The last message each member marked read.
    read: BTreeMap<Uuid, Uuid>,
}

impl Conversation {
    pub fn is_started(&self) -> bool {
        !self.members.is_empty()
    }

    pub fn members(&self) -> &BTreeSet<Uuid> {
        &self.members
    }

    /// Whether `user` is a member (none is before the start).
    pub fn has_member(&self, user: Uuid) -> bool {
        self.members.contains(&user)
    }

    fn member(&self, user: Uuid) -> Result<(), ConversationError> {
        if !self.is_started() {
            return Err(ConversationError::NotFound);
        }
        if !self.has_member(user) {
            return Err(ConversationError::NotMember);
        }
        Ok(())
    }

    fn decide(
        &self,
        command: ConversationCommand,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        match command {
            ConversationCommand::Start {
                conversation_id,
                started_by,
                members,
                title,
            } => {
                if self.is_started() {
                    return Err(ConversationError::AlreadyStarted);
                }
                let mut all: BTreeSet<Uuid> = members.into_iter().collect();
                all.insert(started_by);
                if !MEMBERS.contains(&all.len()) {
                    return Err(ConversationError::InvalidMembers);
                }
                let title = match title.as_deref().map(str::trim) {
                    None | Some("") => String::new(),
                    Some(title) => trimmed_within(title, TITLE_MAX)
                        .ok_or(ConversationError::InvalidTitle)?
                        .to_owned(),
                };
                Ok(vec![ConversationEvent::Started(ConversationStartedV1 {
                    conversation_id,
                    started_by,
                    members: all.into_iter().collect(),
                    title,
                })])
            }
            ConversationCommand::Send {
                message_id,
                sender_id,
                body,
            } => {
                self.member(sender_id)?;
                let body = trimmed_within(&body, BODY_MAX)
                    .ok_or(ConversationError::InvalidBody)?
                    .to_owned();
                Ok(vec![ConversationEvent::MessageSent(MessageSentV1 {
                    conversation_id: self.conversation_id,
                    message_id,
                    sender_id,
                    body,
                })])
            }
            ConversationCommand::MarkRead { reader_id, up_to } => {
                self.member(reader_id)?;
                if self.read.get(&reader_id) == Some(&up_to) {
                    return Ok(Vec::new());
                }
                Ok(vec![ConversationEvent::Read(ConversationReadV1 {
                    conversation_id: self.conversation_id,
                    reader_id,
                    up_to,
                })])
            }
        }
    }
}

impl Aggregate for Conversation {
    const TYPE: &'static str = stream_type::CONVERSATION;
    type Command = ConversationCommand;
    type Event = ConversationEvent;
    type Error = ConversationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ConversationCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ConversationError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: ConversationEvent) {
        match event {
            ConversationEvent::Started(e) => {
                self.conversation_id = e.conversation_id;
                self.members = e.members.into_iter().collect();
            }
            ConversationEvent::MessageSent(_) => {}
            ConversationEvent::Read(e) => {
                self.read.insert(e.reader_id, e.up_to);
            }
        }
    }
}

impl Claims for Conversation {
    /// A one-to-one conversation claims its pair of members.
    fn claims(event: &ConversationEvent) -> Vec<Claim> {
        match event {
            ConversationEvent::Started(e) if e.members.len() == 2 => vec![Claim::Reserve {
                scope: DIRECT_CLAIM,
                value: direct_key(e.members[0], e.members[1]),
            }],
            _ => Vec::new(),
        }
    }

    fn claim_rejected(taken: ClaimTaken) -> Option<ConversationError> {
        (taken.scope == DIRECT_CLAIM).then_some(ConversationError::DirectExists)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cqrs_es::test::TestFramework;

    use super::*;

    type ConversationTest = TestFramework<Conversation>;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn start(members: Vec<Uuid>, title: Option<&str>) -> ConversationCommand {
        ConversationCommand::Start {
            conversation_id: id(100),
            started_by: id(1),
            members,
            title: title.map(str::to_owned),
        }
    }

    fn started(members: Vec<Uuid>) -> ConversationEvent {
        ConversationEvent::Started(ConversationStartedV1 {
            conversation_id: id(100),
            started_by: id(1),
            members,
            title: String::new(),
        })
    }

    #[test]
    fn starting_includes_the_starter_once_and_sorts_the_members() {
        ConversationTest::with(())
            .given_no_previous_events()
            .when(start(vec![id(2), id(1), id(2)], Some("  ")))
            .then_expect_events(vec![started(vec![id(1), id(2)])]);
    }

    #[test]
    fn a_conversation_has_two_to_fifty_members_and_a_short_title() {
        for members in [vec![], vec![id(1)], (2..=51).map(id).collect()] {
            ConversationTest::with(())
                .given_no_previous_events()
                .when(start(members, None))
                .then_expect_error(ConversationError::InvalidMembers);
        }
        let events = ConversationTest::with(())
            .given_no_previous_events()
            .when(start((2..=50).map(id).collect(), Some(" Team ")))
            .inspect_result()
            .unwrap();
        let [ConversationEvent::Started(e)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!((e.members.len(), e.title.as_str()), (50, "Team"));
        ConversationTest::with(())
            .given_no_previous_events()
            .when(start(vec![id(2)], Some(&"t".repeat(101))))
            .then_expect_error(ConversationError::InvalidTitle);
        ConversationTest::with(())
            .given(vec![started(vec![id(1), id(2)])])
            .when(start(vec![id(2)], None))
            .then_expect_error(ConversationError::AlreadyStarted);
    }

    #[test]
    fn only_members_send_and_read() {
        let given = || ConversationTest::with(()).given(vec![started(vec![id(1), id(2)])]);
        given()
            .when(ConversationCommand::Send {
                message_id: id(7),
                sender_id: id(2),
                body: " hi ".into(),
            })
            .then_expect_events(vec![ConversationEvent::MessageSent(MessageSentV1 {
                conversation_id: id(100),
                message_id: id(7),
                sender_id: id(2),
                body: "hi".into(),
            })]);
        given()
            .when(ConversationCommand::Send {
                message_id: id(7),
                sender_id: id(3),
                body: "hi".into(),
            })
            .then_expect_error(ConversationError::NotMember);
        given()
            .when(ConversationCommand::Send {
                message_id: id(7),
                sender_id: id(1),
                body: "x".repeat(4001),
            })
            .then_expect_error(ConversationError::InvalidBody);
        ConversationTest::with(())
            .given_no_previous_events()
            .when(ConversationCommand::MarkRead {
                reader_id: id(1),
                up_to: id(7),
            })
            .then_expect_error(ConversationError::NotFound);
        let read = ConversationEvent::Read(ConversationReadV1 {
            conversation_id: id(100),
            reader_id: id(1),
            up_to: id(7),
        });
        given()
            .when(ConversationCommand::MarkRead {
                reader_id: id(1),
                up_to: id(7),
            })
            .then_expect_events(vec![read.clone()]);
        ConversationTest::with(())
            .given(vec![started(vec![id(1), id(2)]), read])
            .when(ConversationCommand::MarkRead {
                reader_id: id(1),
                up_to: id(7),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_one_to_one_conversation_claims_its_pair_in_either_order() {
        assert_eq!(
            Conversation::claims(&started(vec![id(1), id(2)])),
            vec![Claim::Reserve {
                scope: DIRECT_CLAIM,
                value: direct_key(id(2), id(1)),
            }]
        );
        assert!(Conversation::claims(&started(vec![id(1), id(2), id(3)])).is_empty());
        assert_eq!(
            Conversation::claim_rejected(ClaimTaken {
                scope: DIRECT_CLAIM.into(),
                value: direct_key(id(1), id(2)),
            }),
            Some(ConversationError::DirectExists)
        );
    }
}
