//! The post caches against a reader that fills them between the projection's store write
//! and its cache write: the reader already saw the write, so the cache write must not count
//! it again (an increment would) nor list the comment twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{SubsecRound, Utc};
use projections::cache::{CacheSettings, PostCache};
use projections::content::postgres::PgContent;
use projections::content::{CommentDoc, ContentStore, PostDoc};
use testkit::TestDb;
use uuid::Uuid;

async fn cache() -> PostCache {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = redis::Client::open(url).unwrap();
    let manager = redis::aio::ConnectionManager::new(redis).await.unwrap();
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    PostCache::new(manager, prefix, CacheSettings::default())
}

fn post() -> PostDoc {
    PostDoc {
        post_id: Uuid::now_v7(),
        author_id: Uuid::new_v4(),
        position: 1,
        title: "Title".to_owned(),
        body_markdown: "hi".to_owned(),
        body_html: "<p>hi</p>".to_owned(),
        preview: "hi".to_owned(),
        media: Vec::new(),
        like_count: 0,
        comment_count: 0,
        created_at: Utc::now().trunc_subsecs(3),
    }
}

#[tokio::test]
async fn a_fill_between_the_store_write_and_the_cache_write_is_not_counted_twice() {
    let db = TestDb::new().await;
    let store = PgContent::lite(db.pool.clone());
    let cache = cache().await;
    let post = post();
    store.insert_post(&post).await.unwrap();
    let id = post.post_id;

    // A like, stored; a reader misses and fills from the store; then the cache write.
    let change = store.set_like(id, Uuid::new_v4(), true).await.unwrap();
    assert!(change.changed);
    let ids = [id];
    let load = || store.posts(&ids);
    cache.fill_feed_items(&[id], load).await.unwrap();
    cache.like_count_is(id, change.count).await.unwrap();
    let item = cache.feed_items(&[id]).await.unwrap()[0].clone().unwrap();
    assert_eq!((item.like_count, item.comment_count), (1, 0));

    // A comment, the same way: the list filled with it, then the cache write.
    let comment = CommentDoc {
        comment_id: Uuid::now_v7(),
        post_id: id,
        author_id: Uuid::new_v4(),
        position: 2,
        body: "first".to_owned(),
        created_at: Utc::now().trunc_subsecs(3),
    };
    let change = store.add_comment(&comment).await.unwrap();
    cache.invalidate(id).await.unwrap();
    cache.fill_feed_items(&[id], load).await.unwrap();
    let page = |cap| store.comments(id, None, cap);
    cache.fill_first_comments(id, 10, page).await.unwrap();
    cache.comment_added(&comment, change.count).await.unwrap();
    let listed = cache.first_comments(id, 10).await.unwrap().unwrap();
    assert_eq!(listed, vec![comment.clone()]);
    let item = cache.feed_items(&[id]).await.unwrap()[0].clone().unwrap();
    assert_eq!((item.like_count, item.comment_count), (1, 1));

    // A newer comment the list does not hold yet goes on top; the cached count follows the
    // store.
    cache.invalidate(id).await.unwrap();
    cache.fill_feed_items(&[id], load).await.unwrap();
    let newer = CommentDoc {
        comment_id: Uuid::now_v7(),
        position: 3,
        body: "second".to_owned(),
        ..comment.clone()
    };
    cache.fill_first_comments(id, 10, page).await.unwrap();
    let change = store.add_comment(&newer).await.unwrap();
    cache.comment_added(&newer, change.count).await.unwrap();
    let listed = cache.first_comments(id, 10).await.unwrap().unwrap();
    assert_eq!(listed, vec![newer, comment]);
    let item = cache.feed_items(&[id]).await.unwrap()[0].clone().unwrap();
    assert_eq!((item.like_count, item.comment_count), (1, 2));

    // A cold count stays cold.
    cache.invalidate(id).await.unwrap();
    cache.like_count_is(id, 5).await.unwrap();
    assert_eq!(cache.feed_items(&[id]).await.unwrap(), vec![None]);
    cache.clear().await.unwrap();
}

/// On Kafka, two comments of one post may be applied in either order (different
/// partitions): an older comment applied after a newer one was listed must not be missing
/// from the cached list, which ends as complete.
#[tokio::test]
async fn a_comment_applied_after_a_newer_one_is_not_missing_from_the_cached_list() {
    let db = TestDb::new().await;
    let store = PgContent::lite(db.pool.clone());
    let cache = cache().await;
    let post = post();
    store.insert_post(&post).await.unwrap();
    let id = post.post_id;
    let comment = |position: i64| CommentDoc {
        comment_id: Uuid::now_v7(),
        post_id: id,
        author_id: Uuid::new_v4(),
        position,
        body: format!("at {position}"),
        created_at: Utc::now().trunc_subsecs(3),
    };
    let (older, newer) = (comment(2), comment(3));
    let page = |cap| store.comments(id, None, cap);

    // The newer one first: stored, listed by a reader, pushed.
    let change = store.add_comment(&newer).await.unwrap();
    cache.fill_first_comments(id, 10, page).await.unwrap();
    cache.comment_added(&newer, change.count).await.unwrap();
    // Then the older one.
    let change = store.add_comment(&older).await.unwrap();
    cache.comment_added(&older, change.count).await.unwrap();

    let listed = match cache.first_comments(id, 10).await.unwrap() {
        Some(listed) => listed,
        None => {
            cache.fill_first_comments(id, 10, page).await.unwrap();
            cache.first_comments(id, 10).await.unwrap().unwrap()
        }
    };
    assert_eq!(listed, vec![newer, older]);
    cache.clear().await.unwrap();
}
