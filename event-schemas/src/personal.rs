//! The personal data of events: which fields of which event types a person wrote or is
//! identified by, and who that person is (the subject). The store seals these fields with the
//! subject's data key before an event is stored, so erasing the person — deleting the key —
//! leaves only ciphertext in the log (crypto-shredding, DESIGN §8a).
//!
//! On the wire a sealed field holds a string starting with [`SEALED_PREFIX`] in place of the
//! value (each element, for a list of strings); the store opens them for every reader that
//! decodes events (projections, replay, aggregates, audit). Kafka records carry them sealed.
//! A field of an erased person opens to [`ERASED`].

/// What a sealed value starts with.
pub const SEALED_PREFIX: &str = "sealed:v1:";

/// What a sealed value of an erased person opens to.
pub const ERASED: &str = "[erased]";

/// The personal fields of an event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersonalFields {
    /// The field holding the subject's id (a user id).
    pub subject: &'static str,
    /// String fields, or lists of strings, holding the subject's personal data.
    pub fields: &'static [&'static str],
}

/// `(event type, its personal fields)`, for every version of the type.
const PERSONAL: &[(&str, PersonalFields)] = &[
    (
        "user.registered",
        PersonalFields {
            subject: "user_id",
            fields: &["username", "email", "display_name"],
        },
    ),
    (
        "user.profile_updated",
        PersonalFields {
            subject: "user_id",
            fields: &["display_name"],
        },
    ),
    (
        "post.published",
        PersonalFields {
            subject: "author_id",
            fields: &["title", "body_markdown", "media"],
        },
    ),
    (
        "comment.added",
        PersonalFields {
            subject: "author_id",
            fields: &["body"],
        },
    ),
    (
        "conversation.started",
        PersonalFields {
            subject: "started_by",
            fields: &["title"],
        },
    ),
    (
        "message.sent",
        PersonalFields {
            subject: "sender_id",
            fields: &["body"],
        },
    ),
];

/// The personal fields of `event_type`, if it has any.
pub fn personal_fields(event_type: &str) -> Option<&'static PersonalFields> {
    PERSONAL
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, fields)| fields)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event::published_schemas;

    /// Every listed field exists, with the subject, in every published version of its type.
    #[test]
    fn the_listed_fields_exist_in_every_version_of_their_type() {
        for (event_type, version, schema) in published_schemas() {
            let Some(personal) = personal_fields(event_type) else {
                continue;
            };
            let schema = serde_json::to_value(schema).unwrap();
            let properties = schema["properties"].as_object().unwrap();
            for field in personal.fields.iter().chain([&personal.subject]) {
                assert!(
                    properties.contains_key(*field),
                    "{event_type} v{version} has no `{field}`"
                );
            }
        }
    }
}
