//! Kafka topics that exist for one test. Every topic of a test sits under its
//! [`TestTopics::prefix`] (`hl_test_<pid>_<uuid>.`), and the topics under it are deleted when
//! the value is dropped — or, when the test process exited first, by the next test process.
//! A broker keeps every partition it ever created and loads each at start: left to pile
//! up, thousands of test partitions made a broker's start outlast `scripts/services.sh`'s
//! wait.
//!
//! [`OwnBroker`]: a broker of one test's own, for a test that kills and restarts it.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use uuid::Uuid;

use crate::{kafka_brokers, left_behind, on_own_runtime};

/// How long a metadata request or a deletion may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A topic prefix of one test, its topics deleted when dropped.
#[derive(Debug)]
pub struct TestTopics {
    /// `hl_test_<pid>_<uuid>.`: the `KAFKA_TOPIC_PREFIX` (and consumer groups' prefix) of a test.
    pub prefix: String,
    brokers: String,
}

impl TestTopics {
    /// A fresh prefix on [`kafka_brokers`]; the first one of a process also deletes, in the
    /// background, the test topics of processes that exited before deleting theirs.
    pub fn new() -> Self {
        Self::on(&kafka_brokers())
    }

    /// [`Self::new`] on `brokers`.
    pub fn on(brokers: &str) -> Self {
        sweep_left_behind(brokers);
        let (pid, id) = (std::process::id(), Uuid::new_v4().simple());
        Self {
            prefix: format!("hl_test_{pid}_{id}."),
            brokers: brokers.to_owned(),
        }
    }

    /// Deletes the topics now and waits for it: for a process about to exit (a benchmark),
    /// where the deletion on drop may not finish.
    pub fn delete_now(self) {
        let (brokers, prefix) = (self.brokers.clone(), self.prefix.clone());
        std::mem::forget(self);
        let deleting =
            std::thread::spawn(move || delete_topics(&brokers, |topic| topic.starts_with(&prefix)));
        let _ = deleting.join();
    }
}

impl Default for TestTopics {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestTopics {
    /// Deletes the topics from a thread of its own, without waiting: the test's runtime may
    /// be this thread.
    fn drop(&mut self) {
        let (brokers, prefix) = (self.brokers.clone(), self.prefix.clone());
        std::thread::spawn(move || delete_topics(&brokers, |topic| topic.starts_with(&prefix)));
    }
}

/// Deletes the broker's topics that `doomed` picks, ignoring failures: what is left is
/// deleted by a later test process.
fn delete_topics(brokers: &str, doomed: impl Fn(&str) -> bool) {
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let Ok(metadata) = admin.inner().fetch_metadata(None, ADMIN_TIMEOUT) else {
        return;
    };
    let topics: Vec<&str> = metadata
        .topics()
        .iter()
        .map(rdkafka::metadata::MetadataTopic::name)
        .filter(|topic| doomed(topic))
        .collect();
    if topics.is_empty() {
        return;
    }
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    on_own_runtime(admin.delete_topics(&topics, &options));
}

/// Once per test process, deletes (in the background) the topics of test processes that
/// are gone, and those named before test topics carried their creator's pid.
fn sweep_left_behind(brokers: &str) {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    SWEPT.call_once(|| {
        let brokers = brokers.to_owned();
        std::thread::spawn(move || delete_topics(&brokers, topic_left_behind));
    });
}

/// Whether `topic` is a test topic that outlived its test process: `hl_test_<pid>_<uuid>.…`
/// of a pid that is gone, or a test topic of the older scheme (`t<uuid>.…`, `conv_<uuid>.…`,
/// `e2e<uuid>.…`, with no pid in it).
fn topic_left_behind(topic: &str) -> bool {
    let Some((prefix, _)) = topic.split_once('.') else {
        return false;
    };
    if prefix.starts_with("hl_test_") {
        return left_behind(prefix);
    }
    ["t", "conv_", "e2e"].iter().any(|old| {
        prefix.strip_prefix(old).is_some_and(|id| {
            id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::topic_left_behind;

    #[test]
    fn a_topic_is_left_behind_once_its_test_process_is_gone() {
        let uuid = uuid::Uuid::new_v4().simple();
        let pid = std::process::id();
        assert!(!topic_left_behind(&format!("hl_test_{pid}_{uuid}.post")));
        assert!(topic_left_behind(&format!("hl_test_4194305_{uuid}.post")));
        assert!(topic_left_behind(&format!(
            "hl_test_4194305_{uuid}.timeline.dlq"
        )));
        for old in ["t", "conv_", "e2e"] {
            assert!(topic_left_behind(&format!("{old}{uuid}.like")), "{old}");
        }
        for kept in [
            "hl.post",
            "hl.timeline.dlq",
            "bench1234.post",
            "__consumer_offsets",
            "tpost.like",
        ] {
            assert!(!topic_left_behind(kept), "{kept}");
        }
    }
}

/// A Kafka broker of one test's own: one KRaft node on two free ports, its data under a
/// directory of its own, started by `scripts/full/kafka.sh` (from the jars that script
/// caches for the shared broker). A test may kill and restart it without disturbing the
/// other tests' broker. Killed, and its directory removed, when dropped — or, when the test
/// process exited first, by the next [`OwnBroker::start`].
#[derive(Debug)]
pub struct OwnBroker {
    /// `127.0.0.1:<port>`: the bootstrap servers.
    pub address: String,
    port: u16,
    state: std::path::PathBuf,
}

// Test support: a broker that cannot be started or killed fails the test, with why.
#[allow(clippy::expect_used)]
impl OwnBroker {
    /// Starts the broker and waits until it answers Kafka requests (the script's wait).
    ///
    /// # Panics
    /// When the script fails (no Java, no jars, the broker did not start), with its output.
    pub fn start() -> Self {
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .map(|address| address.port())
                .expect("a free port")
        };
        remove_brokers_left_behind();
        let (port, controller) = (free_port(), free_port());
        let (pid, id) = (std::process::id(), Uuid::new_v4().simple());
        let state = std::env::temp_dir().join(format!("hl_broker_{pid}_{id}"));
        let broker = Self {
            address: format!("127.0.0.1:{port}"),
            port,
            state,
        };
        broker.run_script(controller);
        broker
    }

    /// Kills the broker with SIGKILL (no clean shutdown: its logs are recovered at the next
    /// start) and waits until it is gone.
    ///
    /// # Panics
    /// When there is no broker process to kill.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.state.join("kafka/kafka.pid"))
            .expect("the broker's pid file");
        let pid = pid.trim();
        let status = std::process::Command::new("kill")
            .args(["-9", pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {pid}");
        // Gone, or a zombie its new parent has not reaped yet (it holds no port or file).
        let stat = std::path::Path::new("/proc").join(pid).join("stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&stat).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "the broker (pid {pid}) outlived SIGKILL for 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the broker again on its ports and data, and waits until it answers.
    pub fn restart(&self) {
        let controller = std::fs::read_to_string(self.state.join("controller-port"))
            .ok()
            .and_then(|port| port.trim().parse().ok())
            .expect("the controller port");
        self.run_script(controller);
    }

    fn run_script(&self, controller: u16) {
        std::fs::create_dir_all(&self.state).expect("the broker's directory");
        std::fs::write(self.state.join("controller-port"), controller.to_string())
            .expect("the controller port");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/full/kafka.sh");
        let output = std::process::Command::new(&script)
            .env("HYBRIDLIVE_STATE", &self.state)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", controller.to_string())
            .output()
            .expect("scripts/full/kafka.sh");
        assert!(
            output.status.success(),
            "{} failed:\n{}{}",
            script.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        remove_broker(&self.state);
    }
}

/// Kills the broker whose directory is `state` (if its process is still that broker) and
/// removes the directory.
fn remove_broker(state: &std::path::Path) {
    if let Ok(pid) = std::fs::read_to_string(state.join("kafka/kafka.pid")) {
        let pid = pid.trim();
        let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&command).contains("kafka.Kafka") {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .status();
        }
    }
    let _ = std::fs::remove_dir_all(state);
}

/// The own brokers of test processes that exited without removing theirs (killed).
fn remove_brokers_left_behind() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        // `hl_broker_<pid of the test process>_<uuid>`
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix("hl_broker_")
            .and_then(|rest| rest.split('_').next())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(owner).exists() {
            remove_broker(&entry.path());
        }
    }
}
