//! The outbox relay (DESIGN §4): publishes every committed event of the PostgreSQL log to
//! Kafka, in the log's gap-free read order ([`store::LogReader`]), never skipping one. On
//! the read side: uses `store` and Kafka only; used by the binary (`relay`, `dev --full`),
//! the tests that need topics filled, and `bench relay`.
//!
//! - **One active instance.** Every instance competes for a session advisory lock on its own
//!   connection (the *lease*); the holder publishes, the others retry every
//!   [`RelaySettings::standby_interval`]. A dead holder's connection closes and PostgreSQL
//!   releases the lock, so a standby takes over within that interval. The checkpoint is
//!   written on the lease connection: an instance that lost its lease cannot advance it.
//! - **At least once, in order.** A batch is produced (idempotent producer, `acks=all`,
//!   key = stream id, so a stream's events stay in one partition, in version order), every
//!   delivery is awaited, and only then is the checkpoint saved. A crash re-publishes at most
//!   the unacknowledged batch: duplicates only at a restart boundary, which consumers drop
//!   by `(stream, version)`. Any failure drops the producer and the lease and starts over
//!   from the checkpoint.
//! - **Partition heads.** With each checkpoint, in its transaction, the relay records per
//!   topic-partition the offset of the last message the batch put there, from the delivery
//!   reports (`kafka_partition_heads`): every event up to the checkpoint has a copy at or
//!   below its partition's head. Projections fed by Kafka bound their checkpoints with it
//!   (read-your-writes; `projection_runtime::kafka::watermark`).
//! - **Fast.** Woken by `NOTIFY` after each append ([`store::LogWaiter`]), with
//!   [`RelaySettings::poll_interval`] as the fallback.
//!
//! Topics: `<prefix><stream_type>` (e.g. `hl.post`), created on first use unless
//! [`RelaySettings::create_topics`] is off. Message value:
//! the [`store::RecordedEvent`] as JSON; headers `event_id`, `event_type`,
//! `schema_version`, `global_position`, `stream_version`, `correlation_id`, `traceparent`
//! (a span `relay publish` per event, in its command's trace, when traces are exported).
//!
//! Metrics: `relay_active` (1 on the lease holder), `relay_published_total`,
//! `relay_publish_failures_total`, `relay_backlog_events`, `relay_lag_seconds` (age of the
//! last published event when it was acknowledged).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::{PgConnection, PgPool};
use store::{Checkpoints, LogPosition, LogReader, LogWaiter, RecordedEvent, StoreError};
use tokio_util::sync::CancellationToken;

/// How a relay connects and paces itself.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic name prefix; the topic of an event is `<prefix><stream_type>`.
    pub topic_prefix: String,
    /// Partitions of topics the relay creates.
    pub topic_partitions: i32,
    /// Replication factor of topics the relay creates.
    pub topic_replication: i32,
    /// Whether the relay creates the topics it publishes to (CreateTopics). Off where
    /// topics are managed outside the application (ACLs without `Create`): the topics must
    /// then exist, or the broker create them on first use.
    pub create_topics: bool,
    /// The relay's name: its checkpoint and its lease. Relays with different names are
    /// independent (e.g. one per cluster).
    pub name: String,
    /// Events per batch (one checkpoint write per batch).
    pub batch_size: u32,
    /// Fallback poll when no `NOTIFY` arrives.
    pub poll_interval: Duration,
    /// How often a standby tries to take the lease.
    pub standby_interval: Duration,
    /// Extra librdkafka producer properties (`key=value`), applied last.
    pub producer_properties: Vec<(String, String)>,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "hl.".into(),
            topic_partitions: 6,
            topic_replication: 1,
            create_topics: true,
            name: "relay".into(),
            batch_size: 1000,
            poll_interval: Duration::from_secs(1),
            standby_interval: Duration::from_millis(500),
            producer_properties: Vec::new(),
        }
    }
}

/// Why a relay session ended; the relay starts a new one after a pause.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("kafka delivery of event at position {position} failed: {error}")]
    Delivery { position: i64, error: KafkaError },
    #[error("creating topic {topic}: {error}")]
    Topic {
        topic: String,
        error: RDKafkaErrorCode,
    },
}

/// Called with every batch Kafka acknowledged, before its checkpoint is saved.
pub type PublishedHook = Arc<dyn Fn(&[RecordedEvent]) + Send + Sync>;

/// A relay instance. [`Relay::run`] until the token is cancelled.
pub struct Relay {
    pool: PgPool,
    settings: RelaySettings,
    on_published: Option<PublishedHook>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(pool: PgPool, settings: RelaySettings) -> Self {
        Self {
            pool,
            settings,
            on_published: None,
        }
    }

    /// Observes every acknowledged batch (the benchmark times deliveries with it).
    #[must_use]
    pub fn on_published(mut self, hook: PublishedHook) -> Self {
        self.on_published = Some(hook);
        self
    }

    /// Competes for the lease, publishes while holding it, and starts over after any
    /// failure. Returns when `stop` is cancelled, after the batch in flight was acknowledged
    /// and checkpointed (graceful shutdown).
    pub async fn run(&self, stop: CancellationToken) {
        // A standby exports `relay_active 0` (the alert on "no active relay" needs a value
        // from every instance), and the counters start at zero.
        metrics::gauge!("relay_active").set(0.0);
        metrics::counter!("relay_published_total").increment(0);
        metrics::counter!("relay_publish_failures_total").increment(0);
        let mut pause = Duration::from_millis(200);
        while !stop.is_cancelled() {
            let Some(mut lease) = store::lease::acquire(
                &self.pool,
                "relay",
                &self.settings.name,
                self.settings.standby_interval,
                &stop,
            )
            .await
            else {
                return;
            };
            metrics::gauge!("relay_active").set(1.0);
            tracing::info!(relay = %self.settings.name, "Relay is active.");
            let result = self.publish_while_active(&mut lease, &stop).await;
            metrics::gauge!("relay_active").set(0.0);
            drop(lease);
            match result {
                Ok(()) => {
                    tracing::info!(relay = %self.settings.name, "Relay stopped.");
                    return;
                }
                Err(error) => {
                    metrics::counter!("relay_publish_failures_total").increment(1);
                    tracing::warn!(%error, retry_in_ms = pause.as_millis(), "Relay session failed; starting over from the checkpoint.");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stop.cancelled() => return,
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn publish_while_active(
        &self,
        lease: &mut PgConnection,
        stop: &CancellationToken,
    ) -> Result<(), RelayError> {
        let producer = self.producer()?;
        let mut topics = Topics::new(&self.settings)?;
        let reader = LogReader::new(self.pool.clone());
        let mut waiter = LogWaiter::new(self.pool.clone(), self.settings.poll_interval);
        let mut position = Checkpoints::load_with(&mut *lease, &self.settings.name).await?;
        let mut last_backlog = Instant::now() - Duration::from_secs(60);
        tracing::info!(?position, "Relaying from the checkpoint.");
        let size = self.settings.batch_size;
        let mut batch = reader.read_batch(position, size).await?;
        loop {
            if last_backlog.elapsed() >= Duration::from_secs(5) {
                self.measure_backlog(position).await?;
                last_backlog = Instant::now();
            }
            let Some(last) = batch.last() else {
                // Caught up: also proves the lease connection is alive.
                sqlx::query("SELECT 1").execute(&mut *lease).await?;
                tokio::select! {
                    () = waiter.wait() => {}
                    () = stop.cancelled() => return Ok(()),
                }
                batch = reader.read_batch(position, size).await?;
                continue;
            };
            let published_up_to = LogPosition::of(last);
            topics.ensure(&batch).await?;
            // Behind (a full batch), the next batch is read while this one is produced and
            // acknowledged: the database's and the broker's round trips overlap instead of
            // adding up (+10-15% drain throughput). At the head, it is read afterwards: read
            // at once it would miss what is appended meanwhile, which then waits a batch.
            let publishing = publish(&producer, &self.settings.topic_prefix, &batch);
            let (heads, next) = if batch.len() >= size as usize {
                let (heads, next) =
                    tokio::join!(publishing, reader.read_batch(published_up_to, size));
                (heads?, Some(next))
            } else {
                (publishing.await?, None)
            };
            if let Some(hook) = &self.on_published {
                hook(&batch);
            }
            metrics::counter!("relay_published_total").increment(batch.len() as u64);
            let lag = chrono::Utc::now() - last.recorded_at;
            metrics::gauge!("relay_lag_seconds").set(lag.as_seconds_f64().max(0.0));
            position = published_up_to;
            // The heads and the checkpoint in one transaction: a projection fed by Kafka
            // reads them together for its watermark (`projections::kafka`).
            let mut checkpoint = sqlx::Connection::begin(&mut *lease).await?;
            save_heads(&mut checkpoint, &self.settings.name, &heads).await?;
            Checkpoints::save_with(&mut *checkpoint, &self.settings.name, position).await?;
            checkpoint.commit().await?;
            if stop.is_cancelled() {
                return Ok(());
            }
            batch = match next {
                Some(next) => next?,
                None => reader.read_batch(position, size).await?,
            };
        }
    }

    fn producer(&self) -> Result<FutureProducer, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.settings.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "30000")
            .set(
                "client.id",
                format!("hybridlive-relay-{}", self.settings.name),
            );
        for (key, value) in &self.settings.producer_properties {
            config.set(key, value);
        }
        config.create()
    }

    /// Events not yet relayed (capped at one million, to keep the count cheap).
    async fn measure_backlog(&self, position: LogPosition) -> Result<(), StoreError> {
        let backlog = LogReader::new(self.pool.clone())
            .count_after(position)
            .await?;
        metrics::gauge!("relay_backlog_events").set(backlog as f64);
        Ok(())
    }
}

/// The last message a batch put in each topic-partition: its offset and its event's
/// read-order key, by `(topic, partition)`.
type Heads = HashMap<(String, i32), (i64, LogPosition)>;

/// Produces every event of `batch` and waits until Kafka acknowledged all of them; returns
/// the batch's [`Heads`], from the delivery reports.
async fn publish(
    producer: &FutureProducer,
    prefix: &str,
    batch: &[RecordedEvent],
) -> Result<Heads, RelayError> {
    // A batch holds events of a few stream types: each topic's name is made once.
    let mut topics: HashMap<&str, String> = HashMap::new();
    let mut deliveries = Vec::with_capacity(batch.len());
    for event in batch {
        let topic = topics
            .entry(event.stream_type.as_str())
            .or_insert_with(|| format!("{prefix}{}", event.stream_type));
        let value = serde_json::to_vec(event)
            .map_err(|e| StoreError::Corrupt(format!("event {} as JSON: {e}", event.event_id)))?;
        let event_id = event.event_id.to_string();
        let schema_version = event.schema_version.to_string();
        let global_position = event.global_position.to_string();
        let stream_version = event.stream_version.to_string();
        let correlation_id = event
            .metadata
            .get("correlation_id")
            .and_then(serde_json::Value::as_str);
        let traceparent = event
            .metadata
            .get("traceparent")
            .and_then(serde_json::Value::as_str);
        let headers = OwnedHeaders::new_with_capacity(7)
            .insert(header("event_id", &event_id))
            .insert(header("event_type", &event.event_type))
            .insert(header("schema_version", &schema_version))
            .insert(header("global_position", &global_position))
            .insert(header("stream_version", &stream_version))
            .insert(Header {
                key: "correlation_id",
                value: correlation_id,
            })
            .insert(Header {
                key: "traceparent",
                value: traceparent,
            });
        // From the send to Kafka's acknowledgement, in the trace of the event's command.
        let span = match traceparent {
            Some(traceparent) => telemetry::when_exporting(|| {
                let span = tracing::info_span!(
                    "relay publish",
                    otel.kind = "producer",
                    messaging.system = "kafka",
                    messaging.destination.name = %topic,
                    messaging.destination.partition.id = tracing::field::Empty,
                    messaging.kafka.offset = tracing::field::Empty,
                    event_type = %event.event_type,
                    global_position = event.global_position,
                );
                telemetry::continue_trace(&span, Some(traceparent));
                span
            }),
            None => tracing::Span::none(),
        };
        let mut record = FutureRecord::to(topic)
            .key(&event.stream_id)
            .payload(&value)
            .headers(headers)
            .timestamp(event.recorded_at.timestamp_millis());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push((event, delivery, span));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // librdkafka's queue is full: let it drain.
                    record = back;
                    producer.poll(Duration::from_millis(10));
                    tokio::task::yield_now().await;
                }
                Err((error, _)) => {
                    return Err(RelayError::Delivery {
                        position: event.global_position,
                        error,
                    })
                }
            }
        }
    }
    // By stream type and partition while the acknowledgements come in; by topic at the end.
    let mut heads: HashMap<(&str, i32), (i64, LogPosition)> = HashMap::new();
    for (event, delivery, span) in deliveries {
        let position = event.global_position;
        let acknowledged = delivery.await;
        if let Ok(Ok(delivery)) = &acknowledged {
            span.record("messaging.destination.partition.id", delivery.partition);
            span.record("messaging.kafka.offset", delivery.offset);
        }
        drop(span);
        match acknowledged {
            Ok(Ok(delivery)) => {
                // Per partition, the idempotent producer writes in the order produced:
                // the greatest offset is the batch's last event there.
                let head = (delivery.offset, LogPosition::of(event));
                heads
                    .entry((event.stream_type.as_str(), delivery.partition))
                    .and_modify(|h| *h = (*h).max(head))
                    .or_insert(head);
            }
            Ok(Err((error, _message))) => return Err(RelayError::Delivery { position, error }),
            Err(_canceled) => {
                return Err(RelayError::Delivery {
                    position,
                    error: KafkaError::Canceled,
                })
            }
        }
    }
    Ok(heads
        .into_iter()
        .map(|((stream_type, partition), head)| ((topics[stream_type].clone(), partition), head))
        .collect())
}

/// Records `heads` as the relay's partition heads (`kafka_partition_heads`), in the
/// transaction that saves its checkpoint. Offsets of a partition only grow, so a head
/// replaces the one before; a partition the batch did not touch keeps its head.
async fn save_heads(tx: &mut PgConnection, relay: &str, heads: &Heads) -> Result<(), sqlx::Error> {
    if heads.is_empty() {
        return Ok(());
    }
    let mut topics = Vec::with_capacity(heads.len());
    let mut partitions = Vec::with_capacity(heads.len());
    let mut offsets = Vec::with_capacity(heads.len());
    let mut transactions = Vec::with_capacity(heads.len());
    let mut positions = Vec::with_capacity(heads.len());
    for ((topic, partition), (offset, key)) in heads {
        topics.push(topic.as_str());
        partitions.push(*partition);
        offsets.push(*offset);
        transactions.push(key.transaction_id.to_string());
        positions.push(key.global_position);
    }
    sqlx::query(
        "INSERT INTO kafka_partition_heads \
                (relay, topic, \"partition\", \"offset\", transaction_id, global_position) \
         SELECT $1, h.topic, h.part, h.off, h.xid::xid8, h.position \
           FROM unnest($2::text[], $3::int[], $4::bigint[], $5::text[], $6::bigint[]) \
                AS h(topic, part, off, xid, position) \
         ON CONFLICT (relay, topic, \"partition\") DO UPDATE \
            SET \"offset\" = EXCLUDED.\"offset\", transaction_id = EXCLUDED.transaction_id, \
                global_position = EXCLUDED.global_position, updated_at = now()",
    )
    .bind(relay)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&transactions)
    .bind(&positions)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn header<'a>(key: &'a str, value: &'a String) -> Header<'a, &'a String> {
    Header {
        key,
        value: Some(value),
    }
}

/// The topics this session has made sure exist.
struct Topics {
    admin: AdminClient<DefaultClientContext>,
    prefix: String,
    partitions: i32,
    replication: i32,
    /// [`RelaySettings::create_topics`].
    create: bool,
    known: HashSet<String>,
}

impl Topics {
    fn new(settings: &RelaySettings) -> Result<Self, KafkaError> {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .create()?;
        Ok(Self {
            admin,
            prefix: settings.topic_prefix.clone(),
            partitions: settings.topic_partitions,
            replication: settings.topic_replication,
            create: settings.create_topics,
            known: HashSet::new(),
        })
    }

    async fn ensure(&mut self, batch: &[RecordedEvent]) -> Result<(), RelayError> {
        if !self.create {
            return Ok(());
        }
        let missing: HashSet<String> = batch
            .iter()
            .map(|e| format!("{}{}", self.prefix, e.stream_type))
            .filter(|topic| !self.known.contains(topic))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|topic| {
                NewTopic::new(
                    topic,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in self.admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(topic) => tracing::info!(%topic, "Created topic."),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, error)) => return Err(RelayError::Topic { topic, error }),
            }
        }
        self.known.extend(missing);
        Ok(())
    }
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics")
            .field("known", &self.known)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// With topic creation off, the relay asks the broker nothing before it produces: here
    /// there is no broker at all, and making sure of a batch's topics succeeds at once.
    /// (With it on, the same call waits for the absent broker; creation against a real one
    /// is covered by every relay test.)
    #[tokio::test]
    async fn no_topic_is_created_when_creation_is_off() {
        let event = RecordedEvent {
            global_position: 1,
            event_id: Default::default(),
            stream_type: "post".into(),
            stream_id: "p1".into(),
            stream_version: 1,
            event_type: "post.published".into(),
            schema_version: 1,
            payload: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            recorded_at: chrono::Utc::now(),
            transaction_id: 1,
            hash: Vec::new(),
        };
        let settings = RelaySettings {
            brokers: "127.0.0.1:1".into(),
            create_topics: false,
            ..RelaySettings::default()
        };
        let mut topics = Topics::new(&settings).unwrap();
        let ensured = tokio::time::timeout(
            Duration::from_secs(5),
            topics.ensure(std::slice::from_ref(&event)),
        )
        .await;
        assert!(
            matches!(ensured, Ok(Ok(()))),
            "asked the broker: {ensured:?}"
        );
    }
}
