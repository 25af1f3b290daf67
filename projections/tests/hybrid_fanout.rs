//! The timeline projection's hybrid fan-out: an author with more followers than
//! `fanout_max_followers` is not fanned out on write; the feed query merges their posts at
//! read time, and an unfollow stops both at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use event_schemas::post::PostPublishedV1;
use event_schemas::social::{FollowedV1, UnfollowedV1};
use event_schemas::{Event, Metadata};
use projections::content::ContentProjection;
use projections::timeline::{TimelineProjection, TimelineSettings};
use projections::{Projection, ReadModels, RetryPolicy, Runner};
use store::{AppendRequest, NewEvent, PgEventStore};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn append(
    store: &PgEventStore,
    stream_type: &str,
    stream_id: String,
    version: u64,
    event: Event,
) {
    store
        .append(&AppendRequest {
            stream_type: stream_type.into(),
            stream_id,
            expected_version: version,
            events: vec![NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.event_type().into(),
                schema_version: event.schema_version(),
                payload: event.encode().unwrap(),
            }],
            metadata: Metadata::default(),
            claims: Vec::new(),
            credentials: Vec::new(),
            erases_subject: false,
        })
        .await
        .unwrap();
}

async fn drain<P: Projection>(runner: &Runner<P>) {
    runner.catch_up(&CancellationToken::new()).await.unwrap();
}

#[tokio::test]
async fn posts_of_an_author_above_the_threshold_are_merged_at_read_time() {
    let db = TestDb::new().await;
    let redis = redis::aio::ConnectionManager::new(
        redis::Client::open(
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let models = ReadModels::lite(
        db.pool.clone(),
        redis,
        &format!("test:{}:", Uuid::new_v4().simple()),
    );
    let settings = TimelineSettings {
        cap: 100,
        fanout_max_followers: 2,
    };
    let timeline = Runner::new(
        db.pool.clone(),
        TimelineProjection::new(models.timelines.clone(), settings),
        RetryPolicy::default(),
    );
    let content = Runner::new(
        db.pool.clone(),
        ContentProjection::new(models.content.clone(), models.cache.clone()),
        RetryPolicy::default(),
    );
    let store = PgEventStore::new(db.pool.clone());

    let (star, small) = (Uuid::new_v4(), Uuid::new_v4());
    let fans: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    // Three fans follow the star (above the threshold of 2); two of them the small author.
    for (i, &fan) in fans.iter().enumerate() {
        let follow = FollowedV1 {
            follower_id: fan,
            followee_id: star,
        };
        append(&store, "social_graph", fan.to_string(), 0, follow.into()).await;
        if i < 2 {
            let follow = FollowedV1 {
                follower_id: fan,
                followee_id: small,
            };
            append(&store, "social_graph", fan.to_string(), 1, follow.into()).await;
        }
    }
    let mut posts = Vec::new();
    for (i, author) in [star, small, star].into_iter().enumerate() {
        let post_id = Uuid::now_v7();
        posts.push(post_id);
        let event = PostPublishedV1 {
            post_id,
            author_id: author,
            title: format!("post {i}"),
            body_markdown: "text".into(),
            media: Vec::new(),
        };
        append(&store, "post", post_id.to_string(), 0, event.into()).await;
    }
    drain(&timeline).await;
    drain(&content).await;
    let dead = projections::DeadLetters::new(db.pool.clone())
        .list(None)
        .await
        .unwrap();
    assert!(dead.is_empty(), "{dead:?}");

    // The star was not fanned out: only their own timeline got posts 0 and 2; post 1 went
    // to the small author and their two fans.
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM read_model.timelines WHERE post_id = ANY($1)")
            .bind(&posts)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows, 2 + 3);
    for (i, &fan) in fans.iter().enumerate() {
        let expected = if i < 2 {
            vec![posts[2], posts[1], posts[0]]
        } else {
            vec![posts[2], posts[0]]
        };
        let feed = models.feed(fan, None, 10).await.unwrap();
        let seen: Vec<Uuid> = feed.items.iter().map(|i| i.post_id).collect();
        assert_eq!(seen, expected, "merged, newest first");
        let page = models.feed(fan, None, 1).await.unwrap();
        let rest = models.feed(fan, page.next_cursor, 10).await.unwrap();
        let paged: Vec<Uuid> = page
            .items
            .iter()
            .chain(&rest.items)
            .map(|i| i.post_id)
            .collect();
        assert_eq!(paged, expected, "the cursor works across merged lists");
    }

    let unfollow = UnfollowedV1 {
        follower_id: fans[0],
        followee_id: star,
    };
    append(
        &store,
        "social_graph",
        fans[0].to_string(),
        2,
        unfollow.into(),
    )
    .await;
    drain(&timeline).await;
    let feed = models.feed(fans[0], None, 10).await.unwrap();
    let seen: Vec<Uuid> = feed.items.iter().map(|i| i.post_id).collect();
    assert_eq!(
        seen,
        vec![posts[1]],
        "an unfollowed star's posts are no longer merged"
    );
}
