//! A batch applied set-wise (`write_all` of the lite stores, what the runner offers) leaves
//! each lite model exactly as the same events applied one at a time, and returns what each
//! write would have returned alone:
//! over a social log with follows and unfollows, popular authors merged at read time,
//! timelines trimmed at a small cap, deletions, likes and unlikes, comments, renames and
//! rolled-back registrations — in batches of several sizes, each batch applied twice now
//! and then (a redelivery after a crash before the checkpoint). Both as a live store's
//! batches, which load what they need from the tables, and as a replay's, whose
//! [`Memory`] hands them what the batches before stored, and which leave the posts' counts
//! to a settlement.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use event_schemas::EventEnvelope;
use projections::content::postgres::{KnownContent, PgContent};
use projections::content::Change;
use projections::timeline::postgres::{KnownTimelines, PgTimelines};
use projections::timeline::{TimelineEntry, TimelineWrite};
use projections::{
    ContentStore, ContentWrite, TimelineProjection, TimelineSettings, TimelineStore,
};
use replay::memory::Memory;
use replay::models::Model;
use sqlx::PgPool;
use testkit::social::SocialLog;
use testkit::tables::{assert_same, copy_empty};
use testkit::TestDb;

/// Small, so that timelines are trimmed and authors merged at read time.
const SETTINGS: TimelineSettings = TimelineSettings {
    cap: 6,
    fanout_max_followers: 5,
};

async fn log(pool: &PgPool) -> Vec<EventEnvelope> {
    let written = SocialLog::new(60).append(pool).await.unwrap();
    let reader = store::LogReader::new(pool.clone());
    let events = testkit::read_log(&reader, store::LogPosition::START, written).await;
    assert_eq!(events.len(), written);
    events.iter().map(|e| e.decode().unwrap()).collect()
}

/// Each list sorted (the order of a post's targets does not matter).
fn sorted(lists: &[Vec<uuid::Uuid>]) -> Vec<Vec<uuid::Uuid>> {
    lists
        .iter()
        .map(|list| {
            let mut list = list.clone();
            list.sort_unstable();
            list
        })
        .collect()
}

/// (batch size, remembered, a single write mid-run) of the set-wise runs compared.
const RUNS: [(usize, bool, bool); 6] = [
    (1, false, false),
    (7, false, false),
    (64, false, false),
    (100_000, false, false),
    (7, true, false),
    (64, true, true),
];

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The timeline writes of the social log.
async fn timeline_log(pool: &PgPool) -> Vec<TimelineWrite> {
    log(pool)
        .await
        .iter()
        .filter_map(TimelineWrite::of)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn set_wise_timeline_batches_equal_the_events_applied_one_at_a_time() {
    let db = TestDb::new().await;
    let writes = timeline_log(&db.pool).await;
    // The log exercises what the batches must get right: unfollows, deletions, and follows
    // of authors who published before (whose backfills bring posts).
    assert!(writes
        .iter()
        .any(|w| matches!(w, TimelineWrite::Unfollow { .. })));
    assert!(writes.iter().enumerate().any(|(i, w)| {
        matches!(*w, TimelineWrite::Follow { followee, .. } if writes[..i].iter().any(
            |p| matches!(p, TimelineWrite::Publish(e) if e.author_id == followee)))
    }));
    assert!(writes
        .iter()
        .any(|w| matches!(w, TimelineWrite::Remove { .. })));

    // Remembered: what the batches load kept in a replay's `Memory` (a replay into fresh
    // tables); `single`: the first publication of the sixth batch or a later one also
    // applied alone just before its batch (to both), which must drop what is remembered
    // (kept, it would not know the post's rows are stored, and insert them again).
    for (size, remembered, single) in RUNS {
        // The same batches, also those applied twice, one write at a time: a redelivered
        // publication fans out to the followers of the redelivery's moment in both (a
        // follow later in its batch is stored by then), so each is compared with the same
        // redeliveries.
        let expected = format!("one_by_one_{size}_{remembered}");
        copy_empty(&db.pool, "read_model", &expected, PgTimelines::TABLES).await;
        let one_by_one = PgTimelines::new(db.pool.clone(), &expected).unwrap();
        let schema = format!("batches_of_{size}_{remembered}");
        copy_empty(&db.pool, "read_model", &schema, PgTimelines::TABLES).await;
        let batched = PgTimelines::new(db.pool.clone(), &schema).unwrap();
        let batched = if remembered {
            batched.written_by(Arc::new(Memory::<KnownTimelines>::fresh()))
        } else {
            batched
        };
        let (mut delivered, mut batch_delivered) = (Vec::new(), Vec::new());
        let mut single = single;
        for (i, batch) in writes.chunks(size).enumerate() {
            let publish = batch
                .iter()
                .find(|w| matches!(w, TimelineWrite::Publish(_)));
            if let Some(write) = publish.filter(|_| single && i >= 5) {
                write.apply_to(&one_by_one, SETTINGS).await.unwrap();
                write.apply_to(&batched, SETTINGS).await.unwrap();
                single = false;
            }
            for write in batch {
                delivered.push(write.apply_to(&one_by_one, SETTINGS).await.unwrap());
            }
            batch_delivered.extend(batched.write_all(batch, SETTINGS).await.unwrap());
            if i % 3 == 1 {
                for write in batch {
                    write.apply_to(&one_by_one, SETTINGS).await.unwrap();
                }
                batched.write_all(batch, SETTINGS).await.unwrap();
            }
        }
        if size == 1 {
            let merged = count(
                &db.pool,
                "SELECT count(*) FROM one_by_one_1_false.merged_authors",
            )
            .await;
            let at_cap = count(
                &db.pool,
                "SELECT count(*) FROM one_by_one_1_false.timeline_lengths WHERE entries >= 6",
            )
            .await;
            assert!(
                merged > 0 && at_cap > 10,
                "merged {merged}, at the cap {at_cap}"
            );
        }
        assert_same(&db.pool, PgTimelines::TABLES, &expected, &schema).await;
        // The timelines each post went to (the live pushes' targets), as one at a time.
        assert_eq!(
            sorted(&batch_delivered),
            sorted(&delivered),
            "batches of {size}, remembered: {remembered}"
        );
    }
}

/// Writes the social log does not make, at its end: likes, unlikes and comments of a
/// deleted post and of an unknown one, the deleted post published again, a second
/// registration of a user, a rename of an unknown user, a like twice and an unlike twice.
fn edge_cases(writes: &[ContentWrite]) -> Vec<ContentWrite> {
    let deleted = writes
        .iter()
        .find_map(|w| match w {
            ContentWrite::DeletePost(post) => Some(*post),
            _ => None,
        })
        .unwrap();
    let (post, comment, profile) = writes.iter().fold((None, None, None), |found, w| match w {
        ContentWrite::InsertPost(p) if p.post_id == deleted => (Some(p.clone()), found.1, found.2),
        ContentWrite::AddComment(c) => (found.0, Some(c.clone()), found.2),
        ContentWrite::PutProfile(p) => (found.0, found.1, Some(p.clone())),
        _ => found,
    });
    let (post, comment, profile) = (post.unwrap(), comment.unwrap(), profile.unwrap());
    let live = writes
        .iter()
        .rev()
        .find_map(|w| match w {
            ContentWrite::InsertPost(p) if p.post_id != deleted => Some(p.post_id),
            _ => None,
        })
        .unwrap();
    let (user, unknown) = (profile.user_id, uuid::Uuid::new_v4());
    let like = |post, liked| ContentWrite::SetLike { post, user, liked };
    let comment_on = |post_id| {
        ContentWrite::AddComment(projections::content::CommentDoc {
            comment_id: uuid::Uuid::new_v4(),
            post_id,
            ..comment.clone()
        })
    };
    vec![
        like(deleted, true),
        like(deleted, false),
        comment_on(deleted),
        like(unknown, true),
        comment_on(unknown),
        ContentWrite::InsertPost(post),
        like(deleted, true),
        ContentWrite::PutProfile(projections::content::Profile {
            display_name: "someone else".into(),
            ..profile
        }),
        ContentWrite::Rename {
            user: unknown,
            display_name: "nobody".into(),
        },
        like(live, true),
        like(live, true),
        like(live, false),
        like(live, false),
        like(live, true),
        comment_on(live),
        ContentWrite::AddComment(comment),
    ]
}

/// The content writes of the social log.
async fn content_log(pool: &PgPool) -> Vec<ContentWrite> {
    log(pool)
        .await
        .iter()
        .filter_map(ContentWrite::of)
        .collect()
}

/// `writes` applied one at a time into fresh tables in schema `one_by_one`; what each
/// returned.
async fn one_at_a_time(pool: &PgPool, writes: &[ContentWrite]) -> Vec<Option<Change>> {
    copy_empty(pool, "read_model", "one_by_one", PgContent::TABLES).await;
    let one_by_one = PgContent::new(pool.clone(), "one_by_one").unwrap();
    let mut changes = Vec::new();
    for write in writes {
        changes.push(write.apply_to(&one_by_one).await.unwrap());
    }
    changes
}

#[tokio::test(flavor = "multi_thread")]
async fn set_wise_content_batches_equal_the_events_applied_one_at_a_time() {
    let db = TestDb::new().await;
    let mut writes = content_log(&db.pool).await;
    writes.extend(edge_cases(&writes));
    let changes = one_at_a_time(&db.pool, &writes).await;
    for kind in [
        |w: &ContentWrite| matches!(w, ContentWrite::SetLike { liked: false, .. }),
        |w: &ContentWrite| matches!(w, ContentWrite::DeletePost(_)),
        |w: &ContentWrite| matches!(w, ContentWrite::Rename { .. }),
        |w: &ContentWrite| matches!(w, ContentWrite::RemoveProfile(_)),
        |w: &ContentWrite| matches!(w, ContentWrite::AddComment(_)),
    ] {
        assert!(writes.iter().any(kind));
    }

    // Remembered: the counts and likes kept in a replay's `Memory` (a replay into fresh
    // tables); `single`: the first write of the sixth batch also applied alone just before
    // it, which must drop what is remembered (kept, it would miss that write: a like
    // counted twice). Deferred: the posts' counts left to a settlement at the end (a
    // replay's batches).
    let runs = RUNS.map(|(size, remembered, single)| (size, remembered, single, false));
    for (size, remembered, single, deferred) in runs.into_iter().chain([
        (7, false, false, true),
        (64, true, true, true),
        (100_000, true, false, true),
    ]) {
        let schema = format!("batches_of_{size}_{remembered}_{deferred}");
        copy_empty(&db.pool, "read_model", &schema, PgContent::TABLES).await;
        let batched = PgContent::new(db.pool.clone(), &schema).unwrap();
        let memory = match (remembered, deferred) {
            (false, false) => None,
            (true, false) => Some(Memory::<KnownContent>::fresh()),
            (false, true) => Some(Memory::loading().deferring()),
            (true, true) => Some(Memory::fresh().deferring()),
        };
        let memory = memory.map(Arc::new);
        let batched = match &memory {
            Some(memory) => batched.written_by(memory.clone()),
            None => batched,
        };
        let mut batch_changes = Vec::new();
        for (i, batch) in writes.chunks(size).enumerate() {
            if single && i == 5 {
                batch[0].apply_to(&batched).await.unwrap();
            }
            batch_changes.extend(batched.write_all(batch).await.unwrap());
            if i % 3 == 1 {
                batched.write_all(batch).await.unwrap();
            }
        }
        if deferred {
            let stale = format!(
                "SELECT count(*) FROM one_by_one.posts a JOIN {schema}.posts b USING (post_id) \
                  WHERE (a.like_count, a.comment_count) <> (b.like_count, b.comment_count)"
            );
            // Batches of the whole log insert every post with its final counts.
            let stale_posts = count(&db.pool, &stale).await;
            assert_eq!(stale_posts > 0, size < writes.len(), "batches of {size}");
            let settled = batched.settle_counts().await.unwrap();
            memory.as_ref().unwrap().settled();
            assert_eq!(settled, u64::try_from(stale_posts).unwrap());
            assert_eq!(
                batched.settle_counts().await.unwrap(),
                0,
                "settled for good"
            );
        }
        assert_same(&db.pool, PgContent::TABLES, "one_by_one", &schema).await;
        if !single && (remembered || !deferred) {
            // What each write changed and the counts after it (what the caches and pushes
            // get), as one at a time; deferred, they are exact only when remembered.
            assert_eq!(
                batch_changes, changes,
                "batches of {size}, remembered: {remembered}, deferred: {deferred}"
            );
        }
    }
}

/// A replay's content batch (remembered, counts deferred) runs its statements at once, each
/// in its own transaction: one that fails leaves the others committed. Applied again event
/// by event, as the runner does after a failed batch, the model still ends as one at a time
/// — also for a post liked and then deleted in that batch, whose like the failed statement
/// lost (stored, the deletion would turn the like applied again away).
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_batch_that_fails_halfway_is_completed_by_its_writes_applied_alone() {
    let db = TestDb::new().await;
    let mut writes = content_log(&db.pool).await;
    let quarter = writes.len() / 4;
    // A like of the third batch, stored behind the memory's back below: the batch's likes
    // statement fails; its posts and comments are stored all the same.
    let (post, user) = writes[2 * quarter..3 * quarter]
        .iter()
        .find_map(|w| match w {
            ContentWrite::SetLike {
                post,
                user,
                liked: true,
            } => Some((*post, *user)),
            _ => None,
        })
        .unwrap();
    let late = [
        ContentWrite::SetLike {
            post,
            user: uuid::Uuid::new_v4(),
            liked: true,
        },
        ContentWrite::DeletePost(post),
    ];
    writes.splice(3 * quarter..3 * quarter, late);
    let ends = [0, quarter, 2 * quarter, 3 * quarter + 2, writes.len()];
    let batches: Vec<&[ContentWrite]> = ends.windows(2).map(|w| &writes[w[0]..w[1]]).collect();

    one_at_a_time(&db.pool, &writes).await;
    copy_empty(&db.pool, "read_model", "replayed", PgContent::TABLES).await;
    let replayed = PgContent::new(db.pool.clone(), "replayed")
        .unwrap()
        .written_by(Arc::new(Memory::<KnownContent>::fresh().deferring()));
    replayed.write_all(batches[0]).await.unwrap();
    replayed.write_all(batches[1]).await.unwrap();

    sqlx::query("INSERT INTO replayed.likes (post_id, user_id) VALUES ($1, $2)")
        .bind(post)
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap();
    let stored =
        "SELECT (SELECT count(*) FROM replayed.posts) + (SELECT count(*) FROM replayed.comments)";
    let before = count(&db.pool, stored).await;
    replayed.write_all(batches[2]).await.unwrap_err();
    assert!(
        count(&db.pool, stored).await > before,
        "the other statements of the failed batch committed"
    );

    for write in batches[2] {
        write.apply_to(&replayed).await.unwrap();
    }
    for batch in &batches[3..] {
        replayed.write_all(batch).await.unwrap();
    }
    replayed.settle_counts().await.unwrap();
    assert_same(&db.pool, PgContent::TABLES, "one_by_one", "replayed").await;
}

/// Where a replay's timeline batch fails, in [`a_replay_timeline_batch_that_fails_is_completed_by_its_writes_applied_alone`].
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Its follows statement, before any commit.
    FollowsStatement,
    /// The commit of its follows, after the timelines' commit.
    FollowsCommit,
    /// The commits of its timeline rows, after its lengths' and before the others': the
    /// lengths then count rows that are not stored, until recounted.
    RowsCommit,
}

/// A replay's timeline batch (remembered) runs its statements at once, each in its own
/// transaction, and commits the timeline rows' and lengths' first. Wherever it fails, what it leaves stored
/// is completed by its writes applied again one at a time, as the runner does after a
/// failed batch: the failing batch publishes a post and then makes a follow of its author,
/// whose backfill brings the post to that follower.
/// The cap and the fan-out limit are out of reach here: a batch that both delivers a row and
/// trims it delivers it again when applied a second time, as after a crash between a batch's
/// commit and its checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_timeline_batch_that_fails_is_completed_by_its_writes_applied_alone() {
    let settings = TimelineSettings {
        cap: 100_000,
        fanout_max_followers: 100_000,
    };
    let db = TestDb::new().await;
    let writes = timeline_log(&db.pool).await;
    // A post (at `p`), then a new follow of its author (at `f`).
    let (p, f) = writes
        .iter()
        .enumerate()
        .find_map(|(f, write)| {
            let TimelineWrite::Follow { follower, followee } = *write else {
                return None;
            };
            let earlier = &writes[..f];
            let new = !earlier.iter().any(|w| {
                matches!(*w, TimelineWrite::Follow { follower: a, followee: b }
                    | TimelineWrite::Unfollow { follower: a, followee: b }
                    if (a, b) == (follower, followee))
            });
            // Of a post never removed: its fan-out stays.
            let kept = |entry: &TimelineEntry| {
                !writes.iter().any(|w| {
                    matches!(w, TimelineWrite::Remove { post_id, .. } if *post_id == entry.post_id)
                })
            };
            let post = earlier.iter().rposition(|w| {
                matches!(w, TimelineWrite::Publish(entry) if entry.author_id == followee && kept(entry))
            });
            post.filter(|_| new).map(|p| (p, f))
        })
        .expect("the log has a follow of an author after one of their posts");
    let batches = [&writes[..p], &writes[p..=f], &writes[f + 1..]];
    let (TimelineWrite::Publish(post), TimelineWrite::Follow { follower, followee }) =
        (&writes[p], &writes[f])
    else {
        unreachable!()
    };

    copy_empty(&db.pool, "read_model", "one_by_one", PgTimelines::TABLES).await;
    let one_by_one = PgTimelines::new(db.pool.clone(), "one_by_one").unwrap();
    for write in &writes {
        write.apply_to(&one_by_one, settings).await.unwrap();
    }

    // `restarted`: applied again by the store a resumed replay makes, as after a crash.
    for (fault, restarted) in [
        (Fault::FollowsStatement, false),
        (Fault::FollowsCommit, false),
        (Fault::RowsCommit, false),
        (Fault::RowsCommit, true),
    ] {
        let schema = format!("{fault:?}_{restarted}").to_lowercase();
        copy_empty(&db.pool, "read_model", &schema, PgTimelines::TABLES).await;
        let replayed = PgTimelines::new(db.pool.clone(), &schema)
            .unwrap()
            .written_by(Arc::new(Memory::<KnownTimelines>::fresh()));
        replayed.write_all(batches[0], settings).await.unwrap();

        let (table, when) = match fault {
            Fault::FollowsStatement => ("follows", "NOT DEFERRABLE"),
            Fault::FollowsCommit => ("follows", "DEFERRABLE INITIALLY DEFERRED"),
            Fault::RowsCommit => ("timelines", "DEFERRABLE INITIALLY DEFERRED"),
        };
        for sql in [
            format!(
                "CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
            ),
            format!(
                "CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON {schema}.{table} {when} \
                 FOR EACH ROW EXECUTE FUNCTION {schema}.refuse()"
            ),
        ] {
            sqlx::query(&sql).execute(&db.pool).await.unwrap();
        }
        let rows = format!(
            "SELECT count(*) FROM {schema}.timelines WHERE post_id = '{}'",
            post.post_id
        );
        let follow = format!(
            "SELECT count(*) FROM {schema}.follows \
              WHERE follower_id = '{follower}' AND followee_id = '{followee}'"
        );
        let error = replayed.write_all(batches[1], settings).await.unwrap_err();
        assert!(error.to_string().contains("refused"), "{fault:?}: {error}");
        let fanned_out = count(&db.pool, &rows).await > 0;
        assert_eq!(
            fanned_out,
            matches!(fault, Fault::FollowsCommit),
            "{fault:?}: whether the post's timeline rows committed"
        );
        assert_eq!(
            count(&db.pool, &follow).await,
            0,
            "{fault:?}: the follow did not"
        );
        sqlx::query(&format!("DROP TRIGGER refuse ON {schema}.{table}"))
            .execute(&db.pool)
            .await
            .unwrap();

        let replayed = if restarted {
            let model = Model::named(TimelineProjection::NAME).unwrap();
            model.repair_resumed(&db.pool, &schema).await.unwrap();
            PgTimelines::new(db.pool.clone(), &schema).unwrap()
        } else {
            replayed
        };
        for write in batches[1] {
            write.apply_to(&replayed, settings).await.unwrap();
        }
        replayed.write_all(batches[2], settings).await.unwrap();
        assert_same(&db.pool, PgTimelines::TABLES, "one_by_one", &schema).await;
    }
}
