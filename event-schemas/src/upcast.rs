//! Upcasters: pure functions that turn a payload of one schema version into the next.
//!
//! [`crate::Event::decode`] runs the chain for every load, so stored events are never
//! rewritten (the log is immutable) and every reader sees current types. To change an event
//! type: add `FooV{n+1}` next to `FooV{n}`, an `impl From<FooV{n}> for FooV{n+1}`, one line
//! in `UPCASTERS`, bump the version in the catalogue (`event.rs`), list the new version in
//! [`crate::event::published_schemas`], add its fixture, regenerate the schema files (see the
//! crate docs), and keep every old version, schema file and fixture.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::event::{DecodeError, EventKind};
use crate::user::{UserRegisteredV1, UserRegisteredV2, UserRegisteredV3};

type Step = fn(Value) -> Result<Value, serde_json::Error>;

/// `(event type, from version, step to from version + 1)`.
const UPCASTERS: &[(EventKind, u32, Step)] = &[
    (
        EventKind::UserRegistered,
        1,
        typed::<UserRegisteredV1, UserRegisteredV2>,
    ),
    (
        EventKind::UserRegistered,
        2,
        typed::<UserRegisteredV2, UserRegisteredV3>,
    ),
];

/// A typed step: parse the old version strictly, convert, serialise the new one.
fn typed<Old, New>(payload: Value) -> Result<Value, serde_json::Error>
where
    Old: DeserializeOwned + Into<New>,
    New: Serialize,
{
    let old: Old = serde_json::from_value(payload)?;
    serde_json::to_value(old.into())
}

/// Upcasts `payload` from `version` as far as the chain goes; returns the version reached.
pub(crate) fn to_current(
    kind: EventKind,
    version: u32,
    mut payload: Value,
) -> Result<(u32, Value), DecodeError> {
    let mut reached = version;
    while let Some((_, _, step)) = UPCASTERS
        .iter()
        .find(|(k, from, _)| *k == kind && *from == reached)
    {
        payload = step(payload).map_err(|source| DecodeError::Invalid {
            event_type: kind.as_str().to_owned(),
            schema_version: reached,
            source,
        })?;
        reached += 1;
    }
    Ok((reached, payload))
}
