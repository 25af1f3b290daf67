//! [`WriteSide`]: one [`CommandHandler`] per aggregate over one pool.

use domain::comment::Comment;
use domain::conversation::Conversation;
use domain::like::Like;
use domain::onboarding::Onboarding;
use domain::post::Post;
use domain::social_graph::SocialGraph;
use domain::user::User;
use sqlx::PgPool;
use store::PgEventStore;

use crate::AggregateStore;

use crate::CommandHandler;

/// Tuning of command handling.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Snapshot an aggregate every this many versions (0 = never).
    pub snapshot_every: u64,
    /// Decide-and-append attempts of one command under version conflicts.
    pub max_attempts: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            snapshot_every: 100,
            max_attempts: 10,
        }
    }
}

/// The command side of every aggregate.
#[derive(Debug)]
pub struct WriteSide {
    pub users: CommandHandler<User>,
    pub social: CommandHandler<SocialGraph>,
    pub posts: CommandHandler<Post>,
    pub comments: CommandHandler<Comment>,
    pub likes: CommandHandler<Like>,
    pub onboarding: CommandHandler<Onboarding>,
    pub conversations: CommandHandler<Conversation>,
}

impl WriteSide {
    pub fn new(pool: PgPool, settings: Settings) -> Self {
        let events = PgEventStore::new(pool);
        let Settings {
            snapshot_every,
            max_attempts,
        } = settings;
        Self {
            users: CommandHandler::new(
                AggregateStore::new(events.clone(), snapshot_every),
                (),
                max_attempts,
            ),
            social: CommandHandler::new(
                AggregateStore::new(events.clone(), snapshot_every),
                (),
                max_attempts,
            ),
            posts: CommandHandler::new(
                AggregateStore::new(events.clone(), snapshot_every),
                (),
                max_attempts,
            ),
            comments: CommandHandler::new(
                AggregateStore::new(events.clone(), snapshot_every),
                (),
                max_attempts,
            ),
            likes: CommandHandler::new(
                AggregateStore::new(events.clone(), snapshot_every),
                (),
                max_attempts,
            ),
            onboarding: CommandHandler::new(
                AggregateStore::new(events.clone(), snapshot_every),
                (),
                max_attempts,
            ),
            conversations: CommandHandler::new(
                AggregateStore::new(events, snapshot_every),
                (),
                max_attempts,
            ),
        }
    }
}
