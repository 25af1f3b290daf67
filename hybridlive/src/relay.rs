//! `hybridlive relay`: the outbox relay (the `relay` crate), with its Kafka settings.

use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::process::{self, DatabaseArgs, MetricsArgs};

/// The outbox relay: publishes every committed event to Kafka, in the log's gap-free
/// order. Run several for availability: exactly one is active at a time.
#[derive(Debug, Args)]
pub struct RelayCommand {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    relay: RelayArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

impl RelayCommand {
    pub async fn run(self, database: &DatabaseArgs) -> anyhow::Result<()> {
        let pool = database.connect().await?;
        let settings = self
            .relay
            .settings(self.kafka.kafka_brokers, &self.kafka.topics);
        let stop = CancellationToken::new();
        tokio::spawn(process::cancel_on_signal(stop.clone()));
        if let Some(addr) = self.metrics.metrics_addr {
            process::serve_metrics(addr, stop.clone()).await?;
        }
        process::spawn_holdback_gauge(pool.clone());
        relay::Relay::new(pool, settings).run(stop).await;
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    #[command(flatten)]
    pub topics: KafkaTopicArgs,
}

#[derive(Debug, Args)]
pub struct KafkaTopicArgs {
    /// Prefix of every topic name; an event goes to `<prefix><stream_type>`.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "hl.")]
    pub kafka_topic_prefix: String,
    /// Partitions of the topics the relay creates.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 6)]
    pub kafka_topic_partitions: i32,
    /// Replication factor of the topics the relay creates.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub kafka_replication_factor: i32,
    /// Whether the relay creates its topics; `false` where they are managed outside the
    /// application (they must then exist, or the broker create them on first use).
    #[arg(long, env = "KAFKA_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub kafka_create_topics: bool,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The relay's checkpoint and lease name; relays of one name share one active instance.
    #[arg(long, env = "RELAY_NAME", default_value = "relay")]
    pub relay_name: String,
    /// Events per published batch (one checkpoint write each).
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 1000)]
    pub relay_batch_size: u32,
    /// Fallback poll of the log, milliseconds (appends wake the relay at once).
    #[arg(long, env = "RELAY_POLL_MS", default_value_t = 1000)]
    pub relay_poll_ms: u64,
    /// How often a standby relay tries to take over, milliseconds.
    #[arg(long, env = "RELAY_STANDBY_MS", default_value_t = 500)]
    pub relay_standby_ms: u64,
}

impl RelayArgs {
    pub fn settings(&self, brokers: String, topics: &KafkaTopicArgs) -> relay::RelaySettings {
        relay::RelaySettings {
            brokers,
            topic_prefix: topics.kafka_topic_prefix.clone(),
            topic_partitions: topics.kafka_topic_partitions,
            topic_replication: topics.kafka_replication_factor,
            create_topics: topics.kafka_create_topics,
            name: self.relay_name.clone(),
            batch_size: self.relay_batch_size,
            poll_interval: Duration::from_millis(self.relay_poll_ms),
            standby_interval: Duration::from_millis(self.relay_standby_ms),
            producer_properties: Vec::new(),
        }
    }
}
