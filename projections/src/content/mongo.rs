//! [`MongoContent`]: the production [`ContentStore`] on MongoDB (DESIGN §6).
//!
//! Four collections in one database, each document keyed by its natural id:
//! - `profiles`: `_id` is the user id;
//! - `posts`: `_id` is the post id; the published fields, `like_count`, `comment_count`,
//!   and the tombstone `deleted: true` once the post is deleted. Reads skip tombstones, and
//!   a post is stored by an upsert whose fields are all `$setOnInsert`, so a replayed
//!   `post.published` can never bring a deleted post back;
//! - `comments`: `_id` is the comment id, with `post_id` and `position`;
//! - `likes`: one `{post_id, user_id}` document per like;
//! - `erased_users`: `_id` is the id of a person erased (`user.erased`); a post or comment
//!   of theirs is not stored after it. Their posts stay as tombstones, every personal field
//!   emptied; their profile and comments are deleted.
//!
//! Indexes, created by [`migrate`] (never by the workers at start-up): `comments
//! {post_id: 1, position: -1}` (a post's comments, newest first), `likes {post_id: 1,
//! user_id: 1}` unique (it is what makes a like idempotent, so `migrate` must have run),
//! and `posts {author_id: 1, position: -1}`.
//!
//! Every write waits for write concern `majority` and every read uses read concern
//! `majority` (both set on the database handle): a count the caches were given, or a page
//! a reader saw, cannot be rolled back by a failover.
//!
//! The unique index on likes is what makes a like idempotent: the first like write checks
//! that it exists and, until `hybridlive migrate` has made it, fails as unavailable (the
//! event waits, nothing is dead-lettered or double-counted).
//!
//! Counts are exact under retries, crashes and concurrent writers (the consumers of one
//! Kafka group write comments and likes of one post at once), without transactions, which
//! a MongoDB-protocol server such as FerretDB may not have. Each count has a version in the
//! post document (`comments_version`, `likes_version`), and every change of a count is
//! conditional on the version read before it:
//! - a new comment or like: read the version, insert the document (a duplicate key means a
//!   redelivery), then `$inc` the count and the version *if the version is still the one
//!   read*. One request, no counting, on the usual path.
//! - otherwise — the version moved (another writer changed the count in between), or the
//!   document was already there (a redelivery: an earlier delivery may have died before
//!   its `$inc`), or a like taken back found nothing to delete — the count is recounted
//!   (`count_documents` on the indexed `post_id`) and `$set` under the same condition,
//!   again until no other writer came in between.
//!
//! - a comment or like whose post is not stored yet (Kafka keeps no order across topics) is
//!   stored uncounted; the post's insert recounts what is stored for it, and the write
//!   recounts if the post turned up meanwhile (see `before_post`).
//!
//! An increment that succeeds saw no change since its read, which came before its insert,
//! so no recount can have counted that document already; a recount that succeeds counted
//! after every insert whose increment it invalidated. So the count always ends equal to the
//! documents stored, whatever the interleaving.
//!
//! Ids are stored as their hyphenated text (see `key`: FerretDB looks binary ids up by
//! scanning). A BSON datetime holds milliseconds, so each time is a
//! datetime plus a `*_ns` field with its nanoseconds below the millisecond: a read gives
//! back exactly the instant written, as the lite store (jsonb) does.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, doc, Document};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{DatabaseOptions, IndexOptions, ReadConcern, ReturnDocument, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::{Change, CommentDoc, ContentStore, PostDoc, Profile};
use crate::error::{ReadModelError, ReadResult};

/// Content in the collections of one MongoDB database.
#[derive(Debug, Clone)]
pub struct MongoContent {
    profiles: Collection<ProfileRecord>,
    posts: Collection<PostRecord>,
    /// `posts`, read for the tombstone and counts only.
    post_counts: Collection<PostCounts>,
    comments: Collection<CommentRecord>,
    likes: Collection<LikeRecord>,
    erased_users: Collection<Document>,
    /// Set once the unique index on `likes` was seen.
    likes_indexed: Arc<OnceCell<()>>,
}

/// Attempts of a conditional count update before giving up as unavailable; each failed one
/// means another writer's update of the same count succeeded.
const COUNT_ATTEMPTS: usize = 100;

/// One of a post's two counts.
#[derive(Debug, Clone, Copy)]
enum Counted {
    Comments,
    Likes,
}

impl Counted {
    fn count_field(self) -> &'static str {
        match self {
            Self::Comments => "comment_count",
            Self::Likes => "like_count",
        }
    }

    fn version_field(self) -> &'static str {
        match self {
            Self::Comments => "comments_version",
            Self::Likes => "likes_version",
        }
    }
}

impl MongoContent {
    /// The content in `database` of the deployment at `uri`.
    ///
    /// The driver connects lazily: an unreachable server shows up as
    /// [`ReadModelError::Unavailable`] from the first operation, so a worker started while
    /// MongoDB is down retries instead of failing to start.
    ///
    /// # Errors
    /// [`ReadModelError::Rejected`] when `database` is not a valid database name or `uri`
    /// is not a valid connection string; [`ReadModelError::Unavailable`] when the DNS
    /// lookup of a `mongodb+srv://` URI fails.
    pub async fn connect(uri: &str, database: &str) -> ReadResult<Self> {
        let db = open(uri, database).await?;
        let posts = db.collection::<PostRecord>("posts");
        Ok(Self {
            profiles: db.collection("profiles"),
            post_counts: posts.clone_with_type(),
            posts,
            comments: db.collection("comments"),
            likes: db.collection("likes"),
            erased_users: db.collection("erased_users"),
            likes_indexed: Arc::new(OnceCell::new()),
        })
    }

    /// Fails as unavailable until the unique index of `likes` exists.
    async fn check_likes_index(&self) -> ReadResult<()> {
        self.likes_indexed
            .get_or_try_init(|| async {
                let names = match self.likes.list_index_names().await {
                    Ok(names) => names,
                    // No `likes` collection yet: no index either.
                    Err(error) if command_code(&error) == Some(NAMESPACE_NOT_FOUND) => Vec::new(),
                    Err(error) => return Err(store_error(error)),
                };
                if names.iter().any(|name| name == LIKES_INDEX) {
                    Ok(())
                } else {
                    Err(ReadModelError::Unavailable(format!(
                        "the unique index {LIKES_INDEX} of likes is missing, so likes could \
                         be counted twice: run `hybridlive migrate`"
                    )))
                }
            })
            .await?;
        Ok(())
    }

    /// Whether `post` exists and is deleted, its counts and their versions; `None` when it
    /// does not exist.
    async fn counts(&self, post: Uuid) -> ReadResult<Option<PostCounts>> {
        self.post_counts
            .find_one(doc! { "_id": key(post) })
            .projection(doc! {
                "deleted": 1, "like_count": 1, "comment_count": 1,
                "likes_version": 1, "comments_version": 1,
            })
            .await
            .map_err(store_error)
    }

    /// Adds `delta` to a count of a live `post` if its version is still `version`; the new
    /// count, or `None` when another writer changed it since (or the post was deleted).
    async fn increment(
        &self,
        post: Uuid,
        counted: Counted,
        version: i64,
        delta: i64,
    ) -> ReadResult<Option<i64>> {
        let mut filter = live(post);
        filter.insert(counted.version_field(), version);
        let updated = self
            .post_counts
            .find_one_and_update(
                filter,
                doc! { "$inc": { counted.count_field(): delta, counted.version_field(): 1 } },
            )
            // No projection: FerretDB does not implement `fields` in findAndModify.
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_error)?;
        Ok(updated.map(|counts| counts.count(counted)))
    }

    /// Sets a count of a live `post` to the number of its documents in `of`, under the
    /// count's version, until no other writer changed it in between; the count. A deleted
    /// post keeps its counts.
    async fn recount<T: Send + Sync>(
        &self,
        post: Uuid,
        counted: Counted,
        of: &Collection<T>,
    ) -> ReadResult<i64> {
        for _ in 0..COUNT_ATTEMPTS {
            let Some(counts) = self.counts(post).await? else {
                return Ok(0);
            };
            if counts.deleted {
                return Ok(counts.count(counted));
            }
            let n = of
                .count_documents(doc! { "post_id": key(post) })
                .await
                .map_err(store_error)?;
            let count = i64::try_from(n).unwrap_or(i64::MAX);
            let mut filter = live(post);
            filter.insert(counted.version_field(), counts.version(counted));
            let set = self
                .posts
                .update_one(
                    filter,
                    doc! {
                        "$set": { counted.count_field(): count },
                        "$inc": { counted.version_field(): 1 },
                    },
                )
                .await
                .map_err(store_error)?;
            if set.matched_count > 0 {
                return Ok(count);
            }
        }
        Err(ReadModelError::Unavailable(format!(
            "the {} of post {post} changed under each of {COUNT_ATTEMPTS} recounts",
            counted.count_field()
        )))
    }

    /// The change of a comment or like stored while its post was not (Kafka): if the post
    /// has been stored since (by another consumer, which may have counted before this
    /// write), the count is recounted; either way it is reported unchanged, so the caches
    /// drop the post's keys. The post's insert counts after storing it, and this checks after
    /// the write: whichever comes second sees the other.
    async fn before_post<T: Send + Sync>(
        &self,
        post: Uuid,
        counted: Counted,
        of: &Collection<T>,
    ) -> ReadResult<Change> {
        let count = match self.counts(post).await? {
            Some(counts) if !counts.deleted => self.recount(post, counted, of).await?,
            _ => 0,
        };
        Ok(Change {
            changed: false,
            count,
        })
    }

    /// The count after a comment or like was written (`changed`) or found already there,
    /// given the post's counts read before the write: incremented by `delta` when the count
    /// did not move in between, else recounted.
    async fn settle<T: Send + Sync>(
        &self,
        post: Uuid,
        before: &PostCounts,
        counted: Counted,
        of: &Collection<T>,
        changed: bool,
        delta: i64,
    ) -> ReadResult<i64> {
        if changed {
            if let Some(count) = self
                .increment(post, counted, before.version(counted), delta)
                .await?
            {
                return Ok(count);
            }
        }
        self.recount(post, counted, of).await
    }
}

/// Creates the indexes of the content collections in `database` (`hybridlive migrate`).
/// Idempotent: creating an index that exists with the same keys and options does nothing.
///
/// # Errors
/// [`ReadModelError::Rejected`] for an invalid database name or URI, when an index exists
/// under the same name with other keys or options, or when stored likes already repeat a
/// `(post_id, user_id)` pair; [`ReadModelError::Unavailable`] when MongoDB cannot be
/// reached.
pub async fn migrate(uri: &str, database: &str) -> ReadResult<()> {
    let db = open(uri, database).await?;
    let indexes = [
        (
            "comments",
            index("comments_by_post", doc! { "post_id": 1, "position": -1 }),
        ),
        (
            "likes",
            unique_index(LIKES_INDEX, doc! { "post_id": 1, "user_id": 1 }),
        ),
        (
            "posts",
            index("posts_by_author", doc! { "author_id": 1, "position": -1 }),
        ),
    ];
    for (collection, index) in indexes {
        db.collection::<Document>(collection)
            .create_index(index)
            .await
            .map_err(|error| match error.kind.as_ref() {
                // Another index of that name exists, or stored likes already break the
                // unique index: retrying changes neither.
                ErrorKind::Command(e)
                    if e.code == INDEX_OPTIONS_CONFLICT || e.code == INDEX_KEY_SPECS_CONFLICT =>
                {
                    ReadModelError::Rejected(error.kind.to_string())
                }
                _ if is_duplicate_key(&error) => ReadModelError::Rejected(error.kind.to_string()),
                _ => store_error(error),
            })?;
    }
    Ok(())
}

/// Drops `database` and its collections (a replay's retired generation, a test's).
///
/// # Errors
/// As [`migrate`].
pub async fn drop_database(uri: &str, database: &str) -> ReadResult<()> {
    open(uri, database).await?.drop().await.map_err(store_error)
}

/// Whether `database` exists: it holds a collection (a replay resumes into its target
/// only if it does; [`migrate`] creates collections with their indexes).
///
/// # Errors
/// As [`migrate`].
pub async fn database_exists(uri: &str, database: &str) -> ReadResult<bool> {
    let names = open(uri, database)
        .await?
        .list_collection_names()
        .await
        .map_err(store_error)?;
    Ok(!names.is_empty())
}

fn index(name: &str, keys: Document) -> IndexModel {
    let options = IndexOptions::builder().name(name.to_owned()).build();
    IndexModel::builder().keys(keys).options(options).build()
}

fn unique_index(name: &str, keys: Document) -> IndexModel {
    let options = IndexOptions::builder()
        .name(name.to_owned())
        .unique(true)
        .build();
    IndexModel::builder().keys(keys).options(options).build()
}

/// The handle on `database`, with majority write and read concerns for every operation.
async fn open(uri: &str, database: &str) -> ReadResult<Database> {
    checked_database(database)?;
    let client = Client::with_uri_str(uri).await.map_err(store_error)?;
    let options = DatabaseOptions::builder()
        .write_concern(WriteConcern::majority())
        .read_concern(ReadConcern::majority())
        .build();
    Ok(client.database_with_options(database, options))
}

/// Checks `name` against MongoDB's rules for database names.
fn checked_database(name: &str) -> ReadResult<()> {
    let valid = !name.is_empty()
        && name.len() < 64
        && !name.contains(['/', '\\', '.', ' ', '"', '$', '\0']);
    if valid {
        Ok(())
    } else {
        Err(ReadModelError::Rejected(format!(
            "`{name}` is not a valid MongoDB database name"
        )))
    }
}

#[async_trait]
impl ContentStore for MongoContent {
    async fn put_profile(&self, profile: &Profile) -> ReadResult<()> {
        let (registered_at, registered_at_ns) = split_time(profile.registered_at);
        let record = ProfileRecord {
            user_id: key(profile.user_id),
            username: profile.username.clone(),
            display_name: profile.display_name.clone(),
            registered_at,
            registered_at_ns,
        };
        insert_if_absent(&self.profiles, profile.user_id, &record).await
    }

    async fn rename(&self, user: Uuid, display_name: &str) -> ReadResult<()> {
        self.profiles
            .update_one(
                doc! { "_id": key(user) },
                doc! { "$set": { "display_name": display_name } },
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn remove_profile(&self, user: Uuid) -> ReadResult<()> {
        self.profiles
            .delete_one(doc! { "_id": key(user) })
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn profile(&self, user: Uuid) -> ReadResult<Option<Profile>> {
        self.profiles
            .find_one(doc! { "_id": key(user) })
            .await
            .map_err(store_error)?
            .map(ProfileRecord::into_profile)
            .transpose()
    }

    async fn insert_post(&self, post: &PostDoc) -> ReadResult<()> {
        let (created_at, created_at_ns) = split_time(post.created_at);
        // The counts start at zero whatever `post` says, as in the lite store: they are
        // the store's own, kept by `add_comment` and `set_like`.
        let record = PostRecord {
            post_id: key(post.post_id),
            author_id: key(post.author_id),
            position: post.position,
            title: post.title.clone(),
            body_markdown: post.body_markdown.clone(),
            body_html: post.body_html.clone(),
            preview: post.preview.clone(),
            media: post.media.clone(),
            created_at,
            created_at_ns,
            like_count: 0,
            comment_count: 0,
            likes_version: 0,
            comments_version: 0,
            deleted: false,
        };
        insert_if_absent(&self.posts, post.post_id, &record).await?;
        // Comments and likes stored before it (Kafka) are counted now; also when it existed,
        // since the delivery that stored it may have died before counting.
        for (counted, of) in [
            (
                Counted::Comments,
                self.comments.clone_with_type::<Document>(),
            ),
            (Counted::Likes, self.likes.clone_with_type::<Document>()),
        ] {
            let stored = of
                .count_documents(doc! { "post_id": key(post.post_id) })
                .limit(1)
                .await
                .map_err(store_error)?;
            if stored > 0 {
                self.recount(post.post_id, counted, &of).await?;
            }
        }
        Ok(())
    }

    async fn delete_post(&self, post: Uuid) -> ReadResult<()> {
        self.posts
            .update_one(
                doc! { "_id": key(post) },
                doc! { "$set": { "deleted": true } },
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn post(&self, post: Uuid) -> ReadResult<Option<PostDoc>> {
        self.posts
            .find_one(live(post))
            .await
            .map_err(store_error)?
            .map(PostRecord::into_doc)
            .transpose()
    }

    /// One lookup by `_id` per post, all at once: FerretDB (1.24) pushes no `$in` down, so
    /// a single `find` with `$in` scans the collection (232 ms for 20 ids among 3,000
    /// posts, against 4 ms a lookup).
    async fn posts(&self, ids: &[Uuid]) -> ReadResult<Vec<PostDoc>> {
        let found = futures::future::try_join_all(ids.iter().map(|id| self.post(*id))).await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn add_comment(&self, comment: &CommentDoc) -> ReadResult<Change> {
        let post = self.counts(comment.post_id).await?;
        if let Some(post) = post.as_ref().filter(|post| post.deleted) {
            return Ok(Change {
                changed: false,
                count: post.comment_count,
            });
        }
        let (created_at, created_at_ns) = split_time(comment.created_at);
        let record = CommentRecord {
            comment_id: key(comment.comment_id),
            post_id: key(comment.post_id),
            author_id: key(comment.author_id),
            position: comment.position,
            body: comment.body.clone(),
            created_at,
            created_at_ns,
        };
        // `_id` is the only unique index of `comments`: a duplicate is this very comment,
        // delivered again.
        let changed = match self.comments.insert_one(&record).await {
            Ok(_) => true,
            Err(error) if is_duplicate_key(&error) => false,
            Err(error) => return Err(store_error(error)),
        };
        let Some(post) = post else {
            return self
                .before_post(comment.post_id, Counted::Comments, &self.comments)
                .await;
        };
        let count = self
            .settle(
                comment.post_id,
                &post,
                Counted::Comments,
                &self.comments,
                changed,
                1,
            )
            .await?;
        Ok(Change { changed, count })
    }

    async fn comments(
        &self,
        post: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> ReadResult<Vec<CommentDoc>> {
        // MongoDB reads a limit of 0 as "no limit".
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! { "post_id": key(post) };
        if let Some(before) = before {
            filter.insert("position", doc! { "$lt": before });
        }
        let records: Vec<CommentRecord> = self
            .comments
            .find(filter)
            .sort(doc! { "position": -1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        records.into_iter().map(CommentRecord::into_doc).collect()
    }

    /// Without transactions (FerretDB), in an order that makes every step idempotent: the
    /// marker first, so a post or comment stored meanwhile by another consumer is found
    /// either by the steps below or by its writer's check after its write.
    async fn erase_user(&self, user: Uuid) -> ReadResult<Vec<Uuid>> {
        self.erased_users
            .update_one(
                doc! { "_id": key(user) },
                doc! { "$setOnInsert": { "erased": true } },
            )
            .upsert(true)
            .await
            .or_else(|error| {
                if is_duplicate_key(&error) {
                    Ok(Default::default())
                } else {
                    Err(store_error(error))
                }
            })?;
        self.profiles
            .delete_one(doc! { "_id": key(user) })
            .await
            .map_err(store_error)?;
        let theirs = doc! { "author_id": key(user) };
        let mut changed = ids_of(&self.posts, theirs.clone(), "_id").await?;
        self.posts
            .update_many(
                theirs.clone(),
                doc! { "$set": {
                    "deleted": true, "title": "", "body_markdown": "", "body_html": "",
                    "preview": "", "media": [],
                } },
            )
            .await
            .map_err(store_error)?;
        let commented = ids_of(&self.comments, theirs.clone(), "post_id").await?;
        self.comments
            .delete_many(theirs)
            .await
            .map_err(store_error)?;
        for post in &commented {
            self.recount(*post, Counted::Comments, &self.comments)
                .await?;
        }
        changed.extend(commented);
        changed.sort_unstable();
        changed.dedup();
        Ok(changed)
    }

    /// One `$in` query: FerretDB scans the collection for it, and it holds only the erased.
    async fn erased(&self, users: &[Uuid]) -> ReadResult<HashSet<Uuid>> {
        if users.is_empty() {
            return Ok(HashSet::new());
        }
        let keys: Vec<String> = users.iter().map(|user| key(*user)).collect();
        let ids = ids_of(&self.erased_users, doc! { "_id": { "$in": keys } }, "_id").await?;
        Ok(ids.into_iter().collect())
    }

    async fn set_like(&self, post: Uuid, user: Uuid, liked: bool) -> ReadResult<Change> {
        self.check_likes_index().await?;
        let counts = self.counts(post).await?;
        if let Some(counts) = counts.as_ref().filter(|counts| counts.deleted) {
            return Ok(Change {
                changed: false,
                count: counts.like_count,
            });
        }
        let changed = if liked {
            let like = LikeRecord {
                post_id: key(post),
                user_id: key(user),
            };
            // `_id` is a fresh ObjectId, so a duplicate key can only come from the unique
            // `(post_id, user_id)` index: this like, delivered again.
            match self.likes.insert_one(&like).await {
                Ok(_) => true,
                Err(error) if is_duplicate_key(&error) => false,
                Err(error) => return Err(store_error(error)),
            }
        } else {
            let deleted = self
                .likes
                .delete_one(doc! { "post_id": key(post), "user_id": key(user) })
                .await
                .map_err(store_error)?;
            deleted.deleted_count > 0
        };
        let Some(counts) = counts else {
            return self.before_post(post, Counted::Likes, &self.likes).await;
        };
        let delta = if liked { 1 } else { -1 };
        let count = self
            .settle(post, &counts, Counted::Likes, &self.likes, changed, delta)
            .await?;
        Ok(Change { changed, count })
    }
}

/// The ids in `field` of the documents of `collection` matching `filter`, each once.
async fn ids_of<T: Send + Sync>(
    collection: &Collection<T>,
    filter: Document,
    field: &str,
) -> ReadResult<Vec<Uuid>> {
    let found: Vec<Document> = collection
        .clone_with_type::<Document>()
        .find(filter)
        .projection(doc! { field: 1 })
        .await
        .map_err(store_error)?
        .try_collect()
        .await
        .map_err(store_error)?;
    let mut ids = found
        .iter()
        .map(|d| {
            d.get_str(field)
                .map_err(|e| ReadModelError::Rejected(format!("stored {field}: {e}")))
                .and_then(parse_key)
        })
        .collect::<ReadResult<Vec<Uuid>>>()?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Stores `record` under `_id` = `id` unless a document with that id exists (upsert with
/// `$setOnInsert` only).
async fn insert_if_absent<T: Serialize + Send + Sync>(
    collection: &Collection<T>,
    id: Uuid,
    record: &T,
) -> ReadResult<()> {
    let mut fields =
        bson::to_document(record).map_err(|e| ReadModelError::Rejected(e.to_string()))?;
    // The upsert takes `_id` from the filter.
    fields.remove("_id");
    let upserted = collection
        .update_one(doc! { "_id": key(id) }, doc! { "$setOnInsert": fields })
        .upsert(true)
        .await;
    match upserted {
        Ok(_) => Ok(()),
        // Two upserts of the same `_id` racing: the other one inserted it.
        Err(error) if is_duplicate_key(&error) => Ok(()),
        Err(error) => Err(store_error(error)),
    }
}

/// The filter for `post` unless it is deleted.
fn live(post: Uuid) -> Document {
    doc! { "_id": key(post), "deleted": { "$ne": true } }
}

/// A profile as stored in `profiles`.
#[derive(Debug, Serialize, Deserialize)]
struct ProfileRecord {
    #[serde(rename = "_id")]
    user_id: String,
    username: String,
    display_name: String,
    registered_at: bson::DateTime,
    #[serde(default)]
    registered_at_ns: i64,
}

impl ProfileRecord {
    fn into_profile(self) -> ReadResult<Profile> {
        Ok(Profile {
            user_id: parse_key(&self.user_id)?,
            username: self.username,
            display_name: self.display_name,
            registered_at: join_time(self.registered_at, self.registered_at_ns)?,
        })
    }
}

/// A post as stored in `posts`.
#[derive(Debug, Serialize, Deserialize)]
struct PostRecord {
    #[serde(rename = "_id")]
    post_id: String,
    author_id: String,
    position: i64,
    title: String,
    body_markdown: String,
    body_html: String,
    preview: String,
    /// Absent when empty: FerretDB drops an empty array from an upsert's `$setOnInsert`.
    #[serde(default)]
    media: Vec<String>,
    created_at: bson::DateTime,
    #[serde(default)]
    created_at_ns: i64,
    #[serde(default)]
    like_count: i64,
    #[serde(default)]
    comment_count: i64,
    #[serde(default)]
    likes_version: i64,
    #[serde(default)]
    comments_version: i64,
    #[serde(default)]
    deleted: bool,
}

impl PostRecord {
    fn into_doc(self) -> ReadResult<PostDoc> {
        Ok(PostDoc {
            post_id: parse_key(&self.post_id)?,
            author_id: parse_key(&self.author_id)?,
            position: self.position,
            title: self.title,
            body_markdown: self.body_markdown,
            body_html: self.body_html,
            preview: self.preview,
            media: self.media,
            like_count: self.like_count,
            comment_count: self.comment_count,
            created_at: join_time(self.created_at, self.created_at_ns)?,
        })
    }
}

/// The part of a `posts` document that counted writes look at.
#[derive(Debug, Deserialize)]
struct PostCounts {
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    like_count: i64,
    #[serde(default)]
    comment_count: i64,
    #[serde(default)]
    likes_version: i64,
    #[serde(default)]
    comments_version: i64,
}

impl PostCounts {
    fn count(&self, counted: Counted) -> i64 {
        match counted {
            Counted::Comments => self.comment_count,
            Counted::Likes => self.like_count,
        }
    }

    fn version(&self, counted: Counted) -> i64 {
        match counted {
            Counted::Comments => self.comments_version,
            Counted::Likes => self.likes_version,
        }
    }
}

/// A comment as stored in `comments`.
#[derive(Debug, Serialize, Deserialize)]
struct CommentRecord {
    #[serde(rename = "_id")]
    comment_id: String,
    post_id: String,
    author_id: String,
    position: i64,
    body: String,
    created_at: bson::DateTime,
    #[serde(default)]
    created_at_ns: i64,
}

impl CommentRecord {
    fn into_doc(self) -> ReadResult<CommentDoc> {
        Ok(CommentDoc {
            comment_id: parse_key(&self.comment_id)?,
            post_id: parse_key(&self.post_id)?,
            author_id: parse_key(&self.author_id)?,
            position: self.position,
            body: self.body,
            created_at: join_time(self.created_at, self.created_at_ns)?,
        })
    }
}

/// A like as stored in `likes` (`_id` is an ObjectId the driver adds).
#[derive(Debug, Serialize, Deserialize)]
struct LikeRecord {
    post_id: String,
    user_id: String,
}

/// `id` as stored: its hyphenated lower-case text. Not BSON binary: FerretDB (1.24)
/// pushes string equality down to PostgreSQL's indexes but filters binary values itself,
/// after reading every document of the collection, so each lookup by id would cost a scan.
fn key(id: Uuid) -> String {
    id.hyphenated().to_string()
}

/// The id [`key`] stored.
fn parse_key(stored: &str) -> ReadResult<Uuid> {
    Uuid::parse_str(stored)
        .map_err(|_| ReadModelError::Rejected(format!("stored id {stored:?} is not a UUID")))
}

/// `at` as a BSON datetime (whole milliseconds) and the nanoseconds below the millisecond.
fn split_time(at: DateTime<Utc>) -> (bson::DateTime, i64) {
    (
        bson::DateTime::from_millis(at.timestamp_millis()),
        i64::from(at.timestamp_subsec_nanos() % 1_000_000),
    )
}

/// The instant [`split_time`] split.
fn join_time(at: bson::DateTime, sub_milli_nanos: i64) -> ReadResult<DateTime<Utc>> {
    let millis = at.timestamp_millis();
    let seconds = millis.div_euclid(1000);
    let nanos = (0..1_000_000)
        .contains(&sub_milli_nanos)
        .then(|| millis.rem_euclid(1000) * 1_000_000 + sub_milli_nanos)
        .and_then(|nanos| u32::try_from(nanos).ok());
    nanos
        .and_then(|nanos| DateTime::from_timestamp(seconds, nanos))
        .ok_or_else(|| {
            ReadModelError::Rejected(format!(
                "stored time {millis} ms + {sub_milli_nanos} ns is out of range"
            ))
        })
}

/// MongoDB's `DuplicateKey`.
const DUPLICATE_KEY: i32 = 11000;
/// MongoDB's `NamespaceNotFound`: the collection does not exist.
const NAMESPACE_NOT_FOUND: i32 = 26;
/// The name of the unique index of likes.
const LIKES_INDEX: &str = "likes_by_post_user";
/// MongoDB's `BSONObjectTooLarge`: a document over 16 MiB.
const BSON_OBJECT_TOO_LARGE: i32 = 10334;
/// MongoDB's `IndexOptionsConflict` and `IndexKeySpecsConflict`: an index of that name
/// exists with other options or keys.
const INDEX_OPTIONS_CONFLICT: i32 = 85;
const INDEX_KEY_SPECS_CONFLICT: i32 = 86;

fn command_code(error: &MongoError) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(e) => Some(e.code),
        _ => None,
    }
}

fn is_duplicate_key(error: &MongoError) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Server error codes that say the data itself is refused: `BadValue`, `FailedToParse`,
/// `TypeMismatch`, `DollarPrefixedFieldName`, `EmptyFieldName`, `DottedFieldName`,
/// `ImmutableField`, `DocumentValidationFailure`, `DuplicateKey` (one the caller did not
/// expect), `BSONObjectTooLarge`, `KeyTooLong`.
const DATA_ERRORS: [i32; 11] = [
    2,
    9,
    14,
    52,
    56,
    57,
    66,
    121,
    DUPLICATE_KEY,
    BSON_OBJECT_TOO_LARGE,
    17280,
];

/// Classifies a driver error. Only errors about the data are `Rejected` (the event would
/// fail the same way every time): a write or command error whose code is one of
/// [`DATA_ERRORS`] (or FerretDB's PostgreSQL data exception), (de)serialisation, an argument
/// the driver refuses. The rest — network,
/// timeouts, server selection, pool, write concern, a stepping-down primary, a write
/// conflict, shutdown, authentication, an operation the server does not implement — are
/// `Unavailable`, retried until the server or an operator fixes them, so no event is
/// dead-lettered because the store was down, busy or misconfigured.
fn store_error(error: MongoError) -> ReadModelError {
    // The kind only: the full error also dumps the server's raw response.
    let message = error.kind.to_string();
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) if DATA_ERRORS.contains(&e.code) => {
            ReadModelError::Rejected(message)
        }
        ErrorKind::Command(e) if DATA_ERRORS.contains(&e.code) => ReadModelError::Rejected(message),
        // FerretDB passes PostgreSQL's data exceptions on as `InternalError` (code 1) with
        // the SQLSTATE in the message, e.g. 22P05 for a NUL in a string: no retry stores it.
        ErrorKind::Command(e) if e.code == 1 && e.message.contains("(SQLSTATE 22") => {
            ReadModelError::Rejected(message)
        }
        ErrorKind::BsonSerialization(_)
        | ErrorKind::BsonDeserialization(_)
        | ErrorKind::InvalidArgument { .. } => ReadModelError::Rejected(message),
        _ => ReadModelError::Unavailable(message),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use mongodb::bson::Bson;

    #[test]
    fn times_round_trip_to_the_nanosecond() {
        let times = [
            Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
            Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            Utc.timestamp_opt(-1, 999_999_999).unwrap(),
            Utc.timestamp_opt(-86_400_000, 1).unwrap(),
        ];
        for at in times {
            let (datetime, nanos) = split_time(at);
            assert_eq!(join_time(datetime, nanos).unwrap(), at);
        }
    }

    #[test]
    fn stored_time_keeps_whole_milliseconds_in_the_bson_datetime() {
        let at = Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap();
        let (datetime, nanos) = split_time(at);
        assert_eq!(datetime.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(nanos, 456_789);
    }

    #[test]
    fn out_of_range_sub_millisecond_nanos_are_rejected() {
        let at = bson::DateTime::from_millis(0);
        assert!(matches!(
            join_time(at, 1_000_000),
            Err(ReadModelError::Rejected(_))
        ));
        assert!(matches!(
            join_time(at, -1),
            Err(ReadModelError::Rejected(_))
        ));
    }

    #[test]
    fn ids_are_stored_as_their_hyphenated_text() {
        let id = Uuid::new_v4();
        let like = LikeRecord {
            post_id: key(id),
            user_id: key(id),
        };
        // `to_document` builds `$setOnInsert`; the raw serializer is what `insert_one` uses.
        let raw = bson::to_raw_document_buf(&like).unwrap();
        for stored in [
            bson::to_document(&like).unwrap(),
            raw.to_document().unwrap(),
        ] {
            assert_eq!(
                stored.get("post_id"),
                Some(&Bson::String(id.hyphenated().to_string()))
            );
        }
        assert_eq!(parse_key(&key(id)).unwrap(), id);
        assert!(matches!(
            parse_key("not an id"),
            Err(ReadModelError::Rejected(_))
        ));
    }

    #[test]
    fn post_records_round_trip_through_bson() {
        let post = PostDoc {
            post_id: Uuid::new_v4(),
            author_id: Uuid::new_v4(),
            position: 42,
            title: "Title".into(),
            body_markdown: "*hi*".into(),
            body_html: "<p><em>hi</em></p>".into(),
            preview: "hi".into(),
            media: vec!["https://example.com/a.png".into()],
            like_count: 3,
            comment_count: 4,
            created_at: Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
        };
        let (created_at, created_at_ns) = split_time(post.created_at);
        let record = PostRecord {
            post_id: key(post.post_id),
            author_id: key(post.author_id),
            position: post.position,
            title: post.title.clone(),
            body_markdown: post.body_markdown.clone(),
            body_html: post.body_html.clone(),
            preview: post.preview.clone(),
            media: post.media.clone(),
            created_at,
            created_at_ns,
            like_count: post.like_count,
            comment_count: post.comment_count,
            likes_version: 0,
            comments_version: 0,
            deleted: false,
        };
        let stored = bson::to_document(&record).unwrap();
        assert!(matches!(stored.get("created_at"), Some(Bson::DateTime(_))));
        let read: PostRecord = bson::from_document(stored).unwrap();
        assert_eq!(read.into_doc().unwrap(), post);
        // The driver's own path: raw bytes out, raw bytes back in (cursors, `find_one`).
        let raw = bson::to_raw_document_buf(&record).unwrap();
        let read: PostRecord = bson::from_slice(raw.as_bytes()).unwrap();
        assert_eq!(read.into_doc().unwrap(), post);
    }

    #[test]
    fn database_names_follow_mongodb_rules() {
        assert!(checked_database("hybridlive_test_1").is_ok());
        for bad in [
            "",
            "a.b",
            "a/b",
            "a b",
            "a$b",
            "a\"b",
            "a\\b",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(checked_database(bad), Err(ReadModelError::Rejected(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn counts_default_when_absent_from_the_document() {
        let counts: PostCounts = bson::from_document(doc! { "_id": 1 }).unwrap();
        assert!(!counts.deleted);
        assert_eq!((counts.like_count, counts.comment_count), (0, 0));
    }
}
