//! Stores that follow a model's generation pointer (`projections::generation`), over two
//! copies of the lite timeline tables standing in for two keyspaces: a projection's writes
//! switch generation at its next batch, whenever the pointer moved; readers within
//! `READ_REFRESH`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use projections::generation::{Following, Generation, Generations, Open, READ_REFRESH};
use projections::timeline::postgres::PgTimelines;
use projections::{RetryPolicy, Runner, TimelineProjection, TimelineSettings, TimelineStore};
use testkit::social::SocialLog;
use testkit::TestDb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const LIVE: &str = "read_model";
const NEXT: &str = "generation_next";

async fn following(db: &TestDb) -> Arc<Following<dyn TimelineStore>> {
    let pool = db.pool.clone();
    let open: Open<dyn TimelineStore> = Box::new(move |schema| {
        let pool = pool.clone();
        Box::pin(async move {
            let store: Arc<dyn TimelineStore> = Arc::new(PgTimelines::new(pool, &schema)?);
            Ok(store)
        })
    });
    Arc::new(
        Following::open(db.pool.clone(), TimelineProjection::NAME, LIVE, open)
            .await
            .unwrap(),
    )
}

/// Moves the timeline's pointer to generation `number`, held in `schema`.
async fn point(db: &TestDb, number: i32, schema: &str) {
    let generation = Generation {
        number,
        name: schema.to_owned(),
    };
    Generations::point_with(&db.pool, TimelineProjection::NAME, LIVE, &generation)
        .await
        .unwrap();
}

/// How many users follow someone, in the tables of `schema`.
async fn following_users(db: &TestDb, schema: &str, users: &[Uuid]) -> usize {
    let store = PgTimelines::new(db.pool.clone(), schema).unwrap();
    let mut n = 0;
    for &user in users {
        n += usize::from(store.counts(user).await.unwrap().following > 0);
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn writers_switch_at_their_next_batch_and_readers_within_a_second() {
    let db = TestDb::new().await;
    testkit::tables::copy_empty(&db.pool, LIVE, NEXT, PgTimelines::TABLES).await;
    let log = SocialLog::new(20);
    log.append_phases(&db.pool, 1..=2).await.unwrap();
    let users: Vec<Uuid> = sqlx::query_scalar::<_, String>(
        "SELECT payload->>'user_id' FROM events WHERE event_type = 'user.registered'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|id| id.parse().unwrap())
    .collect();

    // A writer and a reader, opened on the generation live before the move.
    let store = following(&db).await;
    assert_eq!(store.live_name(), LIVE);
    let reader = following(&db).await;
    point(&db, 1, NEXT).await;

    // The projection's next batch, right after the move, writes to the new generation
    // alone.
    let projection = TimelineProjection::new(store.clone(), TimelineSettings::default());
    Runner::new(db.pool.clone(), projection, RetryPolicy::default())
        .catch_up(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(store.live_name(), NEXT);
    assert_eq!(following_users(&db, LIVE, &users).await, 0);
    assert_eq!(following_users(&db, NEXT, &users).await, users.len());

    // A reader told to follow (a query with `X-Min-Position` that was caught up) reads the
    // new one at once; the others at the latest READ_REFRESH after their last look.
    point(&db, 0, LIVE).await;
    let told = following(&db).await;
    assert_eq!(told.live_name(), LIVE);
    point(&db, 1, NEXT).await;
    told.follow_generation().await.unwrap();
    assert_eq!(told.live_name(), NEXT);
    assert!(told.counts(users[0]).await.unwrap().following > 0);
    tokio::time::sleep(READ_REFRESH + std::time::Duration::from_millis(100)).await;
    assert!(reader.counts(users[0]).await.unwrap().following > 0);
    assert_eq!(reader.live_name(), NEXT);
}
