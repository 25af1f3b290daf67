//! [`ScyllaTimelines`]: the production [`super::TimelineStore`] on ScyllaDB/Cassandra.
//!
//! # Tables
//!
//! Every table lives in the configured keyspace (statements name it explicitly; the session
//! never `USE`s one) and is partitioned by the user or post a query starts from, so every
//! read touches one partition:
//!
//! | table | primary key | serves |
//! |---|---|---|
//! | `follows_by_followee` | `(followee_id, follower_id)` | `followers`, follower count |
//! | `follows_by_follower` | `(follower_id, followee_id)` | following count, merged authors |
//! | `home_timeline` | `(user_id, position DESC)` | `timeline`; also holds `post_id`, `author_id` |
//! | `author_posts` | `(author_id, position DESC)` | `author_posts`; also holds `post_id` |
//! | `posts_by_id` | `(post_id)` | a post's `position` (and author), to delete it |
//! | `post_recipients` | `(post_id, user_id)` | whose timeline received a post, to delete it |
//! | `merged_authors` | `(bucket, author_id)`, one partition | authors merged into feeds at read time |
//! | `timeline_lengths` | `(user_id)`, `entry_count counter` (`entries` is reserved in Cassandra) | when to trim a timeline, nothing else |
//! | `timeline_trims` | `(user_id)`, TTL | the lease of the one writer trimming a timeline |
//!
//! Inserts are upserts and deletes are idempotent, so every write of the trait is
//! idempotent and may be retried, except the `timeline_lengths` counter (see below). Follow
//! counts are exact `SELECT COUNT(*)` over the two follow partitions, paged, not counters,
//! so they stay right under retries and concurrent writers; they cost a scan of the
//! partition, which is small for all but the authors that are merged at read time anyway.
//! A feed read finds the merged authors its reader follows with one read of the merged
//! list (one small partition: only authors past the fan-out threshold are in it) and one
//! `IN` read of the reader's follows partition per hundred of them.
//!
//! Every write is safe under concurrent writers (the consumers of one Kafka group deliver
//! posts of different authors into the same timelines at once): rows are upserts,
//! counters commute, and a timeline's trim is taken by one writer at a time (below).
//!
//! # Consistency
//!
//! Every statement is prepared once by [`ScyllaTimelines::connect`] and carries the
//! consistency level named in [`ScyllaSettings::consistency`] (`SCYLLA_CONSISTENCY`); nothing
//! here picks a level of its own. The trimming bound below relies on reading the counter
//! after incrementing it, so it holds when reads and writes overlap (`QUORUM`,
//! `LOCAL_QUORUM` within one data centre, `ALL`, or a replication factor of 1); with `ONE`
//! a stale counter can let a timeline grow past the bound until the next delivery. `ANY`
//! is a write-only level: with it the cluster refuses the reads.
//! Statements other than the counter updates are marked idempotent, so the driver may
//! retry them.
//!
//! # Fan-out and trimming
//!
//! [`TimelineStore::deliver`] runs one task per distinct user, at most [`PARALLELISM`] at
//! a time, each of four sequential round trips: the `post_recipients` row first (so a
//! crash can never leave an entry that a later delete would not find), then the
//! `home_timeline` row, then `entry_count = entry_count + 1` (after the row, so the counter never
//! counts a row that a concurrent trim's read could miss), then a read of `entry_count`.
//! That read is the price of a hard bound: 4 requests per follower (10 000 followers
//! are 40 000 requests, some 40 waves of 256 users in flight, each wave four round trips
//! long), instead of 3 without it.
//! When the counter exceeds `cap + cap / 8` the task trims, under the timeline's trim
//! lease (a lightweight transaction, `INSERT … IF NOT EXISTS` with a TTL of
//! `TRIM_LEASE_SECS`; a writer that finds it taken leaves the trim to its holder): it
//! reads the counter again, reads the newest `cap` positions of the partition,
//! range-deletes everything older than the last of them (`position < ?`, one range
//! tombstone below the live head, so reading the head never scans it) and decrements the
//! counter by its surplus over the rows kept, which also corrects any drift. Two trims at
//! once would both take their surplus off and leave the counter short; one at a time, each
//! reads the counter its predecessor left. A trim costs about 6 more requests (two of them
//! Paxos rounds) and happens about once every `cap / 8` deliveries to a user.
//!
//! Counter updates are not idempotent: a retried delivery counts twice. That only makes a
//! trim come early, and the trim resets the counter to the rows really kept. The counter
//! must never count too *few* rows, or the bound would break; for that reason
//! [`TimelineStore::remove_post`] leaves it alone (it cannot know cheaply whether the entry
//! it deletes was still there or already trimmed).
//!
//! A follow's backfill ([`TimelineStore::backfill`]) writes the `post_recipients` row and
//! then the `home_timeline` row of each entry, at most [`PARALLELISM`] at a time, then adds
//! the number of entries to `entry_count` in one update and trims as a delivery does. An
//! entry already there is counted again, which only brings a trim early. An unfollow
//! ([`TimelineStore::withdraw`]) reads the follower's timeline partition (at most about
//! `cap + cap / 8` rows) and deletes the followee's entries, and a take-back
//! ([`TimelineStore::retract`]) deletes one entry per user; like a post's removal, neither
//! touches the counter.
//!
//! The order-independence of the model (see the parent module) rests on a write being
//! visible to any read that starts after it returned. That holds under the same condition
//! as the trimming bound: reads and writes at levels that overlap (`QUORUM`, `LOCAL_QUORUM`
//! in one data centre, `ALL`, or a replication factor of 1), and, as Cassandra always
//! assumes, clocks in sync (a deletion must carry a later timestamp than the insert it
//! follows).
//!
//! # Deleting a post
//!
//! [`TimelineStore::remove_post`] reads the post's position from `posts_by_id` (written by
//! both `add_author_post` and `deliver`), deletes the author's row, deletes the entry from
//! the timeline of every recipient listed in `post_recipients` (including followers who
//! have unfollowed since, and users whose copy was already trimmed: deleting a missing row
//! is harmless), then the `post_recipients` partition and the `posts_by_id` row, last, so
//! a retry after a partial failure finds the post again. It costs one request per
//! recipient, run like a delivery. An unknown post is a no-op. A backfill writes its
//! recipient rows too, so the entries it brings are found here.

use std::collections::HashSet;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    DbError, DeserializationError, ExecutionError, IntoRowsResultError, NewSessionError,
    NextPageError, NextRowError, PagerExecutionError, PrepareError, RequestAttemptError,
    RequestError, RowsError, SchemaAgreementError, TypeCheckError,
};
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::{Counter, CqlValue, Row};
use uuid::Uuid;

use super::{Direction, FollowCounts, TimelineEntry, TimelineStore};
use crate::error::{ReadModelError, ReadResult};

/// How long a writer may hold a timeline's trim lease: a writer that dies holding it
/// delays that timeline's trims by at most this long.
const TRIM_LEASE_SECS: u32 = 10;

/// Requests of one fan-out or delete kept in flight at once.
pub const PARALLELISM: usize = 256;

/// Merged authors looked up in a follower's follows per `IN` query (ScyllaDB's default
/// `max_clustering_key_restrictions_per_query` is 100).
const IN_CHUNK: usize = 100;

/// Where and how to reach ScyllaDB.
#[derive(Debug, Clone)]
pub struct ScyllaSettings {
    /// `host:port` of the contact points (`SCYLLA_NODES`, comma-separated).
    pub nodes: Vec<String>,
    /// Keyspace of the timeline tables (`SCYLLA_KEYSPACE`).
    pub keyspace: String,
    /// Consistency level of every statement (`SCYLLA_CONSISTENCY`, e.g. `LOCAL_QUORUM`).
    pub consistency: String,
    /// Replication factor used when `migrate` creates the keyspace (`SCYLLA_REPLICATION`).
    pub replication_factor: u32,
}

/// The timelines in one keyspace of a ScyllaDB/Cassandra cluster.
#[derive(Debug)]
pub struct ScyllaTimelines {
    session: Session,
    statements: Statements,
}

/// Every statement this store runs, prepared once at connect time.
#[derive(Debug)]
struct Statements {
    insert_follower: PreparedStatement,
    insert_followee: PreparedStatement,
    delete_follower: PreparedStatement,
    delete_followee: PreparedStatement,
    select_followers: PreparedStatement,
    page_followers: PreparedStatement,
    page_following: PreparedStatement,
    count_followers: PreparedStatement,
    count_following: PreparedStatement,
    insert_author_post: PreparedStatement,
    insert_post_by_id: PreparedStatement,
    insert_recipient: PreparedStatement,
    insert_timeline_entry: PreparedStatement,
    increment_length: PreparedStatement,
    add_to_length: PreparedStatement,
    select_length: PreparedStatement,
    select_newest_positions: PreparedStatement,
    delete_older_entries: PreparedStatement,
    decrement_length: PreparedStatement,
    insert_merged_author: PreparedStatement,
    select_merged_authors: PreparedStatement,
    select_followed_among: PreparedStatement,
    select_followers_among: PreparedStatement,
    select_merged_author: PreparedStatement,
    select_listed_among: PreparedStatement,
    select_timeline_authors: PreparedStatement,
    acquire_trim: PreparedStatement,
    release_trim: PreparedStatement,
    select_post_position: PreparedStatement,
    select_recipients: PreparedStatement,
    delete_author_post: PreparedStatement,
    delete_timeline_entry: PreparedStatement,
    delete_recipients: PreparedStatement,
    delete_post_by_id: PreparedStatement,
    select_timeline: PreparedStatement,
    select_timeline_before: PreparedStatement,
    select_author_posts: PreparedStatement,
    select_author_posts_before: PreparedStatement,
}

/// Prepares statements with the configured consistency level.
pub(crate) struct Preparer<'a> {
    pub(crate) session: &'a Session,
    pub(crate) consistency: Consistency,
}

impl Preparer<'_> {
    /// A statement that may be retried (and speculatively executed) by the driver.
    pub(crate) async fn idempotent(&self, cql: String) -> ReadResult<PreparedStatement> {
        let mut statement = self.once(cql).await?;
        statement.set_is_idempotent(true);
        Ok(statement)
    }

    /// A statement the driver must not retry on its own: a counter update.
    pub(crate) async fn once(&self, cql: String) -> ReadResult<PreparedStatement> {
        let mut statement = self.session.prepare(cql).await?;
        statement.set_consistency(self.consistency);
        Ok(statement)
    }
}

impl Statements {
    async fn prepare(p: &Preparer<'_>, ks: &str) -> ReadResult<Self> {
        Ok(Self {
            insert_follower: p
                .idempotent(format!(
                    "INSERT INTO {ks}.follows_by_followee (followee_id, follower_id) VALUES (?, ?)"
                ))
                .await?,
            insert_followee: p
                .idempotent(format!(
                    "INSERT INTO {ks}.follows_by_follower (follower_id, followee_id) VALUES (?, ?)"
                ))
                .await?,
            delete_follower: p
                .idempotent(format!(
                    "DELETE FROM {ks}.follows_by_followee WHERE followee_id = ? AND follower_id = ?"
                ))
                .await?,
            delete_followee: p
                .idempotent(format!(
                    "DELETE FROM {ks}.follows_by_follower WHERE follower_id = ? AND followee_id = ?"
                ))
                .await?,
            select_followers: p
                .idempotent(format!(
                    "SELECT follower_id FROM {ks}.follows_by_followee WHERE followee_id = ?"
                ))
                .await?,
            page_followers: p
                .idempotent(format!(
                    "SELECT follower_id FROM {ks}.follows_by_followee \
                      WHERE followee_id = ? AND follower_id > ? LIMIT ?"
                ))
                .await?,
            page_following: p
                .idempotent(format!(
                    "SELECT followee_id FROM {ks}.follows_by_follower \
                      WHERE follower_id = ? AND followee_id > ? LIMIT ?"
                ))
                .await?,
            count_followers: p
                .idempotent(format!(
                    "SELECT COUNT(*) FROM {ks}.follows_by_followee WHERE followee_id = ?"
                ))
                .await?,
            count_following: p
                .idempotent(format!(
                    "SELECT COUNT(*) FROM {ks}.follows_by_follower WHERE follower_id = ?"
                ))
                .await?,
            insert_author_post: p
                .idempotent(format!(
                    "INSERT INTO {ks}.author_posts (author_id, position, post_id) VALUES (?, ?, ?)"
                ))
                .await?,
            insert_post_by_id: p
                .idempotent(format!(
                    "INSERT INTO {ks}.posts_by_id (post_id, author_id, position) VALUES (?, ?, ?)"
                ))
                .await?,
            insert_recipient: p
                .idempotent(format!(
                    "INSERT INTO {ks}.post_recipients (post_id, user_id) VALUES (?, ?)"
                ))
                .await?,
            insert_timeline_entry: p
                .idempotent(format!(
                    "INSERT INTO {ks}.home_timeline (user_id, position, post_id, author_id) \
                     VALUES (?, ?, ?, ?)"
                ))
                .await?,
            increment_length: p
                .once(format!(
                    "UPDATE {ks}.timeline_lengths SET entry_count = entry_count + 1 WHERE user_id = ?"
                ))
                .await?,
            add_to_length: p
                .once(format!(
                    "UPDATE {ks}.timeline_lengths SET entry_count = entry_count + ? WHERE user_id = ?"
                ))
                .await?,
            select_length: p
                .idempotent(format!(
                    "SELECT entry_count FROM {ks}.timeline_lengths WHERE user_id = ?"
                ))
                .await?,
            select_newest_positions: p
                .idempotent(format!(
                    "SELECT position FROM {ks}.home_timeline WHERE user_id = ? LIMIT ?"
                ))
                .await?,
            delete_older_entries: p
                .idempotent(format!(
                    "DELETE FROM {ks}.home_timeline WHERE user_id = ? AND position < ?"
                ))
                .await?,
            decrement_length: p
                .once(format!(
                    "UPDATE {ks}.timeline_lengths SET entry_count = entry_count - ? WHERE user_id = ?"
                ))
                .await?,
            insert_merged_author: p
                .idempotent(format!(
                    "INSERT INTO {ks}.merged_authors (bucket, author_id) VALUES (0, ?)"
                ))
                .await?,
            select_merged_authors: p
                .idempotent(format!(
                    "SELECT author_id FROM {ks}.merged_authors WHERE bucket = 0"
                ))
                .await?,
            select_followed_among: p
                .idempotent(format!(
                    "SELECT followee_id FROM {ks}.follows_by_follower \
                     WHERE follower_id = ? AND followee_id IN ?"
                ))
                .await?,
            select_followers_among: p
                .idempotent(format!(
                    "SELECT follower_id FROM {ks}.follows_by_followee \
                     WHERE followee_id = ? AND follower_id IN ?"
                ))
                .await?,
            select_merged_author: p
                .idempotent(format!(
                    "SELECT author_id FROM {ks}.merged_authors WHERE bucket = 0 AND author_id = ?"
                ))
                .await?,
            select_listed_among: p
                .idempotent(format!(
                    "SELECT position FROM {ks}.author_posts WHERE author_id = ? AND position IN ?"
                ))
                .await?,
            select_timeline_authors: p
                .idempotent(format!(
                    "SELECT position, author_id FROM {ks}.home_timeline WHERE user_id = ?"
                ))
                .await?,
            acquire_trim: p
                .once(format!(
                    "INSERT INTO {ks}.timeline_trims (user_id, holder) VALUES (?, ?) \
                     IF NOT EXISTS USING TTL {TRIM_LEASE_SECS}"
                ))
                .await?,
            release_trim: p
                .once(format!(
                    "DELETE FROM {ks}.timeline_trims WHERE user_id = ? IF holder = ?"
                ))
                .await?,
            select_post_position: p
                .idempotent(format!(
                    "SELECT position FROM {ks}.posts_by_id WHERE post_id = ?"
                ))
                .await?,
            select_recipients: p
                .idempotent(format!(
                    "SELECT user_id FROM {ks}.post_recipients WHERE post_id = ?"
                ))
                .await?,
            delete_author_post: p
                .idempotent(format!(
                    "DELETE FROM {ks}.author_posts WHERE author_id = ? AND position = ?"
                ))
                .await?,
            delete_timeline_entry: p
                .idempotent(format!(
                    "DELETE FROM {ks}.home_timeline WHERE user_id = ? AND position = ?"
                ))
                .await?,
            delete_recipients: p
                .idempotent(format!(
                    "DELETE FROM {ks}.post_recipients WHERE post_id = ?"
                ))
                .await?,
            delete_post_by_id: p
                .idempotent(format!("DELETE FROM {ks}.posts_by_id WHERE post_id = ?"))
                .await?,
            select_timeline: p
                .idempotent(format!(
                    "SELECT position, post_id, author_id FROM {ks}.home_timeline \
                     WHERE user_id = ? LIMIT ?"
                ))
                .await?,
            select_timeline_before: p
                .idempotent(format!(
                    "SELECT position, post_id, author_id FROM {ks}.home_timeline \
                     WHERE user_id = ? AND position < ? LIMIT ?"
                ))
                .await?,
            select_author_posts: p
                .idempotent(format!(
                    "SELECT position, post_id, author_id FROM {ks}.author_posts \
                     WHERE author_id = ? LIMIT ?"
                ))
                .await?,
            select_author_posts_before: p
                .idempotent(format!(
                    "SELECT position, post_id, author_id FROM {ks}.author_posts \
                     WHERE author_id = ? AND position < ? LIMIT ?"
                ))
                .await?,
        })
    }
}

/// The keyspace, as a `CREATE KEYSPACE IF NOT EXISTS` statement. ScyllaDB (6 and later)
/// puts a new keyspace on tablets by default, where counters and lightweight transactions
/// are refused, so on ScyllaDB the keyspace turns them off; Cassandra does not know the
/// option at all.
fn keyspace(ks: &str, replication_factor: u32, scylla: bool) -> String {
    let tablets = if scylla {
        " AND tablets = {'enabled': false}"
    } else {
        ""
    };
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = \
         {{'class': 'NetworkTopologyStrategy', 'replication_factor': {replication_factor}}}\
         {tablets}"
    )
}

/// The tables, as `CREATE TABLE IF NOT EXISTS` statements in the quoted keyspace `ks`.
fn schema(ks: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.follows_by_followee ( \
                 followee_id uuid, follower_id uuid, \
                 PRIMARY KEY (followee_id, follower_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.follows_by_follower ( \
                 follower_id uuid, followee_id uuid, \
                 PRIMARY KEY (follower_id, followee_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.home_timeline ( \
                 user_id uuid, position bigint, post_id uuid, author_id uuid, \
                 PRIMARY KEY (user_id, position)) \
             WITH CLUSTERING ORDER BY (position DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.author_posts ( \
                 author_id uuid, position bigint, post_id uuid, \
                 PRIMARY KEY (author_id, position)) \
             WITH CLUSTERING ORDER BY (position DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.posts_by_id ( \
                 post_id uuid PRIMARY KEY, author_id uuid, position bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.post_recipients ( \
                 post_id uuid, user_id uuid, \
                 PRIMARY KEY (post_id, user_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.merged_authors ( \
                 bucket int, author_id uuid, \
                 PRIMARY KEY (bucket, author_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.timeline_trims ( \
                 user_id uuid PRIMARY KEY, holder uuid)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.timeline_lengths ( \
                 user_id uuid PRIMARY KEY, entry_count counter)"
        ),
    ]
}

/// Checks that `keyspace` is a plain identifier, since it is spliced into CQL, and returns
/// it double-quoted: quoting lets it start with `_` and be a CQL keyword, and a quoted
/// lower-case name is the same keyspace as the unquoted one.
pub(crate) fn quoted_keyspace(keyspace: &str) -> ReadResult<String> {
    let plain = !keyspace.is_empty()
        && keyspace.len() <= 48
        && keyspace.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && keyspace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        Ok(format!("\"{keyspace}\""))
    } else {
        Err(ReadModelError::Rejected(format!(
            "`{keyspace}` is not a plain keyspace name ([a-z_][a-z0-9_]{{0,47}})"
        )))
    }
}

/// Parses a consistency level name such as `LOCAL_QUORUM`, in any case.
pub(crate) fn parse_consistency(name: &str) -> ReadResult<Consistency> {
    match name.trim().to_ascii_uppercase().as_str() {
        "ANY" => Ok(Consistency::Any),
        "ONE" => Ok(Consistency::One),
        "TWO" => Ok(Consistency::Two),
        "THREE" => Ok(Consistency::Three),
        "QUORUM" => Ok(Consistency::Quorum),
        "ALL" => Ok(Consistency::All),
        "LOCAL_QUORUM" => Ok(Consistency::LocalQuorum),
        "EACH_QUORUM" => Ok(Consistency::EachQuorum),
        "LOCAL_ONE" => Ok(Consistency::LocalOne),
        _ => Err(ReadModelError::Rejected(format!(
            "`{name}` is not a consistency level; expected one of ONE, TWO, THREE, QUORUM, \
             ALL, LOCAL_QUORUM, EACH_QUORUM, LOCAL_ONE, ANY"
        ))),
    }
}

/// A session to `settings.nodes`, with no keyspace in use.
pub(crate) async fn session(settings: &ScyllaSettings) -> ReadResult<Session> {
    Ok(SessionBuilder::new()
        .known_nodes(&settings.nodes)
        .build()
        .await?)
}

/// Whether the cluster is ScyllaDB (it has `system.scylla_local`) rather than Cassandra.
async fn is_scylla(session: &Session) -> ReadResult<bool> {
    let result = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables \
             WHERE keyspace_name = 'system' AND table_name = 'scylla_local'",
            (),
        )
        .await?;
    Ok(!rows::<(String,)>(result)?.is_empty())
}

/// Creates the keyspace and tables if they do not exist, and waits until every reachable
/// node agrees on the schema. Run by `hybridlive migrate`, never by workers.
///
/// # Errors
/// [`ReadModelError::Rejected`] for a keyspace name that is not a plain identifier, a zero
/// replication factor, no nodes, or a statement the cluster refuses;
/// [`ReadModelError::Unavailable`] when the cluster cannot be reached or does not agree
/// on the schema in time.
#[tracing::instrument(skip_all, fields(keyspace = %settings.keyspace))]
pub async fn migrate(settings: &ScyllaSettings) -> Result<(), ReadModelError> {
    create_keyspace(settings, schema).await?;
    tracing::info!("Timeline keyspace is migrated.");
    Ok(())
}

/// Creates `settings.keyspace` and the tables `schema` names in it (given the quoted
/// keyspace), if they do not exist, and waits for schema agreement.
pub(crate) async fn create_keyspace(
    settings: &ScyllaSettings,
    schema: fn(&str) -> Vec<String>,
) -> Result<(), ReadModelError> {
    let ks = quoted_keyspace(&settings.keyspace)?;
    if settings.replication_factor == 0 {
        return Err(ReadModelError::Rejected(
            "the replication factor must be at least 1".into(),
        ));
    }
    let session = session(settings).await?;
    let scylla = is_scylla(&session).await?;
    session
        .query_unpaged(keyspace(&ks, settings.replication_factor, scylla), ())
        .await?;
    for statement in schema(&ks) {
        session.query_unpaged(statement, ()).await?;
    }
    session.await_schema_agreement().await?;
    Ok(())
}

/// Drops the keyspace and everything in it (a replay's retired generation, a test's).
///
/// # Errors
/// As [`migrate`].
pub async fn drop_keyspace(settings: &ScyllaSettings) -> Result<(), ReadModelError> {
    let ks = quoted_keyspace(&settings.keyspace)?;
    let session = session(settings).await?;
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ())
        .await?;
    session.await_schema_agreement().await?;
    Ok(())
}

/// Whether the keyspace exists (a replay resumes into its target only if it does).
///
/// # Errors
/// As [`migrate`].
pub async fn keyspace_exists(settings: &ScyllaSettings) -> Result<bool, ReadModelError> {
    quoted_keyspace(&settings.keyspace)?;
    let session = session(settings).await?;
    let result = session
        .query_unpaged(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (&settings.keyspace,),
        )
        .await?;
    Ok(!rows::<(String,)>(result)?.is_empty())
}

impl ScyllaTimelines {
    /// Connects to `settings.nodes` and prepares every statement against the tables of
    /// `settings.keyspace`, which [`migrate`] must have created.
    ///
    /// # Errors
    /// [`ReadModelError::Rejected`] for an unknown consistency level, a keyspace name that is
    /// not a plain identifier, no nodes, or missing tables; [`ReadModelError::Unavailable`]
    /// when the cluster cannot be reached.
    #[tracing::instrument(skip_all, fields(keyspace = %settings.keyspace))]
    pub async fn connect(settings: &ScyllaSettings) -> Result<Self, ReadModelError> {
        let consistency = parse_consistency(&settings.consistency)?;
        let ks = quoted_keyspace(&settings.keyspace)?;
        let session = session(settings).await?;
        let statements = Statements::prepare(
            &Preparer {
                session: &session,
                consistency,
            },
            &ks,
        )
        .await?;
        Ok(Self {
            session,
            statements,
        })
    }

    /// Every id in the one-column result of `statement` for `values`, page by page.
    /// Those of `values` that `statement` (`… WHERE <key> = ? AND <column> IN ?`, selecting
    /// that column) finds in `key`'s partition: one read per [`IN_CHUNK`] of them, at most
    /// [`PARALLELISM`] values in flight.
    async fn among<T>(
        &self,
        statement: &PreparedStatement,
        key: Uuid,
        values: &[T],
    ) -> ReadResult<Vec<T>>
    where
        T: Clone + Send + Sync + scylla::serialize::value::SerializeValue,
        (T,): for<'frame> scylla::deserialize::row::DeserializeRow<'frame, 'frame>,
    {
        // Owned chunks: a closure over borrowed slices is not `Send` enough for async-trait.
        let chunks: Vec<Vec<T>> = values.chunks(IN_CHUNK).map(<[T]>::to_vec).collect();
        let found: Vec<Vec<(T,)>> = stream::iter(chunks)
            .map(|chunk| async move {
                rows::<(T,)>(
                    self.session
                        .execute_unpaged(statement, (key, chunk))
                        .await?,
                )
            })
            .buffer_unordered(PARALLELISM / IN_CHUNK + 1)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().map(|(value,)| value).collect())
    }

    async fn ids(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow + Send + 'static,
    ) -> ReadResult<Vec<Uuid>> {
        let rows: Vec<(Uuid,)> = self
            .session
            .execute_iter(statement.clone(), values)
            .await?
            .rows_stream::<(Uuid,)>()?
            .try_collect()
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// The `COUNT(*)` of `statement` for `key`, paged: an unpaged count of a large
    /// partition (a popular author's followers) would have to finish within one request's
    /// timeout. Pages are summed, since a server may answer a paged aggregate with partial
    /// counts (or with empty pages and one total).
    async fn count(&self, statement: &PreparedStatement, key: Uuid) -> ReadResult<u64> {
        let counts: Vec<(i64,)> = self
            .session
            .execute_iter(statement.clone(), (key,))
            .await?
            .rows_stream::<(i64,)>()?
            .try_collect()
            .await?;
        Ok(counts.iter().map(|(n,)| n.unsigned_abs()).sum())
    }

    /// Adds the entry to one user's timeline and trims it when its counter says so.
    async fn deliver_to(&self, user: Uuid, entry: TimelineEntry, cap: usize) -> ReadResult<()> {
        let s = &self.statements;
        self.session
            .execute_unpaged(&s.insert_recipient, (entry.post_id, user))
            .await?;
        // The row before its count: the counter then never counts a row a trim could miss.
        self.session
            .execute_unpaged(
                &s.insert_timeline_entry,
                (user, entry.position, entry.post_id, entry.author_id),
            )
            .await?;
        self.session
            .execute_unpaged(&s.increment_length, (user,))
            .await?;
        if self.length(user).await? > allowed_length(cap) {
            self.trim(user, cap).await?;
        }
        Ok(())
    }

    /// What `user`'s counter says.
    async fn length(&self, user: Uuid) -> ReadResult<i64> {
        let result = self
            .session
            .execute_unpaged(&self.statements.select_length, (user,))
            .await?;
        Ok(rows::<(Counter,)>(result)?
            .first()
            .map_or(0, |(Counter(entries),)| *entries))
    }

    /// Trims `user`'s timeline under its trim lease. While another writer holds it, waits
    /// and looks at the length again: that writer's trim may have read the length before
    /// this delivery's increment, so leaving it the work could leave the timeline over its
    /// bound after every delivery returned. A crashed holder's lease expires
    /// ([`TRIM_LEASE_SECS`]).
    async fn trim(&self, user: Uuid, cap: usize) -> ReadResult<()> {
        let s = &self.statements;
        let holder = Uuid::new_v4();
        let mut pause = Duration::from_millis(5);
        loop {
            let acquired = self
                .session
                .execute_unpaged(&s.acquire_trim, (user, holder))
                .await?;
            if applied(acquired)? {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
            if self.length(user).await? <= allowed_length(cap) {
                return Ok(());
            }
        }
        let trimmed = self.trim_held(user, cap).await;
        let released = self
            .session
            .execute_unpaged(&s.release_trim, (user, holder))
            .await;
        trimmed?;
        released?;
        Ok(())
    }

    /// Deletes all but the newest `cap` entries of `user`'s timeline and takes the surplus
    /// off its counter, read afresh under the lease: a trim that finished just before has
    /// already taken its own surplus off.
    async fn trim_held(&self, user: Uuid, cap: usize) -> ReadResult<()> {
        let s = &self.statements;
        let counted = self.length(user).await?;
        if counted <= allowed_length(cap) {
            return Ok(());
        }
        let result = self
            .session
            .execute_unpaged(&s.select_newest_positions, (user, cql_limit(cap)))
            .await?;
        let newest = rows::<(i64,)>(result)?;
        if newest.len() >= cap {
            if let Some((oldest_kept,)) = newest.last() {
                self.session
                    .execute_unpaged(&s.delete_older_entries, (user, *oldest_kept))
                    .await?;
            }
        }
        let kept = i64::try_from(newest.len()).unwrap_or(i64::MAX);
        let surplus = counted.saturating_sub(kept);
        if surplus > 0 {
            self.session
                .execute_unpaged(&s.decrement_length, (Counter(surplus), user))
                .await?;
        }
        Ok(())
    }

    async fn entries(
        &self,
        key: Uuid,
        before: Option<i64>,
        limit: usize,
        all: &PreparedStatement,
        older: &PreparedStatement,
    ) -> ReadResult<Vec<TimelineEntry>> {
        // CQL refuses `LIMIT 0`.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let result = match before {
            None => {
                self.session
                    .execute_unpaged(all, (key, cql_limit(limit)))
                    .await?
            }
            Some(before) => {
                self.session
                    .execute_unpaged(older, (key, before, cql_limit(limit)))
                    .await?
            }
        };
        Ok(rows::<(i64, Uuid, Uuid)>(result)?
            .into_iter()
            .map(|(position, post_id, author_id)| TimelineEntry {
                position,
                post_id,
                author_id,
            })
            .collect())
    }
}

/// The rows of an unpaged result.
pub(crate) fn rows<R>(result: QueryResult) -> ReadResult<Vec<R>>
where
    R: for<'frame> scylla::deserialize::row::DeserializeRow<'frame, 'frame>,
{
    let result = result.into_rows_result()?;
    let rows = result.rows::<R>()?.collect::<Result<Vec<R>, _>>()?;
    Ok(rows)
}

/// The counter value past which a timeline of `cap` entries is trimmed.
fn allowed_length(cap: usize) -> i64 {
    i64::try_from(cap + cap / 8).unwrap_or(i64::MAX)
}

/// Whether a lightweight transaction was applied (its `[applied]` column).
fn applied(result: QueryResult) -> ReadResult<bool> {
    let rows = rows::<Row>(result)?;
    Ok(matches!(
        rows.first().and_then(|row| row.columns.first()),
        Some(Some(CqlValue::Boolean(true)))
    ))
}

/// A `LIMIT` bind value (a CQL `int`).
pub(crate) fn cql_limit(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Runs `task` for every item, at most [`PARALLELISM`] at a time; stops at the first error.
async fn for_each_concurrently<T, F, Fut>(items: Vec<T>, task: F) -> ReadResult<()>
where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = ReadResult<()>>,
{
    stream::iter(items)
        .map(task)
        .buffer_unordered(PARALLELISM)
        .try_collect()
        .await
}

#[async_trait::async_trait]
impl TimelineStore for ScyllaTimelines {
    async fn follow(&self, follower: Uuid, followee: Uuid) -> ReadResult<()> {
        let s = &self.statements;
        futures::try_join!(
            self.session
                .execute_unpaged(&s.insert_follower, (followee, follower)),
            self.session
                .execute_unpaged(&s.insert_followee, (follower, followee)),
        )?;
        Ok(())
    }

    async fn unfollow(&self, follower: Uuid, followee: Uuid) -> ReadResult<()> {
        let s = &self.statements;
        futures::try_join!(
            self.session
                .execute_unpaged(&s.delete_follower, (followee, follower)),
            self.session
                .execute_unpaged(&s.delete_followee, (follower, followee)),
        )?;
        Ok(())
    }

    async fn follows(&self, follower: Uuid, followee: Uuid) -> ReadResult<bool> {
        let found = self
            .among(
                &self.statements.select_followed_among,
                follower,
                &[followee],
            )
            .await?;
        Ok(!found.is_empty())
    }

    async fn followers_among(&self, user: Uuid, candidates: &[Uuid]) -> ReadResult<Vec<Uuid>> {
        self.among(&self.statements.select_followers_among, user, candidates)
            .await
    }

    async fn followers(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        self.ids(&self.statements.select_followers, (user,)).await
    }

    /// In Cassandra's order of UUIDs (by version first; the nil id sorts before all).
    async fn follows_page(
        &self,
        user: Uuid,
        direction: Direction,
        after: Uuid,
        limit: usize,
    ) -> ReadResult<Vec<Uuid>> {
        let statement = match direction {
            Direction::Followers => &self.statements.page_followers,
            Direction::Following => &self.statements.page_following,
        };
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        self.ids(statement, (user, after, limit)).await
    }

    async fn counts(&self, user: Uuid) -> ReadResult<FollowCounts> {
        let s = &self.statements;
        let (followers, following) = futures::try_join!(
            self.count(&s.count_followers, user),
            self.count(&s.count_following, user),
        )?;
        Ok(FollowCounts {
            followers,
            following,
        })
    }

    async fn add_author_post(&self, entry: TimelineEntry) -> ReadResult<()> {
        let s = &self.statements;
        futures::try_join!(
            self.session.execute_unpaged(
                &s.insert_author_post,
                (entry.author_id, entry.position, entry.post_id),
            ),
            self.session.execute_unpaged(
                &s.insert_post_by_id,
                (entry.post_id, entry.author_id, entry.position),
            ),
        )?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(users = users.len()))]
    async fn deliver(&self, users: &[Uuid], entry: TimelineEntry, cap: usize) -> ReadResult<()> {
        let cap = cap.max(1);
        // `remove_post` finds the position here even when the author's list was not written.
        self.session
            .execute_unpaged(
                &self.statements.insert_post_by_id,
                (entry.post_id, entry.author_id, entry.position),
            )
            .await?;
        // A user listed twice must be counted once, like the lite store does.
        let mut seen = HashSet::with_capacity(users.len());
        let distinct: Vec<Uuid> = users.iter().copied().filter(|u| seen.insert(*u)).collect();
        for_each_concurrently(distinct, |user| self.deliver_to(user, entry, cap)).await
    }

    async fn mark_merged_at_read(&self, author: Uuid) -> ReadResult<()> {
        self.session
            .execute_unpaged(&self.statements.insert_merged_author, (author,))
            .await?;
        Ok(())
    }

    async fn merged_at_read(&self, author: Uuid) -> ReadResult<bool> {
        let found = self
            .ids(&self.statements.select_merged_author, (author,))
            .await?;
        Ok(!found.is_empty())
    }

    #[tracing::instrument(skip_all, fields(entries = entries.len()))]
    async fn backfill(&self, user: Uuid, entries: &[TimelineEntry], cap: usize) -> ReadResult<()> {
        let s = &self.statements;
        let cap = cap.max(1);
        for_each_concurrently(entries.to_vec(), |entry| async move {
            // The recipient before the row, as in a delivery: a removal finds every row.
            self.session
                .execute_unpaged(&s.insert_recipient, (entry.post_id, user))
                .await?;
            self.session
                .execute_unpaged(
                    &s.insert_timeline_entry,
                    (user, entry.position, entry.post_id, entry.author_id),
                )
                .await?;
            Ok(())
        })
        .await?;
        let added = i64::try_from(entries.len()).unwrap_or(i64::MAX);
        self.session
            .execute_unpaged(&s.add_to_length, (Counter(added), user))
            .await?;
        if self.length(user).await? > allowed_length(cap) {
            self.trim(user, cap).await?;
        }
        Ok(())
    }

    async fn retract(&self, users: &[Uuid], entry: TimelineEntry) -> ReadResult<()> {
        let s = &self.statements;
        for_each_concurrently(users.to_vec(), |user| async move {
            self.session
                .execute_unpaged(&s.delete_timeline_entry, (user, entry.position))
                .await?;
            Ok(())
        })
        .await
    }

    async fn withdraw(&self, user: Uuid, author: Uuid) -> ReadResult<()> {
        let s = &self.statements;
        let rows: Vec<(i64, Uuid)> = self
            .session
            .execute_iter(s.select_timeline_authors.clone(), (user,))
            .await?
            .rows_stream::<(i64, Uuid)>()?
            .try_collect()
            .await?;
        let positions: Vec<i64> = rows
            .into_iter()
            .filter(|(_, of)| *of == author)
            .map(|(position, _)| position)
            .collect();
        for_each_concurrently(positions, |position| async move {
            self.session
                .execute_unpaged(&s.delete_timeline_entry, (user, position))
                .await?;
            Ok(())
        })
        .await
    }

    async fn still_listed(&self, author: Uuid, positions: &[i64]) -> ReadResult<Vec<i64>> {
        self.among(&self.statements.select_listed_among, author, positions)
            .await
    }

    /// Every feed read asks this, so it costs one read of the (small) list of merged
    /// authors, and then one read of the user's follows partition per `IN_CHUNK` of them,
    /// whatever the number of people the user follows.
    async fn merged_authors_followed_by(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        let s = &self.statements;
        let merged = self.ids(&s.select_merged_authors, ()).await?;
        self.among(&s.select_followed_among, user, &merged).await
    }

    #[tracing::instrument(skip_all, fields(%post_id))]
    async fn remove_post(&self, author: Uuid, post_id: Uuid) -> ReadResult<()> {
        let s = &self.statements;
        let result = self
            .session
            .execute_unpaged(&s.select_post_position, (post_id,))
            .await?;
        let Some(&(position,)) = rows::<(i64,)>(result)?.first() else {
            return Ok(());
        };
        // The lite store deletes the author's row only when `author` wrote the post; positions
        // are unique, so another author's partition has no row at this position either.
        self.session
            .execute_unpaged(&s.delete_author_post, (author, position))
            .await?;
        let recipients = self.ids(&s.select_recipients, (post_id,)).await?;
        for_each_concurrently(recipients, |user| async move {
            self.session
                .execute_unpaged(&s.delete_timeline_entry, (user, position))
                .await?;
            Ok(())
        })
        .await?;
        self.session
            .execute_unpaged(&s.delete_recipients, (post_id,))
            .await?;
        self.session
            .execute_unpaged(&s.delete_post_by_id, (post_id,))
            .await?;
        Ok(())
    }

    async fn timeline(
        &self,
        user: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<TimelineEntry>> {
        let s = &self.statements;
        self.entries(
            user,
            before,
            limit,
            &s.select_timeline,
            &s.select_timeline_before,
        )
        .await
    }

    async fn author_posts(
        &self,
        author: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<TimelineEntry>> {
        let s = &self.statements;
        self.entries(
            author,
            before,
            limit,
            &s.select_author_posts,
            &s.select_author_posts_before,
        )
        .await
    }
}

// Driver errors: timeouts, unreachable or overloaded nodes and broken connections are
// `Unavailable` (the event is retried); statements or data the cluster refuses, and rows of
// an unexpected shape, are `Rejected`. Authorisation failures count as unavailable, since an
// operator can fix them without the event changing. The message is always the outermost
// error's, which says what was being done.

fn classified(rejected: bool, error: impl std::fmt::Display) -> ReadModelError {
    if rejected {
        ReadModelError::Rejected(error.to_string())
    } else {
        ReadModelError::Unavailable(error.to_string())
    }
}

fn attempt_rejected(error: &RequestAttemptError) -> bool {
    match error {
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_) => true,
        RequestAttemptError::DbError(db, _) => matches!(
            db,
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::AlreadyExists { .. }
                | DbError::FunctionFailure { .. }
                | DbError::ConfigError
        ),
        _ => false,
    }
}

fn prepare_rejected(error: &PrepareError) -> bool {
    match error {
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_rejected(first_attempt),
        _ => false,
    }
}

fn next_page_rejected(error: &NextPageError) -> bool {
    match error {
        NextPageError::RequestFailure(RequestError::LastAttemptError(attempt)) => {
            attempt_rejected(attempt)
        }
        NextPageError::TypeCheckError(_) | NextPageError::PartitionKeyError(_) => true,
        _ => false,
    }
}

impl From<ExecutionError> for ReadModelError {
    fn from(error: ExecutionError) -> Self {
        let rejected = match &error {
            ExecutionError::BadQuery(_) => true,
            ExecutionError::PrepareError(prepare) => prepare_rejected(prepare),
            ExecutionError::LastAttemptError(attempt) => attempt_rejected(attempt),
            _ => false,
        };
        classified(rejected, error)
    }
}

impl From<PrepareError> for ReadModelError {
    fn from(error: PrepareError) -> Self {
        classified(prepare_rejected(&error), error)
    }
}

impl From<PagerExecutionError> for ReadModelError {
    fn from(error: PagerExecutionError) -> Self {
        let rejected = match &error {
            PagerExecutionError::PrepareError(prepare) => prepare_rejected(prepare),
            PagerExecutionError::SerializationError(_) => true,
            PagerExecutionError::NextPageError(page) => next_page_rejected(page),
            _ => false,
        };
        classified(rejected, error)
    }
}

impl From<NextRowError> for ReadModelError {
    fn from(error: NextRowError) -> Self {
        let rejected = match &error {
            NextRowError::NextPageError(page) => next_page_rejected(page),
            // A row that does not deserialize.
            _ => true,
        };
        classified(rejected, error)
    }
}

impl From<NewSessionError> for ReadModelError {
    fn from(error: NewSessionError) -> Self {
        let rejected = matches!(
            error,
            NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_)
        );
        classified(rejected, error)
    }
}

impl From<SchemaAgreementError> for ReadModelError {
    fn from(error: SchemaAgreementError) -> Self {
        classified(false, error)
    }
}

impl From<IntoRowsResultError> for ReadModelError {
    fn from(error: IntoRowsResultError) -> Self {
        classified(true, error)
    }
}

impl From<RowsError> for ReadModelError {
    fn from(error: RowsError) -> Self {
        classified(true, error)
    }
}

impl From<TypeCheckError> for ReadModelError {
    fn from(error: TypeCheckError) -> Self {
        classified(true, error)
    }
}

impl From<DeserializationError> for ReadModelError {
    fn from(error: DeserializationError) -> Self {
        classified(true, error)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn consistency_names_parse_in_any_case() {
        assert_eq!(
            parse_consistency("local_quorum").unwrap(),
            Consistency::LocalQuorum
        );
        assert_eq!(parse_consistency("ONE").unwrap(), Consistency::One);
        assert_eq!(
            parse_consistency(" Each_Quorum ").unwrap(),
            Consistency::EachQuorum
        );
    }

    #[test]
    fn unknown_consistency_is_rejected() {
        assert!(matches!(
            parse_consistency("SERIAL"),
            Err(ReadModelError::Rejected(_))
        ));
        assert!(matches!(
            parse_consistency("quorom"),
            Err(ReadModelError::Rejected(_))
        ));
    }

    #[test]
    fn keyspace_must_be_a_plain_identifier() {
        assert_eq!(quoted_keyspace("hybrid_live").unwrap(), "\"hybrid_live\"");
        assert_eq!(quoted_keyspace("_t1").unwrap(), "\"_t1\"");
        let too_long = "k".repeat(49);
        for bad in ["", "1ks", "Ks", "ks;DROP", "ks\"", too_long.as_str()] {
            assert!(
                matches!(quoted_keyspace(bad), Err(ReadModelError::Rejected(_))),
                "{bad:?} was accepted"
            );
        }
        assert!(quoted_keyspace(&"k".repeat(48)).is_ok());
    }

    #[test]
    fn the_keyspace_turns_tablets_off_on_scylla_only() {
        let scylla = keyspace("\"ks\"", 3, true);
        assert!(scylla.contains("'replication_factor': 3"));
        assert!(scylla.ends_with("AND tablets = {'enabled': false}"));
        let cassandra = keyspace("\"ks\"", 1, false);
        assert!(
            cassandra.ends_with("'replication_factor': 1}"),
            "{cassandra}"
        );
    }

    #[test]
    fn migration_creates_every_table_in_the_keyspace() {
        let statements = schema("\"ks\"");
        for table in [
            "follows_by_followee",
            "follows_by_follower",
            "home_timeline",
            "author_posts",
            "posts_by_id",
            "post_recipients",
            "merged_authors",
            "timeline_lengths",
            "timeline_trims",
        ] {
            assert!(
                statements
                    .iter()
                    .any(|s| s.contains(&format!("\"ks\".{table} ("))),
                "{table} is not created"
            );
        }
    }
}
