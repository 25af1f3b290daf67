//! The Redis caches in front of the content store, exactly the seed's table (DESIGN §6):
//!
//! | key (after the prefix) | holds | written by the projection | TTL |
//! |---|---|---|---|
//! | `post:<id>:preview` | feed item JSON (no counts) | dropped on delete | 24 h, sliding on every read |
//! | `post:<id>:likes` | like count | Lua update-if-exists | 24 h |
//! | `post:<id>:comment_count` | comment count | Lua update-if-exists | 24 h |
//! | `post:<id>:comments` | newest comments (JSON), newest first | `LPUSHX` + `LTRIM` | 4 h |
//!
//! Readers fill missing keys from the store (read-through). A write never creates a key, so
//! a count can only come from the store — never the seed's "reset to 1". The projection
//! writes the count the store returned rather than an increment (the seed's
//! incr-if-exists), and pushes a comment only onto a list whose newest entry is older: a
//! reader may fill a key between the store write and the cache write, and must not see
//! that write twice. A comment older than the list's newest entry (applied after later
//! comments: on Kafka, comments of one post come from several partitions) drops the list. A fill takes a
//! per-post lease (`post:<id>:lease`, `SET NX`) *before* it reads the store and writes
//! only if the lease is still its own; every projection write deletes the lease. So a
//! reader that read the store before a write cannot overwrite the cache with what it read
//! (memcache-style leases).
//!
//! A comment list ends with the marker [`END`] while it holds every comment of the post,
//! so an empty or short list is a hit too.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::documents::{CommentDoc, PostDoc};
use crate::error::ReadResult;

/// Tail marker of a comment list that holds every comment of its post.
pub const END: &str = "~end";

/// The cached part of a feed item (counts live in their own keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    pub post_id: Uuid,
    pub author_id: Uuid,
    pub title: String,
    pub preview: String,
    pub created_at: DateTime<Utc>,
}

impl From<&PostDoc> for Preview {
    fn from(post: &PostDoc) -> Self {
        Preview {
            post_id: post.post_id,
            author_id: post.author_id,
            title: post.title.clone(),
            preview: post.preview.clone(),
            created_at: post.created_at,
        }
    }
}

/// A feed item as the cache returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedItem {
    pub preview: Preview,
    pub like_count: i64,
    pub comment_count: i64,
}

/// TTLs and sizes of the caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub preview_ttl: Duration,
    pub count_ttl: Duration,
    pub comments_ttl: Duration,
    /// Comments kept per cached list; a first page of comments up to this size is served
    /// from the cache.
    pub comments_cap: usize,
    /// How long a fill may take before its lease lapses.
    pub lease_ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            preview_ttl: Duration::from_secs(24 * 3600),
            count_ttl: Duration::from_secs(24 * 3600),
            comments_ttl: Duration::from_secs(4 * 3600),
            comments_cap: 100,
            lease_ttl: Duration::from_secs(5),
        }
    }
}

/// Update-if-exists. KEYS: counter, lease. ARGV: the stored count, ttl seconds. Returns 1,
/// or 0 when the key was cold (and stays cold).
const SET_IF_EXISTS: &str = r"
redis.call('DEL', KEYS[2])
if redis.call('SET', KEYS[1], ARGV[1], 'XX', 'EX', ARGV[2]) then
  return 1
end
return 0
";

/// A new comment. KEYS: list, count, lease. ARGV: comment JSON, cap, list ttl, count ttl,
/// the comment's position, the stored comment count. The comment goes onto a cached list
/// whose newest entry is older (`~end` is [`END`]: an empty list). A newest entry at its
/// position is the comment itself (a fill read it from the store). One that is newer means
/// the comment comes after later ones — Kafka orders no two partitions — so the list, which
/// may lack it, is dropped and the next reader fills it from the store.
const COMMENT_ADDED: &str = r"
redis.call('DEL', KEYS[3])
local newest = redis.call('LINDEX', KEYS[1], 0)
if newest then
  local position = tonumber(ARGV[5])
  local at = newest ~= '~end' and cjson.decode(newest).position or nil
  if at == nil or at < position then
    redis.call('LPUSH', KEYS[1], ARGV[1])
    redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
    redis.call('EXPIRE', KEYS[1], ARGV[3])
  elseif at > position then
    redis.call('DEL', KEYS[1])
  end
end
if redis.call('SET', KEYS[2], ARGV[6], 'XX', 'EX', ARGV[4]) then
  return 1
end
return 0
";

/// Feed read: the values of all KEYS (preview, likes, comment count per post) in one round
/// trip, sliding the TTL of every preview that hit. ARGV: preview ttl.
const FEED_GET: &str = r"
local values = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS, 3 do
  if values[i] then redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end
return values
";

/// Feed fill, per post 4 KEYS (lease, preview, likes, comment count) and 4 ARGV (token,
/// preview JSON, likes, comment count); ARGV[1] and ARGV[2] are the preview and count TTLs.
/// Writes a post only while its lease is still the reader's own.
const FEED_FILL: &str = r"
local filled = 0
for i = 1, #KEYS, 4 do
  local a = 2 + i
  if redis.call('GET', KEYS[i]) == ARGV[a] then
    redis.call('SET', KEYS[i + 1], ARGV[a + 1], 'EX', ARGV[1])
    redis.call('SET', KEYS[i + 2], ARGV[a + 2], 'EX', ARGV[2])
    redis.call('SET', KEYS[i + 3], ARGV[a + 3], 'EX', ARGV[2])
    redis.call('DEL', KEYS[i])
    filled = filled + 1
  end
end
return filled
";

/// Comment-list fill. KEYS: lease, list. ARGV: token, ttl, then the entries in order.
const COMMENTS_FILL: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[2], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
";

/// The scripts, hashed once (`EVALSHA`, loaded on first use).
static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    set_if_exists: redis::Script::new(SET_IF_EXISTS),
    comment_added: redis::Script::new(COMMENT_ADDED),
    feed_get: redis::Script::new(FEED_GET),
    feed_fill: redis::Script::new(FEED_FILL),
    comments_fill: redis::Script::new(COMMENTS_FILL),
});

struct Scripts {
    set_if_exists: redis::Script,
    comment_added: redis::Script,
    feed_get: redis::Script,
    feed_fill: redis::Script,
    comments_fill: redis::Script,
}

/// The post caches under one key prefix.
#[derive(Clone)]
pub struct PostCache {
    redis: ConnectionManager,
    prefix: String,
    settings: CacheSettings,
}

impl std::fmt::Debug for PostCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostCache")
            .field("prefix", &self.prefix)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PostCache {
    /// Keys are `<prefix>post:<id>:…`.
    pub fn new(
        redis: ConnectionManager,
        prefix: impl Into<String>,
        settings: CacheSettings,
    ) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            settings,
        }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The key of `post`'s `part` (`preview`, `likes`, `comment_count`, `comments`, `lease`).
    pub fn key(&self, post: Uuid, part: &str) -> String {
        format!("{}post:{}:{part}", self.prefix, post.simple())
    }

    /// A like or unlike changed the stored count to `count`; true when the count was
    /// cached (and is now `count`).
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn like_count_is(&self, post: Uuid, count: i64) -> ReadResult<bool> {
        let held: i64 = SCRIPTS
            .set_if_exists
            .key(self.key(post, "likes"))
            .key(self.key(post, "lease"))
            .arg(count)
            .arg(self.settings.count_ttl.as_secs())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(held == 1)
    }

    /// A comment was stored and the post's comment count is now `count`: pushed onto a
    /// cached list that does not hold it yet, `count` written onto a cached count; true
    /// when the count was cached (and is now `count`).
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn comment_added(&self, comment: &CommentDoc, count: i64) -> ReadResult<bool> {
        let post = comment.post_id;
        let held: i64 = SCRIPTS
            .comment_added
            .key(self.key(post, "comments"))
            .key(self.key(post, "comment_count"))
            .key(self.key(post, "lease"))
            .arg(serde_json::to_string(comment)?)
            .arg(self.settings.comments_cap)
            .arg(self.settings.comments_ttl.as_secs())
            .arg(self.settings.count_ttl.as_secs())
            .arg(comment.position)
            .arg(count)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(held == 1)
    }

    /// Drops every cached key of `post` (deleted, or a redelivered write).
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn invalidate(&self, post: Uuid) -> ReadResult<()> {
        let keys: Vec<String> = ["preview", "likes", "comment_count", "comments", "lease"]
            .iter()
            .map(|part| self.key(post, part))
            .collect();
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// Drops every cached key (after a replay replaced the model the caches front); returns
    /// how many. Readers refill from the new model.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn clear(&self) -> ReadResult<u64> {
        let mut redis = self.redis.clone();
        Ok(unlink_matching(&mut redis, &format!("{}post:*", self.prefix)).await?)
    }

    /// The cached feed items of `posts`, one round trip; `None` where anything is missing.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn feed_items(&self, posts: &[Uuid]) -> ReadResult<Vec<Option<CachedItem>>> {
        if posts.is_empty() {
            return Ok(Vec::new());
        }
        let mut script = SCRIPTS.feed_get.prepare_invoke();
        for &post in posts {
            script
                .key(self.key(post, "preview"))
                .key(self.key(post, "likes"))
                .key(self.key(post, "comment_count"));
        }
        script.arg(self.settings.preview_ttl.as_secs());
        let values: Vec<Option<String>> = script.invoke_async(&mut self.redis.clone()).await?;
        Ok(values
            .chunks(3)
            .map(|chunk| match chunk {
                [Some(preview), Some(likes), Some(comments)] => Some(CachedItem {
                    preview: serde_json::from_str(preview).ok()?,
                    like_count: likes.parse().ok()?,
                    comment_count: comments.parse().ok()?,
                }),
                _ => None,
            })
            .collect())
    }

    /// Takes the fill lease of each post; returns the tokens of the leases taken (a post
    /// whose lease someone else holds is not filled this time).
    async fn leases(&self, posts: &[Uuid]) -> ReadResult<HashMap<Uuid, String>> {
        let mut pipe = redis::pipe();
        let tokens: Vec<(Uuid, String)> = posts
            .iter()
            .map(|&post| (post, Uuid::new_v4().simple().to_string()))
            .collect();
        for (post, token) in &tokens {
            pipe.cmd("SET")
                .arg(self.key(*post, "lease"))
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(u64::try_from(self.settings.lease_ttl.as_millis()).unwrap_or(u64::MAX));
        }
        let taken: Vec<Option<String>> = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(tokens
            .into_iter()
            .zip(taken)
            .filter_map(|((post, token), ok)| ok.map(|_| (post, token)))
            .collect())
    }

    /// Read-through for feed items: takes leases on `missing`, reads them with `load`
    /// (the store), fills what is still leased, and returns what `load` returned.
    ///
    /// # Errors
    /// When Redis is unreachable, or what `load` returns.
    pub async fn fill_feed_items<F, Fut>(
        &self,
        missing: &[Uuid],
        load: F,
    ) -> ReadResult<Vec<PostDoc>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ReadResult<Vec<PostDoc>>>,
    {
        let leases = self.leases(missing).await?;
        let posts = load().await?;
        let mut script = SCRIPTS.feed_fill.prepare_invoke();
        script
            .arg(self.settings.preview_ttl.as_secs())
            .arg(self.settings.count_ttl.as_secs());
        let mut any = false;
        for post in &posts {
            let Some(token) = leases.get(&post.post_id) else {
                continue;
            };
            any = true;
            script
                .key(self.key(post.post_id, "lease"))
                .key(self.key(post.post_id, "preview"))
                .key(self.key(post.post_id, "likes"))
                .key(self.key(post.post_id, "comment_count"))
                .arg(token)
                .arg(serde_json::to_string(&Preview::from(post))?)
                .arg(post.like_count)
                .arg(post.comment_count);
        }
        if any {
            let _: i64 = script.invoke_async(&mut self.redis.clone()).await?;
        }
        Ok(posts)
    }

    /// The first `limit` comments of `post` from the cache, or `None` on a miss (or when
    /// the cached list is too short to answer).
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn first_comments(
        &self,
        post: Uuid,
        limit: usize,
    ) -> ReadResult<Option<Vec<CommentDoc>>> {
        let stop = isize::try_from(limit).unwrap_or(isize::MAX);
        let entries: Vec<String> = redis::cmd("LRANGE")
            .arg(self.key(post, "comments"))
            .arg(0)
            .arg(stop)
            .query_async(&mut self.redis.clone())
            .await?;
        let complete = entries.iter().any(|e| e == END);
        let comments: Vec<CommentDoc> = entries
            .iter()
            .filter(|e| *e != END)
            .take(limit)
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect();
        Ok((complete || comments.len() == limit).then_some(comments))
    }

    /// Read-through for the first page of comments: leases, loads up to the cap with
    /// `load`, fills the list (with [`END`] when it holds them all), returns the first
    /// `limit`.
    ///
    /// # Errors
    /// When Redis is unreachable, or what `load` returns.
    pub async fn fill_first_comments<F, Fut>(
        &self,
        post: Uuid,
        limit: usize,
        load: F,
    ) -> ReadResult<Vec<CommentDoc>>
    where
        F: FnOnce(usize) -> Fut,
        Fut: std::future::Future<Output = ReadResult<Vec<CommentDoc>>>,
    {
        let cap = self.settings.comments_cap.max(limit);
        let lease = self.leases(&[post]).await?;
        let mut comments = load(cap).await?;
        if let Some(token) = lease.get(&post) {
            let mut script = SCRIPTS.comments_fill.prepare_invoke();
            script
                .key(self.key(post, "lease"))
                .key(self.key(post, "comments"))
                .arg(token)
                .arg(self.settings.comments_ttl.as_secs());
            for comment in &comments {
                script.arg(serde_json::to_string(comment)?);
            }
            if comments.len() < cap {
                script.arg(END);
            }
            let _: i64 = script.invoke_async(&mut self.redis.clone()).await?;
        }
        comments.truncate(limit);
        Ok(comments)
    }
}

/// Unlinks every key matching the glob `pattern` (`SCAN` + `UNLINK`); returns how many.
///
/// # Errors
/// When Redis is unreachable.
pub async fn unlink_matching(
    redis: &mut ConnectionManager,
    pattern: &str,
) -> redis::RedisResult<u64> {
    let mut cursor = 0u64;
    let mut dropped = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(redis)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(redis).await?;
            dropped += n;
        }
        if next == 0 {
            return Ok(dropped);
        }
        cursor = next;
    }
}
