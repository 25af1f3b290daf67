//! `user.erased` in the content projection, in every order Kafka may deliver it: before or
//! after the person's profile, post and comment, in one batch or one by one. Whatever the
//! order, nothing personal of theirs is left stored, and other people's data stays.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Utc;
use event_schemas::comment::CommentAddedV1;
use event_schemas::post::PostPublishedV1;
use event_schemas::user::{UserErasedV1, UserRegisteredV3};
use event_schemas::{Event, EventEnvelope, Metadata};
use projections::content::postgres::PgContent;
use projections::{ContentProjection, ContentStore, Projection};
use testkit::TestDb;
use uuid::Uuid;

fn envelope(position: i64, event: Event) -> EventEnvelope {
    EventEnvelope {
        global_position: position,
        event_id: Uuid::new_v4(),
        stream_type: "test".to_owned(),
        stream_id: position.to_string(),
        stream_version: 1,
        stored_schema_version: 1,
        event,
        metadata: Metadata::default(),
        recorded_at: Utc::now(),
    }
}

/// The person's registration, post and comment (on `others_post`), and their erasure.
fn lifetime(person: Uuid, post: Uuid, others_post: Uuid) -> Vec<EventEnvelope> {
    vec![
        envelope(
            1,
            Event::UserRegistered(UserRegisteredV3 {
                user_id: person,
                username: "zq".to_owned(),
                email: "zq@example.org".to_owned(),
                display_name: "Zq".to_owned(),
            }),
        ),
        envelope(
            2,
            Event::PostPublished(PostPublishedV1 {
                post_id: post,
                author_id: person,
                title: "zq title".to_owned(),
                body_markdown: "zq body".to_owned(),
                media: Vec::new(),
            }),
        ),
        envelope(
            3,
            Event::CommentAdded(CommentAddedV1 {
                comment_id: Uuid::now_v7(),
                post_id: others_post,
                author_id: person,
                body: "zq comment".to_owned(),
            }),
        ),
        envelope(4, Event::UserErased(UserErasedV1 { user_id: person })),
    ]
}

#[tokio::test]
async fn whatever_the_order_nothing_of_an_erased_person_stays_stored() {
    let db = TestDb::new().await;
    // Each order: the indices of `lifetime` in delivery order, and whether it goes in one
    // batch.
    let orders: [(&[usize], bool); 6] = [
        (&[0, 1, 2, 3], false),
        (&[0, 1, 2, 3], true),
        (&[3, 0, 1, 2], false),
        (&[3, 0, 1, 2], true),
        (&[1, 3, 2, 0], false),
        (&[2, 3, 1, 0], true),
    ];
    for (n, (order, batch)) in orders.into_iter().enumerate() {
        let store = Arc::new(PgContent::lite(db.pool.clone()));
        let projection = ContentProjection::uncached(store.clone());
        let (person, post) = (Uuid::now_v7(), Uuid::now_v7());
        let other = envelope(
            0,
            Event::PostPublished(PostPublishedV1 {
                post_id: Uuid::now_v7(),
                author_id: Uuid::now_v7(),
                title: "another's".to_owned(),
                body_markdown: "stays".to_owned(),
                media: Vec::new(),
            }),
        );
        projection.apply(&other).await.unwrap();
        let Event::PostPublished(ref others) = other.event else {
            unreachable!()
        };
        let events = lifetime(person, post, others.post_id);
        let delivered: Vec<EventEnvelope> = order.iter().map(|&i| events[i].clone()).collect();
        if batch {
            projection.apply_batch(&delivered).await.unwrap();
        } else {
            for event in &delivered {
                projection.apply(event).await.unwrap();
            }
        }
        assert_eq!(store.profile(person).await.unwrap(), None, "order {n}");
        assert_eq!(store.post(post).await.unwrap(), None, "order {n}");
        let left = store.post(others.post_id).await.unwrap().unwrap();
        assert_eq!(left.comment_count, 0, "order {n}");
        assert!(store
            .comments(others.post_id, None, 10)
            .await
            .unwrap()
            .is_empty());
        let personal: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT doc::text AS t FROM read_model.posts \
               UNION ALL SELECT doc::text FROM read_model.comments \
               UNION ALL SELECT username || display_name FROM read_model.profiles) rows \
              WHERE t LIKE '%zq%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(personal, 0, "order {n}: a personal string is stored");
    }
}

/// A conversation and a message of a person already erased (their `user.erased` applied
/// before them, as Kafka may deliver): stored emptied, whatever they opened to.
#[tokio::test]
async fn messages_of_a_person_erased_before_they_arrive_are_stored_emptied() {
    use event_schemas::messaging::{ConversationStartedV1, MessageSentV1};
    use projections::MessagingProjection;
    let db = TestDb::new().await;
    let (person, friend, conversation) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    sqlx::query("INSERT INTO data_keys (subject, erased_at) VALUES ($1, now())")
        .bind(person)
        .execute(&db.pool)
        .await
        .unwrap();
    let store = Arc::new(projections::messaging::PgMessaging::new(db.pool.clone()));
    let projection = MessagingProjection::new(store, db.pool.clone());
    projection
        .apply(&envelope(
            4,
            Event::UserErased(UserErasedV1 { user_id: person }),
        ))
        .await
        .unwrap();
    projection
        .apply(&envelope(
            5,
            Event::ConversationStarted(ConversationStartedV1 {
                conversation_id: conversation,
                started_by: person,
                members: vec![person, friend],
                title: "zq title".to_owned(),
            }),
        ))
        .await
        .unwrap();
    projection
        .apply(&envelope(
            6,
            Event::MessageSent(MessageSentV1 {
                conversation_id: conversation,
                message_id: Uuid::now_v7(),
                sender_id: person,
                body: "zq message".to_owned(),
            }),
        ))
        .await
        .unwrap();
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM read_model.messages UNION ALL SELECT title FROM read_model.conversations",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|s| !s.contains("zq")), "{stored:?}");
}
