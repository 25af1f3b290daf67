//! Secrets that old versions of events carried, and their redaction.
//!
//! `user.registered` v1 and v2 carried the password hash; v3 does not (the hash lives in the
//! store's credentials). The log is immutable, so the rows written before keep it. Every path
//! that shows stored payloads beyond the write side — the relay's Kafka records, audit
//! listings and exports, replay's dry run, `--print-events` — passes them through
//! [`redact_secrets`] first. The value becomes [`REDACTED`]; the key stays, so the payload
//! still matches its published schema and still decodes.

use serde_json::Value;

/// What a redacted field holds.
pub const REDACTED: &str = "[redacted]";

/// `(event type, schema versions, fields)` of every published version that held a secret.
const SECRET_FIELDS: &[(&str, &[u32], &[&str])] =
    &[("user.registered", &[1, 2], &["password_hash"])];

/// Replaces the secret fields of a stored payload of `event_type` v`schema_version` with
/// [`REDACTED`]; returns whether it changed anything.
pub fn redact_secrets(event_type: &str, schema_version: u32, payload: &mut Value) -> bool {
    let Some(fields) = secret_fields(event_type, schema_version) else {
        return false;
    };
    let Some(object) = payload.as_object_mut() else {
        return false;
    };
    let mut changed = false;
    for field in fields {
        if let Some(value) = object.get_mut(*field) {
            if value.as_str() != Some(REDACTED) {
                *value = Value::String(REDACTED.to_owned());
                changed = true;
            }
        }
    }
    changed
}

/// The secret fields of `event_type` v`schema_version`, if it has any.
pub fn secret_fields(event_type: &str, schema_version: u32) -> Option<&'static [&'static str]> {
    SECRET_FIELDS
        .iter()
        .find(|(t, versions, _)| *t == event_type && versions.contains(&schema_version))
        .map(|(_, _, fields)| *fields)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event::published_schemas;
    use serde_json::json;

    #[test]
    fn an_old_registration_loses_its_hash_and_keeps_its_shape() {
        let mut payload = json!({"user_id": "0190f5b1-1d2e-7f3a-8b4c-5d6e7f8a9b0c",
            "username": "ada", "email": "ada@example.org", "display_name": "Ada",
            "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"});
        assert!(redact_secrets("user.registered", 2, &mut payload));
        assert_eq!(payload["password_hash"], REDACTED);
        assert_eq!(payload["username"], "ada");
        assert!(
            !redact_secrets("user.registered", 2, &mut payload),
            "idempotent"
        );
        let decoded = crate::Event::decode("user.registered", 2, payload).unwrap();
        assert_eq!(decoded.event_type(), "user.registered");
    }

    #[test]
    fn other_events_are_left_alone() {
        let mut payload = json!({"password_hash": "not a secret of this type"});
        assert!(!redact_secrets("user.registered", 3, &mut payload));
        assert!(!redact_secrets("post.published", 1, &mut payload));
        assert_eq!(payload["password_hash"], "not a secret of this type");
    }

    /// A published version with a field named like a secret must be listed above.
    #[test]
    fn every_published_field_named_like_a_secret_is_redacted() {
        for (event_type, version, schema) in published_schemas() {
            let schema = serde_json::to_value(schema).unwrap();
            let Some(properties) = schema["properties"].as_object() else {
                continue;
            };
            for name in properties.keys() {
                let secret_like = ["password", "secret", "token", "otp", "recovery"]
                    .iter()
                    .any(|word| name.contains(word));
                if secret_like {
                    let listed = secret_fields(event_type, version).unwrap_or_default();
                    assert!(
                        listed.contains(&name.as_str()),
                        "{event_type} v{version} has `{name}`, not redacted"
                    );
                }
            }
        }
    }
}
