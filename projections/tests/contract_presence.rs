//! The `PresenceHistory` contract, run against PostgreSQL (lite) and Cassandra/ScyllaDB at
//! `SCYLLA_NODES` (a fresh keyspace per run; skipped, loudly, only outside CI when the
//! variable is unset).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use projections::presence::scylla::ScyllaPresenceHistory;
use projections::presence::{PgPresenceHistory, PresenceHistory, Transition};
use projections::timeline::scylla::ScyllaSettings;
use testkit::TestDb;
use uuid::Uuid;

const RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// Now, to the microsecond (what both stores keep).
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

fn online(at: DateTime<Utc>) -> Transition {
    Transition { online: true, at }
}

fn offline(at: DateTime<Utc>) -> Transition {
    Transition { online: false, at }
}

async fn transitions_are_kept_in_order_across_days_and_once(store: &dyn PresenceHistory) {
    let (person, other) = (Uuid::new_v4(), Uuid::new_v4());
    let t = now();
    let recorded = [
        online(t - TimeDelta::days(2)),
        offline(t - TimeDelta::days(2) + TimeDelta::minutes(5)),
        online(t - TimeDelta::hours(1)),
        offline(t - TimeDelta::minutes(1)),
    ];
    // Out of order, and twice: stored once, read in order.
    for transition in recorded.iter().rev().chain(recorded.iter()) {
        store.record(person, *transition).await.unwrap();
    }
    store.record(other, online(t)).await.unwrap();
    let all = store
        .history(person, t - TimeDelta::days(3), t)
        .await
        .unwrap();
    assert_eq!(all, recorded);
    // `from` inclusive, `to` exclusive.
    let window = store
        .history(person, recorded[1].at, recorded[3].at)
        .await
        .unwrap();
    assert_eq!(window, recorded[1..3]);
    assert!(store
        .history(person, t - TimeDelta::days(1), t - TimeDelta::hours(2))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .history(other, t - TimeDelta::days(3), t + TimeDelta::seconds(1))
            .await
            .unwrap(),
        [online(t)]
    );
}

async fn nothing_older_than_the_retention_is_read(store: &dyn PresenceHistory) {
    let person = Uuid::new_v4();
    let t = now();
    let old = online(t - TimeDelta::days(8));
    let recent = offline(t - TimeDelta::days(6));
    store.record(person, old).await.unwrap();
    store.record(person, recent).await.unwrap();
    store.expire().await.unwrap();
    assert_eq!(
        store
            .history(person, t - TimeDelta::days(9), t)
            .await
            .unwrap(),
        [recent]
    );
}

async fn a_forgotten_person_has_no_history(store: &dyn PresenceHistory) {
    let (person, other) = (Uuid::new_v4(), Uuid::new_v4());
    let t = now();
    for at in [t - TimeDelta::days(3), t - TimeDelta::hours(1)] {
        store.record(person, online(at)).await.unwrap();
        store.record(other, online(at)).await.unwrap();
    }
    store.forget(person).await.unwrap();
    let span = (t - TimeDelta::days(4), t);
    assert!(store
        .history(person, span.0, span.1)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.history(other, span.0, span.1).await.unwrap().len(), 2);
}

async fn contract(store: &dyn PresenceHistory) {
    transitions_are_kept_in_order_across_days_and_once(store).await;
    nothing_older_than_the_retention_is_read(store).await;
    a_forgotten_person_has_no_history(store).await;
}

#[tokio::test]
async fn postgres_presence_history_meets_the_contract() {
    let db = TestDb::new().await;
    contract(&PgPresenceHistory::new(db.pool.clone(), RETENTION)).await;
}

#[tokio::test]
async fn scylla_presence_history_meets_the_contract() {
    let Some(nodes) = testkit::production_server("SCYLLA_NODES") else {
        return;
    };
    let settings = ScyllaSettings {
        nodes: nodes.split(',').map(str::to_owned).collect(),
        keyspace: format!("test_{}", Uuid::new_v4().simple()),
        consistency: "ONE".to_owned(),
        replication_factor: 1,
    };
    projections::messaging::scylla::migrate(&settings)
        .await
        .unwrap();
    contract(
        &ScyllaPresenceHistory::connect(&settings, RETENTION)
            .await
            .unwrap(),
    )
    .await;
    projections::messaging::scylla::drop_keyspace(&settings)
        .await
        .unwrap();
}
