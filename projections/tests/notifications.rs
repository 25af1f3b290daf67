//! The notifications projection reaches the same state whatever order Kafka delivers the
//! topics in (likes and comments before their post, everything twice), and forgets an
//! erased person.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use event_schemas::comment::CommentAddedV1;
use event_schemas::like::{PostLikedV1, PostUnlikedV1};
use event_schemas::post::{PostDeletedV1, PostPublishedV1};
use event_schemas::social::FollowedV1;
use event_schemas::user::{UserErasedV1, UserNotificationsReadV1};
use event_schemas::{Event, EventEnvelope, Metadata};
use projections::notifications::Page;
use projections::{Notifications, NotificationsProjection, Projection};
use testkit::TestDb;
use uuid::Uuid;

fn envelope(position: i64, event: Event) -> EventEnvelope {
    EventEnvelope {
        global_position: position,
        event_id: Uuid::from_u128(position as u128),
        stream_type: event.kind().stream_type().to_owned(),
        stream_id: position.to_string(),
        stream_version: 1,
        stored_schema_version: 1,
        event,
        metadata: Metadata::default(),
        recorded_at: Utc::now(),
    }
}

struct People {
    ada: Uuid,
    bob: Uuid,
    cy: Uuid,
}

/// Ada's two posts; bob and cy like and comment; bob unlikes; cy follows her; her second
/// post is deleted; she reads up to position 6.
fn history(p: &People, posts: [Uuid; 2]) -> Vec<EventEnvelope> {
    let [first, second] = posts;
    let publish = |post, n| {
        Event::PostPublished(PostPublishedV1 {
            post_id: post,
            author_id: p.ada,
            title: format!("post {n}"),
            body_markdown: String::new(),
            media: Vec::new(),
        })
    };
    let like = |post, user| {
        Event::PostLiked(PostLikedV1 {
            post_id: post,
            user_id: user,
        })
    };
    let comment = |post, user| {
        Event::CommentAdded(CommentAddedV1 {
            comment_id: Uuid::new_v4(),
            post_id: post,
            author_id: user,
            body: "hi".to_owned(),
        })
    };
    vec![
        envelope(1, publish(first, 1)),
        envelope(2, publish(second, 2)),
        envelope(3, like(first, p.bob)),
        envelope(4, like(first, p.cy)),
        envelope(5, comment(first, p.bob)),
        envelope(6, like(second, p.bob)),
        envelope(7, like(first, p.ada)),
        envelope(
            8,
            Event::PostUnliked(PostUnlikedV1 {
                post_id: first,
                user_id: p.bob,
            }),
        ),
        envelope(
            9,
            Event::Followed(FollowedV1 {
                follower_id: p.cy,
                followee_id: p.ada,
            }),
        ),
        envelope(10, comment(first, p.cy)),
        envelope(
            11,
            Event::PostDeleted(PostDeletedV1 {
                post_id: second,
                author_id: p.ada,
            }),
        ),
        envelope(12, like(second, p.cy)),
        envelope(
            13,
            Event::UserNotificationsRead(UserNotificationsReadV1 {
                user_id: p.ada,
                up_to: 6,
            }),
        ),
    ]
}

async fn apply_all(db: &TestDb, events: &[EventEnvelope]) -> Page {
    let projection = NotificationsProjection::new(db.pool.clone());
    for event in events {
        projection.apply(event).await.unwrap();
    }
    Notifications::new(db.pool.clone())
        .page(Uuid::from_u128(0xada), None, 50)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_topic_order_and_redelivery_gives_the_log_orders_notifications() {
    let p = People {
        ada: Uuid::from_u128(0xada),
        bob: Uuid::from_u128(0xb0b),
        cy: Uuid::from_u128(0xc1),
    };
    let posts = [Uuid::from_u128(1), Uuid::from_u128(2)];
    let events = history(&p, posts);
    let in_order = apply_all(&TestDb::new().await, &events).await;

    let kinds: Vec<(&str, i64, Vec<Uuid>, bool)> = in_order
        .items
        .iter()
        .map(|g| (g.kind.as_str(), g.count, g.actors.clone(), g.read))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("comment", 2, vec![p.cy, p.bob], false),
            ("follow", 1, vec![p.cy], false),
            ("like", 1, vec![p.cy], true),
        ],
        "ada's own like, bob's taken-back like and the deleted post notify nobody"
    );
    assert_eq!(in_order.unread, 2);

    // Kafka keeps order within a stream (a topic partition), not across topics: posts,
    // likes, comments, follows and the person's own events can come in any interleaving.
    // Adversarial: the acts first (likes and comments before their posts), the posts and
    // their deletion last; then all of it delivered twice.
    let topic = |e: &EventEnvelope| match e.event.kind().stream_type() {
        "like" => 0,
        "comment" => 1,
        "social_graph" => 2,
        "user" => 3,
        _ => 4,
    };
    let mut adversarial = events.clone();
    adversarial.sort_by_key(|e| (topic(e), e.global_position));
    assert_eq!(
        apply_all(&TestDb::new().await, &adversarial).await,
        in_order
    );
    let twice: Vec<EventEnvelope> = adversarial
        .iter()
        .chain(adversarial.iter())
        .cloned()
        .collect();
    assert_eq!(apply_all(&TestDb::new().await, &twice).await, in_order);

    let mut reversed_topics = events.clone();
    reversed_topics.sort_by_key(|e| (std::cmp::Reverse(topic(e)), e.global_position));
    assert_eq!(
        apply_all(&TestDb::new().await, &reversed_topics).await,
        in_order
    );
}

#[tokio::test]
async fn an_erased_person_notifies_nobody_and_has_no_notifications() {
    let p = People {
        ada: Uuid::from_u128(0xada),
        bob: Uuid::from_u128(0xb0b),
        cy: Uuid::from_u128(0xc1),
    };
    let db = TestDb::new().await;
    let mut events = history(&p, [Uuid::from_u128(1), Uuid::from_u128(2)]);
    events.push(envelope(
        14,
        Event::UserErased(UserErasedV1 { user_id: p.cy }),
    ));
    // Erasing destroys the data key first (the store does, with the append).
    sqlx::query(
        "INSERT INTO data_keys (subject, wrapped, kek_id, erased_at) VALUES ($1, NULL, NULL, now())",
    )
    .bind(p.cy)
    .execute(&db.pool)
    .await
    .unwrap();
    let page = apply_all(&db, &events).await;
    let actors: Vec<Uuid> = page.items.iter().flat_map(|g| g.actors.clone()).collect();
    assert!(!actors.contains(&p.cy), "{page:?}");
    assert_eq!(
        page.items
            .iter()
            .map(|g| g.kind.as_str())
            .collect::<Vec<_>>(),
        ["comment"]
    );
}
