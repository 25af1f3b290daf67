//! The benchmark database: created fresh on the server of `--database-url`, holding our
//! schema (`store::MIGRATOR`), postgres-es's tables in schema `postgres_es` and the raw table.

use std::str::FromStr;

use anyhow::{bail, Context};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};

/// postgres-es's own DDL (its repository's `db/init.sql`, without the view table), in a
/// schema of its own because our migrations already own `events` and `snapshots`.
const PG_ES_DDL: &str = r"
CREATE SCHEMA postgres_es;
CREATE TABLE postgres_es.events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE postgres_es.snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
";

/// The ceiling: a plain table with a key, the stream id and the same JSON payload.
const RAW_DDL: &str = r"
CREATE TABLE raw_inserts
(
    id        bigserial PRIMARY KEY,
    stream_id text      NOT NULL,
    payload   jsonb     NOT NULL
);
";

/// The schema postgres-es's pools put first on their search path.
pub const PG_ES_SCHEMA: &str = "postgres_es";

/// Facts about the server, printed with the results.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub server_version: String,
    pub synchronous_commit: String,
    pub shared_buffers: String,
}

/// A database created for this run.
#[derive(Debug, Clone)]
pub struct BenchDatabase {
    server: PgConnectOptions,
    name: String,
    options: PgConnectOptions,
}

impl BenchDatabase {
    /// Drops `name` if it exists (closing its connections), creates it anew on the server of
    /// `url`, and creates every table the scenarios write to.
    ///
    /// # Errors
    /// If `name` is not a plain identifier or any database step fails.
    pub async fn create(url: &str, name: &str) -> anyhow::Result<Self> {
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !plain {
            bail!("database name {name:?} must be lower-case letters, digits and _");
        }
        let server = PgConnectOptions::from_str(url).context("parsing --database-url")?;
        let mut admin = PgConnection::connect_with(&server)
            .await
            .context("connecting to the PostgreSQL server")?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await
            .context("dropping the previous benchmark database")?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .context("creating the benchmark database")?;
        admin
            .close()
            .await
            .context("closing the admin connection")?;

        let database = Self {
            options: server.clone().database(name),
            server,
            name: name.to_owned(),
        };
        let pool = database.pool(1, None).await?;
        store::MIGRATOR
            .run(&pool)
            .await
            .context("running the event store migrations")?;
        sqlx::raw_sql(PG_ES_DDL)
            .execute(&pool)
            .await
            .context("creating postgres-es's tables")?;
        sqlx::raw_sql(RAW_DDL)
            .execute(&pool)
            .await
            .context("creating the raw table")?;
        pool.close().await;
        Ok(database)
    }

    /// `name` on the server of `url`, when it exists (a database a run kept), with this
    /// build's migrations applied.
    ///
    /// # Errors
    /// If the server cannot be asked.
    pub async fn existing(url: &str, name: &str) -> anyhow::Result<Option<Self>> {
        let server = PgConnectOptions::from_str(url).context("parsing --database-url")?;
        let mut admin = PgConnection::connect_with(&server)
            .await
            .context("connecting to the PostgreSQL server")?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&mut admin)
                .await
                .context("looking for the benchmark database")?;
        admin
            .close()
            .await
            .context("closing the admin connection")?;
        if !exists {
            return Ok(None);
        }
        let database = Self {
            options: server.clone().database(name),
            server,
            name: name.to_owned(),
        };
        // A database a build before this one kept: brought to this build's schema (the
        // migrations only add), so that two builds compare on one log.
        let pool = database.pool(1, None).await?;
        store::MIGRATOR
            .run(&pool)
            .await
            .context("bringing the kept database to this build's schema")?;
        pool.close().await;
        Ok(Some(database))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How to connect to the benchmark database.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    /// A pool of exactly `size` connections, all opened now, optionally with `schema` first
    /// on the search path.
    ///
    /// # Errors
    /// If the connections cannot be opened.
    pub async fn pool(&self, size: u32, schema: Option<&'static str>) -> anyhow::Result<PgPool> {
        let mut options = PgPoolOptions::new()
            .max_connections(size)
            .min_connections(size);
        if let Some(schema) = schema {
            options = options.after_connect(move |connection, _meta| {
                Box::pin(async move {
                    connection
                        .execute(format!("SET search_path TO {schema}").as_str())
                        .await
                        .map(drop)
                })
            });
        }
        let pool = options
            .connect_with(self.options.clone())
            .await
            .context("connecting to the benchmark database")?;
        // `connect_with` opens one connection; open the rest before anything is timed.
        let held = futures::future::try_join_all((0..size).map(|_| pool.acquire()))
            .await
            .context("opening the pool's connections")?;
        drop(held);
        Ok(pool)
    }

    /// Version and durability settings of the server.
    ///
    /// # Errors
    /// If a `SHOW` fails.
    pub async fn facts(&self) -> anyhow::Result<ServerFacts> {
        let mut connection = PgConnection::connect_with(&self.options)
            .await
            .context("connecting to the benchmark database")?;
        let mut show = async |setting: &str| {
            sqlx::query_scalar::<_, String>(&format!("SHOW {setting}"))
                .fetch_one(&mut connection)
                .await
                .with_context(|| format!("SHOW {setting}"))
        };
        let facts = ServerFacts {
            server_version: show("server_version").await?,
            synchronous_commit: show("synchronous_commit").await?,
            shared_buffers: show("shared_buffers").await?,
        };
        connection.close().await.context("closing a connection")?;
        Ok(facts)
    }

    /// Puts the database in the same state before every scenario: statistics fresh, dead
    /// rows of the previous scenario vacuumed, dirty pages flushed (so that no scenario pays
    /// for the previous one's checkpoint).
    ///
    /// # Errors
    /// If `VACUUM` or `CHECKPOINT` fails.
    pub async fn settle(&self) -> anyhow::Result<()> {
        let mut connection = PgConnection::connect_with(&self.options)
            .await
            .context("connecting to the benchmark database")?;
        sqlx::raw_sql("VACUUM ANALYZE")
            .execute(&mut connection)
            .await
            .context("VACUUM ANALYZE")?;
        sqlx::raw_sql("CHECKPOINT")
            .execute(&mut connection)
            .await
            .context("CHECKPOINT")?;
        connection.close().await.context("closing a connection")?;
        Ok(())
    }

    /// Drops the database.
    ///
    /// # Errors
    /// If the server cannot be reached or the drop fails.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect_with(&self.server)
            .await
            .context("connecting to the PostgreSQL server")?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .context("dropping the benchmark database")?;
        admin
            .close()
            .await
            .context("closing the admin connection")?;
        Ok(())
    }
}
