//! The checkpoint of a projection fed by Kafka: read-your-writes on the Kafka source
//! (DESIGN §5, API.md `X-Min-Position`).
//!
//! A query with `X-Min-Position` waits until the `projection:<name>` row of `checkpoints` is
//! at or past the event's read-order key `(transaction_id, global_position)`
//! (`projections::query::caught_up`). On the log source the runner writes it after each batch.
//! Kafka orders partitions, not the log, and a consumer group splits them between
//! instances, so here the row is a *watermark*: a key W such that every event of the
//! projection's topics at or before W in read order has been applied (or dead-lettered).
//! Two tables (migration 12) and one rule give it:
//!
//! - **The relay's heads** (`kafka_partition_heads`): with each checkpoint C, in the same
//!   transaction and only after Kafka acknowledged the whole batch, the relay records per
//!   topic-partition the offset of the last message it put there. Claim H: *every event
//!   at or before C has a copy in its partition at an offset at or below that partition's
//!   head.* It was acknowledged before C was saved, so before the head was written, and
//!   offsets of a partition only grow.
//! - **The group's progress** (`kafka_consumer_progress`): after each batch an instance
//!   raises, per topic-partition, the offset of the last message it applied whose offset
//!   it stores (never lowers it). Claim P: *every message at or below a partition's
//!   progress has been applied.* An instance starts a partition at the group's committed
//!   offset, before which everything was applied (offsets are stored only after apply), and
//!   applies the partition's messages in offset order from there; a rebalance, a crash or a
//!   redelivery restarts it at a committed offset again, re-applying, never skipping.
//! - **The rule**: a relay snapshot (C, heads), read in one statement, is *reached* when the
//!   progress of every head's partition is at or past the head. Then W = C is sound: an
//!   event at or before C in one of the projection's topics has a copy at or below its
//!   partition's head (H), hence at or below the progress (P), hence applied.
//!
//! A busy relay moves its heads on before the consumers reach them, so an instance keeps
//! the snapshots it read and not yet reached ([`MAX_PENDING`], in checkpoint order) and
//! advances W to the latest one reached: W trails the relay by about one batch and the
//! consumer's own lag. It reads a snapshot after each batch and every [`TICK`] while idle,
//! so W also follows the relay's checkpoint when only other topics' events are published.
//! W is written only forwards (`WHERE` the row is behind), so instances (each sound) never
//! take it back; a replay's swap, which sets the row to what the rebuilt model holds,
//! stays sound under it.
//!
//! Why not the key of the message at the progress offset, when a snapshot is not reached
//! yet? It assumes that every earlier event of the partition lies at a lower offset. A
//! message that timed out in librdkafka's queue leaves a gap the idempotent producer
//! skips: the next messages land, the relay's session fails, and the next session
//! re-publishes the missing one at a higher offset. The key would then pass it. Only what
//! a relay checkpointed is trusted here.
//!
//! Limits: a partition published to before this table existed has no head until the relay
//! writes to it again (an upgraded deployment assumes its consumers were caught up, and
//! takes no watermark at all until the relay has recorded a head); resetting a group's
//! offsets backwards, or re-creating a topic, needs the group's progress rows deleted.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use sqlx::PgPool;
use store::LogPosition;

/// How often an idle consumer reads the relay's snapshot.
pub const TICK: Duration = Duration::from_millis(100);

/// The relay snapshots an instance keeps while its consumers work towards them.
pub const MAX_PENDING: usize = 64;

/// A relay checkpoint with its heads for the projection's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    checkpoint: LogPosition,
    /// `(topic, partition)` → offset of the last message there as of `checkpoint`.
    heads: HashMap<(String, i32), i64>,
}

/// One instance's view of its projection's watermark.
#[derive(Debug)]
pub(crate) struct Watermark {
    pool: PgPool,
    /// The relay whose topics the projection reads (`RelaySettings::name`).
    relay: String,
    /// The consumer group (the projection's name).
    group: String,
    /// The checkpoint row (`projection:<label>`).
    checkpoint: String,
    topics: Vec<String>,
    pending: VecDeque<Snapshot>,
    /// The last watermark this instance wrote.
    written: LogPosition,
}

impl Watermark {
    pub(crate) fn new(
        pool: PgPool,
        relay: &str,
        group: &str,
        checkpoint: String,
        topics: Vec<String>,
    ) -> Self {
        Self {
            pool,
            relay: relay.to_owned(),
            group: group.to_owned(),
            checkpoint,
            topics,
            pending: VecDeque::new(),
            written: LogPosition::START,
        }
    }

    /// Raises the group's progress to `done`: `(topic, partition, offset)` of messages
    /// applied (or dead-lettered) whose offsets are stored. A lower offset (a redelivery)
    /// changes nothing.
    ///
    /// # Errors
    /// On database failure.
    pub(crate) async fn record_progress(
        &self,
        done: &[(&str, i32, i64)],
    ) -> Result<(), sqlx::Error> {
        let mut last: HashMap<(&str, i32), i64> = HashMap::new();
        for &(topic, partition, offset) in done {
            let at = last.entry((topic, partition)).or_insert(offset);
            *at = (*at).max(offset);
        }
        if last.is_empty() {
            return Ok(());
        }
        let (mut topics, mut partitions, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
        for ((topic, partition), offset) in last {
            topics.push(topic);
            partitions.push(partition);
            offsets.push(offset);
        }
        sqlx::query(
            "INSERT INTO kafka_consumer_progress (consumer_group, topic, \"partition\", \"offset\") \
             SELECT $1, p.topic, p.part, p.off \
               FROM unnest($2::text[], $3::int[], $4::bigint[]) AS p(topic, part, off) \
             ON CONFLICT (consumer_group, topic, \"partition\") DO UPDATE \
                SET \"offset\" = EXCLUDED.\"offset\", updated_at = now() \
              WHERE kafka_consumer_progress.\"offset\" < EXCLUDED.\"offset\"",
        )
        .bind(&self.group)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Reads the relay's snapshot and the group's progress (one statement), advances the
    /// watermark to the latest snapshot reached and writes it when it moved. Returns the
    /// watermark this instance has written.
    ///
    /// # Errors
    /// On database failure.
    pub(crate) async fn advance(&mut self) -> Result<LogPosition, sqlx::Error> {
        let Some((snapshot, progress)) = self.read().await? else {
            return Ok(self.written);
        };
        if self
            .pending
            .back()
            .is_some_and(|last| last.checkpoint > snapshot.checkpoint)
        {
            // The relay's checkpoint went back (set by hand): start over.
            self.pending.clear();
        }
        if snapshot.checkpoint > self.written
            && self
                .pending
                .back()
                .is_none_or(|last| last.checkpoint < snapshot.checkpoint)
        {
            if self.pending.len() == MAX_PENDING {
                // The newest target gives way to a newer one: the older ones are reached
                // first anyway.
                self.pending.pop_back();
            }
            self.pending.push_back(snapshot);
        }
        // Heads only grow, partitions are only added: a snapshot not reached holds back
        // every younger one, so the reached ones are a prefix of the queue.
        let mut reached = None;
        while let Some(first) = self.pending.front() {
            let done = first
                .heads
                .iter()
                .all(|(partition, head)| progress.get(partition).is_some_and(|p| p >= head));
            if !done {
                break;
            }
            reached = Some(first.checkpoint);
            self.pending.pop_front();
        }
        if let Some(watermark) = reached.filter(|w| *w > self.written) {
            self.write(watermark).await?;
            self.written = watermark;
        }
        Ok(self.written)
    }

    /// The relay's checkpoint with its heads for the projection's topics, and the group's
    /// progress on those partitions, as of one statement; `None` while the relay has no
    /// checkpoint or has recorded no head at all (before its first batch since migration
    /// 12: what it published before is not described).
    async fn read(&self) -> Result<Option<(Snapshot, HashMap<(String, i32), i64>)>, sqlx::Error> {
        type Row = (
            String,
            i64,
            bool,
            Option<String>,
            Option<i32>,
            Option<i64>,
            Option<i64>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT c.transaction_id::text, c.global_position, \
                    EXISTS (SELECT 1 FROM kafka_partition_heads WHERE relay = $1), \
                    h.topic, h.\"partition\", h.\"offset\", p.\"offset\" \
               FROM checkpoints c \
               LEFT JOIN kafka_partition_heads h ON h.relay = $1 AND h.topic = ANY($3) \
               LEFT JOIN kafka_consumer_progress p \
                      ON p.consumer_group = $2 AND p.topic = h.topic \
                     AND p.\"partition\" = h.\"partition\" \
              WHERE c.name = $1",
        )
        .bind(&self.relay)
        .bind(&self.group)
        .bind(&self.topics)
        .fetch_all(&self.pool)
        .await?;
        let Some((xid, global_position, described, ..)) = rows.first() else {
            return Ok(None);
        };
        if !described {
            return Ok(None);
        }
        let checkpoint = LogPosition {
            transaction_id: xid
                .parse()
                .map_err(|_| sqlx::Error::Decode(format!("relay checkpoint xid {xid}").into()))?,
            global_position: *global_position,
        };
        let mut heads = HashMap::new();
        let mut progress = HashMap::new();
        for (_, _, _, topic, partition, head, at) in rows {
            let (Some(topic), Some(partition), Some(head)) = (topic, partition, head) else {
                continue;
            };
            if let Some(at) = at {
                progress.insert((topic.clone(), partition), at);
            }
            heads.insert((topic, partition), head);
        }
        Ok(Some((Snapshot { checkpoint, heads }, progress)))
    }

    /// Moves the checkpoint row forward to `watermark` (never back).
    async fn write(&self, watermark: LogPosition) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO checkpoints (name, transaction_id, global_position) \
             VALUES ($1, $2::text::xid8, $3) \
             ON CONFLICT (name) DO UPDATE \
                SET transaction_id = EXCLUDED.transaction_id, \
                    global_position = EXCLUDED.global_position, updated_at = now() \
              WHERE (checkpoints.transaction_id, checkpoints.global_position) \
                  < (EXCLUDED.transaction_id, EXCLUDED.global_position)",
        )
        .bind(&self.checkpoint)
        .bind(watermark.transaction_id.to_string())
        .bind(watermark.global_position)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
