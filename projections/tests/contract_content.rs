//! The `ContentStore` contract, run against every reachable implementation: PostgreSQL
//! (lite) and a MongoDB-protocol server at `MONGODB_URI` (a fresh database per run; skipped,
//! loudly, only outside CI when the variable is unset).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{SubsecRound, Utc};
use projections::content::mongo::{self, MongoContent};
use projections::content::postgres::PgContent;
use projections::content::{Change, CommentDoc, ContentStore, ContentWrite, PostDoc, Profile};
use testkit::TestDb;
use uuid::Uuid;

fn post(position: i64) -> PostDoc {
    PostDoc {
        post_id: Uuid::now_v7(),
        author_id: Uuid::new_v4(),
        position,
        title: "Title".to_owned(),
        body_markdown: "**hi**".to_owned(),
        body_html: "<p><strong>hi</strong></p>".to_owned(),
        preview: "hi".to_owned(),
        media: vec!["https://example.com/a.png".to_owned()],
        like_count: 0,
        comment_count: 0,
        // Millisecond precision: what every store keeps.
        created_at: Utc::now().trunc_subsecs(3),
    }
}

fn comment(post: &PostDoc, position: i64) -> CommentDoc {
    CommentDoc {
        comment_id: Uuid::now_v7(),
        post_id: post.post_id,
        author_id: Uuid::new_v4(),
        position,
        body: format!("comment at {position}"),
        created_at: Utc::now().trunc_subsecs(3),
    }
}

async fn profiles_are_inserted_once_renamed_and_removed(store: &dyn ContentStore) {
    let profile = Profile {
        user_id: Uuid::new_v4(),
        username: "ada".to_owned(),
        display_name: "Ada".to_owned(),
        registered_at: Utc::now().trunc_subsecs(3),
    };
    store.put_profile(&profile).await.unwrap();
    store
        .put_profile(&Profile {
            display_name: "Not Ada".to_owned(),
            ..profile.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        store.profile(profile.user_id).await.unwrap(),
        Some(profile.clone())
    );
    store.rename(profile.user_id, "Countess").await.unwrap();
    let renamed = store.profile(profile.user_id).await.unwrap().unwrap();
    assert_eq!(renamed.display_name, "Countess");
    store.remove_profile(profile.user_id).await.unwrap();
    store.remove_profile(profile.user_id).await.unwrap();
    assert_eq!(store.profile(profile.user_id).await.unwrap(), None);
}

/// A post no store can hold (a NUL, which PostgreSQL's text and jsonb refuse, and so
/// FerretDB) is rejected, to be dead-lettered, not reported unavailable and retried for
/// ever behind every later event.
async fn a_post_no_store_can_hold_is_rejected(store: &dyn ContentStore) {
    let p = PostDoc {
        title: "a\u{0}b".to_owned(),
        ..post(1)
    };
    match store.insert_post(&p).await {
        Err(projections::ReadModelError::Rejected(_)) => {}
        other => panic!("a NUL in a title: {other:?}"),
    }
}

/// A post without media (FerretDB drops an empty array from an upsert's `$setOnInsert`).
async fn a_post_without_media_reads_back(store: &dyn ContentStore) {
    let bare = PostDoc {
        media: Vec::new(),
        ..post(3)
    };
    store.insert_post(&bare).await.unwrap();
    assert_eq!(store.post(bare.post_id).await.unwrap(), Some(bare.clone()));
    assert_eq!(store.posts(&[bare.post_id]).await.unwrap(), [bare]);
}

async fn posts_are_inserted_once_and_deleted_for_good(store: &dyn ContentStore) {
    let (a, b) = (post(1), post(2));
    store.insert_post(&a).await.unwrap();
    store
        .insert_post(&PostDoc {
            title: "Changed".to_owned(),
            ..a.clone()
        })
        .await
        .unwrap();
    store.insert_post(&b).await.unwrap();
    assert_eq!(store.post(a.post_id).await.unwrap(), Some(a.clone()));
    let mut both = store
        .posts(&[a.post_id, b.post_id, Uuid::new_v4()])
        .await
        .unwrap();
    both.sort_by_key(|p| p.position);
    assert_eq!(both, vec![a.clone(), b.clone()]);
    store.delete_post(a.post_id).await.unwrap();
    store.delete_post(a.post_id).await.unwrap();
    store.insert_post(&a).await.unwrap();
    assert_eq!(
        store.post(a.post_id).await.unwrap(),
        None,
        "a replayed publication does not resurrect"
    );
    assert_eq!(store.posts(&[a.post_id, b.post_id]).await.unwrap(), vec![b]);
    assert_eq!(store.post(Uuid::new_v4()).await.unwrap(), None);
}

async fn comments_are_counted_once_and_paged_newest_first(store: &dyn ContentStore) {
    let p = post(10);
    store.insert_post(&p).await.unwrap();
    let comments: Vec<CommentDoc> = (1..=7).map(|i| comment(&p, 100 + i)).collect();
    for (i, c) in comments.iter().enumerate() {
        let count = i64::try_from(i).unwrap() + 1;
        assert_eq!(
            store.add_comment(c).await.unwrap(),
            Change {
                changed: true,
                count
            }
        );
        assert_eq!(
            store.add_comment(c).await.unwrap(),
            Change {
                changed: false,
                count
            }
        );
    }
    assert_eq!(
        store.post(p.post_id).await.unwrap().unwrap().comment_count,
        7
    );
    let first = store.comments(p.post_id, None, 4).await.unwrap();
    assert_eq!(
        first,
        comments.iter().rev().take(4).cloned().collect::<Vec<_>>()
    );
    let rest = store
        .comments(p.post_id, Some(first[3].position), 4)
        .await
        .unwrap();
    assert_eq!(
        rest,
        comments.iter().rev().skip(4).cloned().collect::<Vec<_>>()
    );

    store.delete_post(p.post_id).await.unwrap();
    assert!(
        !store.add_comment(&comment(&p, 300)).await.unwrap().changed,
        "no comment on a deleted post"
    );
}

async fn likes_are_a_set_of_users(store: &dyn ContentStore) {
    let p = post(20);
    store.insert_post(&p).await.unwrap();
    let (u, v) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        store.set_like(p.post_id, u, true).await.unwrap(),
        Change {
            changed: true,
            count: 1
        }
    );
    assert_eq!(
        store.set_like(p.post_id, u, true).await.unwrap(),
        Change {
            changed: false,
            count: 1
        }
    );
    assert_eq!(
        store.set_like(p.post_id, v, true).await.unwrap(),
        Change {
            changed: true,
            count: 2
        }
    );
    assert_eq!(
        store.set_like(p.post_id, u, false).await.unwrap(),
        Change {
            changed: true,
            count: 1
        }
    );
    assert_eq!(
        store.set_like(p.post_id, u, false).await.unwrap(),
        Change {
            changed: false,
            count: 1
        }
    );
    assert_eq!(store.post(p.post_id).await.unwrap().unwrap().like_count, 1);
    store.delete_post(p.post_id).await.unwrap();
    assert_eq!(
        store.set_like(p.post_id, v, false).await.unwrap(),
        Change {
            changed: false,
            count: 1
        },
        "no unlike on a deleted post"
    );
}

/// Fed by Kafka, comments and likes can come before their post: they are stored, reported
/// unchanged (the caches drop the post's keys), and counted when the post is stored — also
/// when its insert is delivered again. One at a time, and as one batch (`write_all`).
async fn comments_and_likes_before_their_post_are_counted_with_it(store: &dyn ContentStore) {
    let unchanged = Change {
        changed: false,
        count: 0,
    };
    let p = post(30);
    let early: Vec<CommentDoc> = (1..=3).map(|i| comment(&p, 30 + i)).collect();
    for c in &early {
        assert_eq!(store.add_comment(c).await.unwrap(), unchanged);
        assert_eq!(store.add_comment(c).await.unwrap(), unchanged);
    }
    let (u, v, w) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (user, liked) in [(u, true), (v, true), (w, true), (w, false), (u, true)] {
        assert_eq!(
            store.set_like(p.post_id, user, liked).await.unwrap(),
            unchanged
        );
    }
    assert_eq!(store.post(p.post_id).await.unwrap(), None);
    store.insert_post(&p).await.unwrap();
    store.insert_post(&p).await.unwrap();
    let stored = store.post(p.post_id).await.unwrap().unwrap();
    assert_eq!((stored.comment_count, stored.like_count), (3, 2));
    let listed = store.comments(p.post_id, None, 10).await.unwrap();
    assert_eq!(listed, early.iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(
        store.add_comment(&comment(&p, 40)).await.unwrap(),
        Change {
            changed: true,
            count: 4
        }
    );
    assert_eq!(
        store.set_like(p.post_id, w, true).await.unwrap(),
        Change {
            changed: true,
            count: 3
        }
    );

    // As one batch: a comment and likes, then the post, then more.
    let q = post(50);
    let (first, second) = (comment(&q, 51), comment(&q, 53));
    let writes = [
        ContentWrite::AddComment(first.clone()),
        ContentWrite::SetLike {
            post: q.post_id,
            user: u,
            liked: true,
        },
        ContentWrite::SetLike {
            post: q.post_id,
            user: v,
            liked: true,
        },
        ContentWrite::SetLike {
            post: q.post_id,
            user: v,
            liked: false,
        },
        ContentWrite::InsertPost(q.clone()),
        ContentWrite::AddComment(second.clone()),
        ContentWrite::SetLike {
            post: q.post_id,
            user: w,
            liked: true,
        },
    ];
    store.write_all(&writes).await.unwrap();
    let stored = store.post(q.post_id).await.unwrap().unwrap();
    assert_eq!((stored.comment_count, stored.like_count), (2, 2));
    assert_eq!(
        store.comments(q.post_id, None, 10).await.unwrap(),
        [second, first]
    );
}

/// Writers at once on one post: what two or more consumers of a Kafka group do, since the
/// comments and likes of different people on one post are different streams.
const WRITERS: usize = 8;

/// [`WRITERS`] writers comment on and like the same post at once, each delivery made
/// twice at once (a redelivery racing the first), some likes taken back: the counts equal
/// the comments and likes stored. Several posts, one after another, so that a race shows.
async fn concurrent_writers_keep_counts_exact(store: &dyn ContentStore) {
    for round in 0..4 {
        let p = post(1);
        store.insert_post(&p).await.unwrap();
        let p = &p;
        let writers = (0..WRITERS).map(|w| async move {
            let mut likes = 0;
            for i in 0..6 {
                let position = i64::try_from(2 + w * 100 + i).unwrap();
                let c = comment(p, position);
                let user = Uuid::new_v4();
                let (a, b, _, _) = futures::join!(
                    store.add_comment(&c),
                    store.add_comment(&c),
                    store.set_like(p.post_id, user, true),
                    store.set_like(p.post_id, user, true),
                );
                assert_eq!(
                    u8::from(a.unwrap().changed) + u8::from(b.unwrap().changed),
                    1,
                    "a comment delivered twice at once is added once"
                );
                if i % 3 == 0 {
                    store.set_like(p.post_id, user, false).await.unwrap();
                } else {
                    likes += 1;
                }
            }
            likes
        });
        let likes: i64 = futures::future::join_all(writers).await.into_iter().sum();
        let stored = store.post(p.post_id).await.unwrap().unwrap();
        let comments = store.comments(p.post_id, None, 1000).await.unwrap();
        assert_eq!(comments.len(), WRITERS * 6);
        assert_eq!(
            (stored.comment_count, stored.like_count),
            (i64::try_from(comments.len()).unwrap(), likes),
            "round {round}: counts after {WRITERS} concurrent writers"
        );
    }
}

/// [`WRITERS`] writers comment on and like a post at once while another stores the post
/// in the middle (two consumers of a Kafka group: the post's topic and the comments' are
/// read apart): the counts equal the comments and likes stored, whichever came first.
/// Each round is one chance for the race to show: `rounds` of them.
async fn writers_racing_the_post_keep_counts_exact(store: &dyn ContentStore, rounds: u64) {
    for round in 0..rounds {
        let p = post(1);
        let p = &p;
        let writers = (0..WRITERS).map(|w| async move {
            let mut likes = 0;
            for i in 0..4 {
                let position = i64::try_from(2 + w * 100 + i).unwrap();
                let user = Uuid::new_v4();
                store.add_comment(&comment(p, position)).await.unwrap();
                store.set_like(p.post_id, user, true).await.unwrap();
                if (w + i) % 3 == 0 {
                    store.set_like(p.post_id, user, false).await.unwrap();
                } else {
                    likes += 1;
                }
            }
            likes
        });
        let publisher = async move {
            // Somewhere in the middle of the writes.
            tokio::time::sleep(std::time::Duration::from_micros(500 * (round % 20))).await;
            store.insert_post(p).await.unwrap();
        };
        let (likes, ()) = futures::join!(futures::future::join_all(writers), publisher);
        let likes: i64 = likes.into_iter().sum();
        let stored = store.post(p.post_id).await.unwrap().unwrap();
        let comments = store.comments(p.post_id, None, 1000).await.unwrap();
        assert_eq!(comments.len(), WRITERS * 4);
        assert_eq!(
            (stored.comment_count, stored.like_count),
            (i64::try_from(comments.len()).unwrap(), likes),
            "round {round}: counts after writers racing the post's insert"
        );
    }
}

/// Erasure: the profile goes, the person's posts become emptied tombstones, their comments
/// go and are uncounted; other people's comments and likes stay; it is idempotent, and the
/// person is reported erased from the start of it.
async fn an_erasure_removes_every_personal_field(store: &dyn ContentStore) {
    let person = Uuid::new_v4();
    let profile = Profile {
        user_id: person,
        username: "zq_contract".to_owned(),
        display_name: "Zq Contract".to_owned(),
        registered_at: Utc::now().trunc_subsecs(3),
    };
    store.put_profile(&profile).await.unwrap();
    let theirs = PostDoc {
        author_id: person,
        ..post(1)
    };
    let others = post(2);
    store.insert_post(&theirs).await.unwrap();
    store.insert_post(&others).await.unwrap();
    let their_comment = CommentDoc {
        author_id: person,
        ..comment(&others, 3)
    };
    let other_comment = comment(&others, 4);
    for c in [&their_comment, &other_comment, &comment(&theirs, 5)] {
        store.add_comment(c).await.unwrap();
    }
    store.set_like(others.post_id, person, true).await.unwrap();
    let stranger = Uuid::new_v4();
    assert!(store.erased(&[person, stranger]).await.unwrap().is_empty());

    let mut changed = store.erase_user(person).await.unwrap();
    changed.sort_unstable();
    let mut expected = vec![theirs.post_id, others.post_id];
    expected.sort_unstable();
    assert_eq!(changed, expected);
    assert_eq!(store.profile(person).await.unwrap(), None);
    assert_eq!(store.post(theirs.post_id).await.unwrap(), None);
    let left = store.post(others.post_id).await.unwrap().unwrap();
    assert_eq!((left.comment_count, left.like_count), (1, 1));
    let comments = store.comments(others.post_id, None, 10).await.unwrap();
    assert_eq!(comments, vec![other_comment.clone()]);
    assert_eq!(
        store.erased(&[person, stranger]).await.unwrap(),
        [person].into_iter().collect()
    );
    // Again: nothing more to do, the same answer.
    store.erase_user(person).await.unwrap();
    let left = store.post(others.post_id).await.unwrap().unwrap();
    assert_eq!(left.comment_count, 1);
    // A post by the person stored after it (a late Kafka delivery) does not come back once
    // erased again, as the projection does after such a write.
    let late = PostDoc {
        author_id: person,
        ..post(6)
    };
    store.insert_post(&late).await.unwrap();
    store.erase_user(person).await.unwrap();
    assert_eq!(store.post(late.post_id).await.unwrap(), None);
}

/// The contract; `racing_rounds` for [`writers_racing_the_post_keep_counts_exact`] (a
/// slower server gets fewer, each of which then spreads its writes over a longer time).
async fn contract(store: &dyn ContentStore, racing_rounds: u64) {
    profiles_are_inserted_once_renamed_and_removed(store).await;
    posts_are_inserted_once_and_deleted_for_good(store).await;
    a_post_without_media_reads_back(store).await;
    a_post_no_store_can_hold_is_rejected(store).await;
    comments_are_counted_once_and_paged_newest_first(store).await;
    likes_are_a_set_of_users(store).await;
    concurrent_writers_keep_counts_exact(store).await;
    comments_and_likes_before_their_post_are_counted_with_it(store).await;
    writers_racing_the_post_keep_counts_exact(store, racing_rounds).await;
    an_erasure_removes_every_personal_field(store).await;
}

#[tokio::test]
async fn postgres_content_meets_the_contract() {
    let db = TestDb::new().await;
    contract(&PgContent::lite(db.pool.clone()), 40).await;
}

#[tokio::test]
async fn mongo_content_meets_the_contract() {
    let Some(uri) = testkit::production_server("MONGODB_URI") else {
        return;
    };
    let database = format!("test_{}", Uuid::new_v4().simple());
    mongo::migrate(&uri, &database).await.unwrap();
    contract(&MongoContent::connect(&uri, &database).await.unwrap(), 10).await;
    mongo::drop_database(&uri, &database).await.unwrap();
}

/// Without `migrate` the likes have no unique index, and a like could be counted twice: the
/// store refuses like writes as unavailable (the event waits, nothing is dead-lettered)
/// until the index exists.
#[tokio::test]
async fn mongo_likes_wait_for_their_unique_index() {
    let Some(uri) = testkit::production_server("MONGODB_URI") else {
        return;
    };
    let database = format!("test_{}", Uuid::new_v4().simple());
    let store = MongoContent::connect(&uri, &database).await.unwrap();
    let p = post(1);
    store.insert_post(&p).await.unwrap();
    match store.set_like(p.post_id, Uuid::new_v4(), true).await {
        Err(projections::ReadModelError::Unavailable(message)) => {
            assert!(message.contains("hybridlive migrate"), "{message}");
        }
        other => panic!("a like without the unique index: {other:?}"),
    }
    mongo::migrate(&uri, &database).await.unwrap();
    let store = MongoContent::connect(&uri, &database).await.unwrap();
    let liked = store
        .set_like(p.post_id, Uuid::new_v4(), true)
        .await
        .unwrap();
    assert_eq!(liked.count, 1);
    mongo::drop_database(&uri, &database).await.unwrap();
}
