//! The Kafka source of the projection runtime (DESIGN §5): a consumer group named after the
//! projection reads the relay's topics; an offset is stored only after its event was applied
//! (or dead-lettered), and stored offsets are committed every second and on shutdown — the
//! at-least-once pattern of rust-rdkafka's example (`enable.auto.offset.store=false`). A
//! rebalance or a crash re-delivers what was not committed; `apply` is idempotent.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use store::RecordedEvent;
use tokio_util::sync::CancellationToken;

use crate::runtime::{Outcome, Projection, Runner};

/// Where the relay's topics are.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    pub brokers: String,
    /// The relay's `KAFKA_TOPIC_PREFIX`.
    pub topic_prefix: String,
    /// The stream types whose topics the projection reads (`<prefix><stream_type>`).
    pub stream_types: Vec<String>,
}

/// Why the Kafka source stopped.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("dead letters: {0}")]
    Store(#[from] store::StoreError),
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
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &source.brokers)
            .set("group.id", self.projection().name())
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("topic.metadata.refresh.interval.ms", "10000")
            .create()?;
        let topics: Vec<String> = source
            .stream_types
            .iter()
            .map(|t| format!("{}{t}", source.topic_prefix))
            .collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        loop {
            let message = tokio::select! {
                message = consumer.recv() => message,
                () = stop.cancelled() => break,
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    // Broker or group trouble: librdkafka reconnects and rejoins by itself.
                    tracing::warn!(%error, "Kafka consumer error; continuing.");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            let Some(payload) = message.payload() else {
                consumer.store_offset_from_message(&message)?;
                continue;
            };
            match serde_json::from_slice::<RecordedEvent>(payload) {
                Ok(event) if self.projection().handles(&event.event_type) => {
                    if let Outcome::Stopped = self.process(&event, stop).await? {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    metrics::counter!("projection_undecodable_messages_total", "projection" => self.projection().name().to_owned()).increment(1);
                    tracing::error!(topic = message.topic(), offset = message.offset(), %error, "Not an event; skipped.");
                }
            }
            consumer.store_offset_from_message(&message)?;
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing consumed since the last commit.
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}
