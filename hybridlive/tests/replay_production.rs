//! `hybridlive replay timeline` and `replay content` with the production stores configured
//! (Cassandra/ScyllaDB at `SCYLLA_NODES`, a MongoDB-protocol server at `MONGODB_URI`): the
//! replay builds the model's next generation in a keyspace or database of its own, is
//! killed (SIGKILL) part-way, resumes when run again, and swaps the rebuilt generation in;
//! it equals the live-built one. The live projection, whose store follows the generation
//! pointer as `hybridlive project`'s does, then writes to the new generation; a second
//! replay builds a third generation equal to it, and drops the first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::sync::Arc;

use common::{holdback, progress_past_start};
use projections::content::mongo::MongoContent;
use projections::generation::{Following, Open};
use projections::timeline::scylla::{ScyllaSettings, ScyllaTimelines};
use projections::{
    ContentProjection, ContentStore, Projection, RetryPolicy, Runner, TimelineProjection,
    TimelineSettings, TimelineStore,
};
use replay::Production;
use testkit::social::SocialLog;
use testkit::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const USERS: usize = 40;
const FANOUT_MAX_FOLLOWERS: usize = 8;
const SETTINGS: TimelineSettings = TimelineSettings {
    cap: 800,
    fanout_max_followers: FANOUT_MAX_FOLLOWERS,
};

/// A base name of its own for this run (keyspaces and databases are per server, not per
/// PostgreSQL database).
fn base(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..12])
}

#[tokio::test(flavor = "multi_thread")]
async fn timeline_replay_into_cassandra_resumes_after_sigkill_and_swaps_in_the_live_model() {
    let Some(nodes) = testkit::production_server("SCYLLA_NODES") else {
        return;
    };
    let settings = ScyllaSettings {
        nodes: nodes.split(',').map(str::to_owned).collect(),
        keyspace: base("replay"),
        consistency: "ONE".to_owned(),
        replication_factor: 1,
    };
    let env = vec![
        ("SCYLLA_NODES", nodes),
        ("SCYLLA_KEYSPACE", settings.keyspace.clone()),
        ("SCYLLA_CONSISTENCY", "ONE".to_owned()),
    ];
    let open = projections::generation::timelines_on_scylla(settings.clone());
    scenario(
        Production::Scylla(settings.clone()),
        env,
        open,
        |store| TimelineProjection::new(store, SETTINGS),
        |name| {
            let settings = ScyllaSettings {
                keyspace: name.to_owned(),
                ..settings.clone()
            };
            async move { ScyllaTimelines::connect(&settings).await.unwrap() }
        },
        same_timelines,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn content_replay_into_mongodb_resumes_after_sigkill_and_swaps_in_the_live_model() {
    let Some(uri) = testkit::production_server("MONGODB_URI") else {
        return;
    };
    let database = base("replay");
    let env = vec![
        ("MONGODB_URI", uri.clone()),
        ("MONGODB_DATABASE", database.clone()),
    ];
    let open = projections::generation::content_on_mongo(uri.clone());
    scenario(
        Production::Mongo {
            uri: uri.clone(),
            database,
        },
        env,
        open,
        |store| ContentProjection::uncached(store),
        |name| {
            let (uri, name) = (uri.clone(), name.to_owned());
            async move { MongoContent::connect(&uri, &name).await.unwrap() }
        },
        same_content,
    )
    .await;
}

/// The whole story for one model (see the module docs). `projection` builds the live
/// projection over a store, `connect` opens one generation by name, `same` compares two.
async fn scenario<S, P, C, F, G>(
    production: Production,
    env: Vec<(&'static str, String)>,
    open: Open<S>,
    projection: impl Fn(Arc<Following<S>>) -> P,
    connect: C,
    same: impl for<'a> Fn(&'a TestDb, &'a G, &'a G) -> futures::future::BoxFuture<'a, ()>,
) where
    S: ?Sized + Send + Sync + 'static,
    P: Projection,
    C: Fn(&str) -> F,
    F: std::future::Future<Output = G>,
{
    let model = production.model();
    let base = production.base().to_owned();
    let (first, second, third) = (base.clone(), format!("{base}_1"), format!("{base}_2"));
    let db = TestDb::new().await;
    let log = SocialLog::new(USERS);
    log.append_phases(&db.pool, 1..=2).await.unwrap();
    // Holds every log reader back before phases 3 and 4 while it is open: the replay
    // stops there, mid-way, to be killed.
    let holdback = holdback(&db).await;
    log.append_phases(&db.pool, 3..=4).await.unwrap();

    // Generation 0, as `hybridlive migrate` creates it.
    production.create_empty(&first).await.unwrap();
    let following = Arc::new(
        Following::open(db.pool.clone(), model, &base, open)
            .await
            .unwrap(),
    );
    assert_eq!(following.live_name(), first);

    // Started, killed once it reports progress past the start (it waits there).
    let mut child = replay(&db, model, &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    progress_past_start(&mut lines, model).await;
    child.start_kill().unwrap();
    let killed = child.wait().await.unwrap();
    assert!(!killed.success());
    let (at, total): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT global_position FROM checkpoints WHERE name = $1), \
                (SELECT max(global_position) FROM events)",
    )
    .bind(format!("projection:replay:{model}"))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(0 < at && at < total, "killed at {at} of {total}");
    assert!(production.exists(&second).await.unwrap());

    // The live model, built by the live runner once the log can be read to its end.
    holdback.rollback().await.unwrap();
    let live = Runner::new(
        db.pool.clone(),
        projection(following.clone()),
        RetryPolicy::default(),
    );
    live.catch_up(&CancellationToken::new()).await.unwrap();

    // Run again: resumes, finishes, swaps generation 1 in; it equals generation 0.
    let stdout = run_replay(&db, model, &env).await;
    assert!(stdout.contains("(resumed)"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "Swapped in: readers now use the rebuilt model in {} `{second}`",
            production.kind()
        )),
        "{stdout}"
    );
    assert_eq!(pointer(&db, model, &base).await, Some((1, second.clone())));
    same(&db, &connect(&first).await, &connect(&second).await).await;

    // The live projection goes on in generation 1: the rest of the log lands there.
    log.append_phases(&db.pool, 5..=5).await.unwrap();
    live.catch_up(&CancellationToken::new()).await.unwrap();
    assert_eq!(following.live_name(), second);

    // A fresh replay of the whole log builds generation 2, equal to the live generation 1,
    // and drops generation 0, which the first swap retired.
    let stdout = run_replay(&db, model, &env).await;
    assert!(!stdout.contains("(resumed)"), "{stdout}");
    assert_eq!(pointer(&db, model, &base).await, Some((2, third.clone())));
    same(&db, &connect(&second).await, &connect(&third).await).await;
    assert!(
        !production.exists(&first).await.unwrap(),
        "generation 0 was not dropped"
    );
    assert!(production.exists(&second).await.unwrap());

    for name in [&second, &third] {
        production.drop_generation(name).await.unwrap();
    }
}

/// `hybridlive replay <model>` on the production store `env` configures.
fn replay(db: &TestDb, model: &str, env: &[(&'static str, String)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hybridlive"));
    for variable in testkit::PRODUCTION_STORE_VARIABLES {
        command.env_remove(variable);
    }
    command
        .args(["replay", model, "--batch-size", "100"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("KEY_ENCRYPTION_KEY", testkit::TEST_KEY_ENCRYPTION_KEY)
        .env("DATABASE_URL", &db.url)
        .env("FANOUT_MAX_FOLLOWERS", FANOUT_MAX_FOLLOWERS.to_string())
        .env(
            "REDIS_PREFIX",
            format!("hl:test:{}:", Uuid::new_v4().simple()),
        )
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    command
}

/// Runs the replay to its end; returns its stdout.
async fn run_replay(db: &TestDb, model: &str, env: &[(&'static str, String)]) -> String {
    let output = replay(db, model, env).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Swapped in"), "{stdout}");
    stdout
}

/// The generation pointer of `model`.
async fn pointer(db: &TestDb, model: &str, base: &str) -> Option<(i32, String)> {
    sqlx::query_as(
        "SELECT generation, name FROM read_model_generations WHERE model = $1 AND base = $2",
    )
    .bind(model)
    .bind(base)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

/// The ids of the users and of the posts in the log.
async fn ids(db: &TestDb) -> (Vec<Uuid>, Vec<Uuid>) {
    let of = |event_type: &'static str, field: &'static str| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT payload->>$2 FROM events WHERE event_type = $1 ORDER BY global_position",
        )
        .bind(event_type)
        .bind(field)
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|id| id.parse().unwrap())
        .collect::<Vec<Uuid>>()
    };
    (
        of("user.registered", "user_id").await,
        of("post.published", "post_id").await,
    )
}

/// Every user's graph, counts, home timeline and own posts are the same in `a` and `b`.
fn same_timelines<'a>(
    db: &'a TestDb,
    a: &'a ScyllaTimelines,
    b: &'a ScyllaTimelines,
) -> futures::future::BoxFuture<'a, ()> {
    Box::pin(async move {
        let (users, _) = ids(db).await;
        let mut entries = 0;
        for user in users {
            let sorted = |mut ids: Vec<Uuid>| {
                ids.sort();
                ids
            };
            assert_eq!(
                sorted(a.followers(user).await.unwrap()),
                sorted(b.followers(user).await.unwrap())
            );
            assert_eq!(a.counts(user).await.unwrap(), b.counts(user).await.unwrap());
            assert_eq!(
                sorted(a.merged_authors_followed_by(user).await.unwrap()),
                sorted(b.merged_authors_followed_by(user).await.unwrap())
            );
            let timeline = a.timeline(user, None, 10_000).await.unwrap();
            assert_eq!(timeline, b.timeline(user, None, 10_000).await.unwrap());
            entries += timeline.len();
            assert_eq!(
                a.author_posts(user, None, 10_000).await.unwrap(),
                b.author_posts(user, None, 10_000).await.unwrap()
            );
        }
        assert!(entries > 500, "only {entries} timeline entries compared");
    })
}

/// Every profile, post (with its counts) and comment is the same in `a` and `b`.
fn same_content<'a>(
    db: &'a TestDb,
    a: &'a MongoContent,
    b: &'a MongoContent,
) -> futures::future::BoxFuture<'a, ()> {
    Box::pin(async move {
        let (users, posts) = ids(db).await;
        for user in users {
            assert_eq!(
                a.profile(user).await.unwrap(),
                b.profile(user).await.unwrap()
            );
        }
        let (mut live, mut liked) = (0, 0);
        for post in posts {
            let doc = a.post(post).await.unwrap();
            assert_eq!(doc, b.post(post).await.unwrap());
            if let Some(doc) = doc {
                live += 1;
                liked += usize::from(doc.like_count > 0);
            }
            assert_eq!(
                a.comments(post, None, 10_000).await.unwrap(),
                b.comments(post, None, 10_000).await.unwrap()
            );
        }
        assert!(live > 50 && liked > 20, "{live} posts, {liked} liked");
    })
}
