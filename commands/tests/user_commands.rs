//! Commands on real PostgreSQL: uniqueness under concurrency, conflict retries, pinned
//! versions, idempotent command ids, snapshots, upcasting on load, and cqrs-es's framework.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use commands::AggregateStore;
use commands::{CommandContext, CommandError, CommandHandler};
use cqrs_es::{AggregateError, CqrsFramework, EventStore};
use domain::claims::Credential;
use domain::user::{User, UserCommand, UserError, UserEvent, PASSWORD_CREDENTIAL};
use event_schemas::Metadata;
use secrecy::ExposeSecret;
use serde_json::json;
use store::{AppendRequest, NewEvent, PgEventStore};
use testkit::TestDb;
use uuid::Uuid;

fn users(db: &TestDb, snapshot_every: u64) -> CommandHandler<User> {
    CommandHandler::new(
        AggregateStore::new(PgEventStore::new(db.pool.clone()), snapshot_every),
        (),
        50,
    )
}

fn register(user_id: Uuid, username: &str, email: &str) -> UserCommand {
    UserCommand::RegisterUser {
        user_id,
        username: username.into(),
        email: email.into(),
        display_name: None,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
    }
}

fn rename(name: &str) -> UserCommand {
    UserCommand::UpdateProfile {
        display_name: name.into(),
    }
}

/// 100 concurrent registrations, the `n`-th with `identity(n)` as (username, email): exactly
/// one is stored, every other is refused with `refusal`.
async fn hundred_concurrent_registrations(
    identity: fn(usize) -> (String, String),
    refusal: UserError,
) {
    let db = TestDb::new().await;
    let handler = std::sync::Arc::new(users(&db, 0));
    let attempts = (0..100).map(|n| {
        let handler = handler.clone();
        tokio::spawn(async move {
            let id = Uuid::now_v7();
            let (username, email) = identity(n);
            handler
                .execute(
                    &id.to_string(),
                    register(id, &username, &email),
                    &CommandContext::default(),
                )
                .await
        })
    });
    let results: Vec<_> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for result in &results {
        if let Err(error) = result {
            assert_eq!(error.to_string(), refusal.to_string(), "{error:?}");
            assert!(matches!(error, CommandError::Rejected(_)), "{error:?}");
        }
    }
    let registered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'user.registered'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(registered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_registrations_of_one_username_succeed_exactly_once() {
    hundred_concurrent_registrations(
        |n| ("alice".into(), format!("alice{n}@example.com")),
        UserError::UsernameTaken,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_registrations_of_one_email_succeed_exactly_once() {
    hundred_concurrent_registrations(
        |n| (format!("bob{n}"), "Bob@Example.com".into()),
        UserError::EmailTaken,
    )
    .await;
}

#[tokio::test]
async fn an_email_differing_only_in_case_is_taken() {
    let db = TestDb::new().await;
    let handler = users(&db, 0);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    handler
        .execute(
            &a.to_string(),
            register(a, "ann", "Ann@Example.com"),
            &CommandContext::default(),
        )
        .await
        .unwrap();
    let err = handler
        .execute(
            &b.to_string(),
            register(b, "bob", "ann@example.COM"),
            &CommandContext::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(UserError::EmailTaken)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_rolled_back_registration_frees_its_username_and_email() {
    let db = TestDb::new().await;
    let handler = users(&db, 0);
    let ctx = CommandContext::default();
    let first = Uuid::now_v7();
    handler
        .execute(
            &first.to_string(),
            register(first, "carol", "carol@example.com"),
            &ctx,
        )
        .await
        .unwrap();
    let rollback = UserCommand::RollBackRegistration {
        reason: "onboarding failed".into(),
    };
    let rolled_back = handler
        .execute(&first.to_string(), rollback, &ctx)
        .await
        .unwrap();
    assert_eq!(rolled_back.version, 2);

    let second = Uuid::now_v7();
    let again = handler
        .execute(
            &second.to_string(),
            register(second, "carol", "carol@example.com"),
            &ctx,
        )
        .await;
    assert_eq!(again.unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_aggregate_are_retried_until_each_applies() {
    let db = TestDb::new().await;
    let handler = std::sync::Arc::new(users(&db, 0));
    let id = Uuid::now_v7();
    handler
        .execute(
            &id.to_string(),
            register(id, "dave", "dave@example.com"),
            &CommandContext::default(),
        )
        .await
        .unwrap();
    let renames = (0..20).map(|n| {
        let handler = handler.clone();
        tokio::spawn(async move {
            handler
                .execute(
                    &id.to_string(),
                    rename(&format!("Dave {n}")),
                    &CommandContext::default(),
                )
                .await
        })
    });
    for result in futures::future::join_all(renames).await {
        result.unwrap().unwrap();
    }
    let version = handler
        .store()
        .events()
        .stream_version("user", &id.to_string())
        .await
        .unwrap();
    assert_eq!(version, 21);
}

#[tokio::test]
async fn a_pinned_version_that_does_not_match_is_a_final_conflict() {
    let db = TestDb::new().await;
    let handler = users(&db, 0);
    let id = Uuid::now_v7();
    handler
        .execute(
            &id.to_string(),
            register(id, "erin", "erin@example.com"),
            &CommandContext::default(),
        )
        .await
        .unwrap();
    let pinned = CommandContext {
        expected_version: Some(0),
        ..CommandContext::default()
    };
    let err = handler
        .execute(&id.to_string(), rename("Erin"), &pinned)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Conflict {
                expected: 0,
                actual: 1
            }
        ),
        "{err:?}"
    );
    let matching = CommandContext {
        expected_version: Some(1),
        ..CommandContext::default()
    };
    assert_eq!(
        handler
            .execute(&id.to_string(), rename("Erin"), &matching)
            .await
            .unwrap()
            .version,
        2
    );
}

#[tokio::test]
async fn a_command_that_changes_nothing_appends_nothing() {
    let db = TestDb::new().await;
    let handler = users(&db, 0);
    let id = Uuid::now_v7();
    let ctx = CommandContext::default();
    handler
        .execute(
            &id.to_string(),
            register(id, "fay", "fay@example.com"),
            &ctx,
        )
        .await
        .unwrap();
    let same = handler
        .execute(&id.to_string(), rename("fay"), &ctx)
        .await
        .unwrap();
    assert_eq!(
        (same.version, same.appended, same.last_position),
        (1, 0, None)
    );
}

#[tokio::test]
async fn appending_a_decision_again_with_its_command_id_returns_the_first_result() {
    let db = TestDb::new().await;
    let store = AggregateStore::<User>::new(PgEventStore::new(db.pool.clone()), 0);
    let id = Uuid::now_v7();
    let loaded = store.load(&id.to_string()).await.unwrap();
    let UserCommand::RegisterUser {
        user_id,
        username,
        email,
        ..
    } = register(id, "gus", "gus@example.com")
    else {
        unreachable!()
    };
    let decided = vec![UserEvent::Registered(
        event_schemas::user::UserRegisteredV3 {
            user_id,
            username: username.clone(),
            email,
            display_name: username,
        },
    )];
    let command_id = Uuid::new_v4().to_string();
    let password = |secret: &str| {
        vec![Credential {
            kind: PASSWORD_CREDENTIAL,
            secret: Some(secret.into()),
        }]
    };
    let first = store
        .append(
            &loaded,
            decided.clone(),
            Metadata::default(),
            Some(&command_id),
            password("first"),
        )
        .await
        .unwrap();
    // The same decision retried (say, after a timeout) from the same stale state.
    let retry = store
        .append(
            &loaded,
            decided,
            Metadata::default(),
            Some(&command_id),
            password("retried"),
        )
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.last_position, first.last_position);
    let stored = store::credentials::secret(&db.pool, "user", &id.to_string(), "password")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.expose_secret(),
        "first",
        "a duplicate stores nothing"
    );
    assert_eq!(
        store
            .events()
            .stream_version("user", &id.to_string())
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn snapshots_are_taken_every_n_versions_and_used_on_load() {
    let db = TestDb::new().await;
    let handler = users(&db, 3);
    let id = Uuid::now_v7();
    let ctx = CommandContext::default();
    handler
        .execute(
            &id.to_string(),
            register(id, "hal", "hal@example.com"),
            &ctx,
        )
        .await
        .unwrap();
    for n in 1..=6 {
        handler
            .execute(&id.to_string(), rename(&format!("Hal {n}")), &ctx)
            .await
            .unwrap();
    }
    let snapshot_version: i64 =
        sqlx::query_scalar("SELECT version FROM snapshots WHERE stream_id = $1")
            .bind(id.to_string())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(snapshot_version, 6);
    let loaded = handler.store().load(&id.to_string()).await.unwrap();
    assert_eq!(
        (loaded.version, loaded.aggregate.display_name()),
        (7, "Hal 6")
    );

    // Proof the snapshot is read: doctor it and reload a stream that ends at its version.
    sqlx::query("UPDATE snapshots SET state = jsonb_set(state, '{display_name}', '\"From snapshot\"'), version = 7")
        .execute(&db.pool)
        .await
        .unwrap();
    let loaded = handler.store().load(&id.to_string()).await.unwrap();
    assert_eq!(loaded.aggregate.display_name(), "From snapshot");
}

#[tokio::test]
async fn an_unreadable_snapshot_falls_back_to_replaying_the_stream() {
    let db = TestDb::new().await;
    let handler = users(&db, 2);
    let id = Uuid::now_v7();
    let ctx = CommandContext::default();
    handler
        .execute(
            &id.to_string(),
            register(id, "ida", "ida@example.com"),
            &ctx,
        )
        .await
        .unwrap();
    handler
        .execute(&id.to_string(), rename("Ida"), &ctx)
        .await
        .unwrap();
    sqlx::query("UPDATE snapshots SET state = '{\"shape\": \"from an older release\"}'")
        .execute(&db.pool)
        .await
        .unwrap();
    let loaded = handler.store().load(&id.to_string()).await.unwrap();
    assert_eq!(
        (loaded.version, loaded.aggregate.display_name()),
        (2, "Ida")
    );
}

#[tokio::test]
async fn a_stored_v1_registration_loads_upcast_to_the_current_version() {
    let db = TestDb::new().await;
    let events = PgEventStore::new(db.pool.clone());
    let id = Uuid::now_v7();
    events
        .append(&AppendRequest {
            stream_type: "user".into(),
            stream_id: id.to_string(),
            expected_version: 0,
            events: vec![NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "user.registered".into(),
                schema_version: 1,
                payload: json!({
                    "user_id": id, "username": "jan", "email": "jan@example.com",
                    "display_name": null, "password_hash": "$argon2id$x"
                }),
            }],
            metadata: Metadata::default(),
            claims: Vec::new(),
            credentials: Vec::new(),
            erases_subject: false,
        })
        .await
        .unwrap();
    let store = AggregateStore::<User>::new(events.clone(), 0);
    let loaded = store.load(&id.to_string()).await.unwrap();
    assert_eq!(loaded.aggregate.display_name(), "jan");
    let stored = &events
        .read_stream("user", &id.to_string(), 0)
        .await
        .unwrap()[0];
    assert_eq!(
        stored.payload["password_hash"], "[redacted]",
        "read back, the old hash is redacted"
    );
    let envelope = stored.decode().unwrap();
    assert_eq!(envelope.stored_schema_version, 1);
    assert_eq!(envelope.event.schema_version(), 3);
    let current = envelope.event.encode().unwrap();
    assert_eq!(current.get("password_hash"), None, "{current}");
}

#[tokio::test]
async fn the_store_serves_cqrs_es_framework_with_metadata_and_typed_rejections() {
    let db = TestDb::new().await;
    let store = AggregateStore::<User>::new(PgEventStore::new(db.pool.clone()), 10);
    let framework = CqrsFramework::new(store.clone(), vec![], ());
    let id = Uuid::now_v7();
    let metadata = HashMap::from([
        ("correlation_id".to_owned(), "corr-7".to_owned()),
        ("actor".to_owned(), "system:test".to_owned()),
    ]);
    framework
        .execute_with_metadata(
            &id.to_string(),
            register(id, "kim", "kim@example.com"),
            metadata,
        )
        .await
        .unwrap();

    let envelopes = store.load_events(&id.to_string()).await.unwrap();
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].sequence, 1);
    assert_eq!(envelopes[0].metadata["correlation_id"], "corr-7");
    assert_eq!(envelopes[0].metadata["actor"], "system:test");

    let other = Uuid::now_v7();
    let err = framework
        .execute(
            &other.to_string(),
            register(other, "kim", "other@example.com"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AggregateError::UserError(UserError::UsernameTaken)),
        "{err:?}"
    );
}

/// `new_stream` skips the first load; when the guess is wrong the append conflicts and the
/// command is decided again on the loaded aggregate, as if no guess had been made.
#[tokio::test]
async fn a_wrong_new_stream_guess_is_decided_again_on_the_real_state() {
    let db = TestDb::new().await;
    let handler = users(&db, 0);
    let id = Uuid::now_v7();
    let guess = CommandContext {
        new_stream: true,
        ..CommandContext::default()
    };
    let first = handler
        .execute(
            &id.to_string(),
            register(id, "gus", "gus@example.com"),
            &guess,
        )
        .await
        .unwrap();
    assert_eq!((first.version, first.appended), (1, 1));

    // The same stream again: the empty aggregate would accept; the real one refuses.
    let again = handler
        .execute(
            &id.to_string(),
            register(id, "gus2", "gus2@example.com"),
            &guess,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(again, CommandError::Rejected(UserError::AlreadyRegistered)),
        "{again:?}"
    );
    // And a command that is valid on the real state goes through at the right version.
    let renamed = handler
        .execute(&id.to_string(), rename("Gus"), &guess)
        .await
        .unwrap();
    assert_eq!(renamed.version, 2);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 2);
}
