//! [`Event::decode`] turns every bad input into a typed [`DecodeError`], never a panic; and
//! the catalogue ([`EventKind`]) is consistent with the files and with itself.

use std::collections::BTreeSet;

use event_schemas::event::published_schemas;
use event_schemas::{stream_type, DecodeError, Event, EventKind};
use serde_json::{json, Value};

use crate::support::{file_name, fixtures_dir, read_json, schemas_dir};

fn fixture(event_type: &str, version: u32) -> Value {
    read_json(&fixtures_dir().join(file_name(event_type, version)))
}

#[test]
fn an_unknown_event_type_is_an_unknown_type_error() {
    for event_type in [
        "user.deleted",
        "",
        "USER.REGISTERED",
        "user.registered ",
        "post",
    ] {
        let result = Event::decode(event_type, 1, json!({}));
        assert!(
            matches!(&result, Err(DecodeError::UnknownType(t)) if t == event_type),
            "{event_type:?}: {result:?}"
        );
    }
}

#[test]
fn an_unknown_type_is_reported_before_the_payload_is_looked_at() {
    let payload = fixture("post.published", 1);
    assert!(matches!(
        Event::decode("post.edited", 1, payload),
        Err(DecodeError::UnknownType(_))
    ));
}

#[test]
fn an_unknown_schema_version_is_an_unknown_version_error() {
    let cases = [
        ("user.registered", 0),
        ("user.registered", 4),
        ("user.registered", u32::MAX),
        ("post.published", 0),
        ("post.published", 2),
        ("onboarding.completed", 7),
    ];
    for (event_type, version) in cases {
        // A payload that is valid for the type's current version: the version alone is wrong.
        let kind = EventKind::parse(event_type).unwrap();
        let payload = fixture(event_type, kind.current_version());
        let result = Event::decode(event_type, version, payload);
        assert!(
            matches!(
                &result,
                Err(DecodeError::UnknownVersion { event_type: t, schema_version: v })
                    if t == event_type && *v == version
            ),
            "{event_type} v{version}: {result:?}"
        );
    }
}

fn assert_invalid(event_type: &str, version: u32, payload: Value) {
    let result = Event::decode(event_type, version, payload.clone());
    assert!(
        matches!(
            &result,
            Err(DecodeError::Invalid { event_type: t, schema_version: v, .. })
                if t == event_type && *v == version
        ),
        "{event_type} v{version} {payload}: {result:?}"
    );
}

#[test]
fn a_field_of_the_wrong_type_is_an_invalid_error() {
    let mut published = fixture("post.published", 1);
    published["title"] = json!(42);
    assert_invalid("post.published", 1, published);

    let mut published = fixture("post.published", 1);
    published["media"] = json!("https://cdn.example.com/a.png");
    assert_invalid("post.published", 1, published);

    let mut liked = fixture("post.liked", 1);
    liked["user_id"] = json!(12345);
    assert_invalid("post.liked", 1, liked);

    let mut liked = fixture("post.liked", 1);
    liked["user_id"] = json!("not-a-uuid");
    assert_invalid("post.liked", 1, liked);

    let mut registered = fixture("user.registered", 2);
    registered["display_name"] = Value::Null;
    assert_invalid("user.registered", 2, registered);
}

#[test]
fn an_unknown_field_is_an_invalid_error() {
    let mut comment = fixture("comment.added", 1);
    comment["likes"] = json!(3);
    assert_invalid("comment.added", 1, comment);

    let mut failed = fixture("onboarding.failed", 1);
    failed["retry"] = json!(true);
    assert_invalid("onboarding.failed", 1, failed);
}

#[test]
fn a_missing_field_is_an_invalid_error() {
    let mut deleted = fixture("post.deleted", 1);
    deleted.as_object_mut().unwrap().remove("author_id");
    assert_invalid("post.deleted", 1, deleted);
}

#[test]
fn a_bad_historical_payload_is_an_invalid_error_of_its_stored_version() {
    let mut v1 = fixture("user.registered", 1);
    v1["username"] = json!(["not", "a", "string"]);
    assert_invalid("user.registered", 1, v1);

    let mut v1 = fixture("user.registered", 1);
    v1["nickname"] = json!("extra");
    assert_invalid("user.registered", 1, v1);
}

#[test]
fn a_payload_that_is_not_an_object_is_an_invalid_error() {
    for payload in [Value::Null, json!(true), json!(1), json!("x"), json!([])] {
        assert_invalid("social.followed", 1, payload.clone());
        assert_invalid("user.registered", 1, payload);
    }
}

/// Any `(type, version, payload)` combination comes back as `Ok` or a typed error; a panic
/// would fail this test.
#[test]
fn decoding_garbage_never_panics() {
    let mut payloads = vec![
        Value::Null,
        json!(false),
        json!(-1),
        json!(1.5e300),
        json!(""),
        json!([{}]),
        json!({}),
        json!({"user_id": null}),
    ];
    for kind in EventKind::ALL {
        let mut nulled = fixture(kind.as_str(), kind.current_version());
        for value in nulled.as_object_mut().unwrap().values_mut() {
            *value = Value::Null;
        }
        payloads.push(nulled);
    }

    let mut decoded = 0;
    for kind in EventKind::ALL {
        for version in [0, 1, 2, 3, kind.current_version() + 1, u32::MAX] {
            for payload in &payloads {
                if Event::decode(kind.as_str(), version, payload.clone()).is_ok() {
                    decoded += 1;
                }
            }
        }
    }
    assert_eq!(decoded, 0, "none of these payloads is a valid event");
}

#[test]
fn every_event_kind_parses_back_from_its_name() {
    for &kind in EventKind::ALL {
        assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
    }
    let names: BTreeSet<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        names.len(),
        EventKind::ALL.len(),
        "event type names are unique"
    );
}

#[test]
fn every_event_kind_has_a_schema_file_and_fixture_for_its_current_version() {
    let mut missing = Vec::new();
    for kind in EventKind::ALL {
        let name = file_name(kind.as_str(), kind.current_version());
        if !schemas_dir().join(&name).exists() {
            missing.push(format!("schemas/{name}"));
        }
        if !fixtures_dir().join(&name).exists() {
            missing.push(format!("fixtures/{name}"));
        }
    }
    assert!(missing.is_empty(), "missing: {missing:?}");
}

#[test]
fn every_version_of_every_event_kind_is_published_and_nothing_else_is() {
    let published: Vec<(&str, u32)> = published_schemas()
        .into_iter()
        .map(|(event_type, version, _)| (event_type, version))
        .collect();
    let unique: BTreeSet<(&str, u32)> = published.iter().copied().collect();
    assert_eq!(
        unique.len(),
        published.len(),
        "published_schemas() lists duplicates"
    );

    let expected: BTreeSet<(&str, u32)> = EventKind::ALL
        .iter()
        .flat_map(|k| (1..=k.current_version()).map(move |v| (k.as_str(), v)))
        .collect();
    assert_eq!(unique, expected);
}

#[test]
fn every_event_kind_lives_on_a_known_stream_type() {
    let stream_types = [
        stream_type::USER,
        stream_type::SOCIAL_GRAPH,
        stream_type::POST,
        stream_type::COMMENT,
        stream_type::LIKE,
        stream_type::ONBOARDING,
        stream_type::CONVERSATION,
    ];
    for kind in EventKind::ALL {
        assert!(stream_types.contains(&kind.stream_type()), "{kind:?}");
    }
    let used: BTreeSet<&str> = EventKind::ALL.iter().map(|k| k.stream_type()).collect();
    assert_eq!(
        used.len(),
        stream_types.len(),
        "every stream type has events"
    );
}

#[test]
fn decoded_events_report_their_kind_type_and_current_version() {
    for &kind in EventKind::ALL {
        let event = Event::decode(
            kind.as_str(),
            kind.current_version(),
            fixture(kind.as_str(), kind.current_version()),
        )
        .unwrap();
        assert_eq!(event.kind(), kind);
        assert_eq!(event.event_type(), kind.as_str());
        assert_eq!(event.schema_version(), kind.current_version());
    }
}
