//! `schemas/<event_type>.v<N>.json` is generated from the Rust types and committed; this
//! test fails when they drift apart. With `UPDATE_SCHEMAS=1` it rewrites the files instead
//! (review the diff: a change to a published version is a breaking change of the wire
//! contract — add a new version instead). Run only this test then, so the fixture tests do
//! not read half-written files: see [`UPDATE_COMMAND`].

use std::collections::BTreeSet;
use std::fmt::Write as _;

use event_schemas::event::published_schemas;
use serde_json::Value;

use crate::support::{file_name, json_files, read_json, schemas_dir};

/// Regenerates the schema files (documented in the crate docs and README too).
const UPDATE_COMMAND: &str =
    "UPDATE_SCHEMAS=1 cargo test -p event-schemas --test contract schema_files_match_the_rust_types";

const HINT: &str = "If the Rust change is intended, regenerate the files and review the diff; \
                    a published (event_type, schema_version) must never change shape, so a \
                    breaking change needs a new version, an upcaster and a fixture instead.";

#[test]
fn schema_files_match_the_rust_types() {
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some_and(|v| v == "1");
    let dir = schemas_dir();
    let mut problems = Vec::new();
    let mut expected_files = BTreeSet::new();

    for (event_type, version, schema) in published_schemas() {
        let name = file_name(event_type, version);
        let path = dir.join(&name);
        let generated = serde_json::to_value(&schema).unwrap();
        expected_files.insert(name.clone());

        if update {
            let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, text).unwrap();
                eprintln!("wrote {}", path.display());
            }
            continue;
        }
        if !path.exists() {
            problems.push(format!("{name}: missing (published but no schema file)"));
            continue;
        }
        let committed = read_json(&path);
        if committed != generated {
            let mut message = format!("{name}: differs from the Rust type:");
            for difference in differences(&committed, &generated).iter().take(10) {
                let _ = write!(message, "\n    {difference}");
            }
            problems.push(message);
        }
    }

    for name in json_files(&dir) {
        if !expected_files.contains(&name) {
            problems.push(format!(
                "{name}: not in published_schemas() (a published version stays listed forever; \
                 delete the file only if it was never published)"
            ));
        }
    }

    assert!(
        problems.is_empty(),
        "the JSON Schema files in {} do not match the Rust types:\n  {}\n{HINT}\n  {UPDATE_COMMAND}",
        dir.display(),
        problems.join("\n  ")
    );
}

/// Where two JSON values differ, as `pointer: committed → generated` lines.
fn differences(committed: &Value, generated: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", committed, generated, &mut out);
    out
}

fn walk(pointer: &str, committed: &Value, generated: &Value, out: &mut Vec<String>) {
    match (committed, generated) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let here = format!("{pointer}/{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => walk(&here, x, y, out),
                    (Some(x), None) => {
                        out.push(format!("{here}: committed {x}, generated nothing"))
                    }
                    (None, Some(y)) => {
                        out.push(format!("{here}: committed nothing, generated {y}"))
                    }
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => {
            let at = if pointer.is_empty() { "/" } else { pointer };
            out.push(format!("{at}: committed {a}, generated {b}"));
        }
        _ => {}
    }
}

#[test]
fn drift_is_reported_with_the_json_pointer_of_each_difference() {
    let committed = serde_json::json!({"a": 1, "b": {"c": "x"}, "gone": true});
    let generated = serde_json::json!({"a": 1, "b": {"c": "y"}, "new": [1]});
    assert_eq!(
        differences(&committed, &generated),
        vec![
            r#"/b/c: committed "x", generated "y""#.to_owned(),
            "/gone: committed true, generated nothing".to_owned(),
            "/new: committed nothing, generated [1]".to_owned(),
        ]
    );
}
