//! A whole social session through the write side, then the log as every reader sees it.

use std::collections::BTreeSet;

use domain::comment::CommentCommand;
use domain::like::{like_stream_id, LikeCommand};
use domain::onboarding::OnboardingCommand;
use domain::post::PostCommand;
use domain::social_graph::SocialGraphCommand;
use domain::user::UserCommand;
use e2e::{as_user, spawn_write_side};
use event_schemas::{Event, EventKind};
use store::{LogPosition, LogReader};
use uuid::Uuid;

fn register(user_id: Uuid, username: &str) -> UserCommand {
    UserCommand::RegisterUser {
        user_id,
        username: username.into(),
        email: format!("{username}@example.com"),
        display_name: None,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
    }
}

#[tokio::test]
async fn a_social_session_lands_in_the_log_in_order_with_metadata_and_verifies() {
    let app = spawn_write_side().await;
    let c = &app.commands;
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let post = Uuid::now_v7();
    let comment = Uuid::now_v7();

    c.users
        .execute(&ada.to_string(), register(ada, "ada"), &as_user(ada, "r1"))
        .await
        .unwrap();
    c.users
        .execute(&bob.to_string(), register(bob, "bob"), &as_user(bob, "r2"))
        .await
        .unwrap();
    let required: BTreeSet<String> = ["timeline".to_owned(), "content".to_owned()].into();
    for projection in ["timeline", "content"] {
        let sync = OnboardingCommand::RecordSync {
            user_id: ada,
            projection: projection.into(),
            required: required.clone(),
        };
        c.onboarding
            .execute(&ada.to_string(), sync, &as_user(ada, "sync"))
            .await
            .unwrap();
    }
    let follow = SocialGraphCommand::Follow {
        follower_id: ada,
        followee_id: bob,
    };
    c.social
        .execute(&ada.to_string(), follow.clone(), &as_user(ada, "r3"))
        .await
        .unwrap();
    let again = c
        .social
        .execute(&ada.to_string(), follow, &as_user(ada, "r3b"))
        .await
        .unwrap();
    assert_eq!(again.appended, 0, "following twice appends nothing");
    let publish = PostCommand::PublishPost {
        post_id: post,
        author_id: bob,
        title: "Hello".into(),
        body_markdown: "*first* post".into(),
        media: vec!["https://example.com/cat.png".into()],
    };
    let published = c
        .posts
        .execute(&post.to_string(), publish, &as_user(bob, "r4"))
        .await
        .unwrap();
    assert_eq!(published.version, 1);
    let add = CommentCommand::AddComment {
        comment_id: comment,
        post_id: post,
        author_id: ada,
        body: "Nice".into(),
    };
    c.comments
        .execute(&comment.to_string(), add, &as_user(ada, "r5"))
        .await
        .unwrap();
    let like = LikeCommand::LikePost {
        post_id: post,
        user_id: ada,
    };
    c.likes
        .execute(&like_stream_id(post, ada), like, &as_user(ada, "r6"))
        .await
        .unwrap();
    let delete = PostCommand::DeletePost { actor_id: ada };
    assert!(
        c.posts
            .execute(&post.to_string(), delete, &as_user(ada, "r7"))
            .await
            .is_err(),
        "only the author deletes"
    );

    let reader = LogReader::new(app.db.pool.clone());
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let mut stored = testkit::read_log(&reader, LogPosition::START, total as usize).await;
    let sealed = stored
        .iter()
        .find(|e| e.event_type == "post.published")
        .unwrap();
    assert!(sealed.payload["title"]
        .as_str()
        .unwrap()
        .starts_with("sealed:v1:"));
    // Opened, as every reader that decodes events does.
    let keyring = c.users.store().events().keyring();
    keyring.open(&mut stored).await.unwrap();
    let log: Vec<_> = stored.iter().map(|e| e.decode().unwrap()).collect();
    let kinds: Vec<EventKind> = log.iter().map(|e| e.event.kind()).collect();
    assert_eq!(
        kinds,
        [
            EventKind::UserRegistered,
            EventKind::UserRegistered,
            EventKind::UserSynced,
            EventKind::UserSynced,
            EventKind::OnboardingCompleted,
            EventKind::Followed,
            EventKind::PostPublished,
            EventKind::CommentAdded,
            EventKind::PostLiked,
        ]
    );
    let like_event = log.last().unwrap();
    assert_eq!(
        like_event.metadata.actor.as_deref(),
        Some(&*format!("user:{ada}"))
    );
    assert_eq!(like_event.metadata.correlation_id.as_deref(), Some("r6"));
    assert!(
        matches!(&log[6].event, Event::PostPublished(p) if p.title == "Hello" && p.author_id == bob)
    );

    let verification = c.users.store().events().verify(0, i64::MAX).await.unwrap();
    assert!(verification.ok);
    assert_eq!(verification.checked, 9);
}
