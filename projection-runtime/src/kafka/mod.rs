//! The Kafka source of the projection runtime (DESIGN §5): a consumer group named after the
//! projection, within the deployment's topic prefix (`<prefix><projection>`, e.g.
//! `hl.content`: deployments or tests that share a cluster under different prefixes never
//! share a group), reads the relay's topics; an offset is stored only after its event was applied
//! (or dead-lettered), and stored offsets are committed every second and on shutdown — the
//! at-least-once pattern of rust-rdkafka's example (`enable.auto.offset.store=false`). A
//! rebalance or a crash re-delivers what was not committed; `apply` is idempotent. What has
//! already arrived is taken as one batch (up to the runner's batch size, never waiting for
//! more) and applied as the log source applies its batches; offsets are stored in order
//! after it.
//!
//! Dead letters go to the `dead_letters` table (what `hybridlive dlq` reads) and to the topic
//! `<topic_prefix><projection>.dlq` (DESIGN §5): the original message value, its key, and
//! headers `error`, `source_topic`, `source_partition`, `source_offset`, plus the
//! original headers. A message that is not an event at all cannot go to the table (it has no
//! event id): it goes to the topic only. The dead letter is acknowledged by the broker before
//! the message's offset is stored.
//!
//! Read-your-writes: after each batch, and every [`watermark::TICK`] while idle, the
//! source raises the group's progress per partition and moves the projection's checkpoint
//! row (`projection:<name>`, what `X-Min-Position` waits on) to the highest read-order key
//! below which every event of its topics is applied ([`watermark`] has the argument).
//!
//! Layout: this module, the consumer loop and the dead-letter topic; [`watermark`], the
//! checkpoint.

pub mod watermark;

use std::time::Duration;

use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use store::{RecordedEvent, StoreError};
use tokio_util::sync::CancellationToken;

use crate::runner::{swap_lock_key, Outcome, Projection, Runner};
use watermark::Watermark;

/// Where the relay's topics are.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    pub brokers: String,
    /// The relay's `KAFKA_TOPIC_PREFIX`.
    pub topic_prefix: String,
    /// The stream types whose topics the projection reads (`<prefix><stream_type>`).
    pub stream_types: Vec<String>,
    /// Replication factor of the dead-letter topic, created on start if missing.
    pub dlq_replication: i32,
    /// How long a fetch may wait at the broker for records (`fetch.wait.max.ms`). A broker
    /// that answers a fetch only when this is up (tansu does) adds it to every event's lag;
    /// Kafka answers as soon as records arrive, so there a shorter wait only means more
    /// fetches while idle. [`DEFAULT_FETCH_WAIT`] unless set.
    pub fetch_wait: Duration,
    /// The name of the relay that publishes the topics (`RELAY_NAME`, the relay's
    /// `RelaySettings::name`): its checkpoint and partition heads bound the projection's
    /// watermark. [`DEFAULT_RELAY`] unless set.
    pub relay: String,
}

impl KafkaSource {
    /// The consumer group of `projection`: `<topic_prefix><projection>` (e.g. `hl.content`),
    /// so deployments or tests sharing a cluster under different prefixes never share one.
    pub fn group_id(&self, projection: &str) -> String {
        format!("{}{projection}", self.topic_prefix)
    }
}

/// The default of [`KafkaSource::relay`], the relay's default name.
pub const DEFAULT_RELAY: &str = "relay";

/// The default of [`KafkaSource::fetch_wait`] (`KAFKA_FETCH_WAIT_MS`): 100 ms, not
/// librdkafka's 500 ms (see the projection-lag figures in docs/performance.md).
pub const DEFAULT_FETCH_WAIT: Duration = Duration::from_millis(100);

/// Why the Kafka source stopped.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("dead letters: {0}")]
    Store(#[from] StoreError),
}

impl<P: Projection> Runner<P> {
    /// Consumes the source until `stop`; then commits what was applied and returns.
    ///
    /// # Errors
    /// [`KafkaSourceError`] when the consumer cannot be created or committed, or the dead
    /// letters cannot be written.
    pub async fn run_kafka(
        &self,
        source: &KafkaSource,
        stop: &CancellationToken,
    ) -> Result<(), KafkaSourceError> {
        self.register_metrics();
        metrics::counter!("projection_undecodable_messages_total", "projection" => self.projection().name().to_owned())
            .increment(0);
        let group = source.group_id(self.projection().name());
        let lag = LagReporter {
            projection: self.projection().name().to_owned(),
        };
        let consumer: StreamConsumer<LagReporter> = ClientConfig::new()
            .set("bootstrap.servers", &source.brokers)
            .set("statistics.interval.ms", "1000")
            .set("group.id", &group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A subscribed topic the relay creates later (its first event of a stream
            // type) is seen at the next refresh: 1 s, not 10 s, of delay on first use.
            .set("topic.metadata.refresh.interval.ms", "1000")
            .set(
                "fetch.wait.max.ms",
                source.fetch_wait.as_millis().clamp(1, 300_000).to_string(),
            )
            .create_with_context(lag)?;
        let topics: Vec<String> = source
            .stream_types
            .iter()
            .map(|t| format!("{}{t}", source.topic_prefix))
            .collect();
        let mut watermark = Watermark::new(
            self.pool().clone(),
            &source.relay,
            &group,
            self.checkpoint_name(),
            topics.clone(),
        );
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let dlq = DeadLetterTopic::open(source, self.projection().name()).await?;
        consumer.subscribe(&topics)?;
        let mut tick = tokio::time::interval(watermark::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            // What has arrived, up to a batch: the first message awaited, the rest taken
            // only while they are already there. Idle, the watermark follows the relay.
            let first = tokio::select! {
                message = consumer.recv() => message,
                _ = tick.tick() => {
                    self.advance_watermark(&mut watermark).await;
                    continue;
                }
                () = stop.cancelled() => break,
            };
            let mut trouble = None;
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    Ok(message) => batch.push(message),
                    Err(error) => {
                        trouble = Some(error);
                        break;
                    }
                }
                if batch.len() < self.batch_size as usize {
                    next = consumer.recv().now_or_never();
                }
            }
            // The events among them; what is not an event goes to the dead-letter topic.
            let mut events = Vec::with_capacity(batch.len());
            let mut of_event = Vec::with_capacity(batch.len());
            for (index, message) in batch.iter().enumerate() {
                let Some(payload) = message.payload() else {
                    continue;
                };
                match serde_json::from_slice::<RecordedEvent>(payload) {
                    Ok(event) => {
                        events.push(event);
                        of_event.push(index);
                    }
                    Err(error) => {
                        metrics::counter!("projection_undecodable_messages_total", "projection" => self.projection().name().to_owned()).increment(1);
                        tracing::error!(topic = message.topic(), offset = message.offset(), %error, "Not an event; sent to the dead-letter topic.");
                        dlq.send(message, &format!("not an event: {error}")).await?;
                    }
                }
            }
            // Records carry personal fields sealed, as stored.
            self.keyring.open(&mut events).await?;
            let outcomes = self.apply_under_swap_lock(&events, stop).await?;
            for (outcome, &index) in outcomes.iter().zip(&of_event) {
                if let Outcome::DeadLettered(error) = outcome {
                    dlq.send(&batch[index], error).await?;
                }
            }
            // Offsets are stored in order, up to the first event not done.
            let stopped = outcomes.iter().position(|o| matches!(o, Outcome::Stopped));
            let done = stopped.map_or(batch.len(), |event| of_event[event]);
            let progress: Vec<(&str, i32, i64)> = batch[..done]
                .iter()
                .map(|m| (m.topic(), m.partition(), m.offset()))
                .collect();
            // Applied, so the progress may say so (before the offsets are stored, or after:
            // either way it never claims a message not applied).
            if let Err(error) = watermark.record_progress(&progress).await {
                tracing::warn!(projection = self.projection().name(), %error, "Recording the consumer's progress failed; the watermark waits for the next batch.");
            }
            drop(progress);
            for message in batch.drain(..).take(done) {
                consumer.store_offset_from_message(&message)?;
            }
            if stopped.is_some() {
                break;
            }
            self.advance_watermark(&mut watermark).await;
            tick.reset();
            if let Some(error) = trouble {
                // Broker or group trouble: librdkafka reconnects and rejoins by itself.
                tracing::warn!(%error, "Kafka consumer error; continuing.");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing consumed since the last commit.
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

impl<P: Projection> Runner<P> {
    /// Moves the projection's checkpoint to the watermark if it moved; a failure only
    /// delays it (the next batch or tick tries again).
    async fn advance_watermark(&self, watermark: &mut Watermark) {
        if let Err(error) = watermark.advance().await {
            tracing::warn!(projection = self.projection().name(), %error, "Advancing the watermark failed; retrying on the next tick.");
        }
    }

    /// Applies `events` holding the swap lock shared ([`swap_lock_key`]), as the log source
    /// does for each batch: a replay's swap happens between two batches, and the batch
    /// after it writes to the model swapped in. The lock is a transaction's, which writes
    /// nothing (it holds no log reader back) and releases it however it ends.
    async fn apply_under_swap_lock(
        &self,
        events: &[RecordedEvent],
        stop: &CancellationToken,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut lock = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))")
            .bind(swap_lock_key(self.projection().name()))
            .execute(&mut *lock)
            .await?;
        let outcomes = self.apply_events(events, Vec::new(), stop).await?;
        lock.commit().await?;
        Ok(outcomes)
    }
}

/// Sets `projection_lag_events` from librdkafka's statistics (every second): over the
/// partitions assigned to this instance, the high watermark less the offset after the last
/// applied message (stored; else committed; else the fetch position).
struct LagReporter {
    projection: String,
}

impl ClientContext for LagReporter {
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|p| p.partition >= 0 && (p.desired || p.fetch_state == "active"))
            .filter_map(|p| {
                let at = [p.stored_offset, p.committed_offset, p.app_offset]
                    .into_iter()
                    .find(|offset| *offset >= 0)?;
                (p.hi_offset >= 0).then(|| (p.hi_offset - at).max(0))
            })
            .sum();
        metrics::gauge!("projection_lag_events", "projection" => self.projection.clone())
            .set(lag as f64);
    }
}

impl ConsumerContext for LagReporter {}

/// The projection's dead-letter topic and a producer for it.
struct DeadLetterTopic {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetterTopic {
    /// Creates `<prefix><projection>.dlq` (one partition) unless it exists.
    async fn open(source: &KafkaSource, projection: &str) -> Result<Self, KafkaError> {
        let topic = format!("{}{projection}.dlq", source.topic_prefix);
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &source.brokers)
            .create()?;
        let created = admin
            .create_topics(
                &[NewTopic::new(
                    &topic,
                    1,
                    TopicReplication::Fixed(source.dlq_replication),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?;
        for result in created {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(KafkaError::AdminOp(code)),
            }
        }
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &source.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self { producer, topic })
    }

    /// Sends `message` with `error`, and waits for the broker's acknowledgement.
    async fn send(&self, message: &BorrowedMessage<'_>, error: &str) -> Result<(), KafkaError> {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "error",
                value: Some(error),
            })
            .insert(Header {
                key: "source_topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "source_partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(&offset),
            });
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(header);
            }
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }
}
