//! Replay rebuilds every lite read model exactly as the live projections built it — also
//! when interrupted and resumed — and swaps it in while the live projection runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use projections::content::postgres::PgContent;
use projections::messaging::postgres::PgMessaging;
use projections::timeline::postgres::PgTimelines;
use projections::{
    AnalyticsProjection, CacheSettings, ContentProjection, MessagingProjection,
    NotificationsProjection, PeopleProjection, PostCache, Projection, RetryPolicy, Runner,
    TimelineProjection, TimelineSettings,
};
use replay::{Model, ModelError, Progress, Replay, ReplayError, ReplayOptions};
use sqlx::PgPool;
use testkit::social::SocialLog;
use testkit::TestDb;
use tokio_util::sync::CancellationToken;

fn settings() -> TimelineSettings {
    // A low threshold, so that some authors are merged at read time, and a low cap, so
    // that timelines are trimmed.
    TimelineSettings {
        cap: 12,
        fanout_max_followers: 8,
    }
}

async fn cache() -> PostCache {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = redis::aio::ConnectionManager::new(redis::Client::open(url).unwrap())
        .await
        .expect("Redis is reachable at REDIS_URL (run scripts/services.sh)");
    PostCache::new(
        redis,
        format!("hl:test:{}:rm:", uuid::Uuid::new_v4().simple()),
        CacheSettings::default(),
    )
}

/// Builds the live models as `hybridlive project` does: event by event (content with its
/// caches), while a replay applies its batches set-wise.
async fn build_live(pool: &PgPool) {
    let stop = CancellationToken::new();
    let timeline = TimelineProjection::new(Arc::new(PgTimelines::lite(pool.clone())), settings());
    Runner::new(pool.clone(), timeline, RetryPolicy::default())
        .event_by_event()
        .catch_up(&stop)
        .await
        .unwrap();
    let content = ContentProjection::new(Arc::new(PgContent::lite(pool.clone())), cache().await);
    catch_up(pool, content).await;
    catch_up(pool, NotificationsProjection::new(pool.clone())).await;
    catch_up(pool, PeopleProjection::new(pool.clone())).await;
    let messaging =
        MessagingProjection::new(Arc::new(PgMessaging::new(pool.clone())), pool.clone());
    catch_up(pool, messaging).await;
    // Analytics has no live worker (replay builds it); a runner over its live tables stands
    // in for one.
    catch_up(pool, AnalyticsProjection::live(pool.clone())).await;
}

async fn catch_up<P: Projection>(pool: &PgPool, projection: P) {
    Runner::new(pool.clone(), projection, RetryPolicy::default())
        .catch_up(&CancellationToken::new())
        .await
        .unwrap();
}

fn options() -> ReplayOptions {
    ReplayOptions {
        swap: false,
        batch_size: 100,
        timeline: settings(),
        ..ReplayOptions::default()
    }
}

/// Every table of `model` holds the same rows in both schemas; returns the rows compared.
async fn assert_same(pool: &PgPool, model: &Model, a: &str, b: &str) -> i64 {
    testkit::tables::assert_same(pool, model.tables, a, b).await
}

async fn replay(
    pool: &PgPool,
    model: &'static Model,
    options: ReplayOptions,
    interrupt_after: Option<u64>,
) -> replay::Summary {
    let stop = CancellationToken::new();
    let cancel = stop.clone();
    let mut progress = move |p: Progress| {
        if interrupt_after.is_some_and(|n| p.read >= n) {
            cancel.cancel();
        }
    };
    Replay::new(pool.clone(), model, options)
        .unwrap()
        .run(&stop, &mut progress)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_lite_model_rebuilt_by_replay_equals_the_live_one_also_after_an_interruption() {
    let db = TestDb::new().await;
    let log = SocialLog {
        conversations_per_user: 2,
        ..SocialLog::new(40)
    };
    let written = log.append(&db.pool).await.unwrap();
    build_live(&db.pool).await;

    for model in replay::MODELS {
        let name = model.name;
        // Interrupted a third of the way, then resumed.
        let first = replay(&db.pool, model, options(), Some(written as u64 / 3)).await;
        assert!(first.interrupted, "{name}: {first:?}");
        assert!(!first.resumed);
        assert!(
            first.read > 0 && first.read < written as u64,
            "{name}: read {} of {written} before the interruption",
            first.read
        );
        let second = replay(&db.pool, model, options(), None).await;
        assert!(second.resumed && !second.interrupted, "{name}: {second:?}");
        assert_eq!(
            first.read + second.read,
            written as u64,
            "{name}: the resumed run goes on where the first stopped"
        );
        assert_eq!(second.dead_lettered, 0);
        assert!(
            second.swap.is_none(),
            "a --no-swap replay leaves the live model alone"
        );
        let rows = assert_same(&db.pool, model, model.schema, &format!("replay_{name}")).await;
        // `people` holds a row a person (40), `messaging` 558: 80 conversations with their
        // members and messages, and the profiles; the others, rows per act.
        let least = match name {
            PeopleProjection::NAME => 40,
            MessagingProjection::NAME => 500,
            _ => 1000,
        };
        assert!(rows >= least, "{name}: only {rows} rows compared");
    }

    // Upcasting: u10 registered with `user.registered` v1, without a display name.
    let display: String = sqlx::query_scalar(
        "SELECT display_name FROM replay_content.profiles WHERE username = 'u10'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(display, "u10");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swap_replaces_the_live_model_while_its_projection_runs_and_appends_go_on() {
    let db = TestDb::new().await;
    SocialLog::new(30).append(&db.pool).await.unwrap();
    let model = Model::named("timeline").unwrap();

    // The live projection, running as `hybridlive project timeline` does.
    let stop = CancellationToken::new();
    let live = {
        let (pool, stop) = (db.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let projection =
                TimelineProjection::new(Arc::new(PgTimelines::lite(pool.clone())), settings());
            Runner::new(pool, projection, RetryPolicy::default())
                .event_by_event()
                .run(&stop)
                .await
        })
    };
    // A second world keeps appending during the replay and the swap.
    let appends = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut log = SocialLog::new(30);
            log.seed = 99;
            log.concurrency = 4;
            log.append(&pool).await
        })
    };
    let summary = replay(
        &db.pool,
        model,
        ReplayOptions {
            swap: true,
            ..options()
        },
        None,
    )
    .await;
    let swap = summary.swap.expect("swapped");
    assert_eq!(summary.target, "read_model");
    assert!(swap.live_after >= swap.live_before, "{swap:?}");
    appends.await.unwrap().unwrap();

    // The live projection goes on into the swapped-in tables from the new checkpoint.
    let last: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !projections::query::caught_up(&db.pool, &["timeline"], last)
        .await
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "the live projection stalled after the swap"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    live.await.unwrap().unwrap();

    // The result equals a model built from scratch by a second replay (not swapped).
    let reference = replay(&db.pool, model, options(), None).await;
    assert!(reference.swap.is_none() && !reference.resumed);
    let rows = assert_same(&db.pool, model, "read_model", "replay_timeline").await;
    assert!(rows > 1000, "only {rows} rows compared");
    // The previous tables are kept for inspection.
    let retired: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'retired_timeline'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(retired, model.tables.len() as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_dry_runs_and_names() {
    let db = TestDb::new().await;
    let written = SocialLog::new(10).append(&db.pool).await.unwrap() as i64;
    let model = Model::named("content").unwrap();
    let middle: i64 = sqlx::query_scalar(
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY global_position) FROM events",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();

    // A dry run counts what would be applied and writes nothing.
    let ranged = ReplayOptions {
        to: Some(middle),
        ..options()
    };
    let dry = Replay::new(db.pool.clone(), model, ranged.clone())
        .unwrap()
        .dry_run(&CancellationToken::new(), &mut |_| {})
        .await
        .unwrap();
    let expected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE global_position <= $1 AND event_type <> 'social.followed' \
            AND event_type <> 'social.unfollowed'",
    )
    .bind(middle)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(dry.would_apply.values().sum::<u64>() as i64, expected);
    assert!(dry.read as i64 <= written);
    assert!(dry.undecodable.is_empty());
    let schemas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'replay_content'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(schemas, 0, "a dry run creates nothing");

    // `--to`: only the events up to it; never swapped in.
    let partial = replay(
        &db.pool,
        model,
        ReplayOptions {
            swap: true,
            ..ranged.clone()
        },
        Some(1),
    )
    .await;
    assert!(partial.interrupted);
    let other = Replay::new(db.pool.clone(), model, options())
        .unwrap()
        .run(&CancellationToken::new(), &mut |_| {})
        .await;
    assert!(
        matches!(other, Err(ReplayError::OtherRange { .. })),
        "resuming with another range is refused: {other:?}"
    );
    let done = replay(
        &db.pool,
        model,
        ReplayOptions {
            swap: true,
            ..ranged
        },
        None,
    )
    .await;
    assert!(done.resumed && done.swap.is_none());
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM replay_content.posts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(newest.is_some_and(|p| p <= middle), "{newest:?} > {middle}");
    let restarted = replay(
        &db.pool,
        model,
        ReplayOptions {
            restart: true,
            ..options()
        },
        None,
    )
    .await;
    assert!(!restarted.resumed);
    assert_eq!(restarted.read as i64, written);

    // One replay of a model at a time.
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('hybridlive replay content', 0))")
        .execute(&mut *holder)
        .await
        .unwrap();
    let busy = Replay::new(db.pool.clone(), model, options())
        .unwrap()
        .run(&CancellationToken::new(), &mut |_| {})
        .await;
    assert!(matches!(busy, Err(ReplayError::Busy(_))), "{busy:?}");
    holder.close().await.unwrap();

    assert!(matches!(Model::named("onboarding"), Err(ModelError::Saga)));
    assert!(matches!(Model::named("nope"), Err(ModelError::Unknown(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_reads_an_event_whose_transaction_committed_after_a_higher_position() {
    let db = TestDb::new().await;
    SocialLog::new(3).append(&db.pool).await.unwrap();
    let store = store::PgEventStore::new(db.pool.clone());
    // `slow` takes the smaller position but the larger transaction id: in read order it
    // comes after `fast`, the event at the highest position.
    let mut fast_tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *fast_tx)
        .await
        .unwrap();
    let mut slow_tx = db.pool.begin().await.unwrap();
    let slow = store
        .append_in(&mut slow_tx, &testkit::social::registration("slow"))
        .await
        .unwrap();
    let fast = store
        .append_in(&mut fast_tx, &testkit::social::registration("fast"))
        .await
        .unwrap();
    assert!(slow.last_position < fast.last_position);
    fast_tx.commit().await.unwrap();
    slow_tx.commit().await.unwrap();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    let summary = replay(&db.pool, Model::named("content").unwrap(), options(), None).await;
    assert_eq!(summary.read as i64, total);
    let profiles: Vec<String> = sqlx::query_scalar(
        "SELECT username FROM replay_content.profiles WHERE username IN ('slow', 'fast') ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(profiles, ["fast", "slow"]);
}

/// An event that does not decode, far past the first batch (so decoded ahead, while the
/// batch before it is applied), is dead-lettered under the replay's label, alone; the
/// replay applies every other event.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_dead_letters_an_event_that_does_not_decode_and_applies_the_rest() {
    let db = TestDb::new().await;
    SocialLog::new(40).append(&db.pool).await.unwrap();
    let (position, post_id): (i64, uuid::Uuid) = sqlx::query_as(
        "SELECT global_position, (payload ->> 'post_id')::uuid FROM events \
          WHERE event_type = 'post.published' ORDER BY global_position DESC OFFSET 2 LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(position > 3 * i64::from(options().batch_size), "{position}");
    // Edited as a superuser would: the append-only trigger switched off.
    sqlx::raw_sql(&format!(
        "ALTER TABLE events DISABLE TRIGGER events_append_only; \
         UPDATE events SET payload = '{{\"not\": \"a post\"}}' WHERE global_position = {position}; \
         ALTER TABLE events ENABLE TRIGGER events_append_only;"
    ))
    .execute(&db.pool)
    .await
    .unwrap();

    let summary = replay(&db.pool, Model::named("content").unwrap(), options(), None).await;
    assert!(!summary.interrupted, "{summary:?}");
    assert_eq!(summary.dead_lettered, 1, "{summary:?}");
    let letters = projections::DeadLetters::new(db.pool.clone())
        .list(Some("replay:content"))
        .await
        .unwrap();
    let positions: Vec<i64> = letters.iter().map(|l| l.global_position).collect();
    assert_eq!(positions, [position]);
    let (published, stored, lost): (i64, i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events WHERE event_type = 'post.published'), \
                (SELECT count(*) FROM replay_content.posts), \
                NOT EXISTS (SELECT 1 FROM replay_content.posts WHERE post_id = $1)",
    )
    .bind(post_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        lost,
        "the post of the event that does not decode is not stored"
    );
    assert_eq!(stored, published - 1, "every other post is stored");
}
