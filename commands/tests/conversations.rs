//! Conversations against a real event store: of many people starting the one-to-one
//! conversation of the same pair at once, exactly one gets it and every other learns that
//! it exists, and which one it is (the claim's holder); messages from a non-member are
//! refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use commands::{CommandContext, CommandError, WriteSide};
use domain::conversation::{direct_key, ConversationCommand, ConversationError, DIRECT_CLAIM};
use testkit::TestDb;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_of_one_pair_make_exactly_one_conversation() {
    let db = TestDb::new().await;
    let write = std::sync::Arc::new(WriteSide::new(
        db.pool.clone(),
        commands::Settings::default(),
    ));
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let starts = (0..16).map(|i| {
        let write = write.clone();
        async move {
            let id = Uuid::now_v7();
            let (starter, other) = if i % 2 == 0 { (ada, bob) } else { (bob, ada) };
            let command = ConversationCommand::Start {
                conversation_id: id,
                started_by: starter,
                members: vec![other],
                title: None,
            };
            let context = CommandContext {
                new_stream: true,
                ..CommandContext::default()
            };
            (
                id,
                write
                    .conversations
                    .execute(&id.to_string(), command, &context)
                    .await,
            )
        }
    });
    let results = futures::future::join_all(starts).await;
    let started: Vec<Uuid> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(started.len(), 1, "{results:?}");
    for (_, result) in &results {
        match result {
            Ok(_) | Err(CommandError::Rejected(ConversationError::DirectExists)) => {}
            Err(other) => panic!("{other}"),
        }
    }
    let holder = store::claims::holder(&db.pool, &[(DIRECT_CLAIM, &direct_key(bob, ada))])
        .await
        .unwrap();
    assert_eq!(holder, Some(started[0].to_string()));

    let id = started[0].to_string();
    let stranger = ConversationCommand::Send {
        message_id: Uuid::now_v7(),
        sender_id: Uuid::now_v7(),
        body: "hello".into(),
    };
    let refused = write
        .conversations
        .execute(&id, stranger, &CommandContext::default())
        .await;
    assert!(matches!(
        refused,
        Err(CommandError::Rejected(ConversationError::NotMember))
    ));
    let sent = ConversationCommand::Send {
        message_id: Uuid::now_v7(),
        sender_id: bob,
        body: "hello".into(),
    };
    write
        .conversations
        .execute(&id, sent, &CommandContext::default())
        .await
        .unwrap();
}
