//! A synthetic social log for replay tests and benchmarks: users register (some with the
//! old `user.registered` v1, which upcasters turn into v2), follow each other, publish,
//! like, unlike, comment, delete posts, rename themselves, a few registrations are rolled
//! back, and (when asked) they talk in conversations — appended through the real event store (versions, hashes, claims aside),
//! phase by phase so every event follows what it depends on.

use futures::{StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::PgPool;
use store::{AppendRequest, NewEvent, PgEventStore};
use uuid::Uuid;

use event_schemas::comment::CommentAddedV1;
use event_schemas::like::{PostLikedV1, PostUnlikedV1};
use event_schemas::messaging::{ConversationReadV1, ConversationStartedV1, MessageSentV1};
use event_schemas::post::{PostDeletedV1, PostPublishedV1};
use event_schemas::social::{FollowedV1, UnfollowedV1};
use event_schemas::user::{UserProfileUpdatedV1, UserRegisteredV3, UserRegistrationRolledBackV1};
use event_schemas::{stream_type, Event, Metadata};

/// The shape of the log: `users` sets the scale, the rest is per user. About 42 events per
/// user with the defaults.
#[derive(Debug, Clone, Copy)]
pub struct SocialLog {
    pub users: usize,
    pub follows_per_user: usize,
    pub posts_per_user: usize,
    pub likes_per_user: usize,
    pub comments_per_user: usize,
    /// Conversations each user starts (none by default): with one or two others, three
    /// messages and a read mark each.
    pub conversations_per_user: usize,
    /// Appends in flight at once.
    pub concurrency: usize,
    pub seed: u64,
}

impl SocialLog {
    /// `users` users with the default mix.
    pub fn new(users: usize) -> Self {
        Self {
            users,
            follows_per_user: 10,
            posts_per_user: 5,
            likes_per_user: 20,
            comments_per_user: 5,
            conversations_per_user: 0,
            concurrency: 16,
            seed: 7,
        }
    }

    /// Events [`Self::append`] writes.
    pub fn events(&self) -> usize {
        self.appends().iter().map(|a| a.events.len()).sum()
    }

    /// Appends the log; returns the number of events written.
    ///
    /// # Errors
    /// When an append fails.
    pub async fn append(&self, pool: &PgPool) -> Result<usize, store::AppendError> {
        self.append_phases(pool, 1..=5).await
    }

    /// Appends the phases `phases` of the log (1 registrations, 2 follows, 3 posts, 4 likes
    /// and comments, 5 the rest); returns the number of events written. A test appends the
    /// log in two parts to do something in between.
    ///
    /// # Errors
    /// When an append fails.
    pub async fn append_phases(
        &self,
        pool: &PgPool,
        phases: std::ops::RangeInclusive<u8>,
    ) -> Result<usize, store::AppendError> {
        let store = PgEventStore::new(pool.clone());
        let mut appends = self.appends();
        appends.retain(|a| phases.contains(&a.phase));
        let total = appends.iter().map(|a| a.events.len()).sum();
        // Phase by phase: within one, the order does not matter.
        let mut phase = Vec::new();
        let mut current = 0;
        for append in appends {
            if append.phase != current && !phase.is_empty() {
                self.run(&store, std::mem::take(&mut phase)).await?;
            }
            current = append.phase;
            phase.push(append);
        }
        self.run(&store, phase).await?;
        Ok(total)
    }

    async fn run(
        &self,
        store: &PgEventStore,
        phase: Vec<Append>,
    ) -> Result<(), store::AppendError> {
        futures::stream::iter(phase)
            .map(|append| async move {
                let request = AppendRequest {
                    stream_type: append.stream_type.to_owned(),
                    stream_id: append.stream_id,
                    expected_version: append.expected_version,
                    events: append.events,
                    metadata: Metadata {
                        correlation_id: Some(Uuid::new_v4().to_string()),
                        causation_id: None,
                        actor: Some(format!("user:{}", append.actor)),
                        request_id: None,
                        traceparent: None,
                    },
                    claims: Vec::new(),
                    credentials: Vec::new(),
                    erases_subject: false,
                };
                store.append(&request).await.map(|_| ())
            })
            .buffer_unordered(self.concurrency.max(1))
            .try_collect()
            .await
    }

    fn appends(&self) -> Vec<Append> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let n = self.users.max(2);
        let users: Vec<Uuid> = (0..n).map(|_| uuid(&mut rng)).collect();
        let mut out = Vec::new();
        // 1. Registrations, one in ten written as v1 without a display name (never renamed
        //    below, so the upcast display name stays visible).
        for (i, &user) in users.iter().enumerate() {
            let event = if i % 10 == 0 {
                NewEvent {
                    event_id: uuid(&mut rng),
                    event_type: "user.registered".into(),
                    schema_version: 1,
                    payload: json!({
                        "user_id": user, "username": format!("u{i}"),
                        "email": format!("u{i}@example.com"), "display_name": null,
                        "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
                    }),
                }
            } else {
                encoded(
                    &mut rng,
                    &Event::UserRegistered(UserRegisteredV3 {
                        user_id: user,
                        username: format!("u{i}"),
                        email: format!("u{i}@example.com"),
                        display_name: format!("User {i}"),
                    }),
                )
            };
            out.push(Append::new(
                1,
                stream_type::USER,
                user,
                user,
                0,
                vec![event],
            ));
        }
        // 2. Follows: each user's graph stream, in one append. A few users are popular.
        let follows: Vec<Vec<Uuid>> = users
            .iter()
            .map(|&user| {
                let mut followees: Vec<Uuid> = (0..self.follows_per_user)
                    .map(|k| {
                        if k == 0 {
                            users[rng.gen_range(0..n.min(5))]
                        } else {
                            users[rng.gen_range(0..n)]
                        }
                    })
                    .filter(|&f| f != user)
                    .collect();
                followees.sort();
                followees.dedup();
                followees
            })
            .collect();
        for (&user, followees) in users.iter().zip(&follows) {
            let events = followees
                .iter()
                .map(|&followee| {
                    encoded(
                        &mut rng,
                        &Event::Followed(FollowedV1 {
                            follower_id: user,
                            followee_id: followee,
                        }),
                    )
                })
                .collect::<Vec<_>>();
            if !events.is_empty() {
                out.push(Append::new(
                    2,
                    stream_type::SOCIAL_GRAPH,
                    user,
                    user,
                    0,
                    events,
                ));
            }
        }
        // 3. Posts.
        let mut posts = Vec::new();
        for round in 0..self.posts_per_user {
            for (i, &author) in users.iter().enumerate() {
                let post = uuid(&mut rng);
                posts.push((post, author));
                let event = encoded(
                    &mut rng,
                    &Event::PostPublished(PostPublishedV1 {
                        post_id: post,
                        author_id: author,
                        title: format!("Post {round} of u{i}"),
                        body_markdown: format!(
                            "# Round {round}\n\nSome *markdown* from u{i} with a [link](https://example.com/{i})."
                        ),
                        media: Vec::new(),
                    }),
                );
                out.push(Append::new(
                    3,
                    stream_type::POST,
                    post,
                    author,
                    0,
                    vec![event],
                ));
            }
        }
        // 4. Likes and comments; one like in ten is taken back later.
        let mut likes = Vec::new();
        for &user in &users {
            let mut liked: Vec<Uuid> = (0..self.likes_per_user)
                .map(|_| posts[rng.gen_range(0..posts.len())].0)
                .collect();
            liked.sort();
            liked.dedup();
            for post in liked {
                let event = encoded(
                    &mut rng,
                    &Event::PostLiked(PostLikedV1 {
                        post_id: post,
                        user_id: user,
                    }),
                );
                out.push(Append::like(4, post, user, 0, event));
                likes.push((post, user));
            }
            for _ in 0..self.comments_per_user {
                let (post, _) = posts[rng.gen_range(0..posts.len())];
                let comment = uuid(&mut rng);
                let event = encoded(
                    &mut rng,
                    &Event::CommentAdded(CommentAddedV1 {
                        comment_id: comment,
                        post_id: post,
                        author_id: user,
                        body: format!("A comment by {user}"),
                    }),
                );
                out.push(Append::new(
                    4,
                    stream_type::COMMENT,
                    comment,
                    user,
                    0,
                    vec![event],
                ));
            }
        }
        // 5. Unlikes, deleted posts, renames, late follows and unfollows, rolled-back
        //    registrations.
        likes.shuffle(&mut rng);
        for &(post, user) in likes.iter().take(likes.len() / 10) {
            let event = encoded(
                &mut rng,
                &Event::PostUnliked(PostUnlikedV1 {
                    post_id: post,
                    user_id: user,
                }),
            );
            out.push(Append::like(5, post, user, 1, event));
        }
        for &(post, author) in posts.iter().step_by(20) {
            let event = encoded(
                &mut rng,
                &Event::PostDeleted(PostDeletedV1 {
                    post_id: post,
                    author_id: author,
                }),
            );
            out.push(Append::new(
                5,
                stream_type::POST,
                post,
                author,
                1,
                vec![event],
            ));
        }
        for (i, &user) in users.iter().enumerate().skip(1).step_by(5) {
            let event = encoded(
                &mut rng,
                &Event::UserProfileUpdated(UserProfileUpdatedV1 {
                    user_id: user,
                    display_name: format!("Renamed {i}"),
                }),
            );
            out.push(Append::new(
                5,
                stream_type::USER,
                user,
                user,
                1,
                vec![event],
            ));
        }
        for (user, followees) in users.iter().zip(&follows).step_by(7) {
            let Some(&gone) = followees.first() else {
                continue;
            };
            let late = users[rng.gen_range(0..n)];
            let mut events = vec![encoded(
                &mut rng,
                &Event::Unfollowed(UnfollowedV1 {
                    follower_id: *user,
                    followee_id: gone,
                }),
            )];
            if late != *user && !followees.contains(&late) {
                events.push(encoded(
                    &mut rng,
                    &Event::Followed(FollowedV1 {
                        follower_id: *user,
                        followee_id: late,
                    }),
                ));
            }
            let version = followees.len() as u64;
            out.push(Append::new(
                5,
                stream_type::SOCIAL_GRAPH,
                *user,
                *user,
                version,
                events,
            ));
        }
        for i in 0..n.div_ceil(50) {
            let user = uuid(&mut rng);
            let registered = encoded(
                &mut rng,
                &Event::UserRegistered(UserRegisteredV3 {
                    user_id: user,
                    username: format!("gone{i}"),
                    email: format!("gone{i}@example.com"),
                    display_name: format!("Gone {i}"),
                }),
            );
            let rolled_back = encoded(
                &mut rng,
                &Event::UserRegistrationRolledBack(UserRegistrationRolledBackV1 {
                    user_id: user,
                    reason: "onboarding deadline passed".into(),
                }),
            );
            out.push(Append::new(
                5,
                stream_type::USER,
                user,
                user,
                0,
                vec![registered, rolled_back],
            ));
        }
        // Drawn last, so that the rest of the log is the same with or without them.
        for (i, &user) in users.iter().enumerate() {
            for c in 0..self.conversations_per_user {
                out.push(conversation(&mut rng, &users, user, format!("c{i}.{c}")));
            }
        }
        out
    }
}

/// A conversation `starter` starts with one or two of `users`: three messages by its
/// members, then a read mark of one of them.
fn conversation(rng: &mut StdRng, users: &[Uuid], starter: Uuid, title: String) -> Append {
    let conversation_id = uuid(rng);
    let mut members: Vec<Uuid> = users
        .choose_multiple(rng, 3)
        .copied()
        .filter(|u| *u != starter)
        .take(rng.gen_range(1..=2))
        .collect();
    members.push(starter);
    let mut events = vec![encoded(
        rng,
        &Event::ConversationStarted(ConversationStartedV1 {
            conversation_id,
            started_by: starter,
            members: members.clone(),
            title,
        }),
    )];
    let mut sent = Vec::new();
    for m in 0..3 {
        let message_id = uuid(rng);
        let sender_id = members[rng.gen_range(0..members.len())];
        sent.push(message_id);
        events.push(encoded(
            rng,
            &Event::MessageSent(MessageSentV1 {
                conversation_id,
                message_id,
                sender_id,
                body: format!("message {m} of *{conversation_id}*"),
            }),
        ));
    }
    events.push(encoded(
        rng,
        &Event::ConversationRead(ConversationReadV1 {
            conversation_id,
            reader_id: members[0],
            up_to: sent[1],
        }),
    ));
    Append::new(
        5,
        stream_type::CONVERSATION,
        conversation_id,
        starter,
        0,
        events,
    )
}

struct Append {
    phase: u8,
    stream_type: &'static str,
    stream_id: String,
    actor: Uuid,
    expected_version: u64,
    events: Vec<NewEvent>,
}

impl Append {
    fn new(
        phase: u8,
        stream_type: &'static str,
        stream: Uuid,
        actor: Uuid,
        expected_version: u64,
        events: Vec<NewEvent>,
    ) -> Self {
        Self {
            phase,
            stream_type,
            stream_id: stream.to_string(),
            actor,
            expected_version,
            events,
        }
    }

    fn like(phase: u8, post: Uuid, user: Uuid, expected_version: u64, event: NewEvent) -> Self {
        Self {
            phase,
            stream_type: stream_type::LIKE,
            stream_id: format!("{post}:{user}"),
            actor: user,
            expected_version,
            events: vec![event],
        }
    }
}

fn uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
}

#[allow(clippy::expect_used)]
fn encoded(rng: &mut StdRng, event: &Event) -> NewEvent {
    NewEvent::encode_with_id(uuid(rng), event).expect("synthetic events encode")
}

/// A request appending the registration of a new user named `username`, alone in its stream.
#[allow(clippy::expect_used)]
pub fn registration(username: &str) -> AppendRequest {
    let user = Uuid::new_v4();
    let event = Event::UserRegistered(UserRegisteredV3 {
        user_id: user,
        username: username.into(),
        email: format!("{username}@example.com"),
        display_name: username.into(),
    });
    AppendRequest {
        stream_type: stream_type::USER.into(),
        stream_id: user.to_string(),
        expected_version: 0,
        events: vec![NewEvent::encode(&event).expect("a registration encodes")],
        metadata: Metadata::default(),
        claims: Vec::new(),
        credentials: Vec::new(),
        erases_subject: false,
    }
}
