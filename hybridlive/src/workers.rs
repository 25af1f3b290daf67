//! Which read-model stores are configured (DESIGN §6: "a backend is chosen by which URL is
//! configured"); the workers themselves are `projections::workers`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::process::{RedisArgs, WriteArgs};
use projections::content::postgres::PgContent;
use projections::generation::{Following, Generations};
use projections::messaging::scylla::ScyllaMessaging;
use projections::messaging::PgMessaging;
use projections::presence::scylla::ScyllaPresenceHistory;
use projections::presence::PgPresenceHistory;
use projections::timeline::postgres::PgTimelines;
use projections::timeline::scylla::ScyllaSettings;
use projections::{
    CacheSettings, ContentProjection, ContentStore, LiveSettings, MessagingProjection,
    MessagingStore, OnboardingSettings, PostCache, PresenceHistory, ReadModels, TimelineProjection,
    TimelineSettings, TimelineStore, Workers,
};
use secrecy::{ExposeSecret, SecretString};

/// The read-model stores: ScyllaDB and MongoDB when their URLs are set, else PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct ReadStoreArgs {
    /// ScyllaDB/Cassandra contact points (`host:port`, comma-separated) for the social graph
    /// and timelines; PostgreSQL when unset (lite).
    #[arg(long, env = "SCYLLA_NODES", value_delimiter = ',')]
    pub scylla_nodes: Vec<String>,
    /// Keyspace of the timeline tables.
    #[arg(long, env = "SCYLLA_KEYSPACE", default_value = "hybridlive")]
    pub scylla_keyspace: String,
    /// Consistency level of every timeline statement (ONE, QUORUM, LOCAL_QUORUM, …).
    #[arg(long, env = "SCYLLA_CONSISTENCY", default_value = "LOCAL_QUORUM")]
    pub scylla_consistency: String,
    /// Replication factor `migrate` gives the keyspace.
    #[arg(long, env = "SCYLLA_REPLICATION", default_value_t = 1)]
    pub scylla_replication: u32,
    /// Keyspace of the chat tables (conversations, messages, presence history) on
    /// `SCYLLA_NODES`; PostgreSQL when `SCYLLA_NODES` is unset.
    #[arg(long, env = "SCYLLA_CHAT_KEYSPACE", default_value = "hybridlive_chat")]
    pub scylla_chat_keyspace: String,
    /// Days presence transitions are kept.
    #[arg(long, env = "PRESENCE_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=7300))]
    pub presence_retention_days: u64,
    /// MongoDB for posts, comments and profiles; PostgreSQL (jsonb) when unset (lite).
    #[arg(long, env = "MONGODB_URI", hide_env_values = true, value_parser = crate::process::secret)]
    pub mongodb_uri: Option<SecretString>,
    /// MongoDB database name.
    #[arg(long, env = "MONGODB_DATABASE", default_value = "hybridlive")]
    pub mongodb_database: String,
    /// Entries kept per home timeline.
    #[arg(long, env = "TIMELINE_CAP", default_value_t = 800)]
    pub timeline_cap: usize,
    /// Authors with more followers than this are merged into feeds at read time instead of
    /// fanned out on write.
    #[arg(long, env = "FANOUT_MAX_FOLLOWERS", default_value_t = 20_000)]
    pub fanout_max_followers: usize,
}

impl ReadStoreArgs {
    fn scylla(&self) -> Option<ScyllaSettings> {
        (!self.scylla_nodes.is_empty()).then(|| ScyllaSettings {
            nodes: self.scylla_nodes.clone(),
            keyspace: self.scylla_keyspace.clone(),
            consistency: self.scylla_consistency.clone(),
            replication_factor: self.scylla_replication,
        })
    }

    /// The chat keyspace's settings, when on ScyllaDB/Cassandra.
    fn scylla_chat(&self) -> Option<ScyllaSettings> {
        self.scylla().map(|settings| ScyllaSettings {
            keyspace: self.scylla_chat_keyspace.clone(),
            ..settings
        })
    }

    fn presence_retention(&self) -> Duration {
        Duration::from_secs(self.presence_retention_days * 86_400)
    }

    /// Presence timing, with the configured retention of `last_seen`.
    pub fn presence_settings(&self) -> real_time::presence::PresenceSettings {
        real_time::presence::PresenceSettings {
            retention: self.presence_retention(),
            ..real_time::presence::PresenceSettings::default()
        }
    }

    /// Whether `model` is configured on a production store replay cannot rebuild yet
    /// (`messaging` on ScyllaDB/Cassandra).
    pub fn unreplayable(&self, model: &str) -> bool {
        model == MessagingProjection::NAME && self.scylla_chat().is_some()
    }

    /// The production store `model` is configured on, if any (what `replay` rebuilds).
    pub fn production(&self, model: &str) -> Option<replay::Production> {
        match model {
            TimelineProjection::NAME => self.scylla().map(replay::Production::Scylla),
            ContentProjection::NAME => {
                self.mongodb_uri
                    .as_ref()
                    .map(|uri| replay::Production::Mongo {
                        uri: uri.expose_secret().to_owned(),
                        database: self.mongodb_database.clone(),
                    })
            }
            _ => None,
        }
    }

    /// Creates the CQL keyspace and tables and the MongoDB indexes of the configured
    /// stores, in their live generation (`migrate`, after the PostgreSQL migrations; never
    /// at worker start-up).
    pub async fn migrate(&self, pool: &sqlx::PgPool) -> anyhow::Result<()> {
        let generations = Generations::new(pool.clone());
        if let Some(mut scylla) = self.scylla() {
            scylla.keyspace = generations
                .live(TimelineProjection::NAME, &scylla.keyspace)
                .await?
                .name;
            projections::timeline::scylla::migrate(&scylla)
                .await
                .context("creating the ScyllaDB keyspace and tables")?;
            tracing::info!(keyspace = %scylla.keyspace, "ScyllaDB schema is up to date.");
        }
        if let Some(chat) = self.scylla_chat() {
            projections::messaging::scylla::migrate(&chat)
                .await
                .context("creating the chat keyspace and tables")?;
            tracing::info!(keyspace = %chat.keyspace, "Chat schema is up to date.");
        }
        if let Some(uri) = &self.mongodb_uri {
            let database = generations
                .live(ContentProjection::NAME, &self.mongodb_database)
                .await?
                .name;
            projections::content::mongo::migrate(uri.expose_secret(), &database)
                .await
                .context("creating the MongoDB indexes")?;
            tracing::info!(%database, "MongoDB indexes are up to date.");
        }
        Ok(())
    }

    /// The timelines: on ScyllaDB, the live generation's keyspace, followed across replays.
    async fn timelines(&self, pool: &sqlx::PgPool) -> anyhow::Result<Arc<dyn TimelineStore>> {
        let Some(scylla) = self.scylla() else {
            return Ok(Arc::new(PgTimelines::lite(pool.clone())));
        };
        let base = scylla.keyspace.clone();
        let open = projections::generation::timelines_on_scylla(scylla);
        let store = Following::open(pool.clone(), TimelineProjection::NAME, &base, open)
            .await
            .context("connecting to SCYLLA_NODES")?;
        Ok(Arc::new(store))
    }

    /// The content: on MongoDB, the live generation's database, followed across replays.
    async fn content(&self, pool: &sqlx::PgPool) -> anyhow::Result<Arc<dyn ContentStore>> {
        let Some(uri) = self
            .mongodb_uri
            .as_ref()
            .map(|uri| uri.expose_secret().to_owned())
        else {
            return Ok(Arc::new(PgContent::lite(pool.clone())));
        };
        let open = projections::generation::content_on_mongo(uri);
        let store = Following::open(
            pool.clone(),
            ContentProjection::NAME,
            &self.mongodb_database,
            open,
        )
        .await
        .context("connecting to MONGODB_URI")?;
        Ok(Arc::new(store))
    }

    /// Messaging and presence history: on ScyllaDB, the chat keyspace.
    async fn chat(
        &self,
        pool: &sqlx::PgPool,
    ) -> anyhow::Result<(Arc<dyn MessagingStore>, Arc<dyn PresenceHistory>)> {
        let Some(chat) = self.scylla_chat() else {
            return Ok((
                Arc::new(PgMessaging::new(pool.clone())),
                Arc::new(PgPresenceHistory::new(
                    pool.clone(),
                    self.presence_retention(),
                )),
            ));
        };
        let messaging = ScyllaMessaging::connect(&chat).await.context(
            "connecting to the chat keyspace on SCYLLA_NODES (run `hybridlive migrate`)",
        )?;
        let presence = ScyllaPresenceHistory::connect(&chat, self.presence_retention())
            .await
            .context("connecting to the chat keyspace on SCYLLA_NODES")?;
        Ok((Arc::new(messaging), Arc::new(presence)))
    }

    /// The configured read models, with the Redis caches under `<redis_prefix>rm:`.
    pub async fn read_models(
        &self,
        pool: &sqlx::PgPool,
        redis: redis::aio::ConnectionManager,
        redis_prefix: &str,
    ) -> anyhow::Result<ReadModels> {
        let (messaging, presence) = self.chat(pool).await?;
        Ok(ReadModels {
            timelines: self.timelines(pool).await?,
            content: self.content(pool).await?,
            messaging,
            presence,
            cache: PostCache::new(
                redis,
                format!("{redis_prefix}rm:"),
                CacheSettings::default(),
            ),
        })
    }

    pub fn timeline_settings(&self) -> TimelineSettings {
        TimelineSettings {
            cap: self.timeline_cap,
            fanout_max_followers: self.fanout_max_followers,
        }
    }
}

/// Live updates and the registration saga (DESIGN §7).
#[derive(Debug, Clone, Args)]
pub struct RealTimeArgs {
    /// Projections that must sync a new user before onboarding completes.
    #[arg(
        long,
        env = "ONBOARDING_REQUIRED",
        value_delimiter = ',',
        default_value = "timeline,content,messaging"
    )]
    pub onboarding_required: Vec<String>,
    /// A registration not completed within this many seconds is rolled back.
    #[arg(long, env = "ONBOARDING_DEADLINE_SECS", default_value_t = 60)]
    pub onboarding_deadline_secs: u64,
    /// Like counts of a post are pushed at most this often, milliseconds.
    #[arg(long, env = "LIKES_PUSH_INTERVAL_MS", default_value_t = 2000)]
    pub likes_push_interval_ms: u64,
    /// Live events kept per channel for Last-Event-ID resume.
    #[arg(long, env = "LIVE_RETENTION_ENTRIES", default_value_t = 1000)]
    pub live_retention_entries: u32,
    /// A channel's live events expire this many seconds after its last one.
    #[arg(long, env = "LIVE_RETENTION_SECS", default_value_t = 24 * 3600)]
    pub live_retention_secs: u64,
    #[command(flatten)]
    pub mail: MailArgs,
}

/// The emailer (the `email` projection): verification, welcome and reset emails.
#[derive(Debug, Clone, Args)]
pub struct MailArgs {
    /// SMTP server of the account emails: `smtp://host:port` (plain, e.g. Mailpit),
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://user:password@host` (TLS). No
    /// emails are sent when unset (`email` is left out of `all`).
    #[arg(long, env = "SMTP_URL", hide_env_values = true, value_parser = crate::process::secret)]
    pub smtp_url: Option<SecretString>,
    /// The sender of the account emails.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Hybrid Live <no-reply@hybridlive.localhost>"
    )]
    pub mail_from: String,
    /// The origin the emailed links point to (the demo page, which completes them).
    #[arg(long, env = "PUBLIC_URL", default_value = "http://127.0.0.1:8080")]
    pub public_url: String,
    /// Events older than this many hours send no email (a new emailer does not mail history).
    #[arg(long, env = "MAIL_MAX_AGE_HOURS", default_value_t = 24)]
    pub mail_max_age_hours: u64,
    /// The API's JWT_SECRET: the links' tokens are keyed by it, so the API can check them.
    #[arg(long = "mail-token-secret", env = "JWT_SECRET", hide_env_values = true,
          value_parser = crate::process::secret)]
    pub token_secret: Option<SecretString>,
}

impl MailArgs {
    /// The emailer's settings; `None` without `SMTP_URL`. `dev` may key tokens with the
    /// development secret, as its API does.
    ///
    /// # Errors
    /// `SMTP_URL` set without `JWT_SECRET` outside `dev`.
    pub fn settings(&self, dev: bool) -> anyhow::Result<Option<projections::EmailSettings>> {
        let Some(smtp_url) = self.smtp_url.clone() else {
            tracing::info!("SMTP_URL is unset: no account emails are sent.");
            return Ok(None);
        };
        let secret: Vec<u8> = match &self.token_secret {
            Some(secret) => secret.expose_secret().as_bytes().to_vec(),
            None if dev => auth::jwt::DEV_SECRET.to_vec(),
            None => anyhow::bail!(
                "the email projection needs JWT_SECRET (the API's) to key the links it sends"
            ),
        };
        Ok(Some(projections::EmailSettings {
            smtp_url,
            from: self.mail_from.clone(),
            public_url: self.public_url.clone(),
            tokens: auth::account_token::AccountTokens::new(&secret),
            max_age: Duration::from_secs(self.mail_max_age_hours.saturating_mul(3600)),
        }))
    }
}

impl RealTimeArgs {
    /// The workers over the stores `stores` configures, with a Redis connection of their
    /// own: what `project` runs and `dlq retry` applies dead letters with.
    ///
    /// With `SMTP_URL`, the emailer too (keyed by the development secret only when `dev`;
    /// misconfigured, it is left out with a warning, and naming it fails).
    ///
    /// # Errors
    /// Redis or a store unreachable; an unknown projection in `ONBOARDING_REQUIRED`.
    pub async fn connected_workers(
        &self,
        pool: &sqlx::PgPool,
        redis: &RedisArgs,
        stores: &ReadStoreArgs,
        write: &WriteArgs,
        dev: bool,
    ) -> anyhow::Result<Workers> {
        let email = self.mail.settings(dev).unwrap_or_else(|error| {
            tracing::warn!(
                error = format!("{error:#}"),
                "The email projection cannot run."
            );
            None
        });
        let connection = redis.connect().await?;
        let models = stores
            .read_models(pool, connection.clone(), &redis.redis_prefix)
            .await?;
        self.workers(
            pool,
            models,
            stores.timeline_settings(),
            connection,
            &redis.redis_prefix,
            write.settings(),
        )
        .map(|workers| workers.with_email(email))
    }

    /// The projection workers over `models`, pushing live updates and running the
    /// registration saga through the write side on `pool`.
    ///
    /// # Errors
    /// An unknown projection in `ONBOARDING_REQUIRED`.
    pub fn workers(
        &self,
        pool: &sqlx::PgPool,
        models: ReadModels,
        timeline: TimelineSettings,
        redis: redis::aio::ConnectionManager,
        redis_prefix: &str,
        commands: commands::Settings,
    ) -> anyhow::Result<Workers> {
        let required: BTreeSet<String> = self.onboarding_required.iter().cloned().collect();
        if let Some(unknown) = required.iter().find(|name| {
            ![
                TimelineProjection::NAME,
                ContentProjection::NAME,
                MessagingProjection::NAME,
            ]
            .contains(&name.as_str())
        }) {
            anyhow::bail!(
                "ONBOARDING_REQUIRED names `{unknown}`; only timeline, content and messaging sync users"
            );
        }
        Ok(workers::real_time(
            pool,
            models,
            timeline,
            redis,
            redis_prefix,
            workers::RealTimeSettings {
                live: LiveSettings {
                    retention_entries: self.live_retention_entries,
                    retention: Duration::from_secs(self.live_retention_secs),
                    likes_interval: Duration::from_millis(self.likes_push_interval_ms),
                },
                onboarding: OnboardingSettings {
                    required,
                    deadline: Duration::from_secs(self.onboarding_deadline_secs),
                },
                commands,
            },
        ))
    }
}
