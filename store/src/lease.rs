//! Exclusive leases for log readers that must have one active instance (the relay, each
//! projection fed by the log): a session advisory lock held by a dedicated connection.
//!
//! A holder that dies closes its connection and PostgreSQL releases the lock, so a standby
//! that retries every `standby_interval` takes over within that interval. A holder writes
//! its checkpoint on the lease connection: once the connection (and so the lock) is gone,
//! it cannot advance the checkpoint any more.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sqlx::ConnectOptions;
use tokio_util::sync::CancellationToken;

/// Waits until this process holds the lease `hybridlive <scope> <name>`; `None` when `stop`
/// was cancelled first. The connection is named `hybridlive <scope> <pid>` in
/// `pg_stat_activity`.
pub async fn acquire(
    pool: &PgPool,
    scope: &str,
    name: &str,
    standby_interval: Duration,
    stop: &CancellationToken,
) -> Option<PgConnection> {
    let options: PgConnectOptions = (*pool.connect_options())
        .clone()
        .application_name(&format!("hybridlive {scope} {}", std::process::id()));
    let key = format!("hybridlive {scope} {name}");
    let mut standby_logged = false;
    loop {
        let attempt = async {
            let mut connection = options.connect().await?;
            let locked: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(&key)
                    .fetch_one(&mut connection)
                    .await?;
            Ok::<_, sqlx::Error>(locked.then_some(connection))
        };
        match attempt.await {
            Ok(Some(connection)) => return Some(connection),
            Ok(None) if !standby_logged => {
                tracing::info!(scope, name, "Another instance is active; standing by.");
                standby_logged = true;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(scope, name, %error, "Cannot reach PostgreSQL for the lease.")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(standby_interval) => {}
            () = stop.cancelled() => return None,
        }
    }
}
