//! `hybridlive project`: projection workers (`projections::Workers`) fed by Kafka or the
//! log.

use std::time::Duration;

use clap::Args;
use projections::Source;
use tokio_util::sync::CancellationToken;

use crate::process::{self, DatabaseArgs, MetricsArgs, RedisArgs, WriteArgs};
use crate::relay::KafkaTopicArgs;
use crate::workers::{ReadStoreArgs, RealTimeArgs};

/// Projection workers: build the read models from Kafka (when KAFKA_BROKERS is set) or
/// from the PostgreSQL log. Names: timeline, content, onboarding, people, messaging,
/// notifications, email
/// (with SMTP_URL), or all.
#[derive(Debug, Args)]
pub struct ProjectCommand {
    /// Projections to run.
    #[arg(required = true)]
    names: Vec<String>,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    stores: ReadStoreArgs,
    /// Kafka to consume the relay's topics from; the PostgreSQL log when unset.
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// The longest a consumer's fetch waits at the broker for records, in ms.
    #[arg(long, env = "KAFKA_FETCH_WAIT_MS", default_value_t = 100)]
    kafka_fetch_wait_ms: u64,
    /// Consume only the topics of these stream types (comma-separated, e.g.
    /// `comment,like`); default: every topic each projection reads. Splits a
    /// projection's topics across worker pools (the tests use it to consume them in an
    /// adversarial order).
    #[arg(long, env = "KAFKA_STREAM_TYPES", value_delimiter = ',')]
    kafka_stream_types: Vec<String>,
    /// The name of the relay publishing the topics (its RELAY_NAME): its checkpoint
    /// bounds the projections' checkpoints, what X-Min-Position waits on.
    #[arg(long, env = "RELAY_NAME", default_value = "relay")]
    relay_name: String,
    #[command(flatten)]
    kafka: KafkaTopicArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    realtime: RealTimeArgs,
    #[command(flatten)]
    write: WriteArgs,
}

impl ProjectCommand {
    pub async fn run(self, database: &DatabaseArgs) -> anyhow::Result<()> {
        let Self {
            names,
            redis,
            stores,
            kafka_brokers,
            kafka_fetch_wait_ms,
            kafka_stream_types,
            relay_name,
            kafka,
            metrics,
            realtime,
            write,
        } = self;
        let pool = database.connect().await?;
        let source = match kafka_brokers {
            Some(brokers) => Source::Kafka {
                brokers,
                topic_prefix: kafka.kafka_topic_prefix,
                replication: kafka.kafka_replication_factor,
                fetch_wait: Duration::from_millis(kafka_fetch_wait_ms),
                only: kafka_stream_types,
                relay: relay_name,
            },
            None => Source::Log,
        };
        let stop = CancellationToken::new();
        tokio::spawn(process::cancel_on_signal(stop.clone()));
        if let Some(addr) = metrics.metrics_addr {
            process::serve_metrics(addr, stop.clone()).await?;
        }
        process::spawn_holdback_gauge(pool.clone());
        realtime
            .connected_workers(&pool, &redis, &stores, &write, false)
            .await?
            .run(&names, &source, &stop)
            .await?;
        Ok(())
    }
}
