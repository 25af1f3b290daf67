//! The production shape of one test, on the real servers: its own Kafka topics, Cassandra
//! keyspace, MongoDB-protocol database and Redis keys, the `hybridlive` processes that use
//! them (relay, Kafka-fed workers), and an API instance reading what they built.
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::TestApp;
use projections::content::mongo::MongoContent;
use projections::messaging::scylla::ScyllaMessaging;
use projections::presence::scylla::ScyllaPresenceHistory;
use projections::timeline::scylla::{ScyllaSettings, ScyllaTimelines};
use serde_json::Value;
use uuid::Uuid;

/// The production side of one test: its own topics, keyspace, database and Redis keys.
pub struct Production {
    pub scylla_nodes: String,
    pub keyspace: String,
    pub mongodb_uri: String,
    pub database: String,
    pub redis_prefix: String,
    pub env: Vec<(&'static str, String)>,
    /// The topics the relay publishes to (deleted with the test).
    pub topics: testkit::kafka::TestTopics,
    /// The stderr of each process started, in a file: a failure shows their ends. Removed
    /// when the test passes, kept when it fails.
    logs: std::sync::Mutex<Vec<std::path::PathBuf>>,
    /// The pid of each process started, by its log's index: a failure says which exited.
    pids: std::sync::Mutex<HashMap<usize, u32>>,
}

impl Drop for Production {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        for path in self.logs.lock().unwrap().iter() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Production {
    pub fn new(app: &TestApp) -> Self {
        let brokers = testkit::production_server("KAFKA_BROKERS").unwrap();
        let scylla_nodes = testkit::production_server("SCYLLA_NODES").unwrap();
        let mongodb_uri = testkit::production_server("MONGODB_URI").unwrap();
        let id = Uuid::new_v4().simple().to_string();
        let (keyspace, database) = (format!("conv_{id}"), format!("conv_{id}"));
        let redis_prefix = format!("conv:{id}:");
        let topics = testkit::kafka::TestTopics::new();
        let env = vec![
            ("DATABASE_URL", app.db.url.clone()),
            ("REDIS_URL", e2e::redis_url()),
            ("REDIS_PREFIX", redis_prefix.clone()),
            ("KAFKA_BROKERS", brokers),
            ("KAFKA_TOPIC_PREFIX", topics.prefix.clone()),
            ("SCYLLA_NODES", scylla_nodes.clone()),
            ("SCYLLA_KEYSPACE", keyspace.clone()),
            ("SCYLLA_CHAT_KEYSPACE", format!("{keyspace}_chat")),
            ("MONGODB_URI", mongodb_uri.clone()),
            ("MONGODB_DATABASE", database.clone()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        Self {
            scylla_nodes,
            keyspace,
            mongodb_uri,
            database,
            redis_prefix,
            env,
            topics,
            logs: std::sync::Mutex::default(),
            pids: std::sync::Mutex::default(),
        }
    }

    /// For `comments`: the comments of the log missing from the Kafka-fed store, where they
    /// are in the `comment` topic and what the groups committed there.
    pub async fn where_missing_comments_are(&self, collection: &str) -> String {
        if collection != "comments" {
            return String::new();
        }
        let url = self
            .env
            .iter()
            .find(|(k, _)| *k == "DATABASE_URL")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let Ok(pool) = sqlx::PgPool::connect(&url).await else {
            return "(cannot read the log)".to_owned();
        };
        let logged: Vec<String> = sqlx::query_scalar(
            "SELECT stream_id FROM events WHERE stream_type = 'comment' AND stream_version = 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        let client = mongodb::Client::with_uri_str(&self.mongodb_uri)
            .await
            .unwrap();
        let stored: Vec<mongodb::bson::Bson> = client
            .database(&self.database)
            .collection::<mongodb::bson::Document>("comments")
            .distinct("_id", mongodb::bson::doc! {})
            .await
            .unwrap_or_default();
        let stored: std::collections::HashSet<String> = stored
            .iter()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&str> = logged
            .iter()
            .filter(|id| !stored.contains(*id))
            .take(10)
            .map(String::as_str)
            .collect();
        let topic = format!("{}comment", self.topics.prefix);
        let groups = ["timeline", "content"].map(|g| format!("{}{g}", self.topics.prefix));
        keyed_messages(&topic, &missing, &groups)
    }

    /// For each user among `differences` (`user <id>: …`), where that user's events are in
    /// the `user` topic and what the consumer groups committed there: whether an event the
    /// read models lack was published, and whether its offset was committed.
    pub fn where_users_are(&self, differences: &[String]) -> String {
        let users: Vec<&str> = differences
            .iter()
            .filter_map(|d| d.strip_prefix("user ")?.split(['.', ':']).next())
            .collect();
        if users.is_empty() {
            return String::new();
        }
        let topic = format!("{}user", self.topics.prefix);
        let groups = ["timeline", "content"].map(|g| format!("{}{g}", self.topics.prefix));
        keyed_messages(&topic, &users, &groups)
    }

    /// The last lines of every process's stderr, after its first errors (a dead letter, a
    /// failed write) wherever they are.
    pub fn log_tails(&self) -> String {
        let mut tails = String::new();
        let pids = self.pids.lock().unwrap();
        for (index, path) in self.logs.lock().unwrap().iter().enumerate() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let state = pids.get(&index).map_or("not started".to_owned(), |pid| {
                // The third field of /proc/<pid>/stat; Z (or no entry) once it exited.
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                match stat
                    .rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().next())
                {
                    Some("Z") | None => format!("pid {pid}, exited"),
                    Some(state) => format!("pid {pid}, running ({state})"),
                }
            });
            tails.push_str(&format!("--- {} ({state})\n", path.display()));
            for line in lines.iter().filter(|l| l.contains("ERROR")).take(10) {
                tails.push_str(&format!("error: {line}\n"));
            }
            for line in &lines[lines.len().saturating_sub(15)..] {
                tails.push_str(line);
                tails.push('\n');
            }
        }
        tails
    }

    pub fn hybridlive(&self, args: &[&str]) -> tokio::process::Command {
        let mut logs = self.logs.lock().unwrap();
        let path = std::env::temp_dir().join(format!(
            "{}{}-{}.log",
            self.redis_prefix.replace(':', "_"),
            logs.len(),
            args.join("-")
        ));
        let stderr = std::fs::File::create(&path).unwrap();
        logs.push(path);
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hybridlive"));
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("KEY_ENCRYPTION_KEY", testkit::TEST_KEY_ENCRYPTION_KEY)
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        command
    }

    /// Starts `command` (the last one [`Self::hybridlive`] made) and records its pid.
    pub fn spawn(&self, mut command: tokio::process::Command) -> tokio::process::Child {
        let child = command.spawn().unwrap();
        let index = self.logs.lock().unwrap().len() - 1;
        if let Some(pid) = child.id() {
            self.pids.lock().unwrap().insert(index, pid);
        }
        child
    }

    /// The relay, publishing the test's log to its topics.
    pub fn relay(&self) -> tokio::process::Child {
        self.spawn(self.hybridlive(&["relay"]))
    }

    /// An instance of the Kafka-fed timeline and content workers, consuming the topics of
    /// `only` (every topic when empty).
    pub fn project(&self, only: &str) -> tokio::process::Child {
        let mut command = self.hybridlive(&["project", "timeline", "content", "messaging"]);
        if !only.is_empty() {
            command.env("KAFKA_STREAM_TYPES", only);
        }
        self.spawn(command)
    }

    pub async fn migrate(&self) {
        let status = self.hybridlive(&["migrate"]).status().await.unwrap();
        assert!(status.success(), "hybridlive migrate");
    }

    pub fn scylla(&self) -> ScyllaSettings {
        ScyllaSettings {
            nodes: self.scylla_nodes.split(',').map(str::to_owned).collect(),
            keyspace: self.keyspace.clone(),
            consistency: "LOCAL_QUORUM".to_owned(),
            replication_factor: 1,
        }
    }

    /// The chat keyspace's settings.
    pub fn scylla_chat(&self) -> ScyllaSettings {
        ScyllaSettings {
            keyspace: format!("{}_chat", self.keyspace),
            ..self.scylla()
        }
    }

    /// An API instance beside `app` serving the Kafka-fed read models.
    pub async fn api(&self, app: &TestApp) -> e2e::OtherInstance {
        let settings = self.scylla();
        let chat = self.scylla_chat();
        let redis = redis::Client::open(e2e::redis_url()).unwrap();
        let redis = redis::aio::ConnectionManager::new(redis).await.unwrap();
        let read = projections::ReadModels {
            timelines: Arc::new(ScyllaTimelines::connect(&settings).await.unwrap()),
            content: Arc::new(
                MongoContent::connect(&self.mongodb_uri, &self.database)
                    .await
                    .unwrap(),
            ),
            messaging: Arc::new(ScyllaMessaging::connect(&chat).await.unwrap()),
            presence: Arc::new(
                ScyllaPresenceHistory::connect(&chat, projections::presence::DEFAULT_RETENTION)
                    .await
                    .unwrap(),
            ),
            cache: projections::PostCache::new(
                redis,
                format!("{}rm:", self.redis_prefix),
                projections::CacheSettings::default(),
            ),
        };
        app.instance_reading(read, &self.redis_prefix).await
    }

    /// Documents in a collection of the Kafka-fed content.
    pub async fn stored(&self, collection: &str) -> u64 {
        let client = mongodb::Client::with_uri_str(&self.mongodb_uri)
            .await
            .unwrap();
        client
            .database(&self.database)
            .collection::<mongodb::bson::Document>(collection)
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap()
    }

    pub async fn wait_stored(&self, collection: &str, expected: u64) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let stored = self.stored(collection).await;
            if stored >= expected {
                assert_eq!(stored, expected, "{collection}");
                return;
            }
            if Instant::now() >= deadline {
                let missing = self.where_missing_comments_are(collection).await;
                panic!(
                    "{collection}: {stored} of {expected} stored\n{missing}\n{}",
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn drop_stores(&self) {
        let client = mongodb::Client::with_uri_str(&self.mongodb_uri)
            .await
            .unwrap();
        client.database(&self.database).drop().await.unwrap();
        projections::timeline::scylla::drop_keyspace(&self.scylla())
            .await
            .unwrap();
        projections::messaging::scylla::drop_keyspace(&self.scylla_chat())
            .await
            .unwrap();
    }
}

/// The messages of `topic` whose key is one of `keys` (partition, offset, event type and
/// global position), and the offsets `groups` committed on it.
fn keyed_messages(topic: &str, keys: &[&str], groups: &[String]) -> String {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let brokers = testkit::kafka_brokers();
    let timeout = Duration::from_secs(10);
    let mut report = format!("the messages of {keys:?} in {topic}:\n");
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{topic}.diagnosis"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = match reader.fetch_metadata(Some(topic), timeout) {
        Ok(metadata) => metadata,
        Err(error) => return report + &format!("(no metadata: {error})\n"),
    };
    let mut all = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        all.add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    for group in groups {
        let member: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", group)
            .create()
            .unwrap();
        let committed: Vec<String> = match member.committed_offsets(all.clone(), timeout) {
            Ok(offsets) => offsets
                .elements()
                .iter()
                .map(|e| format!("{}:{:?}", e.partition(), e.offset()))
                .collect(),
            Err(error) => vec![error.to_string()],
        };
        report.push_str(&format!("  {group} committed {}\n", committed.join(" ")));
    }
    let mut left: HashMap<i32, i64> = all
        .elements()
        .iter()
        .filter_map(|e| {
            let (_, high) = reader
                .fetch_watermarks(topic, e.partition(), timeout)
                .ok()?;
            (high > 0).then_some((e.partition(), high))
        })
        .collect();
    let total: i64 = left.values().sum();
    reader.assign(&all).unwrap();
    let (mut scanned, deadline) = (0, Instant::now() + Duration::from_secs(30));
    while !left.is_empty() && Instant::now() < deadline {
        let message = match reader.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                report.push_str(&format!("  ({error})\n"));
                continue;
            }
            None => continue,
        };
        scanned += 1;
        let key = message
            .key()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        if keys.iter().any(|k| key == *k) {
            let event: Value = message
                .payload()
                .and_then(|p| serde_json::from_slice(p).ok())
                .unwrap_or(Value::Null);
            report.push_str(&format!(
                "  {key}: partition {} offset {}: {} at {}\n",
                message.partition(),
                message.offset(),
                event["event_type"],
                event["global_position"]
            ));
        }
        if left
            .get(&message.partition())
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            left.remove(&message.partition());
        }
    }
    report + &format!("  ({scanned} of {total} messages read)\n")
}
