//! [`PgTimelines`]: the lite [`TimelineStore`] in PostgreSQL (tables of migration 4).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    Direction, FollowCounts, TimelineEntry, TimelineSettings, TimelineStore, TimelineWrite,
};
use crate::error::{ReadModelError, ReadResult};
use crate::lite::{changed_pairs, checked_schema, stored_pairs, SoleWriter};

/// Timelines in the tables of one schema (`read_model` by default; replay builds others).
#[derive(Debug, Clone)]
pub struct PgTimelines {
    pool: PgPool,
    schema: String,
    /// The tables' one writer, a replay, handing the set-wise batches what they would
    /// otherwise load (see [`PgTimelines::written_by`]).
    sole_writer: Option<Arc<dyn SoleWriter<KnownTimelines>>>,
    /// Set while the stored lengths may not count the stored rows (a sole writer's batch
    /// failed among its commits, see [`Self::store_at_once`]): recounted before the next
    /// write.
    lengths_unsure: Arc<AtomicBool>,
}

/// What the set-wise batches of tables written by one writer since they were empty would
/// load, as that writer keeps it ([`SoleWriter`]): the follower sets, the sticky
/// merged-at-read marks, the timeline lengths, and which posts were fanned out (only their
/// timeline rows are loaded, for a redelivery or a removal).
#[derive(Debug, Default)]
pub struct KnownTimelines {
    followers: HashMap<Uuid, HashSet<Uuid>>,
    merged: HashSet<Uuid>,
    lengths: HashMap<Uuid, i64>,
    fanned_out: HashSet<Uuid>,
}

impl KnownTimelines {
    /// How many entries its maps and sets hold, which its keeper bounds.
    pub fn entries(&self) -> usize {
        self.followers.values().map(HashSet::len).sum::<usize>()
            + self.merged.len()
            + self.lengths.len()
            + self.fanned_out.len()
    }
}

impl PgTimelines {
    /// Its tables, in every schema that holds a copy (replay copies and swaps them).
    pub const TABLES: &'static [&'static str] = &[
        "follows",
        "timelines",
        "timeline_lengths",
        "author_posts",
        "merged_authors",
    ];

    /// The live lite model, in [`crate::lite::LITE_SCHEMA`].
    pub fn lite(pool: PgPool) -> Self {
        Self {
            pool,
            schema: crate::lite::LITE_SCHEMA.to_owned(),
            sole_writer: None,
            lengths_unsure: Arc::default(),
        }
    }

    /// The timelines in `schema`.
    ///
    /// # Errors
    /// [`ReadModelError::Rejected`] when `schema` is not a plain lower-case identifier.
    pub fn new(pool: PgPool, schema: &str) -> ReadResult<Self> {
        Ok(Self {
            pool,
            schema: checked_schema(schema)?,
            sole_writer: None,
            lengths_unsure: Arc::default(),
        })
    }

    /// Its set-wise batches take what they would load from `writer`, and store what
    /// changed without guarding against other writers: plain inserts, each statement at
    /// once in a transaction of its own. Only for tables that are
    /// **empty now and written by `writer` alone** from now on (a replay into fresh tables).
    #[must_use]
    pub fn written_by(self, writer: Arc<dyn SoleWriter<KnownTimelines>>) -> Self {
        Self {
            sole_writer: Some(writer),
            ..self
        }
    }

    /// Sets every stored length to the count of the stored rows. For tables a sole writer
    /// may have left with part of a batch stored (a replay killed mid-batch, resumed):
    /// run before writing to them again.
    ///
    /// # Errors
    /// When the statements fail.
    pub async fn recount_lengths(&self) -> ReadResult<()> {
        let s = &self.schema;
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO {s}.timeline_lengths (user_id, entries) \
             SELECT user_id, count(*)::integer FROM {s}.timelines GROUP BY user_id \
             ON CONFLICT (user_id) DO UPDATE SET entries = EXCLUDED.entries \
             WHERE {s}.timeline_lengths.entries <> EXCLUDED.entries"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "UPDATE {s}.timeline_lengths l SET entries = 0 WHERE l.entries <> 0 \
               AND NOT EXISTS (SELECT 1 FROM {s}.timelines t WHERE t.user_id = l.user_id)"
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(schema = %s, "Timeline lengths recounted from the stored rows.");
        Ok(())
    }

    /// Recounts the lengths when they may be off (see `lengths_unsure`).
    async fn trust_lengths(&self) -> ReadResult<()> {
        if self.lengths_unsure.load(Ordering::Acquire) {
            self.recount_lengths().await?;
            self.lengths_unsure.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// A single write changes the tables behind what the sole writer keeps.
    fn forget_known(&self) {
        if let Some(writer) = &self.sole_writer {
            writer.forget();
        }
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl TimelineStore for PgTimelines {
    async fn follow(&self, follower: Uuid, followee: Uuid) -> ReadResult<()> {
        self.forget_known();
        sqlx::query(&format!(
            "INSERT INTO {}.follows (follower_id, followee_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            self.schema
        ))
        .bind(follower)
        .bind(followee)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unfollow(&self, follower: Uuid, followee: Uuid) -> ReadResult<()> {
        self.forget_known();
        sqlx::query(&format!(
            "DELETE FROM {}.follows WHERE follower_id = $1 AND followee_id = $2",
            self.schema
        ))
        .bind(follower)
        .bind(followee)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn follows(&self, follower: Uuid, followee: Uuid) -> ReadResult<bool> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {}.follows WHERE follower_id = $1 AND followee_id = $2)",
            self.schema
        ))
        .bind(follower)
        .bind(followee)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn followers_among(&self, user: Uuid, candidates: &[Uuid]) -> ReadResult<Vec<Uuid>> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT follower_id FROM {}.follows WHERE followee_id = $1 AND follower_id = ANY($2)",
            self.schema
        ))
        .bind(user)
        .bind(candidates)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn followers(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT follower_id FROM {}.follows WHERE followee_id = $1",
            self.schema
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn follows_page(
        &self,
        user: Uuid,
        direction: Direction,
        after: Uuid,
        limit: usize,
    ) -> ReadResult<Vec<Uuid>> {
        let (listed, key) = match direction {
            Direction::Followers => ("follower_id", "followee_id"),
            Direction::Following => ("followee_id", "follower_id"),
        };
        Ok(sqlx::query_scalar(&format!(
            "SELECT {listed} FROM {}.follows WHERE {key} = $1 AND {listed} > $2 \
              ORDER BY {listed} LIMIT $3",
            self.schema
        ))
        .bind(user)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn counts(&self, user: Uuid) -> ReadResult<FollowCounts> {
        let s = &self.schema;
        let (followers, following): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {s}.follows WHERE followee_id = $1), \
                    (SELECT count(*) FROM {s}.follows WHERE follower_id = $1)"
        ))
        .bind(user)
        .fetch_one(&self.pool)
        .await?;
        Ok(FollowCounts {
            followers: followers.unsigned_abs(),
            following: following.unsigned_abs(),
        })
    }

    async fn add_author_post(&self, entry: TimelineEntry) -> ReadResult<()> {
        self.forget_known();
        sqlx::query(&format!(
            "INSERT INTO {}.author_posts (author_id, position, post_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            self.schema
        ))
        .bind(entry.author_id)
        .bind(entry.position)
        .bind(entry.post_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deliver(&self, users: &[Uuid], entry: TimelineEntry, cap: usize) -> ReadResult<()> {
        self.forget_known();
        let rows = users.iter().map(|user| (*user, entry)).collect();
        self.add_rows(Rows::of(rows), cap).await
    }

    async fn backfill(&self, user: Uuid, entries: &[TimelineEntry], cap: usize) -> ReadResult<()> {
        self.forget_known();
        let rows = entries.iter().map(|entry| (user, *entry)).collect();
        self.add_rows(Rows::of(rows), cap).await
    }

    async fn retract(&self, users: &[Uuid], entry: TimelineEntry) -> ReadResult<()> {
        self.forget_known();
        let rows = users.iter().map(|user| (*user, entry.position)).collect();
        self.remove_rows(rows).await
    }

    async fn withdraw(&self, user: Uuid, author: Uuid) -> ReadResult<()> {
        self.forget_known();
        self.withdraw_all(vec![(user, author)]).await
    }

    async fn still_listed(&self, author: Uuid, positions: &[i64]) -> ReadResult<Vec<i64>> {
        let listed = self
            .listed_among(positions.iter().map(|p| (author, *p)).collect())
            .await?;
        Ok(listed.into_iter().map(|(_, position)| position).collect())
    }

    async fn mark_merged_at_read(&self, author: Uuid) -> ReadResult<()> {
        self.forget_known();
        sqlx::query(&format!(
            "INSERT INTO {}.merged_authors (author_id) VALUES ($1) ON CONFLICT DO NOTHING",
            self.schema
        ))
        .bind(author)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn merged_authors_followed_by(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        let s = &self.schema;
        Ok(sqlx::query_scalar(&format!(
            "SELECT m.author_id FROM {s}.merged_authors m \
               JOIN {s}.follows f ON f.followee_id = m.author_id \
              WHERE f.follower_id = $1"
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn merged_at_read(&self, author: Uuid) -> ReadResult<bool> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {}.merged_authors WHERE author_id = $1)",
            self.schema
        ))
        .bind(author)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn remove_post(&self, author: Uuid, post_id: Uuid) -> ReadResult<()> {
        self.forget_known();
        self.trust_lengths().await?;
        let s = &self.schema;
        let mut tx = self.pool.begin().await?;
        // Unlisted first, by a statement of its own: the removal of the rows below then
        // sees every row a follow's backfill committed before this one, and a backfill
        // that commits later finds the post unlisted — its check of what is still listed
        // (`still_listed`, `FOR SHARE`) waits for this transaction. Its timeline rows are
        // found by its position, which its author list gives (by post id alone, as the
        // set-wise batches find it).
        let position: Option<i64> = sqlx::query_scalar(&format!(
            "WITH listed AS (SELECT position FROM {s}.author_posts WHERE post_id = $2), \
             unlisted AS ( \
                 DELETE FROM {s}.author_posts WHERE author_id = $1 AND post_id = $2) \
             SELECT position FROM listed"
        ))
        .bind(author)
        .bind(post_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(position) = position {
            sqlx::query(&format!(
                "WITH removed AS ( \
                     DELETE FROM {s}.timelines t WHERE t.position = $1 AND t.post_id = $2 \
                     RETURNING t.user_id) \
                 UPDATE {s}.timeline_lengths l SET entries = l.entries - 1 \
                   FROM removed WHERE l.user_id = removed.user_id"
            ))
            .bind(position)
            .bind(post_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn timeline(
        &self,
        user: Uuid,
        before: Option<i64>,
        limit_to: usize,
    ) -> ReadResult<Vec<TimelineEntry>> {
        self.page("timelines", "user_id", user, before, limit_to)
            .await
    }

    async fn author_posts(
        &self,
        author: Uuid,
        before: Option<i64>,
        limit_to: usize,
    ) -> ReadResult<Vec<TimelineEntry>> {
        self.page("author_posts", "author_id", author, before, limit_to)
            .await
    }

    async fn write_all(
        &self,
        writes: &[TimelineWrite],
        settings: TimelineSettings,
    ) -> ReadResult<Vec<Vec<Uuid>>> {
        self.write_set_wise(writes, settings).await
    }
}

impl PgTimelines {
    /// Newest-first entries of one owner's list (`table` keyed by `owner_column`).
    async fn page(
        &self,
        table: &str,
        owner_column: &str,
        owner: Uuid,
        before: Option<i64>,
        limit_to: usize,
    ) -> ReadResult<Vec<TimelineEntry>> {
        let rows: Vec<(i64, Uuid, Uuid)> = sqlx::query_as(&format!(
            "SELECT position, post_id, author_id FROM {schema}.{table} \
              WHERE {owner_column} = $1 AND ($2::bigint IS NULL OR position < $2) \
              ORDER BY position DESC LIMIT $3",
            schema = self.schema,
        ))
        .bind(owner)
        .bind(before)
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(position, post_id, author_id)| TimelineEntry {
                position,
                post_id,
                author_id,
            })
            .collect())
    }
}

impl PgTimelines {
    /// Adds `rows` to their timelines, in one transaction: a row already there is left and
    /// not counted again (idempotent), and the timelines that passed `cap` by more than an
    /// eighth are trimmed back to it.
    async fn add_rows(&self, rows: Rows, cap: usize) -> ReadResult<()> {
        self.trust_lengths().await?;
        if rows.users.is_empty() {
            return Ok(());
        }
        let s = &self.schema;
        let cap = cap.max(1);
        let mut tx = self.pool.begin().await?;
        let over: Vec<Uuid> = sqlx::query_scalar(&format!(
            "WITH inserted AS ( \
                 INSERT INTO {s}.timelines (user_id, position, post_id, author_id) \
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[]) \
                 ON CONFLICT DO NOTHING RETURNING user_id), \
             counted AS ( \
                 INSERT INTO {s}.timeline_lengths (user_id, entries) \
                 SELECT user_id, count(*)::integer FROM inserted GROUP BY user_id ORDER BY user_id \
                 ON CONFLICT (user_id) \
                 DO UPDATE SET entries = {s}.timeline_lengths.entries + EXCLUDED.entries \
                 RETURNING user_id, entries) \
             SELECT user_id FROM counted WHERE entries > $5"
        ))
        .bind(rows.users)
        .bind(rows.positions)
        .bind(rows.posts)
        .bind(rows.authors)
        .bind(limit(cap + cap / 8))
        .fetch_all(&mut *tx)
        .await?;
        if !over.is_empty() {
            sqlx::query(&format!(
                "WITH doomed AS ( \
                     DELETE FROM {s}.timelines t USING unnest($1::uuid[]) AS o(user_id) \
                     WHERE t.user_id = o.user_id AND t.position < ( \
                         SELECT x.position FROM {s}.timelines x WHERE x.user_id = o.user_id \
                         ORDER BY x.position DESC OFFSET $2 LIMIT 1) \
                     RETURNING t.user_id) \
                 UPDATE {s}.timeline_lengths l SET entries = l.entries - d.n \
                   FROM (SELECT user_id, count(*) AS n FROM doomed GROUP BY user_id) d \
                  WHERE l.user_id = d.user_id"
            ))
            .bind(&over)
            .bind(limit(cap - 1))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes the timeline rows `(user, position)` that are there, and counts them off.
    async fn remove_rows(&self, rows: Vec<(Uuid, i64)>) -> ReadResult<()> {
        self.delete_counted(rows, "$2::bigint[]", "position").await
    }

    /// Removes every entry of each author from the timeline of its follower (`pairs` of
    /// follower and author), and counts them off. Reads each timeline's rows (its primary
    /// key's prefix), at most about `cap + cap / 8` of them.
    async fn withdraw_all(&self, pairs: Vec<(Uuid, Uuid)>) -> ReadResult<()> {
        self.delete_counted(pairs, "$2::uuid[]", "author_id").await
    }

    /// Deletes the timeline rows of each `(user, value)` of `keys` whose `column` is that
    /// value (`array` is the type of the bound values), and counts them off the users'
    /// lengths, in one statement.
    async fn delete_counted<T>(
        &self,
        mut keys: Vec<(Uuid, T)>,
        array: &str,
        column: &str,
    ) -> ReadResult<()>
    where
        T: Ord + Send + sqlx::Type<sqlx::Postgres> + for<'q> sqlx::Encode<'q, sqlx::Postgres>,
        Vec<T>: sqlx::Type<sqlx::Postgres> + for<'q> sqlx::Encode<'q, sqlx::Postgres> + Send,
    {
        if keys.is_empty() {
            return Ok(());
        }
        self.trust_lengths().await?;
        keys.sort_unstable();
        keys.dedup();
        let s = &self.schema;
        let (users, values): (Vec<Uuid>, Vec<T>) = keys.into_iter().unzip();
        sqlx::query(&format!(
            "WITH removed AS ( \
                 DELETE FROM {s}.timelines t USING unnest($1::uuid[], {array}) AS k(u, v) \
                  WHERE t.user_id = k.u AND t.{column} = k.v RETURNING t.user_id) \
             UPDATE {s}.timeline_lengths l SET entries = l.entries - d.n \
               FROM (SELECT user_id, count(*) AS n FROM removed GROUP BY user_id) d \
              WHERE l.user_id = d.user_id"
        ))
        .bind(users)
        .bind(values)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Those of the `(author, position)` entries still in their author's list. `FOR SHARE`
    /// waits for a removal under way (its transaction holds the row it deleted) and then
    /// skips its row: a check made while a removal has not committed sees the post gone.
    async fn listed_among(&self, mut entries: Vec<(Uuid, i64)>) -> ReadResult<Vec<(Uuid, i64)>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        entries.sort_unstable();
        entries.dedup();
        let s = &self.schema;
        let (authors, positions): (Vec<Uuid>, Vec<i64>) = entries.into_iter().unzip();
        Ok(sqlx::query_as(&format!(
            "SELECT a.author_id, a.position FROM {s}.author_posts a \
              WHERE (a.author_id, a.position) IN ( \
                  SELECT * FROM unnest($1::uuid[], $2::bigint[])) \
              ORDER BY a.author_id, a.position FOR SHARE"
        ))
        .bind(authors)
        .bind(positions)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// A row of `timelines` as a set-wise batch sees it.
struct Row {
    /// Stored before the batch.
    stored: bool,
    /// There after the writes so far.
    present: bool,
    post_id: Uuid,
    author_id: Uuid,
}

/// A row of `timeline_lengths` as a set-wise batch sees it.
#[derive(Default)]
struct Length {
    entries: i64,
    exists: bool,
    changed: bool,
    /// Read from the table or known to the sole writer: a row of `timeline_lengths` before
    /// the batch.
    stored: bool,
}

/// A write of a set-wise batch on the timelines, in the order of the batch.
enum Step {
    /// A publication, to these users; whether it was fanned out (not merged at read).
    Deliver(Vec<Uuid>, TimelineEntry, bool),
    Remove {
        author: Uuid,
        post_id: Uuid,
    },
    /// A follow's backfill (its followee not merged at read).
    Backfill {
        follower: Uuid,
        author: Uuid,
    },
    /// An unfollow's removal of the followee's entries.
    Withdraw {
        follower: Uuid,
        author: Uuid,
    },
}

type Keyed = HashMap<(Uuid, i64), Row>;

/// Records the loaded `timelines` rows in `rows` (and `by_post`), once each.
fn loaded(
    rows: &mut Keyed,
    by_post: &mut HashMap<Uuid, Vec<(Uuid, i64)>>,
    found: Vec<(Uuid, i64, Uuid, Uuid)>,
) {
    for (user_id, position, post_id, author_id) in found {
        if let std::collections::hash_map::Entry::Vacant(slot) = rows.entry((user_id, position)) {
            slot.insert(Row {
                stored: true,
                present: true,
                post_id,
                author_id,
            });
            by_post
                .entry(post_id)
                .or_default()
                .push((user_id, position));
        }
    }
}

/// The timelines a set-wise batch touches, as loaded and then changed write by write.
#[derive(Default)]
struct View {
    rows: Keyed,
    by_post: HashMap<Uuid, Vec<(Uuid, i64)>>,
    lengths: HashMap<Uuid, Length>,
    /// The positions present in the timelines loaded whole: those the batch may take past
    /// their cap (to trim them) and the followers of its follows and unfollows.
    whole: HashMap<Uuid, BTreeSet<i64>>,
}

impl View {
    /// Adds `entry` to `user`'s timeline unless it holds it; whether it did.
    fn add(&mut self, user: Uuid, entry: TimelineEntry) -> bool {
        let key = (user, entry.position);
        let by_post = &mut self.by_post;
        let row = self.rows.entry(key).or_insert_with(|| {
            by_post.entry(entry.post_id).or_default().push(key);
            Row {
                stored: false,
                present: false,
                post_id: entry.post_id,
                author_id: entry.author_id,
            }
        });
        if row.present {
            return false;
        }
        row.present = true;
        let length = self.lengths.entry(user).or_default();
        length.entries += 1;
        length.exists = true;
        length.changed = true;
        if let Some(positions) = self.whole.get_mut(&user) {
            positions.insert(entry.position);
        }
        true
    }

    /// Past the cap by more than an eighth (`over`): back to the newest `cap`, as
    /// [`PgTimelines::add_rows`] trims. Only a timeline loaded whole can be.
    fn trim(&mut self, user: Uuid, cap: usize, over: i64) {
        let (Some(positions), Some(length)) =
            (self.whole.get_mut(&user), self.lengths.get_mut(&user))
        else {
            return;
        };
        if length.entries <= over || positions.len() < cap {
            return;
        }
        let Some(&oldest_kept) = positions.iter().rev().nth(cap - 1) else {
            return;
        };
        let doomed: Vec<i64> = positions.range(..oldest_kept).copied().collect();
        for position in &doomed {
            positions.remove(position);
            if let Some(row) = self.rows.get_mut(&(user, *position)) {
                row.present = false;
            }
        }
        length.entries -= i64::try_from(doomed.len()).unwrap_or(i64::MAX);
        length.changed = true;
    }

    /// Removes the row at `key` if it is present.
    fn remove(&mut self, key: (Uuid, i64)) {
        let Some(row) = self.rows.get_mut(&key) else {
            return;
        };
        if !row.present {
            return;
        }
        row.present = false;
        if let Some(positions) = self.whole.get_mut(&key.0) {
            positions.remove(&key.1);
        }
        if let Some(length) = self.lengths.get_mut(&key.0).filter(|l| l.exists) {
            length.entries -= 1;
            length.changed = true;
        }
    }

    fn remove_post(&mut self, post_id: Uuid) {
        let keys = self.by_post.get(&post_id).cloned().unwrap_or_default();
        for key in keys {
            self.remove(key);
        }
    }

    /// Removes `author`'s entries from `user`'s timeline (loaded whole).
    fn withdraw(&mut self, user: Uuid, author: Uuid) {
        let keys: Vec<(Uuid, i64)> = self
            .whole
            .get(&user)
            .into_iter()
            .flatten()
            .filter(|p| {
                self.rows
                    .get(&(user, **p))
                    .is_some_and(|row| row.author_id == author)
            })
            .map(|p| (user, *p))
            .collect();
        for key in keys {
            self.remove(key);
        }
    }
}

/// A followee's list as a set-wise batch sees it: its newest stored posts, as many as a
/// backfill may take after the batch's removals, changed by the batch's publications and
/// removals.
#[derive(Default)]
struct AuthorList {
    entries: BTreeMap<i64, TimelineEntry>,
    /// Every position the batch knew of (loaded, published or removed).
    known: HashSet<i64>,
    /// The oldest position loaded, when the load stopped at its limit (older posts exist).
    floor: Option<i64>,
}

impl AuthorList {
    fn newest(&self, n: usize) -> Vec<TimelineEntry> {
        self.entries.values().rev().take(n).copied().collect()
    }

    /// Whether `position`, listed now, was listed by a writer beside the batch.
    fn unseen(&self, position: i64) -> bool {
        !self.known.contains(&position) && self.floor.is_none_or(|floor| position > floor)
    }
}

/// What a batch without a sole writer checks again once committed, against what other
/// writers committed meanwhile (see [`PgTimelines::recheck`]).
#[derive(Default)]
struct Recheck {
    /// Posts fanned out and still listed: each with whom the batch knew to have it (the
    /// users it went to and its author's followers as the batch left them), and whether
    /// its author is fanned out still (not merged at read).
    publications: Vec<(TimelineEntry, HashSet<Uuid>, bool)>,
    /// Follows kept: follower, followee, the positions the backfill brought, and whether
    /// the followee is fanned out still.
    follows: Vec<(Uuid, Uuid, Vec<i64>, bool)>,
    /// The followees' lists as the batch saw them.
    lists: HashMap<Uuid, AuthorList>,
    unfollows: Vec<(Uuid, Uuid)>,
}

impl PgTimelines {
    /// The load step of a set-wise batch's follow state: the follower sets of the
    /// `authors` who publish, the stored state of the `follow_pairs` (stored, now), and the
    /// merged-at-read marks of the authors and `followees`. From `known` (its sole
    /// writer's) when there is one.
    async fn load_graph(
        &self,
        tx: &mut sqlx::PgConnection,
        authors: &[Uuid],
        followees: &[Uuid],
        follow_pairs: &[(Uuid, Uuid)],
        known: Option<&KnownTimelines>,
    ) -> ReadResult<Graph> {
        let s = &self.schema;
        let mut followers: HashMap<Uuid, HashSet<Uuid>> =
            authors.iter().map(|a| (*a, HashSet::new())).collect();
        if let Some(known) = known {
            for (author, set) in &mut followers {
                if let Some(stored) = known.followers.get(author) {
                    set.clone_from(stored);
                }
            }
        } else if !authors.is_empty() {
            followers.extend(followers_of(&mut *tx, s, authors).await?);
        }
        // Whom the followers follow, of which the batch's pairs are kept.
        let follows = match known {
            Some(known) => follow_pairs
                .iter()
                .map(|&(follower, followee)| {
                    let stored = known
                        .followers
                        .get(&followee)
                        .is_some_and(|set| set.contains(&follower));
                    ((follower, followee), (stored, stored))
                })
                .collect(),
            None => {
                stored_pairs(
                    tx,
                    &format!(
                        "SELECT follower_id, followee_id FROM {s}.follows \
                          WHERE follower_id = ANY($1)"
                    ),
                    follow_pairs,
                )
                .await?
            }
        };
        let mut marked: Vec<Uuid> = authors.iter().chain(followees).copied().collect();
        marked.sort_unstable();
        marked.dedup();
        let mut merged: HashSet<Uuid> = HashSet::new();
        if let Some(known) = known {
            merged.extend(marked.iter().filter(|a| known.merged.contains(a)));
        } else if !marked.is_empty() {
            let rows: Vec<Uuid> = sqlx::query_scalar(&format!(
                "SELECT author_id FROM {s}.merged_authors WHERE author_id = ANY($1)"
            ))
            .bind(&marked)
            .fetch_all(&mut *tx)
            .await?;
            merged.extend(rows);
        }
        Ok(Graph {
            followers,
            follows,
            merged,
        })
    }

    /// The load step of a set-wise batch's timelines: the rows and lengths its `steps`
    /// touch — every stored row of the posts published or `removed` (`unlisted`: their
    /// positions, when they were unlisted first), the lengths (locked), and all the rows of
    /// the timelines it may take past `over` or follows or unfollows for. From `known`
    /// what it knows.
    async fn load_view(
        &self,
        tx: &mut sqlx::PgConnection,
        steps: &[Step],
        known: Option<&KnownTimelines>,
        mut removed: Vec<Uuid>,
        unlisted: &[i64],
        over: i64,
    ) -> ReadResult<View> {
        let s = &self.schema;
        let mut deliveries: HashMap<Uuid, i64> = HashMap::new();
        // The posts published (with their positions), and the followers of the follows.
        let mut published = Vec::new();
        let mut whole: Vec<Uuid> = Vec::new();
        for step in steps {
            match step {
                Step::Deliver(users, entry, _) => {
                    for user in users {
                        *deliveries.entry(*user).or_default() += 1;
                    }
                    published.push((entry.post_id, entry.position));
                }
                Step::Backfill { follower, .. } | Step::Withdraw { follower, .. } => {
                    whole.push(*follower);
                }
                Step::Remove { .. } => {}
            }
        }
        let mut view = View::default();
        let columns = "t.user_id, t.position, t.post_id, t.author_id";
        // Every stored row of the posts published or removed, by position (a position is
        // one post's; a removed post's is in author_posts): a redelivered fan-out finds its
        // rows there, a removal the rows it removes.
        if let Some(known) = known {
            published.retain(|(post, _)| known.fanned_out.contains(post));
            removed.retain(|post| known.fanned_out.contains(post));
        }
        if known.is_some() && (!published.is_empty() || !removed.is_empty()) {
            let positions: Vec<i64> = published.iter().map(|(_, position)| *position).collect();
            let found = sqlx::query_as(&format!(
                "SELECT {columns} FROM {s}.timelines t WHERE t.position = ANY($1::bigint[] || \
                   ARRAY(SELECT a.position FROM {s}.author_posts a WHERE a.post_id = ANY($2)))"
            ))
            .bind(&positions)
            .bind(&removed)
            .fetch_all(&mut *tx)
            .await?;
            loaded(&mut view.rows, &mut view.by_post, found);
        } else if known.is_none() && (!published.is_empty() || !unlisted.is_empty()) {
            let mut positions: Vec<i64> = published.iter().map(|(_, position)| *position).collect();
            positions.extend(unlisted);
            let found = sqlx::query_as(&format!(
                "SELECT {columns} FROM {s}.timelines t WHERE t.position = ANY($1)"
            ))
            .bind(&positions)
            .fetch_all(&mut *tx)
            .await?;
            loaded(&mut view.rows, &mut view.by_post, found);
        }
        let mut users: Vec<Uuid> = deliveries.keys().copied().collect();
        users.extend(view.rows.keys().map(|(user, _)| *user));
        users.extend(&whole);
        users.sort_unstable();
        users.dedup();
        if let Some(known) = known {
            for user in &users {
                if let Some(&entries) = known.lengths.get(user) {
                    let length = Length {
                        entries,
                        exists: true,
                        changed: false,
                        stored: true,
                    };
                    view.lengths.insert(*user, length);
                }
            }
        } else if !users.is_empty() {
            let found: Vec<(Uuid, i32)> = sqlx::query_as(&format!(
                "SELECT user_id, entries FROM {s}.timeline_lengths WHERE user_id = ANY($1) \
                  ORDER BY user_id FOR UPDATE"
            ))
            .bind(&users)
            .fetch_all(&mut *tx)
            .await?;
            for (user, entries) in found {
                let length = Length {
                    entries: entries.into(),
                    exists: true,
                    changed: false,
                    stored: true,
                };
                view.lengths.insert(user, length);
            }
        }
        // The timelines this batch may take past the cap, and the followers of its follows
        // and unfollows: all their rows.
        whole.extend(
            deliveries
                .iter()
                .filter(|(user, n)| view.lengths.get(user).map_or(0, |l| l.entries) + **n > over)
                .map(|(user, _)| *user),
        );
        whole.sort_unstable();
        whole.dedup();
        view.whole = whole.iter().map(|u| (*u, BTreeSet::new())).collect();
        if !whole.is_empty() {
            let found: Vec<(Uuid, i64, Uuid, Uuid)> = sqlx::query_as(&format!(
                "SELECT {columns} FROM {s}.timelines t WHERE t.user_id = ANY($1)"
            ))
            .bind(&whole)
            .fetch_all(&mut *tx)
            .await?;
            for (user, position, _, _) in &found {
                view.whole.entry(*user).or_default().insert(*position);
            }
            loaded(&mut view.rows, &mut view.by_post, found);
        }
        Ok(view)
    }

    /// [`TimelineStore::write_all`], set-wise, in one transaction: loads the follower sets
    /// ([`Self::load_graph`]), plans the writes' steps ([`Planned::of`]), loads the
    /// followees' lists and the timeline rows and lengths the steps touch
    /// ([`Self::load_view`]; all the rows of a timeline only when the batch may pass its cap
    /// or follows or unfollows for it), applies the steps to them in memory with the
    /// semantics of the single writes above ([`apply_steps`]: fan-out to the followers of
    /// the moment, backfills, the sticky merged-at-read mark, trims to the cap), then stores
    /// what changed with a few array-bound statements ([`Stored::of`]). The
    /// timeline lengths it loads stay locked until it commits, so a single write beside it
    /// (`dlq retry` while the projection runs) waits instead of being overwritten; a
    /// timeline row both insert fails the batch, which the runner then applies event by
    /// event. Written by a sole writer (a replay), its statements run at once, in their own transactions
    /// ([`Self::store_at_once`]).
    ///
    /// Without one, other writers work beside it (the consumers of one Kafka group), and
    /// what it reads is their state before it commits, while its own writes become visible
    /// to them only when it commits. So it unlists the posts it removes before it reads
    /// their rows (a backfill's check waits for it, as for a single removal), and once
    /// committed it applies the rest of the "write, then read" steps again against the
    /// committed state ([`Self::recheck`]).
    async fn write_set_wise(
        &self,
        writes: &[TimelineWrite],
        settings: TimelineSettings,
    ) -> ReadResult<Vec<Vec<Uuid>>> {
        let s = &self.schema;
        self.trust_lengths().await?;
        // Out until the batch commits: a batch that fails leaves it out, and it is dropped.
        let mut known = self.sole_writer.as_ref().and_then(|w| w.lend());
        let cap = settings.cap.max(1);
        let over = limit(cap + cap / 8);
        let mut authors = Vec::new();
        let mut followees = Vec::new();
        let mut follow_pairs = Vec::new();
        let mut removals = Vec::new();
        for write in writes {
            match *write {
                TimelineWrite::Follow { follower, followee } => {
                    follow_pairs.push((follower, followee));
                    followees.push(followee);
                }
                TimelineWrite::Unfollow { follower, followee } => {
                    follow_pairs.push((follower, followee));
                }
                TimelineWrite::Publish(entry) => authors.push(entry.author_id),
                TimelineWrite::Remove { author, post_id } => removals.push((author, post_id)),
            }
        }
        authors.sort_unstable();
        authors.dedup();
        followees.sort_unstable();
        followees.dedup();
        let mut tx = self.pool.begin().await?;

        // 1. The follower sets of the authors and the follows changed (stored, now), the
        //    merged marks, then the follows and fan-outs in order.
        let Graph {
            mut followers,
            mut follows,
            mut merged,
        } = self
            .load_graph(&mut tx, &authors, &followees, &follow_pairs, known.as_ref())
            .await?;
        let Planned {
            steps,
            author_posts,
            newly_merged,
        } = Planned::of(
            writes,
            settings.fanout_max_followers,
            &mut follows,
            &mut followers,
            &mut merged,
        );

        // 2. The followees' lists, read before the batch unlists anything (a backfill
        //    before a removal in the batch brings the post).
        let mut lists = newest_posts(&mut *tx, s, &followees, |author| {
            cap + removals.iter().filter(|(a, _)| *a == author).count()
        })
        .await?;
        // The posts removed, unlisted first when others write beside the batch (then
        // their timeline rows are read after: see `remove_post`).
        let removed: Vec<Uuid> = removals.iter().map(|(_, post)| *post).collect();
        let unlisted: Vec<i64> = if known.is_none() && !removals.is_empty() {
            let (by, posts): (Vec<Uuid>, Vec<Uuid>) = removals.iter().copied().unzip();
            sqlx::query_scalar(&format!(
                "WITH listed AS (SELECT position FROM {s}.author_posts WHERE post_id = ANY($2)), \
                 unlisted AS ( \
                     DELETE FROM {s}.author_posts a USING unnest($1::uuid[], $2::uuid[]) AS u(a, p) \
                      WHERE a.author_id = u.a AND a.post_id = u.p) \
                 SELECT position FROM listed"
            ))
            .bind(by)
            .bind(posts)
            .fetch_all(&mut *tx)
            .await?
        } else {
            Vec::new()
        };

        // 3. The timeline rows and lengths the writes touch.
        let mut view = self
            .load_view(&mut tx, &steps, known.as_ref(), removed, &unlisted, over)
            .await?;

        // 4. The writes, in order.
        let backfilled = apply_steps(&steps, &mut lists, &mut view, cap, over);
        if view
            .lengths
            .iter()
            .any(|(user, l)| l.changed && l.entries > over && !view.whole.contains_key(user))
        {
            return Err(ReadModelError::Rejected(
                "a timeline passed its cap where the batch did not foresee it".into(),
            ));
        }
        let recheck = known.is_none().then(|| {
            let lists = std::mem::take(&mut lists);
            Recheck::of(
                writes,
                &steps,
                &author_posts,
                &followers,
                &merged,
                &follows,
                backfilled,
                lists,
            )
        });

        // 5. What changed, stored.
        let Stored {
            statements,
            timelines,
            follow_changes,
            merged_now,
            changed,
        } = Stored::of(
            s,
            known.as_ref(),
            follows,
            newly_merged,
            author_posts,
            &view,
        );
        if known.is_some() {
            self.store_at_once(tx, timelines, statements).await?;
        } else {
            for (sql, arrays) in statements {
                arrays.bind(sqlx::query(&sql)).execute(&mut *tx).await?;
            }
            timelines.store(&mut tx, s).await?;
            tx.commit().await?;
        }
        if let (Some(writer), Some(mut kept)) = (&self.sole_writer, known.take()) {
            kept.remember(follow_changes, merged_now, changed, &steps);
            writer.give_back(kept);
        }
        if let Some(recheck) = recheck {
            self.recheck(recheck, cap).await?;
        }
        let mut fanned_out = steps.into_iter().filter_map(|step| match step {
            Step::Deliver(users, ..) => Some(users),
            _ => None,
        });
        Ok(writes
            .iter()
            .map(|write| match write {
                TimelineWrite::Publish(_) => fanned_out.next().unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect())
    }
}

/// The follow state a set-wise batch loads ([`PgTimelines::load_graph`]).
struct Graph {
    /// By author who publishes: the followers.
    followers: HashMap<Uuid, HashSet<Uuid>>,
    /// By (follower, followee) the batch follows or unfollows: (stored, now).
    follows: HashMap<(Uuid, Uuid), (bool, bool)>,
    /// The authors (and followees) merged at read.
    merged: HashSet<Uuid>,
}

/// The plan of a set-wise batch's follows and publications, from the follow state loaded:
/// the [`Step`]s in the order of the writes, with the follows, followers and merged marks
/// updated as the writes leave them.
struct Planned {
    steps: Vec<Step>,
    /// Per post: its author, and its position while it is in the author's list.
    author_posts: HashMap<Uuid, (Uuid, Option<i64>)>,
    /// Authors the batch marks merged at read (too many followers to fan out).
    newly_merged: Vec<Uuid>,
}

impl Planned {
    /// Pure: no IO.
    fn of(
        writes: &[TimelineWrite],
        fanout_max_followers: usize,
        follows: &mut HashMap<(Uuid, Uuid), (bool, bool)>,
        followers: &mut HashMap<Uuid, HashSet<Uuid>>,
        merged: &mut HashSet<Uuid>,
    ) -> Self {
        let mut newly_merged = Vec::new();
        // Per post: its author, and its position while it is in the author's list.
        let mut author_posts: HashMap<Uuid, (Uuid, Option<i64>)> = HashMap::new();
        let mut steps = Vec::new();
        for write in writes {
            match *write {
                TimelineWrite::Follow { follower, followee } => {
                    if let Some(follow) = follows.get_mut(&(follower, followee)) {
                        follow.1 = true;
                    }
                    if let Some(set) = followers.get_mut(&followee) {
                        set.insert(follower);
                    }
                    if !merged.contains(&followee) {
                        steps.push(Step::Backfill {
                            follower,
                            author: followee,
                        });
                    }
                }
                TimelineWrite::Unfollow { follower, followee } => {
                    if let Some(follow) = follows.get_mut(&(follower, followee)) {
                        follow.1 = false;
                    }
                    if let Some(set) = followers.get_mut(&followee) {
                        set.remove(&follower);
                    }
                    steps.push(Step::Withdraw {
                        follower,
                        author: followee,
                    });
                }
                TimelineWrite::Publish(entry) => {
                    author_posts.insert(entry.post_id, (entry.author_id, Some(entry.position)));
                    let of_author = followers.entry(entry.author_id).or_default();
                    let fanned_out = of_author.len() <= fanout_max_followers;
                    let mut users: Vec<Uuid> = if !fanned_out {
                        if merged.insert(entry.author_id) {
                            newly_merged.push(entry.author_id);
                        }
                        Vec::new()
                    } else {
                        of_author.iter().copied().collect()
                    };
                    users.push(entry.author_id);
                    users.sort_unstable();
                    users.dedup();
                    steps.push(Step::Deliver(users, entry, fanned_out));
                }
                TimelineWrite::Remove { author, post_id } => {
                    author_posts.insert(post_id, (author, None));
                    steps.push(Step::Remove { author, post_id });
                }
            }
        }
        Self {
            steps,
            author_posts,
            newly_merged,
        }
    }
}

/// Applies `steps` to the followees' `lists` and the timelines' `view`, in order, trimming
/// each timeline to `cap` once past `over`; returns the positions each follow backfilled.
/// Pure: no IO.
fn apply_steps(
    steps: &[Step],
    lists: &mut HashMap<Uuid, AuthorList>,
    view: &mut View,
    cap: usize,
    over: i64,
) -> HashMap<(Uuid, Uuid), Vec<i64>> {
    let mut backfilled: HashMap<(Uuid, Uuid), Vec<i64>> = HashMap::new();
    for step in steps {
        match step {
            Step::Deliver(users, entry, _) => {
                if let Some(list) = lists.get_mut(&entry.author_id) {
                    list.entries.insert(entry.position, *entry);
                    list.known.insert(entry.position);
                }
                for &user in users {
                    if view.add(user, *entry) {
                        view.trim(user, cap, over);
                    }
                }
            }
            Step::Remove { author, post_id } => {
                if let Some(list) = lists.get_mut(author) {
                    list.entries.retain(|_, e| e.post_id != *post_id);
                }
                view.remove_post(*post_id);
            }
            Step::Backfill { follower, author } => {
                let entries = lists.get(author).map(|l| l.newest(cap)).unwrap_or_default();
                let mut added = false;
                for entry in &entries {
                    added |= view.add(*follower, *entry);
                }
                if added {
                    view.trim(*follower, cap, over);
                }
                let positions = entries.iter().map(|e| e.position).collect();
                backfilled.insert((*follower, *author), positions);
            }
            Step::Withdraw { follower, author } => view.withdraw(*follower, *author),
        }
    }
    backfilled
}

impl KnownTimelines {
    /// Takes in what a batch stored: the follows it changed, the authors it marked merged,
    /// the timeline lengths it changed and the posts it fanned out.
    fn remember(
        &mut self,
        follow_changes: Vec<((Uuid, Uuid), bool)>,
        merged: Vec<Uuid>,
        lengths: Vec<(Uuid, i64)>,
        steps: &[Step],
    ) {
        for ((follower, followee), now) in follow_changes {
            let set = self.followers.entry(followee).or_default();
            if now {
                set.insert(follower);
            } else {
                set.remove(&follower);
            }
        }
        self.merged.extend(merged);
        self.lengths.extend(lengths);
        for step in steps {
            if let Step::Deliver(_, entry, _) = step {
                self.fanned_out.insert(entry.post_id);
            }
        }
    }
}

impl Recheck {
    /// What a batch without a sole writer checks again once committed. Pure: no IO.
    #[allow(clippy::too_many_arguments)]
    fn of(
        writes: &[TimelineWrite],
        steps: &[Step],
        author_posts: &HashMap<Uuid, (Uuid, Option<i64>)>,
        followers: &HashMap<Uuid, HashSet<Uuid>>,
        merged: &HashSet<Uuid>,
        follows: &HashMap<(Uuid, Uuid), (bool, bool)>,
        mut backfilled: HashMap<(Uuid, Uuid), Vec<i64>>,
        lists: HashMap<Uuid, AuthorList>,
    ) -> Self {
        let mut recheck = Recheck {
            lists,
            ..Recheck::default()
        };
        for step in steps {
            let Step::Deliver(users, entry, true) = step else {
                continue;
            };
            let listed = author_posts
                .get(&entry.post_id)
                .is_some_and(|(_, position)| position.is_some());
            if !listed {
                continue;
            }
            let mut known: HashSet<Uuid> = users.iter().copied().collect();
            known.extend(followers.get(&entry.author_id).into_iter().flatten());
            let fanned_out = !merged.contains(&entry.author_id);
            recheck.publications.push((*entry, known, fanned_out));
        }
        for ((follower, followee), (_, now)) in follows {
            if *now && backfilled.contains_key(&(*follower, *followee)) {
                let positions = backfilled
                    .remove(&(*follower, *followee))
                    .unwrap_or_default();
                let fanned_out = !merged.contains(followee);
                recheck
                    .follows
                    .push((*follower, *followee, positions, fanned_out));
            }
        }
        recheck.unfollows = writes
            .iter()
            .filter_map(|write| match *write {
                TimelineWrite::Unfollow { follower, followee } => Some((follower, followee)),
                _ => None,
            })
            .filter(|pair| follows.get(pair).is_some_and(|(_, now)| !now))
            .collect();
        recheck.unfollows.sort_unstable();
        recheck.unfollows.dedup();
        recheck
    }
}

/// The store step of a set-wise batch, planned: the statements of its follows, merged
/// marks and author lists, its timeline rows and lengths, and what its sole writer takes in.
struct Stored {
    statements: Vec<(String, Arrays)>,
    timelines: TimelineChanges,
    /// With a sole writer: the follows changed (pair, now).
    follow_changes: Vec<((Uuid, Uuid), bool)>,
    /// With a sole writer: the authors newly merged at read.
    merged_now: Vec<Uuid>,
    /// The timeline lengths changed.
    changed: Vec<(Uuid, i64)>,
}

impl Stored {
    /// What the batch changed, as statements on the tables of schema `s`. Pure: no IO.
    fn of(
        s: &str,
        known: Option<&KnownTimelines>,
        follows: HashMap<(Uuid, Uuid), (bool, bool)>,
        newly_merged: Vec<Uuid>,
        author_posts: HashMap<Uuid, (Uuid, Option<i64>)>,
        view: &View,
    ) -> Self {
        let follow_changes: Vec<((Uuid, Uuid), bool)> = if known.is_some() {
            follows
                .iter()
                .filter(|(_, (stored, now))| stored != now)
                .map(|(pair, (_, now))| (*pair, *now))
                .collect()
        } else {
            Vec::new()
        };
        let merged_now = if known.is_some() {
            newly_merged.clone()
        } else {
            Vec::new()
        };
        // With a sole writer, what is stored is known, so the inserts are plain: no row they
        // add can exist (one that did would fail the batch, which then goes event by
        // event). Without it, a batch applied again must find its rows.
        let on_conflict = if known.is_some() {
            ""
        } else {
            " ON CONFLICT DO NOTHING"
        };
        let (follow, unfollow) = changed_pairs(follows);
        let mut statements: Vec<(String, Arrays)> = Vec::new();
        if !unfollow.0.is_empty() {
            statements.push((
                format!(
                    "DELETE FROM {s}.follows f USING unnest($1::uuid[], $2::uuid[]) AS u(a, b) \
                  WHERE f.follower_id = u.a AND f.followee_id = u.b"
                ),
                Arrays::Two(unfollow.0, unfollow.1),
            ));
        }
        if !follow.0.is_empty() {
            statements.push((
                format!(
                    "INSERT INTO {s}.follows (follower_id, followee_id) \
                 SELECT * FROM unnest($1::uuid[], $2::uuid[]){on_conflict}"
                ),
                Arrays::Two(follow.0, follow.1),
            ));
        }
        if !newly_merged.is_empty() {
            statements.push((
                format!(
                    "INSERT INTO {s}.merged_authors (author_id) \
                 SELECT * FROM unnest($1::uuid[]){on_conflict}"
                ),
                Arrays::One(newly_merged),
            ));
        }
        let (mut listed, mut unlisted) = (
            (Vec::new(), Vec::new(), Vec::new()),
            (Vec::new(), Vec::new()),
        );
        // A post listed before (known to the sole writer as fanned out) may be listed still.
        let relisted = known.is_some_and(|known| {
            author_posts
                .iter()
                .any(|(post, (_, position))| position.is_some() && known.fanned_out.contains(post))
        });
        let listing_conflict = if relisted {
            " ON CONFLICT DO NOTHING"
        } else {
            on_conflict
        };
        for (post_id, (author, position)) in author_posts {
            match position {
                Some(position) => {
                    listed.0.push(author);
                    listed.1.push(position);
                    listed.2.push(post_id);
                }
                None => {
                    unlisted.0.push(author);
                    unlisted.1.push(post_id);
                }
            }
        }
        // Without a sole writer, the removed posts were unlisted first (step 2).
        if known.is_some() && !unlisted.0.is_empty() {
            statements.push((
                format!(
                "DELETE FROM {s}.author_posts a USING unnest($1::uuid[], $2::uuid[]) AS u(a, p) \
                  WHERE a.author_id = u.a AND a.post_id = u.p"
            ),
                Arrays::Two(unlisted.0, unlisted.1),
            ));
        }
        if !listed.0.is_empty() {
            statements.push((
                format!(
                    "INSERT INTO {s}.author_posts (author_id, position, post_id) \
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[]){listing_conflict}"
                ),
                Arrays::Entries(listed.0, listed.1, listed.2),
            ));
        }
        let (mut gone, mut added) = ((Vec::new(), Vec::new()), Rows::default());
        // In primary-key order: the index takes them page after page.
        let mut keys: Vec<&(Uuid, i64)> = view.rows.keys().collect();
        keys.sort_unstable();
        for key @ (user, position) in keys {
            let row = &view.rows[key];
            match (row.stored, row.present) {
                (true, false) => {
                    gone.0.push(*user);
                    gone.1.push(*position);
                }
                (false, true) => {
                    added.push(*user, *position, row.post_id, row.author_id);
                }
                _ => {}
            }
        }
        let changed: Vec<(Uuid, i64)> = view
            .lengths
            .iter()
            .filter(|(_, l)| l.changed)
            .map(|(user, l)| (*user, l.entries))
            .collect();
        // With a sole writer: the new lengths inserted, the stored ones updated. Without it:
        // all upserted, as a row may have come since.
        let (inserted, updated): (Vec<_>, Vec<_>) = if known.is_some() {
            changed
                .iter()
                .copied()
                .partition(|(user, _)| !view.lengths.get(user).is_some_and(|l| l.stored))
        } else {
            (changed.clone(), Vec::new())
        };
        let timelines = TimelineChanges {
            gone,
            added,
            inserted,
            updated,
            upsert: known.is_none(),
        };
        Self {
            statements,
            timelines,
            follow_changes,
            merged_now,
            changed,
        }
    }
}

/// The followers of each of `authors` that has any.
async fn followers_of(
    db: impl sqlx::PgExecutor<'_>,
    s: &str,
    authors: &[Uuid],
) -> ReadResult<HashMap<Uuid, HashSet<Uuid>>> {
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(&format!(
        "SELECT followee_id, follower_id FROM {s}.follows WHERE followee_id = ANY($1)"
    ))
    .bind(authors)
    .fetch_all(db)
    .await?;
    let mut followers: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    for (followee, follower) in rows {
        followers.entry(followee).or_default().insert(follower);
    }
    Ok(followers)
}

/// The newest posts of each of `authors`, at most `most(author)` of them.
async fn newest_posts(
    db: impl sqlx::PgExecutor<'_>,
    s: &str,
    authors: &[Uuid],
    most: impl Fn(Uuid) -> usize,
) -> ReadResult<HashMap<Uuid, AuthorList>> {
    if authors.is_empty() {
        return Ok(HashMap::new());
    }
    let limits: Vec<i64> = authors.iter().map(|a| limit(most(*a))).collect();
    let rows: Vec<(Uuid, i64, Uuid)> = sqlx::query_as(&format!(
        "SELECT p.author_id, p.position, p.post_id \
           FROM unnest($1::uuid[], $2::bigint[]) AS w(author, n) \
          CROSS JOIN LATERAL ( \
              SELECT a.author_id, a.position, a.post_id FROM {s}.author_posts a \
               WHERE a.author_id = w.author ORDER BY a.position DESC LIMIT w.n) p"
    ))
    .bind(authors)
    .bind(&limits)
    .fetch_all(db)
    .await?;
    let mut lists: HashMap<Uuid, AuthorList> = authors
        .iter()
        .map(|a| (*a, AuthorList::default()))
        .collect();
    for (author_id, position, post_id) in rows {
        let list = lists.entry(author_id).or_default();
        let entry = TimelineEntry {
            position,
            post_id,
            author_id,
        };
        list.entries.insert(position, entry);
        list.known.insert(position);
    }
    for (author, most) in authors.iter().zip(limits) {
        if let Some(list) = lists.get_mut(author) {
            if limit(list.entries.len()) >= most {
                list.floor = list.entries.keys().next().copied();
            }
        }
    }
    Ok(lists)
}

impl PgTimelines {
    /// A committed batch's "write, then read" steps applied again, against the committed
    /// state: while the batch ran, it read the state of the writers beside it before they
    /// committed, and they read its state from before it committed. So
    /// - its unfollows take the followees' entries back again (a delivery may have come);
    /// - its publications go to the followers it did not know (a follow may have missed
    ///   the post), and are taken back from those it knew who no longer follow;
    /// - its follows bring the posts listed that it did not see, then take back what they
    ///   brought that is no longer listed (a removal may have missed the rows).
    ///
    /// With no writer beside the batch each finds nothing to do, so the batch leaves what
    /// its writes leave one at a time. A batch applied again (after a crash before its
    /// checkpoint) checks again.
    async fn recheck(&self, recheck: Recheck, cap: usize) -> ReadResult<()> {
        let s = &self.schema;
        self.withdraw_all(recheck.unfollows).await?;
        let none = HashSet::new();

        if !recheck.publications.is_empty() {
            let mut authors: Vec<Uuid> = recheck
                .publications
                .iter()
                .map(|(entry, ..)| entry.author_id)
                .collect();
            authors.sort_unstable();
            authors.dedup();
            let now = followers_of(&self.pool, s, &authors).await?;
            let added: Vec<Vec<Uuid>> = recheck
                .publications
                .iter()
                .map(
                    |(entry, known, fanned_out)| match now.get(&entry.author_id) {
                        Some(following) if *fanned_out => {
                            following.difference(known).copied().collect()
                        }
                        _ => Vec::new(),
                    },
                )
                .collect();
            let rows = recheck
                .publications
                .iter()
                .zip(&added)
                .flat_map(|((entry, ..), users)| users.iter().map(|user| (*user, *entry)))
                .collect();
            self.add_rows(Rows::of(rows), cap).await?;
            let again = followers_of(&self.pool, s, &authors).await?;
            let mut gone = Vec::new();
            for ((entry, known, _), added) in recheck.publications.iter().zip(&added) {
                let following = again.get(&entry.author_id).unwrap_or(&none);
                gone.extend(
                    known
                        .iter()
                        .chain(added)
                        .filter(|user| **user != entry.author_id && !following.contains(user))
                        .map(|user| (*user, entry.position)),
                );
            }
            self.remove_rows(gone).await?;
        }

        if !recheck.follows.is_empty() {
            let mut authors: Vec<Uuid> = recheck
                .follows
                .iter()
                .filter(|(.., fanned_out)| *fanned_out)
                .map(|(_, followee, ..)| *followee)
                .collect();
            authors.sort_unstable();
            authors.dedup();
            let now = newest_posts(&self.pool, s, &authors, |_| cap).await?;
            let unseen: HashMap<Uuid, Vec<TimelineEntry>> = now
                .into_iter()
                .map(|(author, list)| {
                    let seen = recheck.lists.get(&author);
                    let entries = list
                        .newest(cap)
                        .into_iter()
                        .filter(|e| seen.is_none_or(|seen| seen.unseen(e.position)))
                        .collect();
                    (author, entries)
                })
                .collect();
            let (mut rows, mut checked) = (Vec::new(), Vec::new());
            for (follower, followee, positions, fanned_out) in &recheck.follows {
                let brought = unseen
                    .get(followee)
                    .filter(|_| *fanned_out)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                rows.extend(brought.iter().map(|entry| (*follower, *entry)));
                checked.extend(
                    positions
                        .iter()
                        .copied()
                        .chain(brought.iter().map(|entry| entry.position))
                        .map(|position| (*follower, *followee, position)),
                );
            }
            self.add_rows(Rows::of(rows), cap).await?;
            let entries = checked.iter().map(|(_, a, p)| (*a, *p)).collect();
            let listed: HashSet<(Uuid, i64)> =
                self.listed_among(entries).await?.into_iter().collect();
            let gone = checked
                .into_iter()
                .filter(|(_, author, position)| !listed.contains(&(*author, *position)))
                .map(|(follower, _, position)| (follower, position))
                .collect();
            self.remove_rows(gone).await?;
        }
        Ok(())
    }
}

impl PgTimelines {
    /// Connections a replay's batch inserts its timeline rows on, at once.
    const INSERTERS: usize = 2;

    /// Stores a replay's batch (a sole writer's): no statement reads what another writes
    /// (the writer holds the state), so they run at once, each on its own connection and in its
    /// own transaction — the new timeline rows split by user over [`Self::INSERTERS`]
    /// connections, the removed rows and the lengths on `tx`, which made the batch's reads.
    /// A failure before the commits rolls them all back. The timeline rows and lengths
    /// commit first, then the follows, author lists and merged marks:
    /// - a failure or crash among the first commits leaves the lengths off from the stored
    ///   rows; they are recounted before the next write (after a crash, by the resumed
    ///   replay: [`PgTimelines::recount_lengths`]);
    /// - the batch applied again then (event by event, or resumed) finds the follower sets
    ///   and author lists of before the batch, so it fans out and backfills as the first
    ///   time, finds the rows stored, and stores the rest. Stored the other way round, a
    ///   removal would not find the rows of a post no longer listed, and a follow applied
    ///   again would backfill from the list of the batch's end, not of its moment.
    ///
    /// As after a crash between a batch's commit and its checkpoint, a row the batch both
    /// delivered and trimmed is delivered again.
    async fn store_at_once(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        mut timelines: TimelineChanges,
        statements: Vec<(String, Arrays)>,
    ) -> ReadResult<()> {
        let s = &self.schema;
        let pool = &self.pool;
        let own = |(sql, arrays): (String, Arrays)| async move {
            let mut own = pool.begin().await?;
            arrays.bind(sqlx::query(&sql)).execute(&mut *own).await?;
            Ok::<_, sqlx::Error>(own)
        };
        let parts = std::mem::take(&mut timelines.added)
            .split(Self::INSERTERS)
            .into_iter()
            .map(|part| (insert_rows(s), Arrays::Rows(part)));
        let (stored, rows, others) = tokio::join!(
            timelines.store(&mut tx, s),
            futures::future::join_all(parts.map(own)),
            futures::future::join_all(statements.into_iter().map(own)),
        );
        stored?;
        let rows = rows.into_iter().collect::<Result<Vec<_>, _>>()?;
        let others = others.into_iter().collect::<Result<Vec<_>, _>>()?;
        // From the first of these commits to the last, the lengths may not count the rows.
        self.lengths_unsure.store(true, Ordering::Release);
        tx.commit().await?;
        let commits = rows.into_iter().map(sqlx::Transaction::commit);
        for committed in futures::future::join_all(commits).await {
            committed?;
        }
        self.lengths_unsure.store(false, Ordering::Release);
        // All of them to the end, none dropped in flight; then the first failure.
        let commits = others.into_iter().map(sqlx::Transaction::commit);
        for committed in futures::future::join_all(commits).await {
            committed?;
        }
        Ok(())
    }
}

/// What a set-wise batch changes in `timelines` and `timeline_lengths`. A batch applied
/// again trusts the lengths to count the stored rows: stored in one transaction (a replay
/// inserts the rows on connections of their own and recounts the lengths if they do not
/// all commit, see [`PgTimelines::store_at_once`]).
struct TimelineChanges {
    /// The rows removed (user, position) and added (user, position, post, author).
    gone: (Vec<Uuid>, Vec<i64>),
    added: Rows,
    /// The lengths (user, entries) new and stored before, or all in `inserted` when
    /// `upsert`: a row may have come since they were read.
    inserted: Vec<(Uuid, i64)>,
    updated: Vec<(Uuid, i64)>,
    upsert: bool,
}

impl TimelineChanges {
    async fn store(self, tx: &mut sqlx::PgConnection, s: &str) -> ReadResult<()> {
        let (gone, added) = (self.gone, self.added);
        if !gone.0.is_empty() {
            sqlx::query(&format!(
                "DELETE FROM {s}.timelines t USING unnest($1::uuid[], $2::bigint[]) AS u(a, n) \
                  WHERE t.user_id = u.a AND t.position = u.n"
            ))
            .bind(&gone.0)
            .bind(&gone.1)
            .execute(&mut *tx)
            .await?;
        }
        if !added.users.is_empty() {
            let sql = insert_rows(s);
            Arrays::Rows(added)
                .bind(sqlx::query(&sql))
                .execute(&mut *tx)
                .await?;
        }
        let upsert = if self.upsert {
            " ON CONFLICT (user_id) DO UPDATE SET entries = EXCLUDED.entries"
        } else {
            ""
        };
        for (rows, sql) in [
            (
                self.inserted,
                format!(
                    "INSERT INTO {s}.timeline_lengths (user_id, entries) \
                     SELECT u, n::integer FROM unnest($1::uuid[], $2::bigint[]) AS x(u, n)\
                     {upsert}"
                ),
            ),
            (
                self.updated,
                format!(
                    "UPDATE {s}.timeline_lengths l SET entries = x.n::integer \
                       FROM unnest($1::uuid[], $2::bigint[]) AS x(u, n) WHERE l.user_id = x.u"
                ),
            ),
        ] {
            if rows.is_empty() {
                continue;
            }
            sqlx::query(&sql)
                .bind(rows.iter().map(|(u, _)| *u).collect::<Vec<_>>())
                .bind(rows.iter().map(|(_, n)| *n).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

/// The arrays bound to one of the set-wise statements.
enum Arrays {
    One(Vec<Uuid>),
    Two(Vec<Uuid>, Vec<Uuid>),
    Entries(Vec<Uuid>, Vec<i64>, Vec<Uuid>),
    Rows(Rows),
}

impl Arrays {
    fn bind(
        self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match self {
            Self::One(a) => query.bind(a),
            Self::Two(a, b) => query.bind(a).bind(b),
            Self::Entries(a, b, c) => query.bind(a).bind(b).bind(c),
            Self::Rows(rows) => query
                .bind(rows.users)
                .bind(rows.positions)
                .bind(rows.posts)
                .bind(rows.authors),
        }
    }
}

/// Timeline rows, as the columns bound to an insert; in primary-key order.
#[derive(Debug, Default)]
struct Rows {
    users: Vec<Uuid>,
    positions: Vec<i64>,
    posts: Vec<Uuid>,
    authors: Vec<Uuid>,
}

impl Rows {
    /// The rows `(user, entry)`, each once, in primary-key order (writers lock the rows of
    /// `timeline_lengths` in the same order).
    fn of(mut rows: Vec<(Uuid, TimelineEntry)>) -> Self {
        rows.sort_unstable_by_key(|(user, entry)| (*user, entry.position));
        rows.dedup_by_key(|(user, entry)| (*user, entry.position));
        let mut columns = Self::default();
        for (user, entry) in rows {
            columns.push(user, entry.position, entry.post_id, entry.author_id);
        }
        columns
    }

    fn push(&mut self, user: Uuid, position: i64, post: Uuid, author: Uuid) {
        self.users.push(user);
        self.positions.push(position);
        self.posts.push(post);
        self.authors.push(author);
    }

    /// In `n` runs of about as many rows (fewer when there are fewer rows), in order.
    fn split(&self, n: usize) -> Vec<Rows> {
        let size = self.users.len().div_ceil(n.max(1)).max(1);
        self.users
            .chunks(size)
            .zip(self.positions.chunks(size))
            .zip(self.posts.chunks(size))
            .zip(self.authors.chunks(size))
            .map(|(((users, positions), posts), authors)| Rows {
                users: users.to_vec(),
                positions: positions.to_vec(),
                posts: posts.to_vec(),
                authors: authors.to_vec(),
            })
            .collect()
    }
}

/// Inserts [`Rows`] into `{s}.timelines`.
fn insert_rows(s: &str) -> String {
    format!(
        "INSERT INTO {s}.timelines (user_id, position, post_id, author_id) \
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[])"
    )
}
