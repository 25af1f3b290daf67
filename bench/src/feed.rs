//! `bench feed`: the read side over real HTTP, lite profile (PostgreSQL read
//! models, Redis caches) — the API exactly as `hybridlive dev` builds it (`api::App` over
//! `projections::ReadModels::lite`) with every projection worker running next to it
//! (`projections::Workers`, fed by the PostgreSQL log).
//!
//! Setup, untimed: `--readers` and `--authors` users register over HTTP, every reader
//! follows every author, every author publishes `--posts-per-author` posts (a few
//! paragraphs of markdown each) and readers like and comment on some of them; then the
//! benchmark waits until the `timeline` and `content` projections have applied the last
//! command. Every reader's feed then holds the same [`FEED_LIMIT`] newest posts.
//!
//! Three measurements:
//! - **feed reads**: C closed-loop clients, each with a reader's bearer token, loop
//!   `GET /v1/feed?limit=50` for `--seconds` after an untimed warm-up. A success is a `200`
//!   whose body is a feed page of exactly [`FEED_LIMIT`] items (the body is parsed once, as
//!   a client would); anything else is an error. Latency is from sending the request to
//!   having read and parsed the whole body.
//! - **feed reads after a cache flush**: every post key of the cache (`<prefix>rm:post:*`:
//!   previews, counts, comment lists) is deleted once with `SCAN` + `DEL`, then the same
//!   clients are measured at once for `--cold-seconds`, without a warm-up: the first reads
//!   refill the cache from PostgreSQL (lease-guarded read-through), the rest hit it again,
//!   so the figures show what a flush costs overall, not the latency of one cold read.
//! - **fan-out on write**: an author with `--followers` followers publishes one post over
//!   HTTP; from the `201` the benchmark polls `read_model.timelines` every 2 ms until the
//!   post is in every follower's timeline and the author's own (the timeline projection
//!   delivers to all of them in one transaction), and, concurrently, waits until the
//!   projection's checkpoint has passed the event (`projections::query::wait_caught_up`,
//!   which polls every 5 ms). The count is not instant either (it visits 10 001 index
//!   entries and rows), so the delivery time is late by up to one count and one 2 ms pause,
//!   and can come out a few ms above the checkpoint time, which in reality follows it.
//!   Repeated `--fanout-rounds` times. The followers are synthetic: registering 10 000 users
//!   over HTTP would spend minutes on Argon2id, which is not what is measured, so their
//!   `social.followed` events are appended to the event store directly (one `social_graph`
//!   stream per follower, as the API writes them), and the projection builds the graph
//!   from them like any other.
//!
//! Why it is fair: the server is the production code path (authentication, middleware,
//! metrics; only the rate limits are off, as every client is one IP), on a Tokio runtime of
//! its own with its own pool and Redis connection, while the clients run on the main runtime
//! of the same machine, so the figures include the load generator's cost on the same
//! cores. Every feed request does the full work (timeline read, one Redis round trip for 50
//! previews and counts, serialisation of 50 items); nothing is cached in front of the API.
//! The database is settled (`VACUUM ANALYZE`, `CHECKPOINT`) after setup. The fan-out author
//! has no more followers than `FANOUT_MAX_FOLLOWERS` (the default, as production runs), so
//! the post really is written into every timeline, which is checked by counting them.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use event_schemas::social::FollowedV1;
use event_schemas::{Event, Metadata};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use store::{AppendRequest, NewEvent, PgEventStore};
use uuid::Uuid;

use crate::runner::{self, Client, Measurement, Outcome};
use crate::server::{Server, ServerOptions};
use crate::setup::BenchDatabase;

/// Items per feed page the readers ask for, and the size of a good answer.
pub const FEED_LIMIT: usize = 50;

/// Requests in flight while the setup registers users and issues commands.
const SETUP_CONCURRENCY: usize = 8;

/// Longest wait for the projections to catch up, or for a fan-out to arrive.
const CATCH_UP_BOUND: Duration = Duration::from_secs(60);

/// How often the fan-out measurement counts the timelines holding the post.
const FANOUT_POLL: Duration = Duration::from_millis(2);

/// What one `bench feed` run does.
#[derive(Debug, Clone)]
pub struct FeedLoad {
    pub readers: usize,
    pub authors: usize,
    pub posts_per_author: usize,
    pub clients: usize,
    pub warmup: Duration,
    pub warm: Duration,
    pub cold: Duration,
    pub followers: usize,
    pub fanout_rounds: usize,
    pub pool_size: u32,
    pub server_threads: usize,
    pub redis_url: String,
}

/// The figures of one run.
#[derive(Debug)]
pub struct FeedResult {
    pub warm: Measurement,
    pub flushed: Measurement,
    /// Cache keys the flush deleted.
    pub flushed_keys: usize,
    pub fanout: Vec<FanoutRound>,
}

/// One published post of the fan-out measurement.
#[derive(Debug, Clone, Copy)]
pub struct FanoutRound {
    /// `POST /v1/posts` from sending to the `201`.
    pub publish: Duration,
    /// From the `201` until every timeline held the post.
    pub delivered: Duration,
    /// From the `201` until the timeline projection's checkpoint had passed the event.
    pub checkpointed: Duration,
}

/// Runs the setup and the three measurements against a server started on `db`.
///
/// # Errors
/// When the server cannot start, a setup step fails or the projections fall behind.
pub async fn run(db: &BenchDatabase, load: &FeedLoad) -> anyhow::Result<FeedResult> {
    let server = Server::start(
        db,
        &ServerOptions {
            pool_size: load.pool_size,
            threads: load.server_threads,
            redis_url: load.redis_url.clone(),
            projections: true,
        },
    )
    .await?;
    let result = measure(&server, db, load).await;
    server.stop();
    result
}

async fn measure(
    server: &Server,
    db: &BenchDatabase,
    load: &FeedLoad,
) -> anyhow::Result<FeedResult> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(load.clients.max(SETUP_CONCURRENCY))
        .build()
        .context("building the HTTP client")?;
    let api = Api {
        http: http.clone(),
        base: server.base.clone(),
    };
    let pool = db.pool(16, None).await?;
    let run_id = Uuid::new_v4().simple().to_string();
    let run_id = &run_id[..8];

    let readers = populate(&api, &pool, load, run_id).await?;
    let clients: Vec<FeedReader> = (0..load.clients)
        .map(|i| FeedReader {
            http: http.clone(),
            url: format!("{}/v1/feed?limit={FEED_LIMIT}", server.base),
            token: readers[i % readers.len()].token.clone(),
        })
        .collect();

    db.settle().await?;
    let (clients, _) = runner::run(clients, load.warmup).await?;
    eprintln!(
        "Measuring feed reads: {} clients for {:?}…",
        clients.len(),
        load.warm
    );
    let (clients, warm) = runner::run(clients, load.warm).await?;
    report_failures(&warm);

    let flushed_keys = flush_post_cache(&load.redis_url, &server.redis_prefix).await?;
    eprintln!(
        "Deleted {flushed_keys} post cache keys; measuring feed reads for {:?} without a warm-up…",
        load.cold
    );
    let (_, flushed) = runner::run(clients, load.cold).await?;
    report_failures(&flushed);

    let fanout = fanout(&api, &pool, load, run_id).await?;
    pool.close().await;
    Ok(FeedResult {
        warm,
        flushed,
        flushed_keys,
        fanout,
    })
}

fn report_failures(measured: &Measurement) {
    if let Some(failure) = &measured.first_failure {
        eprintln!("{} failures, the first: {failure}", measured.failures);
    }
}

/// Registers the readers and authors, has every reader follow every author, publishes the
/// posts, likes and comments, and waits until the projections have applied it all.
async fn populate(
    api: &Api,
    pool: &sqlx::PgPool,
    load: &FeedLoad,
    run_id: &str,
) -> anyhow::Result<Vec<User>> {
    let started = Instant::now();
    eprintln!(
        "Registering {} readers and {} authors (untimed)…",
        load.readers, load.authors
    );
    let readers = api
        .register_all(&format!("rd_{run_id}_"), load.readers)
        .await?;
    let authors = api
        .register_all(&format!("au_{run_id}_"), load.authors)
        .await?;

    eprintln!(
        "{} follows, {} posts, likes and comments (untimed)…",
        load.readers * load.authors,
        load.authors * load.posts_per_author
    );
    // Author by author: the follows in flight at once are of different readers, as each
    // reader's follows append to that reader's own social-graph stream.
    let follows = authors
        .iter()
        .flat_map(|author| readers.iter().map(move |reader| (reader, author)));
    futures::stream::iter(follows)
        .map(|(reader, author)| api.follow(reader, author.user_id))
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;

    // Round by round, so every author's posts are spread over the whole feed.
    let posts = (0..load.posts_per_author)
        .flat_map(|round| authors.iter().map(move |author| (round, author)));
    let posts: Vec<Uuid> = futures::stream::iter(posts)
        .map(|(round, author)| async move {
            let (post_id, _) = api
                .publish(author, &format!("Post {round} of {}", author.username))
                .await?;
            Ok::<_, anyhow::Error>(post_id)
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;

    // Each reader likes five posts and comments on one, spread over all of them.
    let likes = readers.iter().enumerate().flat_map(|(i, reader)| {
        let posts = &posts;
        (0..5).map(move |k| (reader, posts[(i * 5 + k) % posts.len()]))
    });
    futures::stream::iter(likes)
        .map(|(reader, post)| api.like(reader, post))
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    futures::stream::iter(readers.iter().enumerate())
        .map(|(i, reader)| api.comment(reader, posts[(i * 7) % posts.len()]))
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    // One last command, issued after every other one was answered, so that its event is the
    // last in the log's read order and the projections having applied it means they have
    // applied everything.
    let last = api.comment(&readers[0], posts[0]).await?;
    wait_caught_up(pool, &["timeline", "content"], last).await?;

    let page = api.feed(&readers[0]).await?;
    ensure!(
        page == FEED_LIMIT,
        "a reader's feed has {page} items after setup, not {FEED_LIMIT}"
    );
    eprintln!("Setup done in {:.1} s.", started.elapsed().as_secs_f64());
    Ok(readers)
}

async fn wait_caught_up(
    pool: &sqlx::PgPool,
    projections: &[&str],
    position: i64,
) -> anyhow::Result<()> {
    let reached = projections::query::wait_caught_up(pool, projections, position, CATCH_UP_BOUND)
        .await
        .context("reading the projections' checkpoints")?;
    ensure!(
        reached,
        "the projections {projections:?} did not reach position {position} within {CATCH_UP_BOUND:?}"
    );
    Ok(())
}

/// Deletes every post key of the read-model cache; returns how many.
async fn flush_post_cache(redis_url: &str, redis_prefix: &str) -> anyhow::Result<usize> {
    let client = redis::Client::open(redis_url).context("parsing --redis-url")?;
    let redis = redis::aio::ConnectionManager::new(client)
        .await
        .context("connecting to Redis")?;
    let cache = projections::PostCache::new(
        redis,
        format!("{redis_prefix}rm:"),
        projections::CacheSettings::default(),
    );
    let dropped = cache.clear().await.context("dropping the post caches")?;
    Ok(usize::try_from(dropped)?)
}

/// The fan-out measurement: a registered author gets `load.followers` synthetic followers,
/// then publishes `load.fanout_rounds` posts, one at a time.
async fn fanout(
    api: &Api,
    pool: &sqlx::PgPool,
    load: &FeedLoad,
    run_id: &str,
) -> anyhow::Result<Vec<FanoutRound>> {
    let author = api.register(&format!("fan_{run_id}")).await?;
    eprintln!(
        "Appending {} social.followed events for the fan-out author (untimed)…",
        load.followers
    );
    let started = Instant::now();
    let store = PgEventStore::new(pool.clone());
    let author_id = author.user_id;
    let follow = |follower: Uuid| {
        let store = &store;
        async move {
            let event = Event::Followed(FollowedV1 {
                follower_id: follower,
                followee_id: author_id,
            });
            let appended = store
                .append(&AppendRequest {
                    stream_type: event_schemas::stream_type::SOCIAL_GRAPH.to_owned(),
                    stream_id: follower.to_string(),
                    expected_version: 0,
                    events: vec![NewEvent::encode(&event).context("encoding social.followed")?],
                    metadata: Metadata {
                        correlation_id: Some(format!("bench-feed-{run_id}")),
                        actor: Some(format!("user:{follower}")),
                        ..Metadata::default()
                    },
                    claims: Vec::new(),
                    credentials: Vec::new(),
                    erases_subject: false,
                })
                .await
                .context("appending social.followed")?;
            Ok::<_, anyhow::Error>(appended.last_position)
        }
    };
    futures::stream::iter((1..load.followers).map(|_| Uuid::now_v7()))
        .map(&follow)
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    // The last follow alone, after all others committed: see `populate`.
    let last = follow(Uuid::now_v7()).await?;
    wait_caught_up(pool, &["timeline"], last).await?;
    let followers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM read_model.follows WHERE followee_id = $1")
            .bind(author.user_id)
            .fetch_one(pool)
            .await
            .context("counting the author's followers")?;
    ensure!(
        usize::try_from(followers).ok() == Some(load.followers),
        "the fan-out author has {followers} followers in the read model, not {}",
        load.followers
    );
    eprintln!(
        "The author has {followers} followers ({:.1} s). Publishing {} posts…",
        started.elapsed().as_secs_f64(),
        load.fanout_rounds
    );

    let timelines = i64::try_from(load.followers + 1).context("too many followers")?;
    let mut rounds = Vec::with_capacity(load.fanout_rounds);
    for round in 0..load.fanout_rounds {
        let sent = Instant::now();
        let (post_id, position) = api
            .publish(&author, &format!("Fan-out post {round}"))
            .await?;
        let answered = Instant::now();
        let delivered = async {
            loop {
                let holding: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM read_model.timelines WHERE post_id = $1",
                )
                .bind(post_id)
                .fetch_one(pool)
                .await
                .context("counting the timelines holding the post")?;
                if holding >= timelines {
                    return Ok::<_, anyhow::Error>(answered.elapsed());
                }
                if answered.elapsed() > CATCH_UP_BOUND {
                    bail!("the post reached {holding} of {timelines} timelines within {CATCH_UP_BOUND:?}");
                }
                tokio::time::sleep(FANOUT_POLL).await;
            }
        };
        let checkpointed = async {
            wait_caught_up(pool, &["timeline"], position).await?;
            Ok::<_, anyhow::Error>(answered.elapsed())
        };
        let (delivered, checkpointed) = tokio::try_join!(delivered, checkpointed)?;
        rounds.push(FanoutRound {
            publish: answered - sent,
            delivered,
            checkpointed,
        });
    }
    Ok(rounds)
}

/// A registered user.
#[derive(Debug, Clone)]
struct User {
    user_id: Uuid,
    username: String,
    /// `Bearer <access token>`.
    token: String,
}

/// A command answered with another status than its success.
#[derive(Debug)]
struct Refused {
    what: String,
    status: reqwest::StatusCode,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: HTTP {}", self.what, self.status)
    }
}

impl std::error::Error for Refused {}

/// The API's routes the setup calls, each checked for its success status.
#[derive(Debug)]
struct Api {
    http: reqwest::Client,
    base: String,
}

#[derive(Debug, Deserialize)]
struct Tokens {
    user_id: Uuid,
    access_token: String,
}

#[derive(Debug, Deserialize)]
struct Published {
    post_id: Uuid,
}

/// A feed page, its items counted but not decoded.
#[derive(Debug, Deserialize)]
struct FeedPage {
    items: Vec<serde::de::IgnoredAny>,
}

const PASSWORD: &str = "correct horse battery staple";

/// The markdown body of every post: a few paragraphs, as a real post has.
const BODY: &str = "Measured by `bench feed`. This post has a **few paragraphs**, a list and a \
link, so that rendering, previews and the stored document are of a realistic size.\n\n\
- the timeline holds its id;\n- the cache holds its preview and counts;\n- the content store \
holds the document.\n\n\
A second paragraph: the preview is the first 280 characters of the body as plain text, which \
is what every feed item carries. See <https://example.com/bench> for nothing in particular.\n\n\
A third paragraph, to make the body long enough that the preview is really cut.";

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Registers `username`.
    async fn register(&self, username: &str) -> anyhow::Result<User> {
        let response = self
            .http
            .post(self.url("/v1/auth/register"))
            .json(&serde_json::json!({
                "username": username,
                "email": format!("{username}@bench.example"),
                "password": PASSWORD,
            }))
            .send()
            .await
            .with_context(|| format!("registering {username}"))?;
        let status = response.status();
        ensure!(
            status == reqwest::StatusCode::CREATED,
            "registering {username}: HTTP {status}"
        );
        let tokens: Tokens = response.json().await.context("reading the tokens")?;
        Ok(User {
            user_id: tokens.user_id,
            username: username.to_owned(),
            token: format!("Bearer {}", tokens.access_token),
        })
    }

    /// Registers `<prefix>0` … `<prefix>{n-1}`, in that order.
    async fn register_all(&self, prefix: &str, n: usize) -> anyhow::Result<Vec<User>> {
        futures::stream::iter(0..n)
            .map(|i| async move { self.register(&format!("{prefix}{i}")).await })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Sends an authenticated command; returns its `x-global-position`.
    async fn command(
        &self,
        request: reqwest::RequestBuilder,
        user: &User,
        what: &str,
        expected: reqwest::StatusCode,
    ) -> anyhow::Result<(reqwest::Response, i64)> {
        let response = request
            .header(reqwest::header::AUTHORIZATION, &user.token)
            .send()
            .await
            .with_context(|| format!("{what}: sending"))?;
        let status = response.status();
        if status != expected {
            return Err(Refused {
                what: what.to_owned(),
                status,
            }
            .into());
        }
        let position = response
            .headers()
            .get("x-global-position")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<i64>().ok())
            .with_context(|| format!("{what}: no x-global-position"))?;
        Ok((response, position))
    }

    /// Follows `followee`; tries again when another of the follower's follows wrote their
    /// social-graph stream at the same moment (409, the command layer's retries ran out).
    async fn follow(&self, follower: &User, followee: Uuid) -> anyhow::Result<i64> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let request = self
                .http
                .put(self.url(&format!("/v1/users/{followee}/follow")));
            match self
                .command(
                    request,
                    follower,
                    "following",
                    reqwest::StatusCode::NO_CONTENT,
                )
                .await
            {
                Ok((_, position)) => return Ok(position),
                Err(error)
                    if attempts < 5
                        && error.downcast_ref::<Refused>().map(|r| r.status)
                            == Some(reqwest::StatusCode::CONFLICT) => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Publishes a post titled `title`; returns its id and position.
    async fn publish(&self, author: &User, title: &str) -> anyhow::Result<(Uuid, i64)> {
        let request = self
            .http
            .post(self.url("/v1/posts"))
            .json(&serde_json::json!({
                "title": title,
                "body_markdown": BODY,
            }));
        let (response, position) = self
            .command(request, author, "publishing", reqwest::StatusCode::CREATED)
            .await?;
        let published: Published = response.json().await.context("reading the post id")?;
        Ok((published.post_id, position))
    }

    async fn like(&self, user: &User, post: Uuid) -> anyhow::Result<i64> {
        let request = self.http.put(self.url(&format!("/v1/posts/{post}/like")));
        let (_, position) = self
            .command(request, user, "liking", reqwest::StatusCode::NO_CONTENT)
            .await?;
        Ok(position)
    }

    async fn comment(&self, user: &User, post: Uuid) -> anyhow::Result<i64> {
        let request = self
            .http
            .post(self.url(&format!("/v1/posts/{post}/comments")))
            .json(&serde_json::json!({ "body": "A comment from `bench feed`." }));
        let (_, position) = self
            .command(request, user, "commenting", reqwest::StatusCode::CREATED)
            .await?;
        Ok(position)
    }

    /// The number of items on `user`'s first feed page.
    async fn feed(&self, user: &User) -> anyhow::Result<usize> {
        let response = self
            .http
            .get(self.url(&format!("/v1/feed?limit={FEED_LIMIT}")))
            .header(reqwest::header::AUTHORIZATION, &user.token)
            .send()
            .await
            .context("reading a feed")?;
        let status = response.status();
        ensure!(
            status == reqwest::StatusCode::OK,
            "reading a feed: HTTP {status}"
        );
        let page: FeedPage = response.json().await.context("decoding a feed page")?;
        Ok(page.items.len())
    }
}

/// A client reading one reader's feed over and over.
#[derive(Debug)]
struct FeedReader {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client for FeedReader {
    async fn step(&mut self) -> Outcome {
        let response = match self
            .http
            .get(&self.url)
            .header(reqwest::header::AUTHORIZATION, &self.token)
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Outcome::Failed(format!("HTTP {status}"));
        }
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        match serde_json::from_slice::<FeedPage>(&body) {
            Ok(page) if page.items.len() == FEED_LIMIT => Outcome::Done,
            Ok(page) => Outcome::Failed(format!("{} items, not {FEED_LIMIT}", page.items.len())),
            Err(error) => Outcome::Failed(format!("not a feed page: {error}")),
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}
