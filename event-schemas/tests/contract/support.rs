//! File-system helpers shared by the contract tests.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `event-schemas/schemas`.
pub fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

/// `event-schemas/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The file name of the schema (and main fixture) of one published version.
pub fn file_name(event_type: &str, schema_version: u32) -> String {
    format!("{event_type}.v{schema_version}.json")
}

/// The `*.json` file names in `dir`, sorted.
pub fn json_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// Reads and parses one JSON file.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// A fixture file name split into its parts:
/// `<event_type>.v<N>[.<variant>].json` → `(event_type, N, variant)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureName {
    pub event_type: String,
    pub schema_version: u32,
    pub variant: Option<String>,
}

impl FixtureName {
    pub fn parse(file_name: &str) -> Option<FixtureName> {
        let stem = file_name.strip_suffix(".json")?;
        let segments: Vec<&str> = stem.split('.').collect();
        // Event types never contain a `v<digits>` segment, so the first one is the version.
        let at = segments.iter().position(|s| {
            s.len() > 1 && s.starts_with('v') && s[1..].bytes().all(|b| b.is_ascii_digit())
        })?;
        if at == 0 {
            return None;
        }
        let schema_version = segments[at][1..].parse().ok()?;
        let rest = &segments[at + 1..];
        let variant = match rest {
            [] => None,
            [variant] if !variant.is_empty() => Some((*variant).to_owned()),
            _ => return None,
        };
        Some(FixtureName {
            event_type: segments[..at].join("."),
            schema_version,
            variant,
        })
    }
}

#[test]
fn fixture_names_are_split_into_type_version_and_variant() {
    assert_eq!(
        FixtureName::parse("onboarding.user_synced.v1.json"),
        Some(FixtureName {
            event_type: "onboarding.user_synced".into(),
            schema_version: 1,
            variant: None
        })
    );
    assert_eq!(
        FixtureName::parse("user.registered.v12.no-display-name.json"),
        Some(FixtureName {
            event_type: "user.registered".into(),
            schema_version: 12,
            variant: Some("no-display-name".into())
        })
    );
    assert_eq!(FixtureName::parse("user.registered.json"), None);
    assert_eq!(FixtureName::parse("v1.json"), None);
    assert_eq!(FixtureName::parse("user.registered.v1.a.b.json"), None);
    assert_eq!(FixtureName::parse("user.registered.v1.txt"), None);
}
