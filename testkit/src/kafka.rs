//! Kafka topics that exist for one test. Every topic of a test sits under its
//! [`TestTopics::prefix`] (`hl_test_<pid>_<uuid>.`), and the topics under it are deleted when
//! the value is dropped — or, when the test process exited first, by the next test process.
//! A broker keeps every partition it ever created and loads each at start: left to pile
//! up, thousands of test partitions made a broker's start outlast `scripts/services.sh`'s
//! wait.

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
