//! [`ReadModelError`]: how every read-model adapter fails, and how the runtime treats it.

use projection_runtime::ApplyError;

/// A read-model store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadModelError {
    /// The store is unreachable or overloaded: retry later, never skip the event.
    #[error("read-model store unavailable: {0}")]
    Unavailable(String),
    /// The store rejected this data: retrying the same event will not help.
    #[error("read-model store rejected the data: {0}")]
    Rejected(String),
}

impl From<ReadModelError> for ApplyError {
    fn from(error: ReadModelError) -> Self {
        match error {
            ReadModelError::Unavailable(message) => ApplyError::Transient(message),
            ReadModelError::Rejected(message) => ApplyError::Poison(message),
        }
    }
}

impl From<sqlx::Error> for ReadModelError {
    fn from(error: sqlx::Error) -> Self {
        // SQLSTATE classes 22 (data exception) and 23 (integrity constraint) are about the
        // data; everything else (connections, pool, I/O, server shutting down) is transient.
        if let sqlx::Error::Database(db) = &error {
            if let Some(code) = db.code() {
                if code.starts_with("22") || code.starts_with("23") {
                    return ReadModelError::Rejected(error.to_string());
                }
            }
        }
        ReadModelError::Unavailable(error.to_string())
    }
}

impl From<redis::RedisError> for ReadModelError {
    fn from(error: redis::RedisError) -> Self {
        ReadModelError::Unavailable(error.to_string())
    }
}

impl From<serde_json::Error> for ReadModelError {
    fn from(error: serde_json::Error) -> Self {
        ReadModelError::Rejected(error.to_string())
    }
}

/// Result of a read-model store operation.
pub type ReadResult<T> = Result<T, ReadModelError>;
