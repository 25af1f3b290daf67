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
}

impl AdminCommand {
    pub async fn run(self, database: &DatabaseArgs) -> anyhow::Result<()> {
        match self {
            Self::GrantRole { user, role } => {
                grant_role(database.connect().await?, &user, &role).await
            }
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

/// Grants `role` to `user` (a user id or a username).
async fn grant_role(pool: sqlx::PgPool, user: &str, role: &str) -> anyhow::Result<()> {
    let user_id = match uuid::Uuid::parse_str(user) {
        Ok(id) => id.to_string(),
        Err(_) => store::claims::holder(&pool, &[(USERNAME_CLAIM, user)])
            .await
            .context("looking the username up")?
            .with_context(|| format!("no user named {user}"))?,
    };
    let write = WriteSide::new(pool, commands::Settings::default());
    let context = CommandContext {
        metadata: Metadata {
            actor: Some("system:admin-cli".to_owned()),
            ..Metadata::default()
        },
        ..CommandContext::default()
    };
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
