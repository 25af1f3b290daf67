//! The live `timeline` and `content` projections — with their Redis caches, live pushes and
//! pending like counts — leave the same state whether the runner applies what it reads in
//! set-wise batches or event by event: the read-model tables, every warm cache (counts equal
//! to the store's, comment lists as the store lists them) and every live stream, entry by
//! entry. The caches are warmed halfway through the log, so the second half's cache writes
//! land on warm keys. And a batch beside single writes loses none of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use projections::cache::{CacheSettings, PostCache};
use projections::content::postgres::PgContent;
use projections::content::ContentProjection;
use projections::live::{LivePublisher, LiveSettings};
use projections::timeline::postgres::PgTimelines;
use projections::timeline::TimelineProjection;
use projections::{ContentStore, ContentWrite, Projection, RetryPolicy, Runner, TimelineSettings};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use testkit::social::SocialLog;
use testkit::tables::{assert_same, copy_empty};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SETTINGS: TimelineSettings = TimelineSettings {
    cap: 6,
    fanout_max_followers: 5,
};

async fn redis() -> ConnectionManager {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    ConnectionManager::new(redis::Client::open(url).unwrap())
        .await
        .unwrap()
}

/// One copy of the live models: its own schema and Redis prefix.
struct Models {
    schema: String,
    prefix: String,
    content: Arc<PgContent>,
    cache: PostCache,
    timeline: TimelineProjection,
    content_projection: ContentProjection,
}

impl Models {
    async fn new(pool: &PgPool, redis: &ConnectionManager, name: &str) -> Self {
        let schema = name.to_owned();
        let tables: Vec<&str> = PgTimelines::TABLES
            .iter()
            .chain(PgContent::TABLES)
            .copied()
            .collect();
        copy_empty(pool, "read_model", &schema, &tables).await;
        let prefix = format!("test:{}:{name}:", Uuid::new_v4().simple());
        let live = LivePublisher::new(redis.clone(), &prefix, LiveSettings::default());
        let cache = PostCache::new(redis.clone(), prefix.clone(), CacheSettings::default());
        let content = Arc::new(PgContent::new(pool.clone(), &schema).unwrap());
        let timelines = Arc::new(PgTimelines::new(pool.clone(), &schema).unwrap());
        Self {
            timeline: TimelineProjection::new(timelines, SETTINGS).with_live(Some(live.clone())),
            content_projection: ContentProjection::new(content.clone(), cache.clone())
                .with_live(Some(live)),
            schema,
            prefix,
            content,
            cache,
        }
    }

    /// Applies the events in `range`, batches set-wise or each alone.
    async fn apply(&self, pool: &PgPool, range: std::ops::RangeInclusive<i64>, batches: bool) {
        let phase = format!("{}-{}", self.schema, range.start());
        catch_up(pool, self.timeline.clone(), &phase, &range, batches).await;
        catch_up(
            pool,
            self.content_projection.clone(),
            &phase,
            &range,
            batches,
        )
        .await;
    }

    async fn post_ids(&self, pool: &PgPool) -> Vec<Uuid> {
        sqlx::query_scalar(&format!(
            "SELECT post_id FROM {}.posts ORDER BY post_id",
            self.schema
        ))
        .fetch_all(pool)
        .await
        .unwrap()
    }

    /// Fills the caches of every post, as readers do.
    async fn warm(&self, pool: &PgPool) {
        let ids = self.post_ids(pool).await;
        let store = &self.content;
        self.cache
            .fill_feed_items(&ids, || store.posts(&ids))
            .await
            .unwrap();
        for id in ids {
            let page = |cap| store.comments(id, None, cap);
            self.cache.fill_first_comments(id, 5, page).await.unwrap();
        }
    }

    /// Every cached count and comment list, checked against the store.
    async fn cached(&self, pool: &PgPool) -> Vec<String> {
        let mut seen = Vec::new();
        for id in self.post_ids(pool).await {
            let stored = self.content.post(id).await.unwrap();
            let item = self.cache.feed_items(&[id]).await.unwrap().remove(0);
            if let (Some(stored), Some(item)) = (&stored, &item) {
                assert_eq!(
                    (item.like_count, item.comment_count),
                    (stored.like_count, stored.comment_count),
                    "cached counts of {id}"
                );
            }
            let comments = self.cache.first_comments(id, 5).await.unwrap();
            if let Some(comments) = &comments {
                let stored = self.content.comments(id, None, 5).await.unwrap();
                assert_eq!(comments, &stored, "cached comments of {id}");
            }
            seen.push(format!("{id}: {item:?} {comments:?}"));
        }
        seen
    }
}

/// A social log of `users` users, appended and read back.
async fn social_log(pool: &PgPool, users: usize) -> Vec<store::RecordedEvent> {
    let written = SocialLog::new(users).append(pool).await.unwrap();
    let reader = store::LogReader::new(pool.clone());
    let events = testkit::read_log(&reader, store::LogPosition::START, written).await;
    assert_eq!(events.len(), written);
    events
}

async fn catch_up<P: Projection>(
    pool: &PgPool,
    projection: P,
    phase: &str,
    range: &std::ops::RangeInclusive<i64>,
    batches: bool,
) {
    let label = format!("{}-{phase}", projection.name());
    let mut runner = Runner::new(pool.clone(), projection, RetryPolicy::default())
        .labelled(label)
        .within(range.clone());
    if !batches {
        runner = runner.event_by_event();
    }
    runner.catch_up(&CancellationToken::new()).await.unwrap();
}

/// Every live stream under `prefix` (entries as event and data) and the pending like
/// counts, keyed without the prefix.
async fn streams(redis: &mut ConnectionManager, prefix: &str) -> BTreeMap<String, String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}live:*"))
        .query_async(redis)
        .await
        .unwrap();
    let mut seen = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(redis)
            .await
            .unwrap();
        let value = match kind.as_str() {
            "stream" => {
                let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(redis)
                    .await
                    .unwrap();
                let entries: Vec<_> = entries.into_iter().map(|(_, fields)| fields).collect();
                format!("{entries:?}")
            }
            "hash" => {
                let pending: BTreeMap<String, String> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(redis)
                    .await
                    .unwrap();
                format!("{pending:?}")
            }
            // De-duplication markers of single pushes.
            _ => continue,
        };
        seen.insert(key[prefix.len()..].to_owned(), value);
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn live_projections_leave_the_same_caches_and_streams_in_batches_as_event_by_event() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let mut redis = redis().await;
    let events = social_log(pool, 60).await;
    let written = events.len();
    let middle = events[written / 2].global_position;

    let one_by_one = Models::new(pool, &redis, "one_by_one").await;
    let batched = Models::new(pool, &redis, "batched").await;
    for (models, batches) in [(&one_by_one, false), (&batched, true)] {
        models.apply(pool, 0..=middle, batches).await;
        models.warm(pool).await;
        models.apply(pool, middle + 1..=i64::MAX, batches).await;
    }

    let tables: Vec<&str> = PgTimelines::TABLES
        .iter()
        .chain(PgContent::TABLES)
        .copied()
        .collect();
    assert_same(pool, &tables, "one_by_one", "batched").await;
    let cached = one_by_one.cached(pool).await;
    assert_eq!(batched.cached(pool).await, cached);
    // The second half changed warm keys (the checks above would pass on cold ones).
    let warm = cached
        .iter()
        .filter(|c| c.contains("Some(CachedItem"))
        .count();
    assert!(warm > 10, "{warm} warm posts");
    let pushed = streams(&mut redis, &one_by_one.prefix).await;
    assert!(pushed.keys().any(|k| k.contains("post:")), "{pushed:?}");
    assert!(pushed.keys().any(|k| k.contains("user:")), "{pushed:?}");
    assert_eq!(streams(&mut redis, &batched.prefix).await, pushed);

    for models in [&one_by_one, &batched] {
        models.cache.clear().await.unwrap();
        projections::cache::unlink_matching(&mut redis, &format!("{}*", models.prefix))
            .await
            .unwrap();
    }
}

/// A like delivered again after its first delivery died between the store write and the
/// push: the store changes nothing, and the stored count is pushed all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_like_pushes_the_stored_count() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let mut redis = redis().await;
    let events = social_log(pool, 20).await;
    let models = Models::new(pool, &redis, "redelivered").await;
    models.apply(pool, 0..=i64::MAX, true).await;
    // A like that still holds (not unliked later) of a post still there.
    let envelopes: Vec<_> = events.iter().map(|e| e.decode().unwrap()).collect();
    let mut liked = None;
    for (index, envelope) in envelopes.iter().enumerate() {
        let event_schemas::Event::PostLiked(like) = &envelope.event else {
            continue;
        };
        let undone = envelopes[index..].iter().any(|later| {
            matches!(&later.event, event_schemas::Event::PostUnliked(u)
                if u.post_id == like.post_id && u.user_id == like.user_id)
        });
        if undone {
            continue;
        }
        if let Some(post) = models.content.post(like.post_id).await.unwrap() {
            liked = Some((envelope.clone(), post));
            break;
        }
    }
    let (envelope, post) = liked.expect("a like of a post still there");
    let pending = format!("{}live:likes", models.prefix);
    let _: i64 = redis::cmd("DEL")
        .arg(&pending)
        .query_async(&mut redis)
        .await
        .unwrap();

    models.content_projection.apply(&envelope).await.unwrap();
    let after = models.content.post(post.post_id).await.unwrap().unwrap();
    assert_eq!(
        after.like_count, post.like_count,
        "the redelivery changed nothing"
    );
    let count: Option<i64> = redis::cmd("HGET")
        .arg(&pending)
        .arg(post.post_id.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(count, Some(post.like_count));
    projections::cache::unlink_matching(&mut redis, &format!("{}*", models.prefix))
        .await
        .unwrap();
}

/// A batch's feed items go out in one pipeline per 5,000 stream keys: every channel's
/// stream holds them in the order given, also across round trips, and the script is
/// loaded on a Redis that has none cached.
#[tokio::test(flavor = "multi_thread")]
async fn feed_items_pushed_in_order_keep_their_order_across_round_trips() {
    let mut redis = redis().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .unwrap();
    let prefix = format!("test:{}:ordered:", Uuid::new_v4().simple());
    let live = LivePublisher::new(redis.clone(), &prefix, LiveSettings::default());
    let channels = |range: std::ops::Range<usize>| -> Vec<String> {
        range.map(|i| format!("user:{i}")).collect()
    };
    // 3,000 + 3,000 keys: the second push starts the second round trip.
    let pushes = vec![
        (channels(0..3000), serde_json::json!({ "n": 1 })),
        (channels(1000..4000), serde_json::json!({ "n": 2 })),
        (channels(1000..1010), serde_json::json!({ "n": 3 })),
    ];
    live.push_many_in_order("feed_item", pushes).await.unwrap();
    let stream = |channel: &str| projections::live::stream_key(&prefix, channel);
    let numbers = |entries: Vec<(String, Vec<(String, String)>)>| -> Vec<i64> {
        entries
            .into_iter()
            .map(|(_, fields)| {
                let data = &fields.iter().find(|(f, _)| f == "data").unwrap().1;
                serde_json::from_str::<serde_json::Value>(data).unwrap()["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    };
    for (channel, expected) in [
        ("user:1005", vec![1, 2, 3]),
        ("user:5", vec![1]),
        ("user:1500", vec![1, 2]),
        ("user:3500", vec![2]),
    ] {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(stream(channel))
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(numbers(entries), expected, "{channel}");
    }
    projections::cache::unlink_matching(&mut redis, &format!("{prefix}*"))
        .await
        .unwrap();
}

/// A set-wise batch computes counts from what it loaded; a single write beside it (`dlq
/// retry` while the projection runs) must wait for it rather than be overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_wise_batches_beside_single_writes_lose_no_like() {
    let db = TestDb::new().await;
    let store = PgContent::lite(db.pool.clone());
    let post = projections::content::PostDoc {
        post_id: Uuid::now_v7(),
        author_id: Uuid::new_v4(),
        position: 1,
        title: "Liked".into(),
        body_markdown: "hi".into(),
        body_html: "<p>hi</p>".into(),
        preview: "hi".into(),
        media: Vec::new(),
        like_count: 0,
        comment_count: 0,
        created_at: chrono::Utc::now(),
    };
    store.insert_post(&post).await.unwrap();
    let id = post.post_id;
    let writers = (0..8).map(|writer| {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                if writer % 2 == 0 {
                    store.set_like(id, Uuid::new_v4(), true).await.unwrap();
                } else {
                    let likes: Vec<ContentWrite> = (0..10)
                        .map(|_| ContentWrite::SetLike {
                            post: id,
                            user: Uuid::new_v4(),
                            liked: true,
                        })
                        .collect();
                    store.write_all(&likes).await.unwrap();
                }
            }
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.unwrap();
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM read_model.likes")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 4 * 10 + 4 * 10 * 10);
    assert_eq!(store.post(id).await.unwrap().unwrap().like_count, rows);
}
