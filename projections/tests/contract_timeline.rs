//! The `TimelineStore` contract, run against every reachable implementation: PostgreSQL
//! (lite) and ScyllaDB/Cassandra at `SCYLLA_NODES` (a fresh keyspace per run; skipped, loudly,
//! only outside CI when the variable is unset).
//!
//! Besides each write alone, the contract holds the model's order-independence: the same
//! writes in any order a Kafka-fed projection may see them (one stream's in order, streams
//! interleaved), one at a time or in batches, and two writers at once, end in the same
//! timelines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};

use projections::timeline::postgres::PgTimelines;
use projections::timeline::scylla::{self, ScyllaSettings, ScyllaTimelines};
use projections::timeline::{
    Direction, TimelineEntry, TimelineSettings, TimelineStore, TimelineWrite,
};
use testkit::TestDb;
use uuid::Uuid;

/// Caps out of reach: what these tests compare does not depend on trims.
const SETTINGS: TimelineSettings = TimelineSettings {
    cap: 100,
    fanout_max_followers: 100,
};

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
    assert!(store.follows(a, b).await.unwrap());
    assert!(!store.follows(b, a).await.unwrap());
    let mut among = store
        .followers_among(b, &[a, b, c, Uuid::new_v4()])
        .await
        .unwrap();
    among.sort();
    let mut both = vec![a, c];
    both.sort();
    assert_eq!(among, both);
    assert!(store.followers_among(b, &[]).await.unwrap().is_empty());
    assert_eq!(store.counts(a).await.unwrap().following, 1);
    store.unfollow(a, b).await.unwrap();
    store.unfollow(a, b).await.unwrap();
    assert!(!store.follows(a, b).await.unwrap());
    assert_eq!(store.followers_among(b, &[a, c]).await.unwrap(), vec![c]);
    assert_eq!(store.followers(b).await.unwrap(), vec![c]);
    assert_eq!(store.counts(a).await.unwrap().following, 0);
}

/// Every page of a side of `user`'s follows, `limit` at a time, joined.
async fn all_pages(
    store: &dyn TimelineStore,
    user: Uuid,
    direction: Direction,
    limit: usize,
) -> Vec<Uuid> {
    let (mut listed, mut after) = (Vec::new(), Uuid::nil());
    loop {
        let page = store
            .follows_page(user, direction, after, limit)
            .await
            .unwrap();
        assert!(page.len() <= limit);
        let Some(last) = page.last() else {
            return listed;
        };
        after = *last;
        listed.extend(page);
    }
}

async fn follows_are_listed_page_by_page(store: &dyn TimelineStore) {
    let star = Uuid::new_v4();
    let fans: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
    for fan in &fans {
        store.follow(*fan, star).await.unwrap();
        store.follow(star, *fan).await.unwrap();
    }
    store.unfollow(fans[3], star).await.unwrap();
    for direction in [Direction::Followers, Direction::Following] {
        let mut expected: HashSet<Uuid> = fans.iter().copied().collect();
        if direction == Direction::Followers {
            expected.remove(&fans[3]);
        }
        for limit in [1, 3, 100] {
            let listed = all_pages(store, star, direction, limit).await;
            assert_eq!(listed.len(), expected.len(), "{direction:?} by {limit}");
            assert_eq!(listed.iter().copied().collect::<HashSet<_>>(), expected);
        }
    }
    assert!(all_pages(store, Uuid::new_v4(), Direction::Followers, 5)
        .await
        .is_empty());
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

fn publish(position: i64, author: Uuid) -> TimelineWrite {
    TimelineWrite::Publish(entry(position, author))
}

fn follow(follower: Uuid, followee: Uuid) -> TimelineWrite {
    TimelineWrite::Follow { follower, followee }
}

fn unfollow(follower: Uuid, followee: Uuid) -> TimelineWrite {
    TimelineWrite::Unfollow { follower, followee }
}

fn remove(write: &TimelineWrite) -> TimelineWrite {
    let TimelineWrite::Publish(entry) = write else {
        panic!("not a publication: {write:?}")
    };
    TimelineWrite::Remove {
        author: entry.author_id,
        post_id: entry.post_id,
    }
}

async fn apply_all(
    store: &dyn TimelineStore,
    writes: &[TimelineWrite],
    settings: TimelineSettings,
) {
    for write in writes {
        write.apply_to(store, settings).await.unwrap();
    }
}

/// The positions in `user`'s home timeline, newest first.
async fn positions(store: &dyn TimelineStore, user: Uuid) -> Vec<i64> {
    let entries = store.timeline(user, None, 1000).await.unwrap();
    entries.iter().map(|e| e.position).collect()
}

async fn a_follow_brings_the_followees_recent_posts(store: &dyn TimelineStore) {
    let (reader, author) = (Uuid::new_v4(), Uuid::new_v4());
    let posts: Vec<TimelineWrite> = (1..=5).map(|p| publish(p, author)).collect();
    apply_all(store, &posts, SETTINGS).await;
    let settings = TimelineSettings { cap: 3, ..SETTINGS };
    follow(reader, author)
        .apply_to(store, settings)
        .await
        .unwrap();
    follow(reader, author)
        .apply_to(store, settings)
        .await
        .unwrap();
    assert_eq!(
        positions(store, reader).await,
        vec![5, 4, 3],
        "the newest `cap` posts, once"
    );
}

async fn an_unfollow_takes_the_followees_posts_back(store: &dyn TimelineStore) {
    let (reader, kept, dropped) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let writes = [
        follow(reader, kept),
        follow(reader, dropped),
        publish(1, dropped),
        publish(2, kept),
        publish(3, reader),
        publish(4, dropped),
        unfollow(reader, dropped),
        unfollow(reader, dropped),
    ];
    apply_all(store, &writes, SETTINGS).await;
    assert_eq!(positions(store, reader).await, vec![3, 2]);
    assert_eq!(
        positions(store, dropped).await,
        vec![4, 1],
        "the author keeps them"
    );
}

async fn a_follow_of_an_author_merged_at_read_brings_nothing(store: &dyn TimelineStore) {
    let (star, reader) = (Uuid::new_v4(), Uuid::new_v4());
    let settings = TimelineSettings {
        fanout_max_followers: 1,
        ..SETTINGS
    };
    let fans = [follow(Uuid::new_v4(), star), follow(Uuid::new_v4(), star)];
    apply_all(store, &fans, settings).await;
    apply_all(store, &[publish(1, star), publish(2, star)], settings).await;
    assert!(store.merged_at_read(star).await.unwrap());
    follow(reader, star)
        .apply_to(store, settings)
        .await
        .unwrap();
    assert!(
        positions(store, reader).await.is_empty(),
        "the feed merges them"
    );
    assert_eq!(
        store.merged_authors_followed_by(reader).await.unwrap(),
        vec![star]
    );
}

/// A small social log in log order, for fresh users: the writes, the stream of each (a
/// follower's follows, a post's publication and deletion) and the users.
fn scene() -> (Vec<TimelineWrite>, Vec<usize>, Vec<Uuid>) {
    let users: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let (f1, f2, a, b) = (users[0], users[1], users[2], users[3]);
    let x1 = publish(1, a);
    let writes = vec![
        x1,
        follow(f1, a),
        publish(3, b),
        follow(f2, a),
        publish(5, a),
        follow(f1, b),
        publish(7, f1),
        remove(&x1),
        unfollow(f2, a),
        publish(10, a),
        follow(f2, b),
    ];
    let streams = vec![0, 1, 2, 3, 4, 1, 5, 0, 3, 6, 3];
    (writes, streams, users)
}

/// What the model holds: each user's own listed posts and those of whom they follow, as
/// positions, newest first (caps out of reach, no author merged at read).
fn model(writes: &[TimelineWrite], user: Uuid) -> Vec<i64> {
    let mut follows = HashSet::new();
    let mut listed = HashMap::new();
    for write in writes {
        match *write {
            TimelineWrite::Follow { follower, followee } => {
                follows.insert((follower, followee));
            }
            TimelineWrite::Unfollow { follower, followee } => {
                follows.remove(&(follower, followee));
            }
            TimelineWrite::Publish(entry) => {
                listed.insert(entry.post_id, entry);
            }
            TimelineWrite::Remove { post_id, .. } => {
                listed.remove(&post_id);
            }
        }
    }
    let mut seen: Vec<i64> = listed
        .values()
        .filter(|e| e.author_id == user || follows.contains(&(user, e.author_id)))
        .map(|e| e.position)
        .collect();
    seen.sort_unstable_by(|a, b| b.cmp(a));
    seen
}

/// A small deterministic generator (xorshift), so a failing order can be replayed.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % u64::try_from(n).unwrap()).unwrap()
    }
}

/// `writes` interleaved at random by stream, each stream's in order.
fn interleaved(writes: &[TimelineWrite], streams: &[usize], dice: &mut Dice) -> Vec<TimelineWrite> {
    let mut pending: Vec<Vec<TimelineWrite>> = Vec::new();
    for (write, stream) in writes.iter().zip(streams).rev() {
        if pending.len() <= *stream {
            pending.resize(stream + 1, Vec::new());
        }
        pending[*stream].push(*write);
    }
    let mut order = Vec::with_capacity(writes.len());
    while order.len() < writes.len() {
        let open: Vec<usize> = (0..pending.len())
            .filter(|s| !pending[*s].is_empty())
            .collect();
        let stream = open[dice.below(open.len())];
        order.extend(pending[stream].pop());
    }
    order
}

/// The scene's writes in the log's order and in many orders a Kafka-fed projection may see
/// (each with users of its own), one at a time or in batches of random sizes: every user's
/// timeline ends the same, as the model says.
async fn any_order_of_the_writes_gives_the_same_timelines(
    store: &dyn TimelineStore,
    batches: bool,
) {
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
    for round in 0..24 {
        let (writes, streams, users) = scene();
        let order = if round == 0 {
            writes.clone()
        } else {
            interleaved(&writes, &streams, &mut dice)
        };
        if batches {
            let mut rest = order.as_slice();
            while !rest.is_empty() {
                let (batch, tail) = rest.split_at(1 + dice.below(rest.len().min(5)));
                store.write_all(batch, SETTINGS).await.unwrap();
                rest = tail;
            }
        } else {
            apply_all(store, &order, SETTINGS).await;
        }
        for (i, user) in users.iter().enumerate() {
            assert_eq!(
                positions(store, *user).await,
                model(&writes, *user),
                "user {i} after {order:?}"
            );
        }
    }
}

/// Two writers at once, as two consumers of one Kafka group on different partitions: one
/// applies the follows and unfollows of many followers, the other the publications and
/// deletions of a few authors (one at a time or in batches), round after round: every
/// timeline ends as the writes applied one after another leave it.
async fn two_writers_at_once_reach_the_timelines_of_one_at_a_time(
    store: &dyn TimelineStore,
    batches: bool,
) {
    let run = |writes: Vec<TimelineWrite>| async move {
        if batches {
            for batch in writes.chunks(3) {
                store.write_all(batch, SETTINGS).await.unwrap();
            }
        } else {
            apply_all(store, &writes, SETTINGS).await;
        }
    };
    for round in 0..8_i64 {
        let authors: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let readers: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
        let mut social = Vec::new();
        for (r, reader) in readers.iter().enumerate() {
            for author in &authors {
                social.push(follow(*reader, *author));
            }
            if r % 2 == 1 {
                social.push(unfollow(*reader, authors[r % 3]));
            }
        }
        let mut posts = Vec::new();
        for i in 0..4 {
            for (a, author) in authors.iter().enumerate() {
                let write = publish(
                    round * 1000 + i * 3 + i64::try_from(a).unwrap() + 1,
                    *author,
                );
                posts.push(write);
                if (i + round) % 3 == 1 {
                    posts.push(remove(&write));
                }
            }
        }
        let all: Vec<TimelineWrite> = social.iter().chain(&posts).copied().collect();
        futures::join!(run(social), run(posts));
        for (i, user) in readers.iter().chain(&authors).enumerate() {
            assert_eq!(
                positions(store, *user).await,
                model(&all, *user),
                "round {round}, user {i}, batches: {batches}"
            );
        }
    }
}

async fn contract(store: &dyn TimelineStore) {
    follows_are_idempotent_and_counted(store).await;
    follows_are_listed_page_by_page(store).await;
    timelines_are_newest_first_paged_and_idempotent(store).await;
    timelines_are_trimmed_to_the_cap(store).await;
    a_removed_post_leaves_every_timeline_and_its_author_list(store).await;
    merged_authors_are_found_through_follows(store).await;
    concurrent_writers_keep_every_timeline_within_its_cap(store).await;
    concurrent_writers_keep_follows_exact(store).await;
    a_follow_brings_the_followees_recent_posts(store).await;
    an_unfollow_takes_the_followees_posts_back(store).await;
    a_follow_of_an_author_merged_at_read_brings_nothing(store).await;
    for batches in [false, true] {
        any_order_of_the_writes_gives_the_same_timelines(store, batches).await;
        two_writers_at_once_reach_the_timelines_of_one_at_a_time(store, batches).await;
    }
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
