//! Waking log readers (the relay, projections) when events were committed.
//!
//! Readers poll the log slowly and are woken early by `NOTIFY` on [`EVENTS_CHANNEL`]. The
//! notification is sent *after* an append committed, by the appending process, coalesced —
//! never from a trigger inside the writing transaction: PostgreSQL serialises the commits of
//! every transaction that sent a `NOTIFY` on one database-wide lock (held through the commit's
//! WAL flush), which would cap the write side at one commit per fsync. A lost notification
//! (the process died between commit and `NOTIFY`, or an append made by hand) costs a reader
//! one poll interval, never an event.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

/// The `LISTEN`/`NOTIFY` channel that announces new events (the payload is empty).
pub const EVENTS_CHANNEL: &str = "hybridlive_events";

/// The shortest time between two wake-ups one store sends.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// Sends coalesced wake-ups: at most one `NOTIFY` in flight and one queued, however many
/// appends commit meanwhile, and at most one per [`NOTIFY_INTERVAL`]. Started on first use, by the task that appends; it stops when
/// the last clone is dropped.
#[derive(Debug, Clone, Default)]
pub(crate) struct Waker {
    sender: Arc<OnceLock<mpsc::Sender<()>>>,
}

impl Waker {
    pub(crate) fn wake(&self, pool: &PgPool) {
        let sender = self.sender.get_or_init(|| {
            let (sender, mut wakes) = mpsc::channel::<()>(1);
            let pool = pool.clone();
            tokio::spawn(async move {
                while wakes.recv().await.is_some() {
                    if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
                        .bind(EVENTS_CHANNEL)
                        .execute(&pool)
                        .await
                    {
                        tracing::debug!(%error, "Could not notify log readers; they will poll.");
                    }
                    // At most one NOTIFY per interval: under load the wake-ups cost the
                    // database at most 200 tiny transactions per second, not one
                    // per append; a reader is late by the interval at most.
                    tokio::time::sleep(NOTIFY_INTERVAL).await;
                }
            });
            sender
        });
        // Full: a wake-up is already queued, and it covers this append too.
        let _ = sender.try_send(());
    }
}

/// What a log reader waits on when it has caught up: a notification on [`EVENTS_CHANNEL`]
/// or the fallback poll interval, whichever comes first.
#[derive(Debug)]
pub struct LogWaiter {
    pool: PgPool,
    listener: Option<PgListener>,
    poll: Duration,
}

impl LogWaiter {
    /// A waiter polling every `poll` at the latest; it listens from its first [`Self::wait`].
    pub fn new(pool: PgPool, poll: Duration) -> Self {
        Self {
            pool,
            listener: None,
            poll,
        }
    }

    /// Returns when new events may have been committed. A broken listener connection is
    /// re-established on the next call; meanwhile the poll interval still applies.
    pub async fn wait(&mut self) {
        if self.listener.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut listener) => match listener.listen(EVENTS_CHANNEL).await {
                    Ok(()) => self.listener = Some(listener),
                    Err(error) => tracing::warn!(%error, "LISTEN failed; polling."),
                },
                Err(error) => tracing::warn!(%error, "Cannot connect the listener; polling."),
            }
            // Events committed while we were not listening yet: look before sleeping.
            return;
        }
        let Some(listener) = self.listener.as_mut() else {
            return;
        };
        match tokio::time::timeout(self.poll, listener.try_recv()).await {
            // The poll interval passed, or a notification came: look at the log.
            Err(_) | Ok(Ok(Some(_))) => {}
            // The connection was lost (and notifications with it): reconnect next time.
            Ok(Ok(None) | Err(_)) => self.listener = None,
        }
    }
}
