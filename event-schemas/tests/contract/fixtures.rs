//! Golden fixtures: `fixtures/<event_type>.v<N>[.<variant>].json`, a realistic payload of
//! every published version (historical ones included, forever). Each one must satisfy its
//! committed JSON Schema, decode, and — at the current version — encode back unchanged.

use std::collections::BTreeSet;

use event_schemas::event::published_schemas;
use event_schemas::user::{UserRegisteredV1, UserRegisteredV2, UserRegisteredV3};
use event_schemas::{Event, EventKind};
use jsonschema::Validator;
use serde_json::Value;

use crate::support::{file_name, fixtures_dir, json_files, read_json, schemas_dir, FixtureName};

/// A fixture file, parsed.
struct Fixture {
    file: String,
    name: FixtureName,
    payload: Value,
}

fn all_fixtures() -> Vec<Fixture> {
    let dir = fixtures_dir();
    json_files(&dir)
        .into_iter()
        .map(|file| {
            let name = FixtureName::parse(&file).unwrap_or_else(|| {
                panic!("fixture {file} is not named `<event_type>.v<N>[.<variant>].json`")
            });
            let payload = read_json(&dir.join(&file));
            Fixture {
                file,
                name,
                payload,
            }
        })
        .collect()
}

/// A validator for the committed schema file of `(event_type, version)`, with `format`
/// (uuid, …) checked too: the fixtures should be as strict as real data.
fn validator(event_type: &str, version: u32) -> Validator {
    let path = schemas_dir().join(file_name(event_type, version));
    let schema = read_json(&path);
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid JSON Schema: {e}", path.display()))
}

fn published() -> BTreeSet<(String, u32)> {
    published_schemas()
        .into_iter()
        .map(|(event_type, version, _)| (event_type.to_owned(), version))
        .collect()
}

#[test]
fn every_published_version_has_a_golden_fixture() {
    let dir = fixtures_dir();
    let missing: Vec<String> = published()
        .into_iter()
        .map(|(event_type, version)| file_name(&event_type, version))
        .filter(|name| !dir.join(name).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "missing fixtures in {}: {missing:?}",
        dir.display()
    );
}

#[test]
fn every_fixture_belongs_to_a_published_version() {
    let published = published();
    let strays: Vec<String> = all_fixtures()
        .into_iter()
        .filter(|f| !published.contains(&(f.name.event_type.clone(), f.name.schema_version)))
        .map(|f| f.file)
        .collect();
    assert!(
        strays.is_empty(),
        "fixtures of unpublished versions: {strays:?}"
    );
}

#[test]
fn every_fixture_validates_against_its_committed_schema() {
    let mut failures = Vec::new();
    for fixture in all_fixtures() {
        let validator = validator(&fixture.name.event_type, fixture.name.schema_version);
        for error in validator.iter_errors(&fixture.payload) {
            failures.push(format!(
                "{}: {} at {}",
                fixture.file,
                error,
                error.instance_path()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures violate their schemas:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_fixture_decodes() {
    let mut failures = Vec::new();
    for fixture in all_fixtures() {
        let FixtureName {
            event_type,
            schema_version,
            ..
        } = &fixture.name;
        match Event::decode(event_type, *schema_version, fixture.payload.clone()) {
            Ok(event) if event.event_type() != event_type => failures.push(format!(
                "{}: decoded as `{}`",
                fixture.file,
                event.event_type()
            )),
            Ok(_) => {}
            Err(e) => failures.push(format!("{}: {e}", fixture.file)),
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures that do not decode:\n{}",
        failures.join("\n")
    );
}

#[test]
fn fixtures_of_current_versions_encode_back_unchanged() {
    let mut checked = 0;
    for fixture in all_fixtures() {
        let kind = EventKind::parse(&fixture.name.event_type).unwrap();
        if fixture.name.schema_version != kind.current_version() {
            continue;
        }
        let event = Event::decode(
            &fixture.name.event_type,
            fixture.name.schema_version,
            fixture.payload.clone(),
        )
        .unwrap();
        assert_eq!(event.schema_version(), fixture.name.schema_version);
        assert_eq!(event.encode().unwrap(), fixture.payload, "{}", fixture.file);
        checked += 1;
    }
    assert!(
        checked >= EventKind::ALL.len(),
        "only {checked} current fixtures found"
    );
}

/// The schema files and serde must agree on what is required and what is allowed, or a
/// consumer validating against the published schema would accept what we cannot decode (or
/// the reverse). Checked on every fixture by dropping each field in turn and by adding one.
#[test]
fn schemas_and_decoding_agree_on_missing_and_unknown_fields() {
    let mut disagreements = Vec::new();
    for fixture in all_fixtures() {
        let FixtureName {
            event_type,
            schema_version,
            ..
        } = &fixture.name;
        let validator = validator(event_type, *schema_version);
        let Value::Object(fields) = &fixture.payload else {
            panic!("{}: a payload is a JSON object", fixture.file);
        };

        let mut variants = Vec::new();
        for key in fields.keys() {
            let mut without = fields.clone();
            without.remove(key);
            variants.push((format!("without `{key}`"), Value::Object(without)));
        }
        let mut with_extra = fields.clone();
        with_extra.insert("unexpected_field".into(), Value::Bool(true));
        variants.push(("with an unknown field".into(), Value::Object(with_extra)));

        for (what, payload) in variants {
            let schema_accepts = validator.is_valid(&payload);
            let decodes = Event::decode(event_type, *schema_version, payload).is_ok();
            if schema_accepts != decodes {
                disagreements.push(format!(
                    "{} {what}: schema accepts = {schema_accepts}, decodes = {decodes}",
                    fixture.file
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn user_registered_v1_fixtures_decode_to_what_the_upcaster_makes_of_them() {
    let v1_fixtures: Vec<Fixture> = all_fixtures()
        .into_iter()
        .filter(|f| f.name.event_type == "user.registered" && f.name.schema_version == 1)
        .collect();
    assert!(
        v1_fixtures.len() >= 2,
        "expected a v1 fixture with and one without a display name"
    );

    for fixture in v1_fixtures {
        let v1: UserRegisteredV1 = serde_json::from_value(fixture.payload.clone()).unwrap();
        let decoded = Event::decode("user.registered", 1, fixture.payload).unwrap();
        assert_eq!(
            decoded,
            Event::UserRegistered(UserRegisteredV3::from(UserRegisteredV2::from(v1))),
            "{}",
            fixture.file
        );
    }
}

#[test]
fn user_registered_v1_without_display_name_takes_the_username() {
    let payload = read_json(&fixtures_dir().join("user.registered.v1.no-display-name.json"));
    assert_eq!(
        payload["display_name"],
        Value::Null,
        "the fixture must lack a display name"
    );

    let Event::UserRegistered(current) =
        Event::decode("user.registered", 1, payload.clone()).unwrap()
    else {
        panic!("user.registered decodes to Event::UserRegistered");
    };
    assert_eq!(current.display_name, current.username);
    assert_eq!(current.username, payload["username"]);
    assert_eq!(current.email, payload["email"]);
    assert_eq!(current.user_id.to_string(), payload["user_id"]);
}

#[test]
fn user_registered_v1_with_display_name_keeps_it() {
    let payload = read_json(&fixtures_dir().join("user.registered.v1.json"));
    let Some(display_name) = payload["display_name"].as_str() else {
        panic!("the main v1 fixture must carry a display name");
    };
    assert_ne!(
        payload["username"], display_name,
        "pick a fixture where they differ"
    );

    let Event::UserRegistered(current) =
        Event::decode("user.registered", 1, payload.clone()).unwrap()
    else {
        panic!("user.registered decodes to Event::UserRegistered");
    };
    assert_eq!(current.display_name, display_name);
}

#[test]
fn a_v1_payload_without_the_display_name_key_is_upcast_like_a_null_one() {
    let mut payload = read_json(&fixtures_dir().join("user.registered.v1.no-display-name.json"));
    payload.as_object_mut().unwrap().remove("display_name");
    let Event::UserRegistered(current) = Event::decode("user.registered", 1, payload).unwrap()
    else {
        panic!("user.registered decodes to Event::UserRegistered");
    };
    assert_eq!(current.display_name, current.username);
}

#[test]
fn user_registered_v2_fixtures_lose_their_hash_when_upcast() {
    let payload = read_json(&fixtures_dir().join("user.registered.v2.json"));
    assert!(payload["password_hash"].is_string(), "v2 carried the hash");
    let decoded = Event::decode("user.registered", 2, payload.clone()).unwrap();
    let encoded = decoded.encode().unwrap();
    assert_eq!(encoded.get("password_hash"), None);
    assert_eq!(encoded["username"], payload["username"]);
}
