//! The event envelope: what the read side receives for every committed event.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Event;

/// Who caused an event and as part of what. Stored as the `metadata` jsonb column and sent
/// as Kafka headers; every field is optional so internal writers need not invent values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Follows one user action across services (the HTTP request id by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The event or command that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The authenticated user id, or a system actor such as `system:onboarding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The HTTP request that issued the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C trace context (`traceparent`) of the span that appended the event: the relay,
    /// each projection and the live push continue that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A committed event, decoded and upcast to its current version.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    /// Position in the global log; unique, increasing in insert order (not commit order).
    pub global_position: i64,
    pub event_id: Uuid,
    pub stream_type: String,
    pub stream_id: String,
    /// 1-based version of the event within its stream.
    pub stream_version: u64,
    /// The schema version the event was stored with (before upcasting).
    pub stored_schema_version: u32,
    pub event: Event,
    pub metadata: Metadata,
    pub recorded_at: DateTime<Utc>,
}
