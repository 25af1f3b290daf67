//! The `TimelineStore` contract, run against every reachable implementation: PostgreSQL
//! (lite) and ScyllaDB/Cassandra at `SCYLLA_NODES` (a fresh keyspace per run; skipped, loudly,
//! only outside CI when the variable is unset).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use projections::timeline::postgres::PgTimelines;
use projections::timeline::scylla::{self, ScyllaSettings, ScyllaTimelines};
use projections::timeline::{TimelineEntry, TimelineStore};
use testkit::TestDb;
use uuid::Uuid;

fn entry(position: i64, author: Uuid) -> TimelineEntry {
    TimelineEntry {
        position,
        post_id: Uuid::now_v7(),
        author_id: author,
    }
}

async fn follows_are_idempotent_and_counted(store: &dyn TimelineStore) {
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    store.follow(a, b).await.unwrap();
    store.follow(a, b).await.unwrap();
    store.follow(c, b).await.unwrap();
    let mut followers = store.followers(b).await.unwrap();
    followers.sort();
    let mut expected = vec![a, c];
    expected.sort();
    assert_eq!(followers, expected);
    let counts = store.counts(b).await.unwrap();
    assert_eq!((counts.followers, counts.following), (2, 0));
    assert_eq!(store.counts(a).await.unwrap().following, 1);
    store.unfollow(a, b).await.unwrap();
    store.unfollow(a, b).await.unwrap();
    assert_eq!(store.followers(b).await.unwrap(), vec![c]);
    assert_eq!(store.counts(a).await.unwrap().following, 0);
}

async fn timelines_are_newest_first_paged_and_idempotent(store: &dyn TimelineStore) {
    let (reader, author) = (Uuid::new_v4(), Uuid::new_v4());
    let entries: Vec<TimelineEntry> = (1..=30).map(|p| entry(p * 10, author)).collect();
    for e in &entries {
        store.deliver(&[reader], *e, 100).await.unwrap();
        store.deliver(&[reader], *e, 100).await.unwrap();
    }
    let first = store.timeline(reader, None, 12).await.unwrap();
    let expected: Vec<TimelineEntry> = entries.iter().rev().take(12).copied().collect();
    assert_eq!(first, expected);
    let second = store
        .timeline(reader, Some(first[11].position), 12)
        .await
        .unwrap();
    assert_eq!(
        second,
        entries
            .iter()
            .rev()
            .skip(12)
            .take(12)
            .copied()
            .collect::<Vec<_>>()
    );
    let all = store.timeline(reader, None, 100).await.unwrap();
    assert_eq!(all.len(), 30, "a redelivered entry is stored once");
    assert!(store
        .timeline(Uuid::new_v4(), None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn timelines_are_trimmed_to_the_cap(store: &dyn TimelineStore) {
    let cap = 16;
    let (reader, other, author) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let entries: Vec<TimelineEntry> = (1..=60).map(|p| entry(p, author)).collect();
    for e in &entries {
        store.deliver(&[reader, other], *e, cap).await.unwrap();
    }
    for user in [reader, other] {
        let kept = store.timeline(user, None, 1000).await.unwrap();
        assert!(
            (cap..=cap + cap / 8).contains(&kept.len()),
            "{} entries kept with cap {cap}",
            kept.len()
        );
        let newest: Vec<TimelineEntry> = entries.iter().rev().take(cap).copied().collect();
        assert_eq!(kept[..cap], newest[..], "the newest entries are kept");
    }
}

async fn a_removed_post_leaves_every_timeline_and_its_author_list(store: &dyn TimelineStore) {
    let (a, b, author) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let keep = entry(1, author);
    let doomed = entry(2, author);
    for e in [keep, doomed] {
        store.add_author_post(e).await.unwrap();
        store.add_author_post(e).await.unwrap();
        store.deliver(&[a, b, author], e, 100).await.unwrap();
    }
    assert_eq!(
        store.author_posts(author, None, 10).await.unwrap(),
        vec![doomed, keep]
    );
    store.remove_post(author, doomed.post_id).await.unwrap();
    store.remove_post(author, doomed.post_id).await.unwrap();
    store.remove_post(author, Uuid::new_v4()).await.unwrap();
    for user in [a, b, author] {
        assert_eq!(store.timeline(user, None, 10).await.unwrap(), vec![keep]);
    }
    assert_eq!(
        store.author_posts(author, None, 10).await.unwrap(),
        vec![keep]
    );
    assert_eq!(
        store.author_posts(author, Some(1), 10).await.unwrap(),
        vec![]
    );
}

async fn merged_authors_are_found_through_follows(store: &dyn TimelineStore) {
    let (reader, star, plain) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    store.mark_merged_at_read(star).await.unwrap();
    store.mark_merged_at_read(star).await.unwrap();
    assert!(store
        .merged_authors_followed_by(reader)
        .await
        .unwrap()
        .is_empty());
    store.follow(reader, star).await.unwrap();
    store.follow(reader, plain).await.unwrap();
    assert_eq!(
        store.merged_authors_followed_by(reader).await.unwrap(),
        vec![star]
    );
    store.unfollow(reader, star).await.unwrap();
    assert!(store
        .merged_authors_followed_by(reader)
        .await
        .unwrap()
        .is_empty());
}

/// Writers at once: what two or more consumers of a Kafka group do, since posts of
/// different authors fan out into the same follower's timeline from any of them.
const WRITERS: i64 = 8;

/// [`WRITERS`] writers deliver posts of their own authors into the same timelines at once,
/// in rounds, out of position order across writers: every timeline stays within its cap
/// and holds the newest entries, round after round (a length that counted too few would
/// let a timeline outgrow the bound in a later round).
async fn concurrent_writers_keep_every_timeline_within_its_cap(store: &dyn TimelineStore) {
    let cap = 16;
    let readers: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let authors: Vec<Uuid> = (0..WRITERS).map(|_| Uuid::new_v4()).collect();
    let mut delivered: Vec<TimelineEntry> = Vec::new();
    for round in 0..4_i64 {
        let writers = authors.iter().enumerate().map(|(w, author)| {
            let w = i64::try_from(w).unwrap();
            let entries: Vec<TimelineEntry> = (0..12)
                .map(|i| entry(1 + round * 1000 + i * WRITERS + w, *author))
                .collect();
            let readers = &readers;
            async move {
                for e in &entries {
                    store.deliver(readers, *e, cap).await.unwrap();
                }
                entries
            }
        });
        for entries in futures::future::join_all(writers).await {
            delivered.extend(entries);
        }
        delivered.sort_by_key(|e| std::cmp::Reverse(e.position));
        for user in &readers {
            let kept = store.timeline(*user, None, 1000).await.unwrap();
            assert!(
                (cap..=cap + cap / 8).contains(&kept.len()),
                "round {round}: {} entries kept with cap {cap}",
                kept.len()
            );
            assert_eq!(
                kept[..cap],
                delivered[..cap],
                "round {round}: the newest entries are kept"
            );
        }
    }
}

/// [`WRITERS`] writers follow and unfollow the same user at once: the follower set and both
/// counts are exact.
async fn concurrent_writers_keep_follows_exact(store: &dyn TimelineStore) {
    let star = Uuid::new_v4();
    let fans: Vec<Vec<Uuid>> = (0..WRITERS)
        .map(|_| (0..10).map(|_| Uuid::new_v4()).collect())
        .collect();
    futures::future::join_all(fans.iter().map(|fans| async move {
        for (i, fan) in fans.iter().enumerate() {
            store.follow(*fan, star).await.unwrap();
            if i % 3 == 0 {
                store.unfollow(*fan, star).await.unwrap();
            }
        }
    }))
    .await;
    let mut expected: Vec<Uuid> = fans
        .iter()
        .flat_map(|fans| fans.iter().enumerate().filter(|(i, _)| i % 3 != 0))
        .map(|(_, fan)| *fan)
        .collect();
    expected.sort();
    let mut followers = store.followers(star).await.unwrap();
    followers.sort();
    assert_eq!(followers, expected);
    assert_eq!(
        store.counts(star).await.unwrap().followers,
        u64::try_from(expected.len()).unwrap()
    );
}

async fn contract(store: &dyn TimelineStore) {
    follows_are_idempotent_and_counted(store).await;
    timelines_are_newest_first_paged_and_idempotent(store).await;
    timelines_are_trimmed_to_the_cap(store).await;
    a_removed_post_leaves_every_timeline_and_its_author_list(store).await;
    merged_authors_are_found_through_follows(store).await;
    concurrent_writers_keep_every_timeline_within_its_cap(store).await;
    concurrent_writers_keep_follows_exact(store).await;
}

#[tokio::test]
async fn postgres_timelines_meet_the_contract() {
    let db = TestDb::new().await;
    contract(&PgTimelines::lite(db.pool.clone())).await;
}

/// The migration that moved the timelines' index from post id to position also moves a
/// table of a replay from before it, whose index names `LIKE … INCLUDING ALL` chose, and
/// does nothing when run again.
#[tokio::test]
async fn the_position_index_migration_covers_replayed_tables_and_runs_twice() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE SCHEMA replay_timeline; \
         CREATE TABLE replay_timeline.timelines (LIKE read_model.timelines); \
         ALTER TABLE replay_timeline.timelines ADD PRIMARY KEY (user_id, position); \
         CREATE INDEX ON replay_timeline.timelines (post_id);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let migration = include_str!("../../migrations/20261204000010_timelines_by_position.sql");
    for _ in 0..2 {
        sqlx::raw_sql(migration).execute(&db.pool).await.unwrap();
    }
    let single_column: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relnamespace::regnamespace::text, a.attname::text FROM pg_index i \
           JOIN pg_class c ON c.oid = i.indrelid \
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
          WHERE c.relname = 'timelines' AND i.indnatts = 1 ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected = [("read_model", "position"), ("replay_timeline", "position")];
    assert_eq!(
        single_column,
        expected.map(|(s, c)| (s.to_owned(), c.to_owned()))
    );
}

#[tokio::test]
async fn scylla_timelines_meet_the_contract() {
    let Some(nodes) = testkit::production_server("SCYLLA_NODES") else {
        return;
    };
    let settings = ScyllaSettings {
        nodes: nodes.split(',').map(str::to_owned).collect(),
        keyspace: format!("test_{}", Uuid::new_v4().simple()),
        consistency: "ONE".to_owned(),
        replication_factor: 1,
    };
    scylla::migrate(&settings).await.unwrap();
    contract(&ScyllaTimelines::connect(&settings).await.unwrap()).await;
    scylla::drop_keyspace(&settings).await.unwrap();
}
