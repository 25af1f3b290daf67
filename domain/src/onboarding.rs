//! The [`Onboarding`] aggregate: the registration saga's progress for one user (DESIGN §7).
//!
//! Stream id: the user's id. Each required downstream projection records that it synced the
//! user; the command that records the last one also completes onboarding, in the same append,
//! so `onboarding.completed` is emitted exactly once. A failure (a downstream dead-lettered
//! the user, or the deadline passed) is final; compensating the registration is the
//! application layer's next step.

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use event_schemas::onboarding::{OnboardingCompletedV1, OnboardingFailedV1, UserSyncedV1};
use event_schemas::stream_type;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::claims::Claims;
use crate::wire::domain_events;

/// Commands of an [`Onboarding`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnboardingCommand {
    /// `projection` synced the user. `required` is the configured list of projections that
    /// must all sync before onboarding completes (passed in, so configuration stays out of
    /// the domain and out of the snapshot).
    RecordSync {
        user_id: Uuid,
        projection: String,
        required: BTreeSet<String>,
    },
    /// Onboarding failed; the registration will be rolled back.
    FailOnboarding { user_id: Uuid, reason: String },
}

domain_events! {
    /// Events of an [`Onboarding`] stream.
    pub enum OnboardingEvent for Onboarding {
        UserSynced(UserSyncedV1) = UserSynced,
        Completed(OnboardingCompletedV1) = OnboardingCompleted,
        Failed(OnboardingFailedV1) = OnboardingFailed,
    }
}

/// Why an [`OnboardingCommand`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnboardingError {
    #[error("projection is not one of the required projections")]
    UnknownProjection,
    #[error("onboarding already failed")]
    AlreadyFailed,
    #[error("onboarding already completed")]
    AlreadyCompleted,
}

/// Where a user's onboarding is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnboardingStatus {
    /// Waiting for required projections (also a fresh stream).
    #[default]
    Pending,
    /// Every required projection synced the user.
    Completed,
    /// A downstream gave up on the user or the deadline passed.
    Failed,
}

/// One user's onboarding progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Onboarding {
    status: OnboardingStatus,
    synced: BTreeSet<String>,
}

impl Onboarding {
    pub fn status(&self) -> OnboardingStatus {
        self.status
    }

    /// The projections that synced the user so far.
    pub fn synced(&self) -> &BTreeSet<String> {
        &self.synced
    }

    fn decide(&self, command: OnboardingCommand) -> Result<Vec<OnboardingEvent>, OnboardingError> {
        match command {
            OnboardingCommand::RecordSync {
                user_id,
                projection,
                required,
            } => {
                if !required.contains(&projection) {
                    return Err(OnboardingError::UnknownProjection);
                }
                match self.status {
                    OnboardingStatus::Completed => return Ok(Vec::new()),
                    OnboardingStatus::Failed => return Err(OnboardingError::AlreadyFailed),
                    OnboardingStatus::Pending => {}
                }
                if self.synced.contains(&projection) {
                    return Ok(Vec::new());
                }
                let now_complete = required
                    .iter()
                    .all(|p| *p == projection || self.synced.contains(p));
                let mut events = vec![OnboardingEvent::UserSynced(UserSyncedV1 {
                    user_id,
                    projection,
                })];
                if now_complete {
                    events.push(OnboardingEvent::Completed(OnboardingCompletedV1 {
                        user_id,
                    }));
                }
                Ok(events)
            }
            OnboardingCommand::FailOnboarding { user_id, reason } => match self.status {
                OnboardingStatus::Completed => Err(OnboardingError::AlreadyCompleted),
                OnboardingStatus::Failed => Ok(Vec::new()),
                OnboardingStatus::Pending => {
                    Ok(vec![OnboardingEvent::Failed(OnboardingFailedV1 {
                        user_id,
                        reason,
                    })])
                }
            },
        }
    }
}

impl Aggregate for Onboarding {
    const TYPE: &'static str = stream_type::ONBOARDING;
    type Command = OnboardingCommand;
    type Event = OnboardingEvent;
    type Error = OnboardingError;
    type Services = ();

    async fn handle(
        &mut self,
        command: OnboardingCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), OnboardingError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: OnboardingEvent) {
        match event {
            OnboardingEvent::UserSynced(e) => {
                self.synced.insert(e.projection);
            }
            OnboardingEvent::Completed(_) => self.status = OnboardingStatus::Completed,
            OnboardingEvent::Failed(_) => self.status = OnboardingStatus::Failed,
        }
    }
}

impl Claims for Onboarding {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cqrs_es::test::TestFramework;
    use event_schemas::Event;

    use super::*;

    type OnboardingTest = TestFramework<Onboarding>;

    const LINUS: Uuid = Uuid::from_u128(3);

    fn required() -> BTreeSet<String> {
        ["timeline", "content"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    fn record(projection: &str) -> OnboardingCommand {
        OnboardingCommand::RecordSync {
            user_id: LINUS,
            projection: projection.to_owned(),
            required: required(),
        }
    }

    fn fail() -> OnboardingCommand {
        OnboardingCommand::FailOnboarding {
            user_id: LINUS,
            reason: "deadline passed".to_owned(),
        }
    }

    fn synced(projection: &str) -> OnboardingEvent {
        OnboardingEvent::UserSynced(UserSyncedV1 {
            user_id: LINUS,
            projection: projection.to_owned(),
        })
    }

    fn completed() -> OnboardingEvent {
        OnboardingEvent::Completed(OnboardingCompletedV1 { user_id: LINUS })
    }

    fn failed() -> OnboardingEvent {
        OnboardingEvent::Failed(OnboardingFailedV1 {
            user_id: LINUS,
            reason: "deadline passed".to_owned(),
        })
    }

    // RecordSync

    #[test]
    fn the_first_of_several_required_syncs_emits_only_user_synced() {
        OnboardingTest::with(())
            .given_no_previous_events()
            .when(record("timeline"))
            .then_expect_events(vec![synced("timeline")]);
    }

    #[test]
    fn the_last_required_sync_also_completes_onboarding() {
        OnboardingTest::with(())
            .given(vec![synced("timeline")])
            .when(record("content"))
            .then_expect_events(vec![synced("content"), completed()]);
    }

    #[test]
    fn a_single_required_sync_completes_onboarding_at_once() {
        OnboardingTest::with(())
            .given_no_previous_events()
            .when(OnboardingCommand::RecordSync {
                user_id: LINUS,
                projection: "timeline".to_owned(),
                required: BTreeSet::from(["timeline".to_owned()]),
            })
            .then_expect_events(vec![synced("timeline"), completed()]);
    }

    #[test]
    fn a_sync_of_a_projection_that_is_not_required_is_rejected() {
        OnboardingTest::with(())
            .given_no_previous_events()
            .when(record("messaging"))
            .then_expect_error(OnboardingError::UnknownProjection);
        OnboardingTest::with(())
            .given(vec![synced("timeline"), synced("content"), completed()])
            .when(record("messaging"))
            .then_expect_error(OnboardingError::UnknownProjection);
    }

    #[test]
    fn nothing_is_required_means_every_projection_is_unknown() {
        OnboardingTest::with(())
            .given_no_previous_events()
            .when(OnboardingCommand::RecordSync {
                user_id: LINUS,
                projection: "timeline".to_owned(),
                required: BTreeSet::new(),
            })
            .then_expect_error(OnboardingError::UnknownProjection);
    }

    #[test]
    fn recording_the_same_sync_twice_emits_nothing() {
        OnboardingTest::with(())
            .given(vec![synced("timeline")])
            .when(record("timeline"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_sync_after_completion_emits_nothing() {
        OnboardingTest::with(())
            .given(vec![synced("timeline"), synced("content"), completed()])
            .when(record("content"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_sync_of_a_newly_required_projection_after_completion_emits_nothing() {
        // The configuration grew after this user completed; completion stays final.
        OnboardingTest::with(())
            .given(vec![synced("timeline"), synced("content"), completed()])
            .when(OnboardingCommand::RecordSync {
                user_id: LINUS,
                projection: "messaging".to_owned(),
                required: ["timeline", "content", "messaging"]
                    .map(str::to_owned)
                    .into(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_sync_after_failure_is_rejected() {
        OnboardingTest::with(())
            .given(vec![synced("timeline"), failed()])
            .when(record("content"))
            .then_expect_error(OnboardingError::AlreadyFailed);
        OnboardingTest::with(())
            .given(vec![synced("timeline"), failed()])
            .when(record("timeline"))
            .then_expect_error(OnboardingError::AlreadyFailed);
    }

    #[test]
    fn syncs_recorded_for_projections_no_longer_required_do_not_block_completion() {
        OnboardingTest::with(())
            .given(vec![synced("legacy")])
            .when(OnboardingCommand::RecordSync {
                user_id: LINUS,
                projection: "timeline".to_owned(),
                required: BTreeSet::from(["timeline".to_owned()]),
            })
            .then_expect_events(vec![synced("timeline"), completed()]);
    }

    // FailOnboarding

    #[test]
    fn failing_a_pending_onboarding_emits_failed() {
        OnboardingTest::with(())
            .given_no_previous_events()
            .when(fail())
            .then_expect_events(vec![failed()]);
        OnboardingTest::with(())
            .given(vec![synced("timeline")])
            .when(fail())
            .then_expect_events(vec![failed()]);
    }

    #[test]
    fn failing_a_completed_onboarding_is_rejected() {
        OnboardingTest::with(())
            .given(vec![synced("timeline"), synced("content"), completed()])
            .when(fail())
            .then_expect_error(OnboardingError::AlreadyCompleted);
    }

    #[test]
    fn failing_a_failed_onboarding_again_emits_nothing() {
        OnboardingTest::with(())
            .given(vec![failed()])
            .when(fail())
            .then_expect_events(vec![]);
    }

    // State

    #[test]
    fn the_state_follows_the_saga() {
        let mut onboarding = Onboarding::default();
        assert_eq!(onboarding.status(), OnboardingStatus::Pending);
        onboarding.apply(synced("timeline"));
        assert_eq!(onboarding.status(), OnboardingStatus::Pending);
        assert_eq!(
            onboarding.synced(),
            &BTreeSet::from(["timeline".to_owned()])
        );
        onboarding.apply(synced("content"));
        onboarding.apply(completed());
        assert_eq!(onboarding.status(), OnboardingStatus::Completed);

        let snapshot = serde_json::to_value(&onboarding).unwrap();
        assert_eq!(
            serde_json::from_value::<Onboarding>(snapshot).unwrap(),
            onboarding
        );

        let mut failing = Onboarding::default();
        failing.apply(failed());
        assert_eq!(failing.status(), OnboardingStatus::Failed);
    }

    #[test]
    fn onboarding_events_round_trip_through_the_wire_catalogue() {
        crate::wire::testing::assert_wire_round_trip::<Onboarding>(
            vec![synced("timeline"), completed(), failed()],
            Event::UserProfileUpdated(event_schemas::user::UserProfileUpdatedV1 {
                user_id: LINUS,
                display_name: "Linus".to_owned(),
            }),
        );
    }
}
