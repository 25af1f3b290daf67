//! [`PgContent`]: the lite [`ContentStore`] in PostgreSQL, documents as jsonb (migration 4).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Change, CommentDoc, ContentStore, ContentWrite, PostDoc, Profile};
use crate::error::ReadResult;
use crate::lite::{changed_pairs, checked_schema, stored_pairs, PairColumns, SoleWriter};

/// Content in the tables of one schema (`read_model` by default; replay builds others).
#[derive(Debug, Clone)]
pub struct PgContent {
    pool: PgPool,
    schema: String,
    /// The tables' one writer, a replay, handing the set-wise batches what they would
    /// otherwise load (see [`PgContent::written_by`]).
    sole_writer: Option<Arc<dyn SoleWriter<KnownContent>>>,
}

/// The `posts` counts and the `likes` of tables written by one writer since they were
/// empty, as that writer keeps them ([`SoleWriter`]): its set-wise batches take them from
/// here instead of loading them (the two loads were a third of a `content` replay).
#[derive(Debug, Default)]
pub struct KnownContent {
    /// (deleted, like count, comment count) of every stored post.
    posts: HashMap<Uuid, (bool, i64, i64)>,
    /// Every stored (post, user) like.
    likes: HashSet<(Uuid, Uuid)>,
}

impl KnownContent {
    /// How many entries its map and set hold, which its keeper bounds.
    pub fn entries(&self) -> usize {
        self.posts.len() + self.likes.len()
    }
}

/// The jsonb document of a post: what never changes after publication.
#[derive(Serialize, Deserialize)]
struct PostBody {
    title: String,
    body_markdown: String,
    body_html: String,
    preview: String,
    media: Vec<String>,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct CommentBody {
    author_id: Uuid,
    body: String,
    created_at: DateTime<Utc>,
}

impl PostBody {
    fn of(post: &PostDoc) -> Self {
        Self {
            title: post.title.clone(),
            body_markdown: post.body_markdown.clone(),
            body_html: post.body_html.clone(),
            preview: post.preview.clone(),
            media: post.media.clone(),
            created_at: post.created_at,
        }
    }
}

impl CommentBody {
    fn of(comment: &CommentDoc) -> Self {
        Self {
            author_id: comment.author_id,
            body: comment.body.clone(),
            created_at: comment.created_at,
        }
    }
}

type PostRow = (Uuid, Uuid, i64, sqlx::types::Json<PostBody>, i64, i64);

fn post_doc((post_id, author_id, position, doc, like_count, comment_count): PostRow) -> PostDoc {
    let body = doc.0;
    PostDoc {
        post_id,
        author_id,
        position,
        title: body.title,
        body_markdown: body.body_markdown,
        body_html: body.body_html,
        preview: body.preview,
        media: body.media,
        like_count,
        comment_count,
        created_at: body.created_at,
    }
}

impl PgContent {
    /// Its tables, in every schema that holds a copy (replay copies and swaps them).
    pub const TABLES: &'static [&'static str] =
        &["profiles", "posts", "comments", "likes", "erased_users"];

    /// The live lite model, in [`crate::lite::LITE_SCHEMA`].
    pub fn lite(pool: PgPool) -> Self {
        Self {
            pool,
            schema: crate::lite::LITE_SCHEMA.to_owned(),
            sole_writer: None,
        }
    }

    /// The content in `schema`.
    ///
    /// # Errors
    /// [`crate::ReadModelError::Rejected`] when `schema` is not a plain identifier.
    pub fn new(pool: PgPool, schema: &str) -> ReadResult<Self> {
        Ok(Self {
            pool,
            schema: checked_schema(schema)?,
            sole_writer: None,
        })
    }

    /// Its set-wise batches take the posts' counts and the likes from `writer` instead of
    /// loading them, and leave the posts' counts to [`PgContent::settle_counts`] while
    /// `writer` defers them ([`SoleWriter::defers_derived`]). Only for tables that are
    /// **empty now and written by `writer` alone** from now on (a replay into fresh tables:
    /// no other process writes them).
    #[must_use]
    pub fn written_by(self, writer: Arc<dyn SoleWriter<KnownContent>>) -> Self {
        Self {
            sole_writer: Some(writer),
            ..self
        }
    }

    /// Sets every post's like and comment counts to its stored likes and comments, which
    /// are what the counts count: the settlement of batches that deferred them (a
    /// replay's, see [`PgContent::written_by`]). Returns the posts whose counts changed.
    ///
    /// # Errors
    /// When the update fails.
    pub async fn settle_counts(&self) -> ReadResult<u64> {
        let s = &self.schema;
        let settled = sqlx::query(&format!(
            "UPDATE {s}.posts p SET like_count = d.likes, comment_count = d.comments \
               FROM (SELECT q.post_id, coalesce(l.n, 0) AS likes, coalesce(c.n, 0) AS comments \
                       FROM {s}.posts q \
                       LEFT JOIN (SELECT post_id, count(*) AS n FROM {s}.likes GROUP BY post_id) l \
                              ON l.post_id = q.post_id \
                       LEFT JOIN (SELECT post_id, count(*) AS n FROM {s}.comments GROUP BY post_id) c \
                              ON c.post_id = q.post_id) d \
              WHERE p.post_id = d.post_id \
                AND (p.like_count, p.comment_count) <> (d.likes, d.comments)"
        ))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(settled)
    }

    /// A single write changes the tables behind what the sole writer keeps.
    fn forget_known(&self) {
        if let Some(writer) = &self.sole_writer {
            writer.forget();
        }
    }

    /// Sets the counts of the live posts among `posts` that have likes or comments to the
    /// rows stored for them; returns their counts, and whether this changed them.
    ///
    /// Fed by Kafka, a comment or like can arrive before its post: it is stored uncounted,
    /// and counted here once the post is. Both sides call this after their own write
    /// committed — the post's insert, and a write that found no post — so whichever runs
    /// second sees the other's row. The posts are locked first, and the counting statement
    /// runs after the locks are held: its snapshot holds every row committed before, and an
    /// increment waiting on the lock lands on the recounted value.
    async fn recount(&self, posts: &[Uuid]) -> ReadResult<Vec<Recounted>> {
        let s = &self.schema;
        let mut tx = self.pool.begin().await?;
        let locked: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT post_id FROM {s}.posts p WHERE post_id = ANY($1) AND NOT deleted \
                AND (EXISTS (SELECT 1 FROM {s}.comments c WHERE c.post_id = p.post_id) \
                     OR EXISTS (SELECT 1 FROM {s}.likes l WHERE l.post_id = p.post_id)) \
              ORDER BY post_id FOR UPDATE"
        ))
        .bind(posts)
        .fetch_all(&mut *tx)
        .await?;
        if locked.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let changed: Vec<Uuid> = sqlx::query_scalar(&format!(
            "WITH n AS (SELECT p.post_id, \
                               (SELECT count(*) FROM {s}.likes l WHERE l.post_id = p.post_id) AS likes, \
                               (SELECT count(*) FROM {s}.comments c WHERE c.post_id = p.post_id) AS comments \
                          FROM {s}.posts p WHERE p.post_id = ANY($1)) \
             UPDATE {s}.posts p SET like_count = n.likes, comment_count = n.comments FROM n \
              WHERE p.post_id = n.post_id AND (p.like_count, p.comment_count) <> (n.likes, n.comments) \
             RETURNING p.post_id"
        ))
        .bind(&locked)
        .fetch_all(&mut *tx)
        .await?;
        let counts: Vec<(Uuid, i64, i64)> = sqlx::query_as(&format!(
            "SELECT post_id, like_count, comment_count FROM {s}.posts WHERE post_id = ANY($1)"
        ))
        .bind(&locked)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(counts
            .into_iter()
            .map(|(post_id, like_count, comment_count)| Recounted {
                post_id,
                like_count,
                comment_count,
                changed: changed.contains(&post_id),
            })
            .collect())
    }

    fn select_posts(&self) -> String {
        format!(
            "SELECT post_id, author_id, position, doc, like_count, comment_count FROM {}.posts",
            self.schema
        )
    }
}

#[async_trait]
impl ContentStore for PgContent {
    async fn put_profile(&self, profile: &Profile) -> ReadResult<()> {
        sqlx::query(&format!(
            "INSERT INTO {}.profiles (user_id, username, display_name, registered_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            self.schema
        ))
        .bind(profile.user_id)
        .bind(&profile.username)
        .bind(&profile.display_name)
        .bind(profile.registered_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn rename(&self, user: Uuid, display_name: &str) -> ReadResult<()> {
        sqlx::query(&format!(
            "UPDATE {}.profiles SET display_name = $2 WHERE user_id = $1",
            self.schema
        ))
        .bind(user)
        .bind(display_name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn remove_profile(&self, user: Uuid) -> ReadResult<()> {
        sqlx::query(&format!(
            "DELETE FROM {}.profiles WHERE user_id = $1",
            self.schema
        ))
        .bind(user)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn profile(&self, user: Uuid) -> ReadResult<Option<Profile>> {
        let row: Option<(Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(&format!(
            "SELECT user_id, username, display_name, registered_at FROM {}.profiles WHERE user_id = $1",
            self.schema
        ))
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(user_id, username, display_name, registered_at)| Profile {
                user_id,
                username,
                display_name,
                registered_at,
            }),
        )
    }

    async fn insert_post(&self, post: &PostDoc) -> ReadResult<()> {
        self.forget_known();
        let body = PostBody::of(post);
        sqlx::query(&format!(
            "INSERT INTO {}.posts (post_id, author_id, position, doc) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            self.schema
        ))
        .bind(post.post_id)
        .bind(post.author_id)
        .bind(post.position)
        .bind(sqlx::types::Json(body))
        .execute(&self.pool)
        .await?;
        // Also when it was there already: the delivery that stored it may have died before
        // this recount.
        self.recount(&[post.post_id]).await?;
        Ok(())
    }

    async fn delete_post(&self, post: Uuid) -> ReadResult<()> {
        self.forget_known();
        sqlx::query(&format!(
            "UPDATE {}.posts SET deleted = true WHERE post_id = $1",
            self.schema
        ))
        .bind(post)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn post(&self, post: Uuid) -> ReadResult<Option<PostDoc>> {
        let row: Option<PostRow> = sqlx::query_as(&format!(
            "{} WHERE post_id = $1 AND NOT deleted",
            self.select_posts()
        ))
        .bind(post)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(post_doc))
    }

    async fn posts(&self, ids: &[Uuid]) -> ReadResult<Vec<PostDoc>> {
        let rows: Vec<PostRow> = sqlx::query_as(&format!(
            "{} WHERE post_id = ANY($1) AND NOT deleted",
            self.select_posts()
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(post_doc).collect())
    }

    async fn add_comment(&self, comment: &CommentDoc) -> ReadResult<Change> {
        self.forget_known();
        let s = &self.schema;
        let body = CommentBody::of(comment);
        // One statement: the comment is stored unless its post is deleted, and counted the
        // first time, on a live post.
        let (known, counted, count): (bool, bool, i64) = sqlx::query_as(&format!(
            "WITH post AS (SELECT deleted FROM {s}.posts WHERE post_id = $2), \
             inserted AS ( \
                 INSERT INTO {s}.comments (comment_id, post_id, position, doc) \
                 SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM post WHERE deleted) \
                 ON CONFLICT DO NOTHING RETURNING post_id), \
             counted AS ( \
                 UPDATE {s}.posts p SET comment_count = p.comment_count + 1 \
                   FROM inserted WHERE p.post_id = inserted.post_id AND NOT p.deleted \
                 RETURNING p.comment_count) \
             SELECT EXISTS (SELECT 1 FROM post), EXISTS (SELECT 1 FROM counted), \
                    coalesce((SELECT comment_count FROM counted), \
                             (SELECT comment_count FROM {s}.posts WHERE post_id = $2), 0)"
        ))
        .bind(comment.comment_id)
        .bind(comment.post_id)
        .bind(comment.position)
        .bind(sqlx::types::Json(body))
        .fetch_one(&self.pool)
        .await?;
        if known {
            return Ok(Change {
                changed: counted,
                count,
            });
        }
        // Before its post (Kafka): stored, counted when the post is.
        let count = self.recount(&[comment.post_id]).await?;
        Ok(early(count.first().map(|c| c.comment_count)))
    }

    async fn erase_user(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        self.forget_known();
        let s = &self.schema;
        // Committed on its own, before the rest: a post or comment of theirs stored by
        // another consumer meanwhile is either seen by the statements below, or its writer
        // sees this row when it checks after its write (`ContentProjection`).
        sqlx::query(&format!(
            "INSERT INTO {s}.erased_users (user_id) VALUES ($1) ON CONFLICT DO NOTHING"
        ))
        .bind(user)
        .execute(&self.pool)
        .await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("DELETE FROM {s}.profiles WHERE user_id = $1"))
            .bind(user)
            .execute(&mut *tx)
            .await?;
        let mut changed: Vec<Uuid> = sqlx::query_scalar(&format!(
            "UPDATE {s}.posts SET deleted = true, \
                    doc = jsonb_build_object('title', '', 'body_markdown', '', 'body_html', '', \
                                             'preview', '', 'media', '[]'::jsonb, \
                                             'created_at', doc->'created_at') \
              WHERE author_id = $1 RETURNING post_id"
        ))
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        let mut commented: Vec<Uuid> = sqlx::query_scalar(&format!(
            "DELETE FROM {s}.comments WHERE doc->>'author_id' = $1::text RETURNING post_id"
        ))
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        commented.sort_unstable();
        commented.dedup();
        // Locked first, counted by the next statement (a fresh snapshot): a comment added
        // meanwhile is counted, as in `recount`.
        sqlx::query(&format!(
            "SELECT 1 FROM {s}.posts WHERE post_id = ANY($1) ORDER BY post_id FOR UPDATE"
        ))
        .bind(&commented)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "UPDATE {s}.posts p \
                SET comment_count = (SELECT count(*) FROM {s}.comments c WHERE c.post_id = p.post_id) \
              WHERE p.post_id = ANY($1) AND NOT p.deleted"
        ))
        .bind(&commented)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        changed.extend(commented);
        changed.sort_unstable();
        changed.dedup();
        Ok(changed)
    }

    async fn erased(&self, users: &[Uuid]) -> ReadResult<HashSet<Uuid>> {
        let erased: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT user_id FROM {}.erased_users WHERE user_id = ANY($1)",
            self.schema
        ))
        .bind(users)
        .fetch_all(&self.pool)
        .await?;
        Ok(erased.into_iter().collect())
    }

    async fn comments(
        &self,
        post: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<CommentDoc>> {
        let rows: Vec<(Uuid, Uuid, i64, sqlx::types::Json<CommentBody>)> =
            sqlx::query_as(&format!(
                "SELECT comment_id, post_id, position, doc FROM {}.comments \
                  WHERE post_id = $1 AND ($2::bigint IS NULL OR position < $2) \
                  ORDER BY position DESC LIMIT $3",
                self.schema
            ))
            .bind(post)
            .bind(before)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(comment_id, post_id, position, doc)| CommentDoc {
                comment_id,
                post_id,
                author_id: doc.0.author_id,
                position,
                body: doc.0.body,
                created_at: doc.0.created_at,
            })
            .collect())
    }

    async fn set_like(&self, post: Uuid, user: Uuid, liked: bool) -> ReadResult<Change> {
        self.forget_known();
        let s = &self.schema;
        let (write, delta) = if liked {
            (
                format!(
                    "INSERT INTO {s}.likes (post_id, user_id) SELECT $1, $2 \
                      WHERE NOT EXISTS (SELECT 1 FROM post WHERE deleted) \
                     ON CONFLICT DO NOTHING RETURNING post_id"
                ),
                "+ 1",
            )
        } else {
            (
                format!(
                    "DELETE FROM {s}.likes l WHERE l.post_id = $1 AND l.user_id = $2 \
                        AND NOT EXISTS (SELECT 1 FROM post WHERE deleted) RETURNING l.post_id"
                ),
                "- 1",
            )
        };
        // One statement: the like is stored (or removed) unless its post is deleted, and
        // counted when that changed something, on a live post.
        let (known, counted, count): (bool, bool, i64) = sqlx::query_as(&format!(
            "WITH post AS (SELECT deleted FROM {s}.posts WHERE post_id = $1), \
             changed AS ({write}), \
             counted AS ( \
                 UPDATE {s}.posts p SET like_count = p.like_count {delta} \
                   FROM changed WHERE p.post_id = changed.post_id AND NOT p.deleted \
                 RETURNING p.like_count) \
             SELECT EXISTS (SELECT 1 FROM post), EXISTS (SELECT 1 FROM counted), \
                    coalesce((SELECT like_count FROM counted), \
                             (SELECT like_count FROM {s}.posts WHERE post_id = $1), 0)"
        ))
        .bind(post)
        .bind(user)
        .fetch_one(&self.pool)
        .await?;
        if known {
            return Ok(Change {
                changed: counted,
                count,
            });
        }
        // Before its post (Kafka): stored, counted when the post is.
        let count = self.recount(&[post]).await?;
        Ok(early(count.first().map(|c| c.like_count)))
    }

    async fn write_all(&self, writes: &[ContentWrite]) -> ReadResult<Vec<Option<Change>>> {
        if writes
            .iter()
            .any(|write| matches!(write, ContentWrite::EraseUser(_)))
        {
            return Ok(super::write_around_erasures(self, writes).await?.0);
        }
        self.write_set_wise(writes).await
    }
}

/// What a set-wise batch found stored for the rows its writes touch ([`PgContent::load`]).
struct Loaded<'a> {
    /// By user: the profile (none: not stored, or removed by the batch) and whether the
    /// batch changed it.
    profiles: HashMap<Uuid, (Option<Profile>, bool)>,
    posts: HashMap<Uuid, PostState<'a>>,
    /// The comments stored, of those the batch adds.
    comments: HashSet<Uuid>,
    /// `(stored, liked now)` of each (post, user) pair the batch likes or unlikes.
    likes: HashMap<(Uuid, Uuid), (bool, bool)>,
}

/// The plan step of [`PgContent::write_set_wise`]: the batch's writes applied in order to
/// the loaded rows, in memory, as the single writes do them.
struct Plan<'a> {
    /// Comments to insert.
    new_comments: Vec<&'a CommentDoc>,
    /// Posts to recount once committed (see [`PgContent::recount`]): those inserted, and
    /// those a comment or like found missing.
    recount: Vec<Uuid>,
    /// The indices of those comments and likes.
    early_writes: Vec<usize>,
    /// What each write reports, in the order of the writes.
    changes: Vec<Option<Change>>,
}

impl<'a> Plan<'a> {
    /// Applies `writes` to `loaded`. Pure: no IO.
    fn of(writes: &'a [ContentWrite], loaded: &mut Loaded<'a>) -> Self {
        let mut new_comments = Vec::new();
        // Posts to recount once committed (see `recount`): those inserted, and those a
        // comment or like found missing.
        let mut recount = Vec::new();
        // The indices of those comments and likes.
        let mut early_writes = Vec::new();
        let mut changes = Vec::with_capacity(writes.len());
        for write in writes {
            let mut counted = None;
            match write {
                ContentWrite::PutProfile(p) => {
                    let entry = loaded.profiles.entry(p.user_id).or_insert((None, false));
                    if entry.0.is_none() {
                        *entry = (Some(p.clone()), true);
                    }
                }
                ContentWrite::Rename { user, display_name } => {
                    if let Some((Some(profile), changed)) = loaded.profiles.get_mut(user) {
                        profile.display_name.clone_from(display_name);
                        *changed = true;
                    }
                }
                ContentWrite::RemoveProfile(user) => {
                    loaded.profiles.insert(*user, (None, true));
                }
                ContentWrite::InsertPost(p) => {
                    recount.push(p.post_id);
                    loaded.posts.entry(p.post_id).or_insert(PostState {
                        stored: false,
                        deleted: false,
                        like_count: 0,
                        comment_count: 0,
                        new: Some(p),
                        changed: true,
                        tombstoned: false,
                    });
                }
                ContentWrite::DeletePost(post) => {
                    if let Some(state) = loaded.posts.get_mut(post) {
                        state.deleted = true;
                        state.changed = true;
                        state.tombstoned = true;
                    }
                }
                ContentWrite::AddComment(c) => {
                    let mut change = early(None);
                    if let Some(state) = loaded.posts.get_mut(&c.post_id) {
                        change.changed = !state.deleted && loaded.comments.insert(c.comment_id);
                        if change.changed {
                            state.comment_count += 1;
                            state.changed = true;
                            new_comments.push(c);
                        }
                        change.count = state.comment_count;
                    } else {
                        // Before its post (Kafka): stored, counted when the post is.
                        if loaded.comments.insert(c.comment_id) {
                            new_comments.push(c);
                        }
                        recount.push(c.post_id);
                        early_writes.push(changes.len());
                    }
                    counted = Some(change);
                }
                ContentWrite::SetLike { post, user, liked } => {
                    let mut change = early(None);
                    if let Some(like) = loaded.likes.get_mut(&(*post, *user)) {
                        if let Some(state) = loaded.posts.get_mut(post) {
                            change.changed = !state.deleted && like.1 != *liked;
                            if change.changed {
                                like.1 = *liked;
                                state.like_count += if *liked { 1 } else { -1 };
                                state.changed = true;
                            }
                            change.count = state.like_count;
                        } else {
                            // Before its post (Kafka): stored, counted when the post is.
                            like.1 = *liked;
                            recount.push(*post);
                            early_writes.push(changes.len());
                        }
                    }
                    counted = Some(change);
                }
                // `write_all` applies erasures one by one, never in a set-wise batch.
                ContentWrite::EraseUser(_) => {}
            }
            changes.push(counted);
        }
        Self {
            new_comments,
            recount,
            early_writes,
            changes,
        }
    }
}

impl KnownContent {
    /// Takes in what a batch stored: the posts' counts and the likes it changed.
    fn remember(
        &mut self,
        posts: &HashMap<Uuid, PostState<'_>>,
        (liked, unliked): &(PairColumns, PairColumns),
    ) {
        for (post_id, state) in posts {
            let counts = (state.deleted, state.like_count, state.comment_count);
            self.posts.insert(*post_id, counts);
        }
        self.likes
            .extend(liked.0.iter().copied().zip(liked.1.iter().copied()));
        for pair in unliked.0.iter().copied().zip(unliked.1.iter().copied()) {
            self.likes.remove(&pair);
        }
    }
}

/// One field of `rows`, as an array to bind.
fn column<T, U>(rows: &[T], field: impl Fn(&T) -> U) -> Vec<U> {
    rows.iter().map(field).collect()
}

/// The change reported for a comment or like stored before its post: none to apply to the
/// caches (they drop the post's keys instead), and the count of the post if it has arrived
/// since and was recounted.
fn early(count: Option<i64>) -> Change {
    Change {
        changed: false,
        count: count.unwrap_or(0),
    }
}

/// A live post's counts as [`PgContent::recount`] left them.
#[derive(Debug, Clone, Copy)]
struct Recounted {
    post_id: Uuid,
    like_count: i64,
    comment_count: i64,
    /// The recount corrected them.
    changed: bool,
}

/// A post as a set-wise batch sees it.
struct PostState<'a> {
    /// Stored before the batch.
    stored: bool,
    deleted: bool,
    like_count: i64,
    comment_count: i64,
    /// Inserted by the batch.
    new: Option<&'a PostDoc>,
    /// Its counts or its tombstone changed.
    changed: bool,
    /// Deleted by the batch.
    tombstoned: bool,
}

impl PostState<'_> {
    /// A stored post with its (deleted, like count, comment count).
    fn stored((deleted, like_count, comment_count): (bool, i64, i64)) -> Self {
        Self {
            stored: true,
            deleted,
            like_count,
            comment_count,
            new: None,
            changed: false,
            tombstoned: false,
        }
    }
}

impl PgContent {
    /// [`ContentStore::write_all`], set-wise, in one transaction, in three steps: loads the
    /// rows the writes touch ([`Self::load`]), applies the writes to them in memory with the
    /// semantics of the single writes above ([`Plan::of`]), then stores what changed with a
    /// few array-bound statements ([`Self::store`]); a batch without a sole writer then
    /// recounts the posts whose comments or likes came before them ([`Self::recount_after`]). The profiles and
    /// posts it loads stay locked until it commits, so a single write beside it (`dlq
    /// retry` while the projection runs) waits instead of being overwritten; at worst the
    /// two deadlock and one of them is retried. A store [`PgContent::written_by`] a sole writer takes the
    /// posts' counts and the likes from it instead, unlocked. While that writer defers the
    /// counts, it updates only the posts it tombstones, and its statements run at once,
    /// each in its own transaction.
    async fn write_set_wise(&self, writes: &[ContentWrite]) -> ReadResult<Vec<Option<Change>>> {
        // Out until the batch commits: a batch that fails leaves it out, and it is dropped.
        let known = self.sole_writer.as_ref().and_then(|w| w.lend());
        let mut tx = self.pool.begin().await?;
        let mut loaded = self.load(&mut tx, writes, known.as_ref()).await?;
        let mut plan = Plan::of(writes, &mut loaded);
        let likes = changed_pairs(std::mem::take(&mut loaded.likes));
        self.store(tx, &loaded, &plan, &likes, known.is_some())
            .await?;
        match (&self.sole_writer, known) {
            (Some(writer), Some(mut kept)) => {
                kept.remember(&loaded.posts, &likes);
                writer.give_back(kept);
            }
            // A sole writer (a replay) is the one writer, in log order: no comment or
            // like arrives before its post there; other stores recount.
            _ => self.recount_after(writes, &mut plan).await?,
        }
        Ok(plan.changes)
    }

    /// The load step of [`Self::write_set_wise`]: what is stored now of the rows `writes`
    /// touch — profiles and posts locked (`FOR UPDATE`), the posts' counts and the likes
    /// from `known` (its sole writer's) when there is one.
    async fn load<'a>(
        &self,
        tx: &mut sqlx::PgConnection,
        writes: &'a [ContentWrite],
        known: Option<&KnownContent>,
    ) -> ReadResult<Loaded<'a>> {
        let s = &self.schema;
        let (mut users, mut post_ids, mut comment_ids) = (Vec::new(), Vec::new(), Vec::new());
        let mut like_keys = HashSet::new();
        for write in writes {
            match write {
                ContentWrite::PutProfile(p) => users.push(p.user_id),
                ContentWrite::Rename { user, .. } | ContentWrite::RemoveProfile(user) => {
                    users.push(*user);
                }
                ContentWrite::InsertPost(p) => post_ids.push(p.post_id),
                ContentWrite::DeletePost(post) => post_ids.push(*post),
                ContentWrite::AddComment(c) => {
                    post_ids.push(c.post_id);
                    comment_ids.push(c.comment_id);
                }
                ContentWrite::SetLike { post, user, .. } => {
                    post_ids.push(*post);
                    like_keys.insert((*post, *user));
                }
                ContentWrite::EraseUser(_) => {}
            }
        }
        let mut profiles: HashMap<Uuid, (Option<Profile>, bool)> = HashMap::new();
        if !users.is_empty() {
            let rows: Vec<(Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(&format!(
                "SELECT user_id, username, display_name, registered_at FROM {s}.profiles \
                  WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE"
            ))
            .bind(&users)
            .fetch_all(&mut *tx)
            .await?;
            for (user_id, username, display_name, registered_at) in rows {
                let profile = Profile {
                    user_id,
                    username,
                    display_name,
                    registered_at,
                };
                profiles.insert(user_id, (Some(profile), false));
            }
        }
        let mut posts: HashMap<Uuid, PostState> = HashMap::new();
        if let Some(known) = known {
            for post_id in &post_ids {
                if let Some(&counts) = known.posts.get(post_id) {
                    posts.insert(*post_id, PostState::stored(counts));
                }
            }
        } else if !post_ids.is_empty() {
            let rows: Vec<(Uuid, bool, i64, i64)> = sqlx::query_as(&format!(
                "SELECT post_id, deleted, like_count, comment_count FROM {s}.posts \
                  WHERE post_id = ANY($1) ORDER BY post_id FOR UPDATE"
            ))
            .bind(&post_ids)
            .fetch_all(&mut *tx)
            .await?;
            for (post_id, deleted, like_count, comment_count) in rows {
                let state = PostState::stored((deleted, like_count, comment_count));
                posts.insert(post_id, state);
            }
        }
        let mut comments: HashSet<Uuid> = HashSet::new();
        if !comment_ids.is_empty() {
            let rows: Vec<Uuid> = sqlx::query_scalar(&format!(
                "SELECT comment_id FROM {s}.comments WHERE comment_id = ANY($1)"
            ))
            .bind(&comment_ids)
            .fetch_all(&mut *tx)
            .await?;
            comments.extend(rows);
        }
        // (stored, liked now) of each (post, user) pair: the likes of the posts liked or
        // unliked, of which the batch's pairs are kept.
        let like_pairs: Vec<(Uuid, Uuid)> = like_keys.into_iter().collect();
        let likes = match known {
            Some(known) => like_pairs
                .iter()
                .map(|pair| {
                    let stored = known.likes.contains(pair);
                    (*pair, (stored, stored))
                })
                .collect(),
            None => {
                stored_pairs(
                    tx,
                    &format!("SELECT post_id, user_id FROM {s}.likes WHERE post_id = ANY($1)"),
                    &like_pairs,
                )
                .await?
            }
        };
        Ok(Loaded {
            profiles,
            posts,
            comments,
            likes,
        })
    }

    /// The store step of [`Self::write_set_wise`]: what changed, with a few array-bound
    /// statements, in `tx` — or, for a replay's batch (a sole writer's, deferring counts), at
    /// once on connections of their own (see below).
    async fn store(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        loaded: &Loaded<'_>,
        plan: &Plan<'_>,
        (liked, unliked): &(PairColumns, PairColumns),
        sole_writer: bool,
    ) -> ReadResult<()> {
        let s = &self.schema;
        let (mut gone, mut put) = (Vec::new(), Vec::new());
        for (user, (profile, changed)) in &loaded.profiles {
            match profile {
                Some(profile) if *changed => put.push(profile),
                None if *changed => gone.push(*user),
                _ => {}
            }
        }
        let mut inserted = Vec::new();
        let mut updated = Vec::new();
        let deferred = self
            .sole_writer
            .as_ref()
            .is_some_and(|w| w.defers_derived());
        for (post_id, state) in &loaded.posts {
            match state.new {
                Some(doc) if !state.stored => inserted.push((doc, state)),
                _ if state.tombstoned || (state.changed && !deferred) => {
                    updated.push((*post_id, state));
                }
                _ => {}
            }
        }
        let mut post_bodies = Vec::with_capacity(inserted.len());
        for (doc, _) in &inserted {
            post_bodies.push(serde_json::to_string(&PostBody::of(doc))?);
        }
        let mut comment_bodies = Vec::with_capacity(plan.new_comments.len());
        for c in &plan.new_comments {
            comment_bodies.push(serde_json::to_string(&CommentBody::of(c))?);
        }
        let sql = [
            format!("DELETE FROM {s}.profiles WHERE user_id = ANY($1)"),
            format!(
                "INSERT INTO {s}.profiles (user_id, username, display_name, registered_at) \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) \
                 ON CONFLICT (user_id) DO UPDATE SET username = EXCLUDED.username, \
                    display_name = EXCLUDED.display_name, registered_at = EXCLUDED.registered_at"
            ),
            format!(
                "INSERT INTO {s}.posts (post_id, author_id, position, doc, like_count, comment_count, deleted) \
                 SELECT p, a, n, d::jsonb, l, c, x \
                   FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bool[]) \
                     AS u(p, a, n, d, l, c, x)"
            ),
            format!(
                "UPDATE {s}.posts p SET deleted = u.x, like_count = u.l, comment_count = u.c \
                   FROM unnest($1::uuid[], $2::bool[], $3::bigint[], $4::bigint[]) AS u(p, x, l, c) \
                  WHERE p.post_id = u.p"
            ),
            format!(
                "INSERT INTO {s}.comments (comment_id, post_id, position, doc) \
                 SELECT i, p, n, d::jsonb FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[]) \
                     AS u(i, p, n, d)"
            ),
            format!(
                "INSERT INTO {s}.likes (post_id, user_id) SELECT * FROM unnest($1::uuid[], $2::uuid[])"
            ),
            format!(
                "DELETE FROM {s}.likes l USING unnest($1::uuid[], $2::uuid[]) AS u(p, n) \
                  WHERE l.post_id = u.p AND l.user_id = u.n"
            ),
        ];
        let [delete_profiles, put_profiles, insert_posts, update_posts, insert_comments, insert_likes, delete_likes] =
            &sql;
        let mut statements = Vec::new();
        if !gone.is_empty() {
            statements.push(sqlx::query(delete_profiles).bind(gone));
        }
        if !put.is_empty() {
            statements.push(
                sqlx::query(put_profiles)
                    .bind(column(&put, |p| p.user_id))
                    .bind(column(&put, |p| p.username.clone()))
                    .bind(column(&put, |p| p.display_name.clone()))
                    .bind(column(&put, |p| p.registered_at)),
            );
        }
        if !inserted.is_empty() {
            statements.push(
                sqlx::query(insert_posts)
                    .bind(column(&inserted, |(d, _)| d.post_id))
                    .bind(column(&inserted, |(d, _)| d.author_id))
                    .bind(column(&inserted, |(d, _)| d.position))
                    .bind(post_bodies)
                    .bind(column(&inserted, |(_, s)| s.like_count))
                    .bind(column(&inserted, |(_, s)| s.comment_count))
                    .bind(column(&inserted, |(_, s)| s.deleted)),
            );
        }
        if !plan.new_comments.is_empty() {
            statements.push(
                sqlx::query(insert_comments)
                    .bind(column(&plan.new_comments, |c| c.comment_id))
                    .bind(column(&plan.new_comments, |c| c.post_id))
                    .bind(column(&plan.new_comments, |c| c.position))
                    .bind(comment_bodies),
            );
        }
        if !liked.0.is_empty() {
            statements.push(
                sqlx::query(insert_likes)
                    .bind(liked.0.clone())
                    .bind(liked.1.clone()),
            );
        }
        if !unliked.0.is_empty() {
            statements.push(
                sqlx::query(delete_likes)
                    .bind(unliked.0.clone())
                    .bind(unliked.1.clone()),
            );
        }
        // The stored posts' updates (in a replay, only tombstones) go last (see below).
        let post_updates = (!updated.is_empty()).then(|| {
            sqlx::query(update_posts)
                .bind(column(&updated, |(p, _)| *p))
                .bind(column(&updated, |(_, s)| s.deleted))
                .bind(column(&updated, |(_, s)| s.like_count))
                .bind(column(&updated, |(_, s)| s.comment_count))
        });
        if sole_writer && deferred {
            // A replay's batch: no statement reads what another writes (the writer holds
            // the state), so they run at once, each on its own connection, once the reads
            // are done. Not atomic: a crash or failure between them leaves part of the
            // batch, which the batch applied again (resumed, or event by event) completes,
            // every write being idempotent; the counts, which a half-applied batch could
            // not be trusted to get right, are deferred to the settlement. The tombstones
            // go last, once the rest is stored: applied again, a like or comment the batch
            // made before a post's deletion must still find the post live.
            tx.commit().await?;
            // All of them to the end, none dropped in flight; then the first failure.
            let done =
                futures::future::join_all(statements.into_iter().map(|q| q.execute(&self.pool)))
                    .await;
            for result in done {
                result?;
            }
            if let Some(post_updates) = post_updates {
                post_updates.execute(&self.pool).await?;
            }
        } else {
            for statement in statements.into_iter().chain(post_updates) {
                statement.execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// After a batch without a sole writer: recounts the posts it inserted and those a
    /// comment or like found missing (see [`Self::recount`]), and corrects what it reports
    /// for their comments and likes.
    async fn recount_after(&self, writes: &[ContentWrite], plan: &mut Plan<'_>) -> ReadResult<()> {
        let Plan {
            recount,
            early_writes,
            changes,
            ..
        } = plan;
        if recount.is_empty() {
            return Ok(());
        }
        recount.sort_unstable();
        recount.dedup();
        let recounted = self.recount(recount).await?;
        // The batch's counts of a post whose recount corrected them are not the stored
        // ones: the caches drop its keys instead (as for a write that found no post),
        // which also get the post's count now.
        for (index, (write, change)) in writes.iter().zip(changes.iter_mut()).enumerate() {
            let (post, comments) = match write {
                ContentWrite::AddComment(c) => (c.post_id, true),
                ContentWrite::SetLike { post, .. } => (*post, false),
                _ => continue,
            };
            let (Some(change), Some(r)) = (
                change.as_mut(),
                recounted.iter().find(|r| r.post_id == post),
            ) else {
                continue;
            };
            if r.changed || early_writes.contains(&index) {
                *change = early(Some(if comments {
                    r.comment_count
                } else {
                    r.like_count
                }));
            }
        }
        Ok(())
    }
}
