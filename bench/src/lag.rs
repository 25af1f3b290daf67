//! `bench lag`: projection lag — how long after a writer was told its event is
//! committed the read models have applied it.
//!
//! The `timeline` and `content` projections run in this process exactly as
//! `hybridlive project timeline content` runs them on the lite stores: the read models of
//! `projections::ReadModels::lite` (PostgreSQL, the Redis caches under a prefix of this run's
//! own), live pushes and the registration saga wired as `workers::real_time` wires
//! them (the likes pusher too), each projection fed by its own `projections::Runner`:
//! - **log source** (`Runner::run`): the projection's lease, `LISTEN`/`NOTIFY` wake-ups
//!   (`store::LogWaiter`), batches read in commit order, a checkpoint per batch;
//! - **Kafka source** (`--kafka`, `Runner::run_kafka`): the outbox relay runs in this process
//!   too (`relay::Relay`, as `hybridlive relay` runs it) and each projection is a consumer
//!   group of the relay's topics — append → relay → broker → consumer → apply. The topics
//!   are `bench<run>.<stream type>` and the groups `bench<run>.bench<run>_<projection>` (the
//!   topic prefix, then the projection's name), so that they share nothing with other users
//!   of the broker; nothing else differs.
//!
//! Setup, untimed, on a fresh database: `--users` users register (`user.registered`), each
//! follows `--follows-per-user` others (the first of them one of five popular users, so
//! some posts fan out to hundreds of timelines), each publishes a post, and there are a few
//! likes and comments (so every topic exists); then the benchmark waits until both
//! projections have applied all of it.
//!
//! Measured: single-event appends through `store::PgEventStore` at a fixed `--rate` for
//! `--seconds`, paced by a timer that catches up after a stall (`MissedTickBehavior::Burst`),
//! each append on its own task so several are in flight. The mix is what a social app writes:
//! 45% likes, 20% comments, 20% posts, 10% follows, 5% registrations (which run the saga).
//! An event's **lag** is from the moment its `append` call returned (the commit acknowledged
//! to the writer) to the moment the projection's `apply` of it returned — measured by a
//! wrapper around each projection (`Timed`) that delegates to it and notes the instant each
//! event id was first applied; the checkpoint write that ends a batch is not included. Lags
//! are computed once every event has been applied, from the two instants, so the wrapper does
//! no work beyond a map insert. An event applied before its writer's task saw the
//! acknowledgement (the projection was faster than the writer's wake-up) counts as 0 and is
//! reported. Every appended event a projection handles must have been applied by it, and no
//! event may be dead-lettered, or the run fails.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use event_schemas::comment::CommentAddedV1;
use event_schemas::like::PostLikedV1;
use event_schemas::post::PostPublishedV1;
use event_schemas::social::FollowedV1;
use event_schemas::user::UserRegisteredV3;
use event_schemas::{stream_type, Event, EventEnvelope, Metadata};
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use projections::{
    ApplyError, ContentProjection, Projection, ReadModels, RetryPolicy, Runner, TimelineProjection,
    TimelineSettings,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay::{Relay, RelaySettings};
use store::{AppendRequest, NewEvent, PgEventStore, RecordedEvent};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::setup::BenchDatabase;

/// Appends in flight at once during the setup.
const SETUP_CONCURRENCY: usize = 16;

/// Longest wait for the projections (or the relay) to apply the setup.
const SETUP_BOUND: Duration = Duration::from_secs(600);

/// Longest wait, after the last append returned, for every timed event to be applied.
const DRAIN_BOUND: Duration = Duration::from_secs(120);

/// Where the projections read from.
#[derive(Debug, Clone)]
pub enum LagSource {
    /// The PostgreSQL log (`Runner::run`): batches applied set-wise, or each event alone
    /// (`Runner::event_by_event`, the baseline).
    Log { event_by_event: bool },
    /// The relay's topics on these brokers (`Runner::run_kafka`), the relay in-process.
    Kafka { brokers: String },
}

impl LagSource {
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Log {
                event_by_event: false,
            } => "PostgreSQL log",
            Self::Log {
                event_by_event: true,
            } => "PostgreSQL log, event by event",
            Self::Kafka { .. } => "Kafka (via the relay)",
        }
    }
}

/// What one `bench lag` run does.
#[derive(Debug, Clone)]
pub struct LagLoad {
    pub rate: u32,
    pub seconds: u64,
    pub users: usize,
    pub follows_per_user: usize,
    pub redis_url: String,
}

/// The lag of one projection.
#[derive(Debug)]
pub struct ProjectionLag {
    pub name: &'static str,
    /// Timed events of the types it handles: all of them were applied (checked).
    pub applied: usize,
    /// Microseconds from the append's return to the end of its apply.
    pub lag: Histogram<u64>,
    /// Events applied before their writer saw the append return (counted as 0).
    pub ahead_of_ack: usize,
    /// Timed events applied per second, from the first timed append to its last apply: the
    /// share of the rate it handles while it keeps up, its ceiling when it does not.
    pub applied_per_sec: f64,
}

/// The figures of one run.
#[derive(Debug)]
pub struct LagResult {
    pub source: LagSource,
    pub setup_events: usize,
    /// From starting the projections to both having applied the setup.
    pub catch_up: Duration,
    pub appended: usize,
    pub achieved_rate: f64,
    /// Timed events per kind, in the order of [`Kind::ALL`].
    pub mix: Vec<(&'static str, usize)>,
    /// Microseconds of each timed `append` call.
    pub append: Histogram<u64>,
    pub projections: Vec<ProjectionLag>,
    /// Kafka source only: microseconds from the append's return to the broker's
    /// acknowledgement of the relay's produce.
    pub kafka_ack: Option<Histogram<u64>>,
}

/// Runs the setup and the measurement with the projections on `source`; deletes this run's
/// Redis keys whatever happened.
///
/// # Errors
/// When a store or the broker fails, a projection stops, or an event is not applied.
pub async fn run(
    db: &BenchDatabase,
    load: &LagLoad,
    source: &LagSource,
) -> anyhow::Result<LagResult> {
    let mut redis = api::connect_redis(&load.redis_url, Duration::from_secs(2))
        .await
        .context("connecting to Redis")?;
    let prefix = format!("benchlag:{}:", Uuid::new_v4().simple());
    let measured = measure(db, load, source, redis.clone(), &prefix).await;
    let deleted = projections::cache::unlink_matching(&mut redis, &format!("{prefix}*"))
        .await
        .context("deleting the benchmark's Redis keys");
    let result = measured?;
    eprintln!("lag: deleted {} Redis keys under {prefix}", deleted?);
    Ok(result)
}

async fn measure(
    db: &BenchDatabase,
    load: &LagLoad,
    source: &LagSource,
    redis: redis::aio::ConnectionManager,
    prefix: &str,
) -> anyhow::Result<LagResult> {
    let writer_pool = db.pool(16, None).await?;
    // `hybridlive project` runs on a pool of 8.
    let projection_pool = db.pool(8, None).await?;
    let store = PgEventStore::new(writer_pool.clone());
    let workers = workers::real_time(
        &projection_pool,
        ReadModels::lite(projection_pool.clone(), redis.clone(), prefix),
        TimelineSettings::default(),
        redis,
        prefix,
        workers::RealTimeSettings::default(),
    );
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let name = |projection: &str| match source {
        LagSource::Log { .. } => projection.to_owned(),
        LagSource::Kafka { .. } => format!("bench{run_id}_{projection}"),
    };
    // What `projections::Workers` builds for `timeline` and `content`, each wrapped.
    let timeline = Timed::new(
        TimelineProjection::new(workers.models.timelines.clone(), workers.timeline)
            .with_live(workers.live.clone())
            .with_onboarding(workers.onboarding.clone()),
        name(TimelineProjection::NAME),
    );
    let content = Timed::new(
        ContentProjection::new(workers.models.content.clone(), workers.models.cache.clone())
            .with_live(workers.live.clone())
            .with_onboarding(workers.onboarding.clone()),
        name(ContentProjection::NAME),
    );
    // Per projection: its name, when it applied each event, and the timed kinds it handles.
    let kinds = |projection: &dyn Fn(&str) -> bool| -> HashSet<&'static str> {
        Kind::ALL
            .iter()
            .map(|k| k.event_type())
            .filter(|t| projection(t))
            .collect()
    };
    let recorders = [
        (
            TimelineProjection::NAME,
            timeline.applied.clone(),
            kinds(&|t| timeline.handles(t)),
        ),
        (
            ContentProjection::NAME,
            content.applied.clone(),
            kinds(&|t| content.handles(t)),
        ),
    ];
    // On Kafka, the run's topics, deleted at its end (each run leaves some 100 MB otherwise).
    let topics = match source {
        LagSource::Log { .. } => None,
        LagSource::Kafka { brokers } => Some(testkit::kafka::TestTopics::on(brokers)),
    };
    let feed = match (source, &topics) {
        (LagSource::Kafka { brokers }, Some(topics)) => Feed::Kafka(projections::KafkaSource {
            brokers: brokers.clone(),
            topic_prefix: topics.prefix.clone(),
            // Set per projection by `spawn_runner`.
            stream_types: Vec::new(),
            dlq_replication: 1,
            fetch_wait: projections::kafka::DEFAULT_FETCH_WAIT,
            relay: projections::kafka::DEFAULT_RELAY.to_owned(),
        }),
        _ => Feed::Log,
    };

    let stop = CancellationToken::new();
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let kafka_acks = Applied::default();
    if let Feed::Kafka(kafka) = &feed {
        let acks = kafka_acks.clone();
        let hook: relay::PublishedHook = Arc::new(move |batch: &[RecordedEvent]| {
            let now = Instant::now();
            for event in batch {
                acks.record(event.event_id, now);
            }
        });
        // `hybridlive relay` runs on a pool of 4.
        let relay = Relay::new(
            db.pool(4, None).await?,
            RelaySettings {
                brokers: kafka.brokers.clone(),
                topic_prefix: kafka.topic_prefix.clone(),
                ..RelaySettings::default()
            },
        )
        .on_published(hook);
        let stop = stop.clone();
        tasks.spawn(async move {
            relay.run(stop).await;
            Ok(())
        });
    }

    // Setup, untimed.
    let mut social = Social::new(7);
    let started = Instant::now();
    let phases = social.setup(load.users, load.follows_per_user)?;
    let mut setup: Vec<(Uuid, &'static str)> = Vec::new();
    for phase in phases {
        setup.extend(phase.iter().flat_map(|a| a.ids()));
        futures::stream::iter(phase)
            .map(|append| {
                let store = store.clone();
                async move { append.run(&store).await }
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
    }
    eprintln!(
        "lag: setup of {} events appended in {:.1} s",
        setup.len(),
        started.elapsed().as_secs_f64()
    );
    if let Feed::Kafka(_) = &feed {
        // The consumers subscribe to topics the relay creates on their first event.
        let ids: Vec<Uuid> = setup.iter().map(|(id, _)| *id).collect();
        kafka_acks
            .wait_for(&ids, SETUP_BOUND, &stop, "acknowledged by Kafka")
            .await?;
    }

    let catching_up = Instant::now();
    let policy = RetryPolicy::default();
    let mut timeline_runner = Runner::new(projection_pool.clone(), timeline, policy);
    let mut content_runner = Runner::new(projection_pool.clone(), content, policy);
    if let LagSource::Log {
        event_by_event: true,
    } = source
    {
        timeline_runner = timeline_runner.event_by_event();
        content_runner = content_runner.event_by_event();
    }
    spawn_runner(&mut tasks, timeline_runner, &feed, &stop);
    spawn_runner(&mut tasks, content_runner, &feed, &stop);
    if let Some(live) = workers.live.clone() {
        let stop = stop.clone();
        tasks.spawn(async move {
            live.run_likes(&stop).await;
            Ok(())
        });
    }

    let measured = async {
        for (projection, applied, kinds) in &recorders {
            let ids: Vec<Uuid> = setup
                .iter()
                .filter(|(_, t)| kinds.contains(t))
                .map(|(id, _)| *id)
                .collect();
            applied
                .wait_for(
                    &ids,
                    SETUP_BOUND,
                    &stop,
                    &format!("applied by {projection}"),
                )
                .await?;
        }
        let catch_up = catching_up.elapsed();
        eprintln!(
            "lag: setup applied by both projections in {:.1} s; settling the database",
            catch_up.as_secs_f64()
        );
        db.settle().await?;

        let total = u64::from(load.rate) * load.seconds;
        eprintln!(
            "lag: appending {total} events at {} events/s ({} source)",
            load.rate,
            source.describe()
        );
        let mut ticks = tokio::time::interval(Duration::from_secs(1) / load.rate);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut appends = Vec::new();
        let mut mix: HashMap<&'static str, usize> = HashMap::new();
        let started = Instant::now();
        for _ in 0..total {
            ticks.tick().await;
            let (kind, append) = social.next()?;
            let id = append.events.first().context("an empty append")?.event_id;
            *mix.entry(kind.label()).or_default() += 1;
            let store = store.clone();
            appends.push(tokio::spawn(async move {
                let at = Instant::now();
                append.run(&store).await?;
                let acked = Instant::now();
                Ok::<_, anyhow::Error>((id, kind, at, acked))
            }));
        }
        let achieved_rate = total as f64 / started.elapsed().as_secs_f64();
        let mut sent = Vec::with_capacity(appends.len());
        for handle in appends {
            sent.push(handle.await.context("an append task panicked")??);
        }

        let mut projections = Vec::new();
        for (projection, applied, kinds) in &recorders {
            let mine: Vec<_> = sent
                .iter()
                .filter(|(_, kind, _, _)| kinds.contains(kind.event_type()))
                .collect();
            let ids: Vec<Uuid> = mine.iter().map(|(id, ..)| *id).collect();
            applied
                .wait_for(
                    &ids,
                    DRAIN_BOUND,
                    &stop,
                    &format!("applied by {projection}"),
                )
                .await?;
            let mut lag = histogram()?;
            let mut ahead_of_ack = 0;
            let mut last = started;
            for (id, _, _, acked) in &mine {
                let done = applied.get(id).context("an applied event vanished")?;
                last = last.max(done);
                if done < *acked {
                    ahead_of_ack += 1;
                }
                lag.record(micros(done.saturating_duration_since(*acked))?)?;
            }
            projections.push(ProjectionLag {
                name: projection,
                applied: ids.len(),
                lag,
                ahead_of_ack,
                applied_per_sec: ids.len() as f64 / (last - started).as_secs_f64(),
            });
        }
        let mut append = histogram()?;
        for (_, _, at, acked) in &sent {
            append.record(micros(acked.duration_since(*at))?)?;
        }
        let kafka_ack = match &feed {
            Feed::Log => None,
            Feed::Kafka(_) => {
                let mut h = histogram()?;
                for (id, _, _, acked) in &sent {
                    let at = kafka_acks
                        .get(id)
                        .context("an applied event was not acknowledged by Kafka")?;
                    h.record(micros(at.saturating_duration_since(*acked))?)?;
                }
                Some(h)
            }
        };
        Ok::<_, anyhow::Error>(LagResult {
            source: source.clone(),
            setup_events: setup.len(),
            catch_up,
            appended: sent.len(),
            achieved_rate,
            mix: Kind::ALL
                .iter()
                .map(|k| (k.label(), mix.get(k.label()).copied().unwrap_or(0)))
                .collect(),
            append,
            projections,
            kafka_ack,
        })
    }
    .await;

    stop.cancel();
    let mut stopped = Ok(());
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(error)) => stopped = Err(error),
            Err(error) => stopped = Err(anyhow::anyhow!("a worker task panicked: {error}")),
        }
    }
    // A projection that failed explains a timeout better than the timeout does.
    stopped?;
    let result = measured?;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&projection_pool)
        .await
        .context("counting dead letters")?;
    ensure!(dead == 0, "{dead} events were dead-lettered");
    writer_pool.close().await;
    projection_pool.close().await;
    if let Some(topics) = topics {
        topics.delete_now();
    }
    Ok(result)
}

/// Where the runners read from, as they are given it.
#[derive(Debug, Clone)]
enum Feed {
    Log,
    Kafka(projections::KafkaSource),
}

/// Runs `runner` on `feed` until `stop`; a failure stops every worker (and the run).
fn spawn_runner<P: Projection + 'static>(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    runner: Runner<P>,
    feed: &Feed,
    stop: &CancellationToken,
) {
    let (feed, stop) = (feed.clone(), stop.clone());
    tasks.spawn(async move {
        let name = runner.projection().name().to_owned();
        let result = match feed {
            Feed::Log => runner.run(&stop).await.map_err(anyhow::Error::from),
            Feed::Kafka(kafka) => {
                let kafka = projections::KafkaSource {
                    stream_types: projections::workers::stream_types(runner.projection()),
                    ..kafka
                };
                runner
                    .run_kafka(&kafka, &stop)
                    .await
                    .map_err(anyhow::Error::from)
            }
        };
        if result.is_err() {
            stop.cancel();
        }
        result.with_context(|| format!("the {name} projection stopped"))
    });
}

/// A projection wrapped to note when each event was first applied.
#[derive(Debug)]
struct Timed<P> {
    inner: P,
    name: String,
    applied: Applied,
}

impl<P: Projection> Timed<P> {
    fn new(inner: P, name: String) -> Self {
        Self {
            inner,
            name,
            applied: Applied::default(),
        }
    }
}

impl<P: Projection> Projection for Timed<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn handles(&self, event_type: &str) -> bool {
        self.inner.handles(event_type)
    }

    async fn apply(&self, event: &EventEnvelope) -> Result<(), ApplyError> {
        self.inner.apply(event).await?;
        self.applied.record(event.event_id, Instant::now());
        Ok(())
    }

    fn applies_batches(&self) -> bool {
        self.inner.applies_batches()
    }

    async fn apply_batch(&self, events: &[EventEnvelope]) -> Result<(), ApplyError> {
        self.inner.apply_batch(events).await?;
        let now = Instant::now();
        for event in events {
            self.applied.record(event.event_id, now);
        }
        Ok(())
    }

    async fn dead_lettered(&self, event: &EventEnvelope, error: &str) -> Result<(), ApplyError> {
        self.inner.dead_lettered(event, error).await
    }
}

/// The instant each event id was first seen (applied, or acknowledged by Kafka).
#[derive(Debug, Clone, Default)]
struct Applied(Arc<Mutex<HashMap<Uuid, Instant>>>);

impl Applied {
    fn record(&self, id: Uuid, at: Instant) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_insert(at);
    }

    fn get(&self, id: &Uuid) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }

    /// Waits until every one of `ids` was seen; fails after `bound` or when `stop` fired
    /// (a worker failed).
    async fn wait_for(
        &self,
        ids: &[Uuid],
        bound: Duration,
        stop: &CancellationToken,
        what: &str,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut missing = ids.to_vec();
        loop {
            {
                let seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                missing.retain(|id| !seen.contains_key(id));
            }
            if missing.is_empty() {
                return Ok(());
            }
            if stop.is_cancelled() {
                bail!(
                    "a worker stopped with {} of {} events not {what}",
                    missing.len(),
                    ids.len()
                );
            }
            if started.elapsed() > bound {
                bail!(
                    "{} of {} events not {what} within {bound:?}",
                    missing.len(),
                    ids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What one timed append writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Like,
    Comment,
    Post,
    Follow,
    Register,
}

impl Kind {
    const ALL: [Self; 5] = [
        Self::Like,
        Self::Comment,
        Self::Post,
        Self::Follow,
        Self::Register,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Like => "likes",
            Self::Comment => "comments",
            Self::Post => "posts",
            Self::Follow => "follows",
            Self::Register => "registrations",
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Self::Like => "post.liked",
            Self::Comment => "comment.added",
            Self::Post => "post.published",
            Self::Follow => "social.followed",
            Self::Register => "user.registered",
        }
    }
}

/// One append of the synthetic social app (payloads as `testkit::social` writes them).
#[derive(Debug)]
struct Append {
    stream_type: &'static str,
    stream_id: String,
    expected_version: u64,
    actor: Uuid,
    events: Vec<NewEvent>,
}

impl Append {
    fn ids(&self) -> Vec<(Uuid, &'static str)> {
        self.events
            .iter()
            .map(|e| (e.event_id, static_type(&e.event_type)))
            .collect()
    }

    async fn run(&self, store: &PgEventStore) -> anyhow::Result<()> {
        store
            .append(&AppendRequest {
                stream_type: self.stream_type.to_owned(),
                stream_id: self.stream_id.clone(),
                expected_version: self.expected_version,
                events: self.events.clone(),
                metadata: Metadata {
                    correlation_id: Some(Uuid::new_v4().to_string()),
                    actor: Some(format!("user:{}", self.actor)),
                    ..Metadata::default()
                },
                claims: Vec::new(),
                credentials: Vec::new(),
                erases_subject: false,
            })
            .await
            .with_context(|| format!("appending to {} {}", self.stream_type, self.stream_id))?;
        Ok(())
    }
}

fn static_type(event_type: &str) -> &'static str {
    Kind::ALL
        .iter()
        .map(|k| k.event_type())
        .find(|t| *t == event_type)
        .unwrap_or("other")
}

/// The state of the synthetic social app: who exists, who follows whom, what was posted
/// and liked — enough to write only events that make sense, and never two appends to one
/// stream at once.
#[derive(Debug)]
struct Social {
    rng: StdRng,
    users: Vec<Uuid>,
    /// Per user: its social-graph stream's version and whom it follows.
    graphs: Vec<(u64, HashSet<Uuid>)>,
    /// The setup's posts: likes and comments go to posts known to be committed.
    posts: Vec<Uuid>,
    likes: HashSet<(Uuid, Uuid)>,
    /// Follows during the measurement go round the users, so that one user's graph stream
    /// is appended to once per `users / follows per second` seconds — never concurrently.
    next_follower: usize,
    registered: usize,
}

impl Social {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            users: Vec::new(),
            graphs: Vec::new(),
            posts: Vec::new(),
            likes: HashSet::new(),
            next_follower: 0,
            registered: 0,
        }
    }

    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.gen()).into_uuid()
    }

    fn event(&mut self, event: &Event) -> anyhow::Result<NewEvent> {
        let id = self.uuid();
        NewEvent::encode_with_id(id, event).context("encoding a synthetic event")
    }

    /// The setup, phase by phase (each phase only after the previous one committed):
    /// registrations, follows, one post per user, likes and comments.
    fn setup(&mut self, users: usize, follows_per_user: usize) -> anyhow::Result<Vec<Vec<Append>>> {
        let n = users.max(10);
        let mut registrations = Vec::new();
        for _ in 0..n {
            let (user, append) = self.register()?;
            self.users.push(user);
            self.graphs.push((0, HashSet::new()));
            registrations.push(append);
        }
        let mut follows = Vec::new();
        for i in 0..n {
            let user = self.users[i];
            let mut events = Vec::new();
            for k in 0..follows_per_user.min(n - 1) {
                let followee = if k == 0 {
                    self.users[self.rng.gen_range(0..5)]
                } else {
                    self.users[self.rng.gen_range(0..n)]
                };
                if followee == user || !self.graphs[i].1.insert(followee) {
                    continue;
                }
                events.push(self.event(&Event::Followed(FollowedV1 {
                    follower_id: user,
                    followee_id: followee,
                }))?);
            }
            self.graphs[i].0 = events.len() as u64;
            if !events.is_empty() {
                follows.push(Append {
                    stream_type: stream_type::SOCIAL_GRAPH,
                    stream_id: user.to_string(),
                    expected_version: 0,
                    actor: user,
                    events,
                });
            }
        }
        let mut posts = Vec::new();
        for i in 0..n {
            let (post, append) = self.post(self.users[i])?;
            self.posts.push(post);
            posts.push(append);
        }
        let mut reactions = Vec::new();
        for i in 0..n {
            reactions.push(self.like()?);
            if i % 2 == 0 {
                reactions.push(self.comment()?);
            }
        }
        Ok(vec![registrations, follows, posts, reactions])
    }

    /// The next timed append.
    fn next(&mut self) -> anyhow::Result<(Kind, Append)> {
        let kind = match self.rng.gen_range(0..100) {
            0..45 => Kind::Like,
            45..65 => Kind::Comment,
            65..85 => Kind::Post,
            85..95 => Kind::Follow,
            _ => Kind::Register,
        };
        let append = match kind {
            Kind::Like => self.like()?,
            Kind::Comment => self.comment()?,
            Kind::Post => {
                let author = self.users[self.rng.gen_range(0..self.users.len())];
                self.post(author)?.1
            }
            Kind::Follow => self.follow()?,
            // Only the setup's users post, like and follow: a timed registration may still
            // be in flight when the next event is generated.
            Kind::Register => self.register()?.1,
        };
        Ok((kind, append))
    }

    fn register(&mut self) -> anyhow::Result<(Uuid, Append)> {
        let user = self.uuid();
        let i = self.registered;
        self.registered += 1;
        let event = self.event(&Event::UserRegistered(UserRegisteredV3 {
            user_id: user,
            username: format!("u{i}"),
            email: format!("u{i}@example.com"),
            display_name: format!("User {i}"),
        }))?;
        Ok((
            user,
            Append {
                stream_type: stream_type::USER,
                stream_id: user.to_string(),
                expected_version: 0,
                actor: user,
                events: vec![event],
            },
        ))
    }

    fn post(&mut self, author: Uuid) -> anyhow::Result<(Uuid, Append)> {
        let post = self.uuid();
        let n = self.rng.gen_range(0..1000);
        let event = self.event(&Event::PostPublished(PostPublishedV1 {
            post_id: post,
            author_id: author,
            title: format!("Notes from the road, part {n}"),
            body_markdown: format!(
                "# Day {n}\n\nWe left *early*, before the fog lifted, and walked along the \
                 river to the old mill. The [map](https://example.com/maps/{n}) was wrong \
                 again, which by now surprises nobody.\n\n- bread, cheese, too little \
                 water\n- one **very** stubborn goat\n\nTomorrow: the pass, if the weather \
                 holds. Photos later."
            ),
            media: Vec::new(),
        }))?;
        Ok((
            post,
            Append {
                stream_type: stream_type::POST,
                stream_id: post.to_string(),
                expected_version: 0,
                actor: author,
                events: vec![event],
            },
        ))
    }

    fn like(&mut self) -> anyhow::Result<Append> {
        let (post, user) = loop {
            let post = self.posts[self.rng.gen_range(0..self.posts.len())];
            let user = self.users[self.rng.gen_range(0..self.users.len())];
            if self.likes.insert((post, user)) {
                break (post, user);
            }
        };
        let event = self.event(&Event::PostLiked(PostLikedV1 {
            post_id: post,
            user_id: user,
        }))?;
        Ok(Append {
            stream_type: stream_type::LIKE,
            stream_id: format!("{post}:{user}"),
            expected_version: 0,
            actor: user,
            events: vec![event],
        })
    }

    fn comment(&mut self) -> anyhow::Result<Append> {
        let post = self.posts[self.rng.gen_range(0..self.posts.len())];
        let user = self.users[self.rng.gen_range(0..self.users.len())];
        let comment = self.uuid();
        let event = self.event(&Event::CommentAdded(CommentAddedV1 {
            comment_id: comment,
            post_id: post,
            author_id: user,
            body: "Lovely — the goat part especially. Which pass, the northern one?".into(),
        }))?;
        Ok(Append {
            stream_type: stream_type::COMMENT,
            stream_id: comment.to_string(),
            expected_version: 0,
            actor: user,
            events: vec![event],
        })
    }

    fn follow(&mut self) -> anyhow::Result<Append> {
        let i = self.next_follower;
        self.next_follower = (i + 1) % self.users.len();
        let follower = self.users[i];
        let followee = loop {
            let candidate = self.users[self.rng.gen_range(0..self.users.len())];
            if candidate != follower && !self.graphs[i].1.contains(&candidate) {
                break candidate;
            }
        };
        self.graphs[i].1.insert(followee);
        let expected_version = self.graphs[i].0;
        self.graphs[i].0 += 1;
        let event = self.event(&Event::Followed(FollowedV1 {
            follower_id: follower,
            followee_id: followee,
        }))?;
        Ok(Append {
            stream_type: stream_type::SOCIAL_GRAPH,
            stream_id: follower.to_string(),
            expected_version,
            actor: follower,
            events: vec![event],
        })
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::<u64>::new(3).context("creating a histogram")
}

fn micros(duration: Duration) -> anyhow::Result<u64> {
    Ok(u64::try_from(duration.as_micros())?.max(1))
}
