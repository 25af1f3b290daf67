//! The analytics model: exact figures from a known history, the same figures
//! whatever is applied again or out of order, and a model built in a fresh schema that
//! swaps into the live one as the replay does it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use event_schemas::like::{PostLikedV1, PostUnlikedV1};
use event_schemas::post::{PostDeletedV1, PostPublishedV1};
use event_schemas::user::{UserRegisteredV3, UserRegistrationRolledBackV1};
use event_schemas::{stream_type, Event, EventEnvelope, Metadata};
use projections::analytics::{
    self, Built, DailyActivity, DailySignups, TopPost, LIVE_SCHEMA, TABLES,
};
use projections::{AnalyticsProjection, Projection, RetryPolicy, Runner};
use sqlx::{Connection, PgPool};
use store::{AppendRequest, NewEvent, PgEventStore};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A schema with empty copies of the live tables, as the replay makes it.
async fn fresh_model(pool: &PgPool, schema: &str) -> AnalyticsProjection {
    testkit::tables::copy_empty(pool, LIVE_SCHEMA, schema, TABLES).await;
    AnalyticsProjection::new(pool.clone(), schema).unwrap()
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, d).unwrap()
}

fn at(d: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, d, h, m, s).unwrap()
}

/// Envelopes as the log delivers them: positions in order, versions per stream.
#[derive(Default)]
struct History {
    events: Vec<EventEnvelope>,
    versions: HashMap<String, u64>,
}

impl History {
    fn record(
        &mut self,
        recorded_at: DateTime<Utc>,
        stream_type: &str,
        stream_id: String,
        event: Event,
    ) {
        let version = self.versions.entry(stream_id.clone()).or_default();
        *version += 1;
        self.events.push(EventEnvelope {
            global_position: i64::try_from(self.events.len()).unwrap() + 1,
            event_id: Uuid::new_v4(),
            stream_type: stream_type.to_owned(),
            stream_id,
            stream_version: *version,
            stored_schema_version: event.schema_version(),
            event,
            metadata: Metadata::default(),
            recorded_at,
        });
    }

    fn register(&mut self, at: DateTime<Utc>, user: Uuid, username: &str) {
        self.record(
            at,
            stream_type::USER,
            user.to_string(),
            Event::UserRegistered(UserRegisteredV3 {
                user_id: user,
                username: username.to_owned(),
                email: format!("{username}@example.com"),
                display_name: username.to_owned(),
            }),
        );
    }

    fn roll_back(&mut self, at: DateTime<Utc>, user: Uuid) {
        self.record(
            at,
            stream_type::USER,
            user.to_string(),
            Event::UserRegistrationRolledBack(UserRegistrationRolledBackV1 {
                user_id: user,
                reason: "onboarding deadline passed".to_owned(),
            }),
        );
    }

    fn publish(&mut self, at: DateTime<Utc>, author: Uuid, title: &str) -> Uuid {
        let post = Uuid::now_v7();
        self.record(
            at,
            stream_type::POST,
            post.to_string(),
            Event::PostPublished(PostPublishedV1 {
                post_id: post,
                author_id: author,
                title: title.to_owned(),
                body_markdown: "text".to_owned(),
                media: Vec::new(),
            }),
        );
        post
    }

    fn delete(&mut self, at: DateTime<Utc>, author: Uuid, post: Uuid) {
        self.record(
            at,
            stream_type::POST,
            post.to_string(),
            Event::PostDeleted(PostDeletedV1 {
                post_id: post,
                author_id: author,
            }),
        );
    }

    fn like(&mut self, at: DateTime<Utc>, user: Uuid, post: Uuid, liked: bool) {
        let event = if liked {
            Event::PostLiked(PostLikedV1 {
                post_id: post,
                user_id: user,
            })
        } else {
            Event::PostUnliked(PostUnlikedV1 {
                post_id: post,
                user_id: user,
            })
        };
        self.record(at, stream_type::LIKE, format!("{post}:{user}"), event);
    }
}

/// The history and the figures it must give.
struct Scenario {
    history: History,
    signups: Vec<DailySignups>,
    activity: Vec<DailyActivity>,
    top: Vec<TopPost>,
    built: Built,
}

/// Three days, 1–3 December 2026 (UTC), in log order:
/// - signups: alice, bob, carol and dave on the 1st (dave at 23:59:59), erin on the 2nd
///   at midnight; carol's registration rolled back on the 2nd;
/// - posts: alice's "First" and bob's "Second" on the 1st, alice's "Third" and bob's
///   "Fourth" on the 2nd; "Fourth" deleted on the 3rd;
/// - likes: "First" by bob and dave on the 1st; on the 2nd erin likes it, dave takes his
///   like back and gives it again; alice likes "Second", erin "Third", alice and erin
///   "Fourth"; on the 3rd erin takes back her like of "Third".
fn scenario() -> Scenario {
    let [alice, bob, carol, dave, erin] = [(); 5].map(|()| Uuid::new_v4());
    let mut h = History::default();
    h.register(at(1, 10, 0, 0), alice, "alice");
    h.register(at(1, 11, 0, 0), bob, "bob");
    h.register(at(1, 12, 0, 0), carol, "carol");
    let first = h.publish(at(1, 13, 0, 0), alice, "First");
    let second = h.publish(at(1, 14, 0, 0), bob, "Second");
    h.like(at(1, 15, 0, 0), bob, first, true);
    h.register(at(1, 16, 0, 0), dave, "dave");
    h.like(at(1, 23, 59, 59), dave, first, true);
    h.register(at(2, 0, 0, 0), erin, "erin");
    h.roll_back(at(2, 1, 0, 0), carol);
    let third = h.publish(at(2, 9, 0, 0), alice, "Third");
    let fourth = h.publish(at(2, 10, 0, 0), bob, "Fourth");
    h.like(at(2, 11, 0, 0), erin, first, true);
    h.like(at(2, 12, 0, 0), dave, first, false);
    h.like(at(2, 13, 0, 0), dave, first, true);
    h.like(at(2, 14, 0, 0), alice, second, true);
    h.like(at(2, 15, 0, 0), erin, third, true);
    h.like(at(2, 16, 0, 0), alice, fourth, true);
    h.like(at(2, 17, 0, 0), erin, fourth, true);
    h.delete(at(3, 9, 0, 0), bob, fourth);
    h.like(at(3, 10, 0, 0), erin, third, false);
    let last = i64::try_from(h.events.len()).unwrap();

    let signups = |d, signups, rolled_back| DailySignups {
        day: day(d),
        signups,
        rolled_back,
    };
    let activity = |d, posts, posts_deleted, likes, unlikes| DailyActivity {
        day: day(d),
        posts,
        posts_deleted,
        likes,
        unlikes,
    };
    let top = |post_id, author_id, title: &str, d, like_count| TopPost {
        post_id,
        author_id,
        title: title.to_owned(),
        day: day(d),
        like_count,
    };
    Scenario {
        history: h,
        // 30 November and 4 December: zeros, listed.
        signups: vec![
            DailySignups {
                day: NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
                signups: 0,
                rolled_back: 0,
            },
            signups(1, 3, 1),
            signups(2, 1, 0),
            signups(3, 0, 0),
            signups(4, 0, 0),
        ],
        activity: vec![
            DailyActivity {
                day: NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
                posts: 0,
                posts_deleted: 0,
                likes: 0,
                unlikes: 0,
            },
            activity(1, 2, 0, 2, 0),
            activity(2, 2, 0, 6, 1),
            activity(3, 0, 1, 0, 1),
            activity(4, 0, 0, 0, 0),
        ],
        // "Third" is liked by nobody now, "Fourth" is deleted.
        top: vec![
            top(first, alice, "First", 1, 3),
            top(second, bob, "Second", 1, 1),
        ],
        built: Built {
            global_position: last,
            recorded_at: at(3, 10, 0, 0),
        },
    }
}

async fn apply_all<'a>(
    model: &AnalyticsProjection,
    events: impl IntoIterator<Item = &'a EventEnvelope>,
) {
    for event in events {
        assert!(model.handles(event.event.event_type()));
        model.apply(event).await.unwrap();
    }
}

async fn assert_figures(model: &AnalyticsProjection, expected: &Scenario) {
    let (from, to) = (NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(), day(4));
    assert_eq!(
        model.daily_signups(from, to).await.unwrap(),
        expected.signups
    );
    assert_eq!(
        model.daily_activity(from, to).await.unwrap(),
        expected.activity
    );
    assert_eq!(model.top_posts(10).await.unwrap(), expected.top);
    assert_eq!(model.top_posts(1).await.unwrap(), expected.top[..1]);
    assert_eq!(model.built().await.unwrap(), Some(expected.built));
    assert_eq!(
        model.daily_signups(day(2), day(2)).await.unwrap(),
        expected.signups[2..3],
        "a one-day range"
    );
    assert!(model
        .daily_activity(day(3), day(2))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn each_event_counts_once_however_often_and_in_whatever_order_it_is_applied() {
    let db = TestDb::new().await;
    let model = fresh_model(&db.pool, "analytics_test").await;
    let expected = scenario();
    let events = &expected.history.events;

    assert_eq!(model.built().await.unwrap(), None, "nothing applied yet");
    apply_all(&model, events).await;
    assert_figures(&model, &expected).await;

    // A crash re-applies everything after the last checkpoint, here the 10th event.
    apply_all(&model, &events[10..]).await;
    assert_figures(&model, &expected).await;

    // Everything again, newest first: likes older than the current one, a publication
    // after its deletion, a registration after its rollback.
    apply_all(&model, events.iter().rev()).await;
    assert_figures(&model, &expected).await;

    let live = AnalyticsProjection::live(db.pool.clone());
    assert_eq!(
        live.built().await.unwrap(),
        None,
        "the live model was not touched"
    );
    assert!(live.top_posts(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_model_built_from_scratch_in_reverse_order_with_repeats_gives_the_same_figures() {
    let db = TestDb::new().await;
    let model = fresh_model(&db.pool, "analytics_reversed").await;
    let expected = scenario();
    for event in expected.history.events.iter().rev() {
        model.apply(event).await.unwrap();
        model.apply(event).await.unwrap();
    }
    assert_figures(&model, &expected).await;
}

#[tokio::test]
async fn other_events_change_nothing_and_a_schema_must_be_a_plain_name() {
    let db = TestDb::new().await;
    for bad in [
        "",
        "Analytics",
        "analytics; DROP TABLE events",
        "a.b",
        "1st",
    ] {
        assert!(
            AnalyticsProjection::new(db.pool.clone(), bad).is_err(),
            "{bad:?}"
        );
    }
    let model = fresh_model(&db.pool, "analytics_other").await;
    assert_eq!(model.name(), AnalyticsProjection::NAME);
    assert!(!model.handles("comment.added"));
    assert!(!model.handles("social.followed"));
    let mut h = History::default();
    h.record(
        at(1, 9, 0, 0),
        stream_type::SOCIAL_GRAPH,
        Uuid::new_v4().to_string(),
        Event::Followed(event_schemas::social::FollowedV1 {
            follower_id: Uuid::new_v4(),
            followee_id: Uuid::new_v4(),
        }),
    );
    model.apply(&h.events[0]).await.unwrap();
    assert_eq!(model.built().await.unwrap(), None);
}

/// Appends one event to its own stream at the stream's next version.
async fn append(
    store: &PgEventStore,
    versions: &mut HashMap<String, u64>,
    stream_type: &str,
    stream_id: String,
    event: Event,
) {
    let version = versions.entry(stream_id.clone()).or_default();
    store
        .append(&AppendRequest {
            stream_type: stream_type.to_owned(),
            stream_id,
            expected_version: *version,
            events: vec![NewEvent::encode(&event).unwrap()],
            metadata: Metadata::default(),
            claims: Vec::new(),
            credentials: Vec::new(),
            erases_subject: false,
        })
        .await
        .unwrap();
    *version += 1;
}

#[tokio::test]
async fn a_model_built_from_the_log_in_a_fresh_schema_swaps_into_the_live_one() {
    let db = TestDb::new().await;
    let store = PgEventStore::new(db.pool.clone());
    let mut versions = HashMap::new();
    let (ada, bo) = (Uuid::new_v4(), Uuid::new_v4());
    let post = Uuid::now_v7();
    for (user, name) in [(ada, "ada"), (bo, "bo")] {
        let event = Event::UserRegistered(UserRegisteredV3 {
            user_id: user,
            username: name.to_owned(),
            email: format!("{name}@example.com"),
            display_name: name.to_owned(),
        });
        append(
            &store,
            &mut versions,
            stream_type::USER,
            user.to_string(),
            event,
        )
        .await;
    }
    let published = Event::PostPublished(PostPublishedV1 {
        post_id: post,
        author_id: ada,
        title: "Replayed".to_owned(),
        body_markdown: "text".to_owned(),
        media: Vec::new(),
    });
    append(
        &store,
        &mut versions,
        stream_type::POST,
        post.to_string(),
        published,
    )
    .await;
    for liked in [true, false, true] {
        let (post_id, user_id) = (post, bo);
        let event = if liked {
            Event::PostLiked(PostLikedV1 { post_id, user_id })
        } else {
            Event::PostUnliked(PostUnlikedV1 { post_id, user_id })
        };
        append(
            &store,
            &mut versions,
            stream_type::LIKE,
            format!("{post}:{bo}"),
            event,
        )
        .await;
    }

    let fresh = fresh_model(&db.pool, "analytics_fresh").await;
    let runner = Runner::new(db.pool.clone(), fresh, RetryPolicy::default());
    runner.catch_up(&CancellationToken::new()).await.unwrap();

    // The swap, as the replay does it, then the grants again.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("CREATE SCHEMA analytics_old")
        .execute(&mut *tx)
        .await
        .unwrap();
    for table in TABLES {
        sqlx::query(&format!(
            "ALTER TABLE {LIVE_SCHEMA}.{table} SET SCHEMA analytics_old"
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(&format!(
            "ALTER TABLE analytics_fresh.{table} SET SCHEMA {LIVE_SCHEMA}"
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for grant in analytics::GRANTS {
        sqlx::query(grant).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();

    let live = AnalyticsProjection::live(db.pool.clone());
    let (last_position, last_at): (i64, DateTime<Utc>) =
        sqlx::query_as("SELECT max(global_position), max(recorded_at) FROM events")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        live.built().await.unwrap(),
        Some(Built {
            global_position: last_position,
            recorded_at: last_at,
        })
    );
    let top = live.top_posts(10).await.unwrap();
    assert_eq!(top.len(), 1);
    assert_eq!(
        (top[0].post_id, top[0].author_id, top[0].like_count),
        (post, ada, 1)
    );
    assert_eq!(top[0].title, "Replayed");
    // The days the events were recorded on (exact even when the test runs across midnight).
    let days: Vec<NaiveDate> = sqlx::query_scalar(
        "SELECT DISTINCT (recorded_at AT TIME ZONE 'UTC')::date FROM events ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let (first, last) = (days[0], days[days.len() - 1]);
    let signups: i64 = live
        .daily_signups(first, last)
        .await
        .unwrap()
        .iter()
        .map(|d| d.signups)
        .sum();
    assert_eq!(signups, 2);
    let activity = live.daily_activity(first, last).await.unwrap();
    let sum = |f: fn(&DailyActivity) -> i64| activity.iter().map(f).sum::<i64>();
    assert_eq!(
        (sum(|d| d.posts), sum(|d| d.likes), sum(|d| d.unlikes)),
        (1, 2, 1)
    );

    // The reader role reads the swapped-in tables.
    let mut conn = db.connect().await;
    sqlx::query("SET ROLE hybridlive_reader")
        .execute(&mut conn)
        .await
        .unwrap();
    for table in TABLES {
        sqlx::query(&format!("SELECT count(*) FROM {LIVE_SCHEMA}.{table}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
}
