//! `hybridlive admin …`: operator commands that go through the same command layer (and so
//! the same rules and the same audit trail) as the API.

use anyhow::Context;
use clap::Subcommand;
use commands::{CommandContext, WriteSide};
use domain::user::{UserCommand, USERNAME_CLAIM};
use event_schemas::Metadata;

use crate::process::DatabaseArgs;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Grants a role (admin, auditor, analyst) to a user, by id or username.
    GrantRole { user: String, role: String },
    /// Wraps every data key under KEY_ENCRYPTION_KEY: the last step of rotating the
    /// key-encryption key (run it with the old key as KEY_ENCRYPTION_KEY_PREVIOUS).
    RewrapKeys,
    /// Erases a user (by id or username) and their personal data, for good: their data key
    /// is destroyed, so nothing they wrote can be read again, in the log included.
    /// Idempotent: erasing an erased user only forgets what read models still hold.
    EraseUser { user: String },
}

impl AdminCommand {
    pub async fn run(self, database: &DatabaseArgs) -> anyhow::Result<()> {
        match self {
            Self::GrantRole { user, role } => {
                grant_role(database.connect().await?, &user, &role).await
            }
            Self::EraseUser { user } => erase_user(database.connect().await?, &user).await,
            Self::RewrapKeys => {
                let keyring = store::Keyring::new(database.connect().await?);
                let rewrapped = keyring.rewrap().await.context("rewrapping data keys")?;
                println!(
                    "rewrapped {rewrapped} data keys under key-encryption key {}",
                    store::keys::installed().unwrap_or("?")
                );
                Ok(())
            }
        }
    }
}

/// The id of `user`: a user id, or the username of a user who holds it.
async fn user_id(pool: &sqlx::PgPool, user: &str) -> anyhow::Result<String> {
    Ok(match uuid::Uuid::parse_str(user) {
        Ok(id) => id.to_string(),
        Err(_) => store::claims::holder(pool, &[(USERNAME_CLAIM, user)])
            .await
            .context("looking the username up")?
            .with_context(|| format!("no user named {user}"))?,
    })
}

/// What the commands of this CLI are recorded as.
fn admin_context() -> CommandContext {
    CommandContext {
        metadata: Metadata {
            actor: Some("system:admin-cli".to_owned()),
            ..Metadata::default()
        },
        ..CommandContext::default()
    }
}

/// Erases `user` (a user id or a username).
async fn erase_user(pool: sqlx::PgPool, user: &str) -> anyhow::Result<()> {
    let user_id = user_id(&pool, user).await?;
    let write = WriteSide::new(pool.clone(), commands::Settings::default());
    let executed = write
        .users
        .execute(&user_id, UserCommand::Erase, &admin_context())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("erasing {user}"))?;
    let id = uuid::Uuid::parse_str(&user_id).context("a user id")?;
    projections::analytics::forget_author(&pool, id)
        .await
        .context("forgetting the analytics titles")?;
    if executed.appended == 0 {
        println!("user {user_id} was already erased");
    } else {
        println!(
            "erased user {user_id} (version {}, position {})",
            executed.version,
            executed.last_position.unwrap_or_default()
        );
    }
    Ok(())
}

/// Grants `role` to `user` (a user id or a username).
async fn grant_role(pool: sqlx::PgPool, user: &str, role: &str) -> anyhow::Result<()> {
    let user_id = user_id(&pool, user).await?;
    let write = WriteSide::new(pool, commands::Settings::default());
    let context = admin_context();
    let command = UserCommand::GrantRole {
        role: role.to_owned(),
    };
    let executed = write
        .users
        .execute(&user_id, command, &context)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("granting {role} to {user}"))?;
    if executed.appended == 0 {
        println!("{user} already has the role {role}");
    } else {
        println!(
            "granted {role} to {user} (user {user_id}, version {})",
            executed.version
        );
    }
    Ok(())
}
