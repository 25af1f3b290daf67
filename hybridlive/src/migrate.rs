//! `hybridlive migrate`: the event store's schema (`store::MIGRATOR`), then the
//! configured read-model stores'.

use anyhow::Context;
use clap::Args;
use secrecy::ExposeSecret;

use crate::process::DatabaseArgs;
use crate::workers::ReadStoreArgs;

/// Applies pending schema migrations, then exits. Run it before starting services;
/// concurrent runs are safe (they serialise on an advisory lock).
#[derive(Debug, Args)]
pub struct MigrateCommand {
    /// Create the database first if it does not exist.
    #[arg(long)]
    create_database: bool,
    /// Also creates the CQL keyspace/tables and MongoDB indexes when configured.
    #[command(flatten)]
    stores: ReadStoreArgs,
}

impl MigrateCommand {
    pub async fn run(self, database: &DatabaseArgs) -> anyhow::Result<()> {
        migrate_schema(database, self.create_database).await?;
        let pool = database.connect().await?;
        self.stores.migrate(&pool).await
    }
}

async fn migrate_schema(database: &DatabaseArgs, create_database: bool) -> anyhow::Result<()> {
    let database_url = database.database_url.expose_secret();
    use sqlx::migrate::MigrateDatabase;
    if create_database
        && !sqlx::Postgres::database_exists(database_url)
            .await
            .context("checking whether the database exists")?
    {
        sqlx::Postgres::create_database(database_url)
            .await
            .context("creating the database")?;
        tracing::info!("Created the database.");
    }
    let pool = database.connect().await?;
    let before = applied(&pool).await?;
    store::MIGRATOR
        .run(&pool)
        .await
        .context("applying migrations")?;
    let after = applied(&pool).await?;
    tracing::info!(
        applied = after - before,
        total = after,
        "Database schema is up to date."
    );
    Ok(())
}

async fn applied(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .context("reading the migration table")?;
    if !exists {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .context("reading the migration table")
}
