//! `hybridlive`: the one binary of Hybrid Live (DESIGN §9). `main` reads the command line
//! and the environment, installs traces and logs (`telemetry`), and hands over to the
//! subcommand's module; each module turns its flags into the libraries' settings and runs them. It may use every
//! library crate (the workers through `workers`); nothing uses it but the tests that run
//! it as a process.

mod admin;
mod audit;
mod dev;
mod dlq;
mod migrate;
mod process;
mod project;
mod relay;
mod replay;
mod serve;
mod workers;

use clap::{Parser, Subcommand};

/// The event-sourced social backend.
#[derive(Debug, Parser)]
#[command(name = "hybridlive", version, about)]
struct Cli {
    #[command(flatten)]
    database: process::DatabaseArgs,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    Migrate(migrate::MigrateCommand),
    /// Serves the HTTP API. Refuses to start with the development JWT secret.
    Serve(serve::ServeArgs),
    Dev(dev::DevCommand),
    Relay(relay::RelayCommand),
    Project(project::ProjectCommand),
    /// Dead-lettered events of the projections.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Administration.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Checks the immutable log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    Replay(replay::ReplayCommandArgs),
}

impl Command {
    /// The process's name in traces when `OTEL_SERVICE_NAME` does not set one.
    fn service_name(&self) -> String {
        let name = match self {
            Self::Migrate(_) => "migrate",
            Self::Serve(_) => "serve",
            Self::Dev(_) => "dev",
            Self::Relay(_) => "relay",
            Self::Project(_) => "project",
            Self::Dlq(_) => "dlq",
            Self::Admin(_) => "admin",
            Self::Audit(_) => "audit",
            Self::Replay(_) => "replay",
        };
        format!("hybridlive-{name}")
    }

    /// What the subcommand needs of the key-encryption key.
    fn keys(&self) -> process::Keys {
        match self {
            Self::Dev(_) => process::Keys::Development,
            Self::Migrate(_) | Self::Relay(_) | Self::Audit(_) => process::Keys::Optional,
            Self::Serve(_) | Self::Project(_) | Self::Dlq(_) | Self::Admin(_) | Self::Replay(_) => {
                process::Keys::Required
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { database, command } = Cli::parse();
    let _telemetry =
        telemetry::init(&command.service_name(), "info,sqlx=warn").map_err(anyhow::Error::msg)?;
    database.install_keys(command.keys())?;
    match command {
        Command::Migrate(command) => command.run(&database).await,
        Command::Serve(args) => serve::run(args, &database).await,
        Command::Dev(command) => command.run(&database).await,
        Command::Relay(command) => command.run(&database).await,
        Command::Project(command) => command.run(&database).await,
        Command::Dlq(command) => command.run(&database).await,
        Command::Admin(command) => command.run(&database).await,
        Command::Audit(command) => command.run(&database).await,
        Command::Replay(command) => command.run(&database).await,
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// A parsed command line may be logged or printed while debugging: the database and
    /// Redis passwords, the MongoDB URI and the JWT secret show as `[REDACTED]`.
    #[test]
    fn secrets_on_the_command_line_never_print() {
        let cli = Cli::try_parse_from([
            "hybridlive",
            "--database-url",
            "postgres://hl:db-password-1@db/hybridlive",
            "serve",
            "--redis-url",
            "redis://:redis-password-2@cache:6379",
            "--mongodb-uri",
            "mongodb://hl:mongo-password-3@docs/",
            "--jwt-secret",
            "jwt-secret-4-jwt-secret-4-jwt-secret-4",
        ])
        .expect("a valid command line");
        let printed = format!("{cli:?}");
        for secret in [
            "db-password-1",
            "redis-password-2",
            "mongo-password-3",
            "jwt-secret-4",
        ] {
            assert!(!printed.contains(secret), "{secret} printed in {printed}");
        }
        assert!(printed.contains("REDACTED"), "{printed}");
    }
}
