//! [`AggregateStore`]: cqrs-es aggregates on the event store, with snapshots. The fold and
//! the claims are the write side's; what it reads and writes is the store's
//! ([`PgEventStore::load_tail`], [`PgEventStore::save_snapshot`], [`PgEventStore::append`]).

use std::collections::HashMap;
use std::marker::PhantomData;

use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventEnvelope, EventStore};
use domain::claims::{Claim, ClaimTaken, Claims, Credential};
use event_schemas::{Event, Metadata, UnexpectedEvent};
use store::{
    AppendError, AppendRequest, Appended, NewEvent, PgEventStore, RecordedEvent, StoreError,
};
use tracing::Instrument;
use uuid::Uuid;

/// Metadata key whose value makes event ids deterministic: the same command id always
/// produces the same event ids, so a retried command cannot append twice.
pub const COMMAND_ID_KEY: &str = "command_id";

/// An aggregate rebuilt from its snapshot and later events, at `version`.
#[derive(Debug, Clone)]
pub struct LoadedAggregate<A> {
    pub aggregate: A,
    pub stream_id: String,
    /// The stream version the aggregate reflects (0 for a new stream).
    pub version: u64,
}

impl<A: Aggregate> AggregateContext<A> for LoadedAggregate<A> {
    fn aggregate(&mut self) -> &mut A {
        &mut self.aggregate
    }
}

/// Loads and appends the streams of aggregate type `A` (`A::TYPE` is the stream type).
#[derive(Debug)]
pub struct AggregateStore<A> {
    store: PgEventStore,
    snapshot_every: u64,
    aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for AggregateStore<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            snapshot_every: self.snapshot_every,
            aggregate: PhantomData,
        }
    }
}

impl<A> AggregateStore<A>
where
    A: Claims,
    A::Event: Into<Event> + TryFrom<Event, Error = UnexpectedEvent>,
{
    /// A snapshot is written whenever an append crosses a multiple of `snapshot_every`
    /// versions (0 disables snapshots).
    pub fn new(store: PgEventStore, snapshot_every: u64) -> Self {
        Self {
            store,
            snapshot_every,
            aggregate: PhantomData,
        }
    }

    pub fn events(&self) -> &PgEventStore {
        &self.store
    }

    /// The aggregate's current state: the latest snapshot (if readable) plus later events,
    /// read in one round trip ([`PgEventStore::load_tail`]).
    ///
    /// # Errors
    /// [`StoreError`] on database failure or an event that cannot be decoded.
    pub async fn load(&self, stream_id: &str) -> Result<LoadedAggregate<A>, StoreError> {
        let tail = self
            .store
            .load_tail(A::TYPE, stream_id, self.snapshot_every > 0)
            .await?;
        let mut loaded = LoadedAggregate {
            aggregate: A::default(),
            stream_id: stream_id.to_owned(),
            version: 0,
        };
        if let Some(snapshot) = tail.snapshot {
            match serde_json::from_value::<A>(snapshot.state) {
                Ok(aggregate) => {
                    loaded.aggregate = aggregate;
                    loaded.version = snapshot.version;
                }
                Err(error) => {
                    // The aggregate's shape changed since the snapshot: replay from the start.
                    tracing::warn!(stream_type = A::TYPE, %stream_id, %error, "Snapshot unreadable; replaying the whole stream.");
                    for recorded in self.store.read_stream(A::TYPE, stream_id, 0).await? {
                        loaded.version = recorded.stream_version;
                        loaded.aggregate.apply(decode::<A>(&recorded)?);
                    }
                    return Ok(loaded);
                }
            }
        }
        for (version, event) in tail.events {
            let event = A::Event::try_from(event).map_err(|e| {
                StoreError::Corrupt(format!("{}/{stream_id} version {version}: {e}", A::TYPE))
            })?;
            loaded.version = version;
            loaded.aggregate.apply(event);
        }
        Ok(loaded)
    }

    /// Appends `events`, decided on `loaded` (so expected version `loaded.version`), with
    /// their unique claims and the command's `credentials`, in a span `append`, then
    /// snapshots `loaded.aggregate` if the append crossed a snapshot boundary. `loaded.aggregate` must already have the events applied (as
    /// cqrs-es's `EventSink` does).
    ///
    /// # Errors
    /// See [`PgEventStore::append`].
    pub async fn append(
        &self,
        loaded: &LoadedAggregate<A>,
        events: Vec<A::Event>,
        metadata: Metadata,
        command_id: Option<&str>,
        credentials: Vec<Credential>,
    ) -> Result<Appended, AppendError> {
        let span = tracing::info_span!(
            "append",
            stream_type = A::TYPE,
            stream_id = %loaded.stream_id,
            expected_version = loaded.version,
            events = events.len(),
        );
        self.append_events(loaded, events, metadata, command_id, credentials)
            .instrument(span)
            .await
    }

    async fn append_events(
        &self,
        loaded: &LoadedAggregate<A>,
        events: Vec<A::Event>,
        mut metadata: Metadata,
        command_id: Option<&str>,
        credentials: Vec<Credential>,
    ) -> Result<Appended, AppendError> {
        if metadata.traceparent.is_none() {
            // The events carry the append's span: what reads them continues this trace.
            metadata.traceparent = telemetry::current_traceparent();
        }
        let mut claims = Vec::new();
        let mut erases_subject = false;
        let mut encoded = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            claims.extend(A::claims(&event).into_iter().map(to_store_claim));
            erases_subject |= A::erases(&event);
            let event: Event = event.into();
            let event_id = match command_id {
                Some(command) => derived_event_id(command, index),
                None => Uuid::now_v7(),
            };
            encoded.push(
                NewEvent::encode_with_id(event_id, &event)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
        }
        let appended = self
            .store
            .append(&AppendRequest {
                stream_type: A::TYPE.to_owned(),
                stream_id: loaded.stream_id.clone(),
                expected_version: loaded.version,
                events: encoded,
                metadata,
                claims,
                credentials: credentials.into_iter().map(to_store_credential).collect(),
                erases_subject,
            })
            .await?;
        if !appended.duplicate && self.crosses_snapshot(loaded.version, appended.stream_version) {
            self.save_snapshot(loaded, appended.stream_version).await;
        }
        Ok(appended)
    }

    fn crosses_snapshot(&self, before: u64, after: u64) -> bool {
        self.snapshot_every > 0 && before / self.snapshot_every != after / self.snapshot_every
    }

    /// Best effort: a failed snapshot only costs a longer load later.
    async fn save_snapshot(&self, loaded: &LoadedAggregate<A>, version: u64) {
        let saved = match serde_json::to_value(&loaded.aggregate) {
            Ok(state) => {
                self.store
                    .save_snapshot(A::TYPE, &loaded.stream_id, version, &state)
                    .await
            }
            Err(error) => Err(StoreError::Corrupt(format!("snapshot: {error}"))),
        };
        if let Err(error) = saved {
            tracing::warn!(stream_type = A::TYPE, stream_id = %loaded.stream_id, %error, "Snapshot not saved.");
        }
    }
}

/// The domain's word for a value the store found held by another stream.
pub(crate) fn domain_claim_taken(taken: &store::claims::ClaimTaken) -> ClaimTaken {
    ClaimTaken {
        scope: taken.scope.clone(),
        value: taken.value.clone(),
    }
}

/// What the store does for a claim of the domain.
fn to_store_claim(claim: Claim) -> store::claims::Claim {
    match claim {
        Claim::Reserve { scope, value } => store::claims::Claim::Reserve { scope, value },
        Claim::ReleaseAll => store::claims::Claim::ReleaseAll,
    }
}

/// What the store keeps of a credential of the domain.
fn to_store_credential(credential: Credential) -> store::credentials::Credential {
    store::credentials::Credential {
        kind: credential.kind,
        secret: credential.secret,
    }
}

/// The id of the `index`-th event of command `command_id`.
pub fn derived_event_id(command_id: &str, index: usize) -> Uuid {
    let namespace = Uuid::parse_str(command_id)
        .unwrap_or_else(|_| Uuid::new_v5(&Uuid::NAMESPACE_OID, command_id.as_bytes()));
    Uuid::new_v5(&namespace, index.to_string().as_bytes())
}

fn decode<A>(recorded: &RecordedEvent) -> Result<A::Event, StoreError>
where
    A: Aggregate,
    A::Event: TryFrom<Event, Error = UnexpectedEvent>,
{
    let event = Event::decode(
        &recorded.event_type,
        recorded.schema_version,
        recorded.payload.clone(),
    )?;
    A::Event::try_from(event).map_err(|e| {
        StoreError::Corrupt(format!(
            "event {} in {}/{}: {e}",
            recorded.event_id, recorded.stream_type, recorded.stream_id
        ))
    })
}

/// cqrs-es passes metadata as strings; the known keys become [`Metadata`].
fn metadata_from_map(map: &HashMap<String, String>) -> Metadata {
    Metadata {
        correlation_id: map.get("correlation_id").cloned(),
        causation_id: map.get("causation_id").cloned(),
        actor: map.get("actor").cloned(),
        request_id: map.get("request_id").cloned(),
        traceparent: map.get("traceparent").cloned(),
    }
}

fn metadata_to_map(value: &serde_json::Value) -> HashMap<String, String> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect()
}

fn to_aggregate_error<A: Claims>(error: AppendError) -> AggregateError<A::Error> {
    match error {
        AppendError::Conflict { .. } => AggregateError::AggregateConflict,
        AppendError::Taken(taken) => match A::claim_rejected(domain_claim_taken(&taken)) {
            Some(rejection) => AggregateError::UserError(rejection),
            None => AggregateError::UnexpectedError(Box::new(AppendError::Taken(taken))),
        },
        AppendError::Store(error) => store_error(error),
        other @ (AppendError::EventIdReused(_) | AppendError::Empty) => {
            AggregateError::UnexpectedError(Box::new(other))
        }
    }
}

fn store_error<T: std::error::Error>(error: StoreError) -> AggregateError<T> {
    match error {
        StoreError::Database(e) => AggregateError::DatabaseConnectionError(Box::new(e)),
        StoreError::Decode(e) => AggregateError::DeserializationError(Box::new(e)),
        corrupt @ StoreError::Corrupt(_) => AggregateError::UnexpectedError(Box::new(corrupt)),
    }
}

impl<A> EventStore<A> for AggregateStore<A>
where
    A: Claims,
    A::Event: Into<Event> + TryFrom<Event, Error = UnexpectedEvent>,
{
    type AC = LoadedAggregate<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let recorded = self
            .store
            .read_stream(A::TYPE, aggregate_id, 0)
            .await
            .map_err(store_error)?;
        recorded
            .iter()
            .map(|r| {
                Ok(EventEnvelope {
                    aggregate_id: aggregate_id.to_owned(),
                    sequence: usize::try_from(r.stream_version).unwrap_or(usize::MAX),
                    payload: decode::<A>(r).map_err(store_error)?,
                    metadata: metadata_to_map(&r.metadata),
                })
            })
            .collect()
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<Self::AC, AggregateError<A::Error>> {
        self.load(aggregate_id).await.map_err(store_error)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: Self::AC,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let appended = self
            .append(
                &context,
                events.clone(),
                metadata_from_map(&metadata),
                metadata.get(COMMAND_ID_KEY).map(String::as_str),
                // cqrs-es hands over events only; commands that store credentials run
                // through `CommandHandler`.
                Vec::new(),
            )
            .await
            .map_err(to_aggregate_error::<A>)?;
        let first = appended.stream_version + 1 - events.len() as u64;
        Ok(events
            .into_iter()
            .zip(first..)
            .map(|(payload, version)| EventEnvelope {
                aggregate_id: context.stream_id.clone(),
                sequence: usize::try_from(version).unwrap_or(usize::MAX),
                payload,
                metadata: metadata.clone(),
            })
            .collect())
    }
}
