//! The scenarios: each builds its pool and clients, prepares its streams (untimed, once),
//! settles the database, warms up and measures one slice of its time.
//!
//! Single-event scenarios issue one `UpdateProfile` per operation on a stream picked
//! uniformly at random from N users registered through the same store; batch scenarios
//! append `batch_size` events per operation, each client to a stream of its own.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use commands::AggregateStore;
use commands::{CommandContext, CommandError, CommandHandler};
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, DomainEvent, EventStore};
use domain::user::{User, UserCommand, UserEvent};
use event_schemas::user::UserProfileUpdatedV1;
use event_schemas::{stream_type, Event, Metadata};
use futures::StreamExt;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;
use store::{AppendError, AppendRequest, NewEvent, PgEventStore};
use uuid::Uuid;

use crate::runner::{self, Client, Measurement, Outcome};
use crate::setup::{BenchDatabase, PG_ES_SCHEMA};

/// The shape of the load, the same for every scenario.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Concurrent clients, and connections in each scenario's pool.
    pub clients: usize,
    /// Streams (registered users) the single-event scenarios spread over.
    pub streams: usize,
    /// Untimed warm-up before every measured slice.
    pub warmup: Duration,
    /// Measured time per scenario, over all rounds.
    pub duration: Duration,
    /// Slices each scenario's measured time is cut into, interleaved with the others'.
    pub rounds: u32,
    /// Both aggregate stores snapshot every this many events.
    pub snapshot_every: usize,
    /// Events per operation of the batch scenarios.
    pub batch_size: usize,
}

impl Load {
    fn pool_size(&self) -> anyhow::Result<u32> {
        u32::try_from(self.clients).context("--clients is too large")
    }

    /// The measured time of one scenario in one round.
    pub fn slice(&self) -> Duration {
        self.duration / self.rounds.max(1)
    }
}

/// What a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Our command path: load (snapshot + later events) → decide → one-statement append.
    CommandHandler,
    /// Our `AggregateStore` as the `EventStore` of cqrs-es's own framework.
    OurFramework,
    /// postgres-es as its README sets it up (`postgres_snapshot_cqrs`): same aggregate, same
    /// snapshot interval, its tables in schema `postgres_es` of the same database.
    PostgresEs,
    /// The ceiling: one single-row INSERT per operation in its own (implicit) transaction.
    RawInsert,
    /// Our `PgEventStore::append` of a batch in one statement.
    OurBatch,
    /// postgres-es's repository commit of a batch: what `CqrsFramework` runs for a command
    /// that yields that many events (without the snapshot).
    PostgresEsBatch,
    /// The ceiling for batches: one INSERT of all rows per transaction.
    RawBatch,
}

impl Kind {
    pub const SINGLE_EVENT: [Kind; 4] = [
        Kind::CommandHandler,
        Kind::OurFramework,
        Kind::PostgresEs,
        Kind::RawInsert,
    ];
    pub const BATCH: [Kind; 3] = [Kind::OurBatch, Kind::PostgresEsBatch, Kind::RawBatch];

    pub const fn name(self) -> &'static str {
        match self {
            Kind::CommandHandler => "hybridlive (commands::CommandHandler)",
            Kind::OurFramework => "hybridlive via cqrs_es::CqrsFramework",
            Kind::PostgresEs => "postgres-es via cqrs_es::CqrsFramework",
            Kind::RawInsert => "raw INSERT+COMMIT (1 row)",
            Kind::OurBatch => "hybridlive PgEventStore::append",
            Kind::PostgresEsBatch => "postgres-es PostgresEventRepository::persist",
            Kind::RawBatch => "raw INSERT+COMMIT (multi-row)",
        }
    }
}

/// One scenario and what it has measured so far.
#[derive(Debug)]
pub struct Scenario {
    pub kind: Kind,
    /// Events one successful operation writes.
    pub events_per_op: usize,
    /// The registered streams, once the first slice has registered them.
    streams: Option<Arc<[Uuid]>>,
    /// All slices so far, merged.
    pub measured: Measurement,
}

impl Scenario {
    /// # Errors
    /// Never in practice: only if the latency histogram cannot be built.
    pub fn new(kind: Kind, load: &Load) -> anyhow::Result<Self> {
        let events_per_op = match kind {
            Kind::OurBatch | Kind::PostgresEsBatch | Kind::RawBatch => load.batch_size,
            _ => 1,
        };
        Ok(Self {
            kind,
            events_per_op,
            streams: None,
            measured: Measurement::empty()?,
        })
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    pub fn events_per_sec(&self) -> f64 {
        self.measured.ops_per_sec() * self.events_per_op as f64
    }

    /// Opens the scenario's pool, registers its streams if this is its first slice, settles
    /// the database, warms up, measures `load.slice()` as slice `round`, and closes the pool.
    ///
    /// # Errors
    /// If setup fails or a client panics; failed operations are counted, not returned.
    pub async fn run_slice(
        &mut self,
        db: &BenchDatabase,
        load: &Load,
        round: u32,
    ) -> anyhow::Result<()> {
        let schema =
            matches!(self.kind, Kind::PostgresEs | Kind::PostgresEsBatch).then_some(PG_ES_SCHEMA);
        let pool = db.pool(load.pool_size()?, schema).await?;
        let measured = self.measure_on(&pool, db, load, round).await;
        pool.close().await;
        self.measured.absorb(measured?)
    }

    async fn measure_on(
        &mut self,
        pool: &PgPool,
        db: &BenchDatabase,
        load: &Load,
        round: u32,
    ) -> anyhow::Result<Measurement> {
        let clients = 0..load.clients;
        let slice = Slice {
            db,
            load,
            name: self.name(),
            round,
        };
        match self.kind {
            Kind::CommandHandler => {
                // One attempt: a conflict is counted, not retried, as under CqrsFramework.
                let handler = Arc::new(CommandHandler::<User>::new(our_store(pool, load), (), 1));
                let streams = self
                    .streams(load, |id, command| {
                        let handler = Arc::clone(&handler);
                        async move {
                            handler
                                .execute(&id, command, &CommandContext::default())
                                .await
                                .map(drop)
                        }
                    })
                    .await?;
                let clients = clients.map(|client| HandlerClient {
                    handler: Arc::clone(&handler),
                    picks: Picks::new(client, round, &streams),
                });
                slice.measure(clients.collect()).await
            }
            Kind::OurFramework => {
                let cqrs = CqrsFramework::new(our_store(pool, load), Vec::new(), ());
                self.framework(slice, cqrs).await
            }
            Kind::PostgresEs => {
                let cqrs = postgres_es::postgres_snapshot_cqrs::<User>(
                    pool.clone(),
                    Vec::new(),
                    load.snapshot_every,
                    (),
                );
                self.framework(slice, cqrs).await
            }
            Kind::RawInsert => {
                // Nothing to register: the raw table has no notion of a stream.
                let streams = Arc::clone(
                    self.streams
                        .get_or_insert_with(|| new_streams(load.streams)),
                );
                let clients = clients.map(|client| RawClient {
                    pool: pool.clone(),
                    picks: Picks::new(client, round, &streams),
                });
                slice.measure(clients.collect()).await
            }
            Kind::OurBatch => {
                let clients = clients.map(|client| OurBatchClient {
                    store: PgEventStore::new(pool.clone()),
                    user_id: Uuid::new_v4(),
                    version: 0,
                    names: Names::new(client, round),
                    batch_size: load.batch_size,
                });
                slice.measure(clients.collect()).await
            }
            Kind::PostgresEsBatch => {
                let repository = Arc::new(PostgresEventRepository::new(pool.clone()));
                let clients = clients.map(|client| PgEsBatchClient {
                    repository: Arc::clone(&repository),
                    user_id: Uuid::new_v4(),
                    sequence: 0,
                    names: Names::new(client, round),
                    batch_size: load.batch_size,
                });
                slice.measure(clients.collect()).await
            }
            Kind::RawBatch => {
                let clients = clients.map(|client| RawBatchClient {
                    pool: pool.clone(),
                    user_id: Uuid::new_v4(),
                    names: Names::new(client, round),
                    batch_size: load.batch_size,
                });
                slice.measure(clients.collect()).await
            }
        }
    }

    /// Registers N users through `cqrs` (first slice only) and measures `UpdateProfile`
    /// commands on them.
    async fn framework<ES>(
        &mut self,
        slice: Slice<'_>,
        cqrs: CqrsFramework<User, ES>,
    ) -> anyhow::Result<Measurement>
    where
        ES: EventStore<User> + 'static,
        ES::AC: Send,
    {
        let cqrs = Arc::new(cqrs);
        let streams = self
            .streams(slice.load, |id, command| {
                let cqrs = Arc::clone(&cqrs);
                async move { cqrs.execute(&id, command).await }
            })
            .await?;
        let clients = (0..slice.load.clients).map(|client| FrameworkClient {
            cqrs: Arc::clone(&cqrs),
            picks: Picks::new(client, slice.round, &streams),
        });
        slice.measure(clients.collect()).await
    }

    /// The scenario's N users, registered through `execute` on first use (untimed).
    async fn streams<F, Fut, E>(&mut self, load: &Load, execute: F) -> anyhow::Result<Arc<[Uuid]>>
    where
        F: Fn(String, UserCommand) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if let Some(streams) = &self.streams {
            return Ok(Arc::clone(streams));
        }
        let streams = new_streams(load.streams);
        let mut registrations = futures::stream::iter(
            streams
                .iter()
                .map(|&user_id| execute(user_id.to_string(), registration(user_id))),
        )
        .buffer_unordered(load.clients.max(1));
        while let Some(result) = registrations.next().await {
            result.context("registering a benchmark user")?;
        }
        drop(registrations);
        self.streams = Some(Arc::clone(&streams));
        Ok(streams)
    }
}

/// One measured slice of one scenario.
#[derive(Debug, Clone, Copy)]
struct Slice<'a> {
    db: &'a BenchDatabase,
    load: &'a Load,
    name: &'static str,
    round: u32,
}

impl Slice<'_> {
    /// Settles the database, warms up (untimed), then measures.
    async fn measure<C: Client>(self, clients: Vec<C>) -> anyhow::Result<Measurement> {
        self.db.settle().await?;
        eprintln!(
            "Round {}/{}: {}: {:?} warm-up, {:?} measured.",
            self.round + 1,
            self.load.rounds,
            self.name,
            self.load.warmup,
            self.load.slice()
        );
        let (clients, _) = runner::run(clients, self.load.warmup).await?;
        let (_, measured) = runner::run(clients, self.load.slice()).await?;
        Ok(measured)
    }
}

fn our_store(pool: &PgPool, load: &Load) -> AggregateStore<User> {
    AggregateStore::new(PgEventStore::new(pool.clone()), load.snapshot_every as u64)
}

fn new_streams(count: usize) -> Arc<[Uuid]> {
    (0..count).map(|_| Uuid::new_v4()).collect()
}

fn registration(user_id: Uuid) -> UserCommand {
    let mut username = format!("u{}", user_id.simple());
    username.truncate(25);
    UserCommand::RegisterUser {
        user_id,
        email: format!("{username}@bench.example"),
        username,
        display_name: None,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$bench$bench".into(),
    }
}

/// A fresh display name per operation (the same name again would be a no-op command).
#[derive(Debug)]
struct Names {
    prefix: String,
    issued: u64,
}

impl Names {
    /// Unique to a client in a round, so no name is ever issued twice.
    fn new(client: usize, round: u32) -> Self {
        Self {
            prefix: format!("bench {round}.{client}"),
            issued: 0,
        }
    }

    fn next(&mut self) -> String {
        self.issued += 1;
        format!("{}.{}", self.prefix, self.issued)
    }
}

/// Which stream a client writes next: uniformly random over N, seeded by client and round,
/// so every scenario replays the same sequence of picks.
#[derive(Debug)]
struct Picks {
    streams: Arc<[Uuid]>,
    state: u64,
    names: Names,
}

impl Picks {
    fn new(client: usize, round: u32, streams: &Arc<[Uuid]>) -> Self {
        Self {
            streams: Arc::clone(streams),
            state: (u64::from(round) << 32) ^ client as u64,
            names: Names::new(client, round),
        }
    }

    /// The next stream and a fresh display name for it.
    fn next(&mut self) -> (Uuid, String) {
        // splitmix64: fast, well mixed, and needs no dependency.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let index = (z % self.streams.len() as u64) as usize;
        (self.streams[index], self.names.next())
    }
}

#[derive(Debug)]
struct HandlerClient {
    handler: Arc<CommandHandler<User>>,
    picks: Picks,
}

impl Client for HandlerClient {
    async fn step(&mut self) -> Outcome {
        let (user_id, display_name) = self.picks.next();
        let outcome = self
            .handler
            .execute(
                &user_id.to_string(),
                UserCommand::UpdateProfile { display_name },
                &CommandContext::default(),
            )
            .await;
        match outcome {
            Ok(executed) if executed.appended == 1 => Outcome::Done,
            Ok(executed) => Outcome::Failed(format!("appended {} events", executed.appended)),
            Err(CommandError::Conflict { .. }) => Outcome::Conflict,
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }
}

struct FrameworkClient<ES: EventStore<User>> {
    cqrs: Arc<CqrsFramework<User, ES>>,
    picks: Picks,
}

impl<ES> Client for FrameworkClient<ES>
where
    ES: EventStore<User> + 'static,
    ES::AC: Send,
{
    async fn step(&mut self) -> Outcome {
        let (user_id, display_name) = self.picks.next();
        let outcome = self
            .cqrs
            .execute(
                &user_id.to_string(),
                UserCommand::UpdateProfile { display_name },
            )
            .await;
        match outcome {
            Ok(()) => Outcome::Done,
            Err(AggregateError::AggregateConflict) => Outcome::Conflict,
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }
}

#[derive(Debug)]
struct RawClient {
    pool: PgPool,
    picks: Picks,
}

impl Client for RawClient {
    async fn step(&mut self) -> Outcome {
        let (user_id, display_name) = self.picks.next();
        // The same JSON our store writes for the event, built per operation like the others.
        let payload = match profile_updated(user_id, display_name).encode() {
            Ok(payload) => payload,
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        let inserted = sqlx::query("INSERT INTO raw_inserts (stream_id, payload) VALUES ($1, $2)")
            .bind(user_id.to_string())
            .bind(payload)
            .execute(&self.pool)
            .await;
        match inserted {
            Ok(_) => Outcome::Done,
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }
}

#[derive(Debug)]
struct OurBatchClient {
    store: PgEventStore,
    user_id: Uuid,
    /// The stream's version after this client's last append (it is the only writer).
    version: u64,
    names: Names,
    batch_size: usize,
}

impl Client for OurBatchClient {
    async fn step(&mut self) -> Outcome {
        let events = (0..self.batch_size)
            .map(|_| NewEvent::encode(&profile_updated(self.user_id, self.names.next())))
            .collect::<Result<Vec<_>, _>>();
        let events = match events {
            Ok(events) => events,
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        let request = AppendRequest {
            stream_type: stream_type::USER.to_owned(),
            stream_id: self.user_id.to_string(),
            expected_version: self.version,
            events,
            metadata: Metadata::default(),
            claims: Vec::new(),
            credentials: Vec::new(),
            erases_subject: false,
        };
        match self.store.append(&request).await {
            Ok(appended) => {
                self.version = appended.stream_version;
                Outcome::Done
            }
            Err(AppendError::Conflict { actual, .. }) => {
                self.version = actual;
                Outcome::Conflict
            }
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }
}

struct PgEsBatchClient {
    repository: Arc<PostgresEventRepository>,
    user_id: Uuid,
    /// The stream's last sequence after this client's last append (it is the only writer).
    sequence: usize,
    names: Names,
    batch_size: usize,
}

impl PgEsBatchClient {
    /// The events as cqrs-es serialises them before handing them to the repository.
    fn serialize(&mut self) -> Result<Vec<SerializedEvent>, serde_json::Error> {
        let metadata = serde_json::to_value(HashMap::<String, String>::new())?;
        (1..=self.batch_size)
            .map(|offset| {
                let event = UserEvent::ProfileUpdated(UserProfileUpdatedV1 {
                    user_id: self.user_id,
                    display_name: self.names.next(),
                });
                Ok(SerializedEvent::new(
                    self.user_id.to_string(),
                    self.sequence + offset,
                    User::TYPE.to_owned(),
                    event.event_type(),
                    event.event_version(),
                    serde_json::to_value(&event)?,
                    metadata.clone(),
                ))
            })
            .collect()
    }
}

impl Client for PgEsBatchClient {
    async fn step(&mut self) -> Outcome {
        let events = match self.serialize() {
            Ok(events) => events,
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        match self.repository.persist::<User>(&events, None).await {
            Ok(()) => {
                self.sequence += events.len();
                Outcome::Done
            }
            Err(PersistenceError::OptimisticLockError) => Outcome::Conflict,
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }
}

#[derive(Debug)]
struct RawBatchClient {
    pool: PgPool,
    user_id: Uuid,
    names: Names,
    batch_size: usize,
}

impl Client for RawBatchClient {
    async fn step(&mut self) -> Outcome {
        let payloads = (0..self.batch_size)
            .map(|_| profile_updated(self.user_id, self.names.next()).encode())
            .collect::<Result<Vec<Value>, _>>();
        let payloads = match payloads {
            Ok(payloads) => payloads,
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        let inserted = sqlx::query(
            "INSERT INTO raw_inserts (stream_id, payload) \
             SELECT $1, p FROM unnest($2::jsonb[]) AS p",
        )
        .bind(self.user_id.to_string())
        .bind(payloads)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Outcome::Done,
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }
}

fn profile_updated(user_id: Uuid, display_name: String) -> Event {
    Event::UserProfileUpdated(UserProfileUpdatedV1 {
        user_id,
        display_name,
    })
}
