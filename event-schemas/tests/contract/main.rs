//! Checks that keep the published wire contract honest: the JSON Schema files under
//! `schemas/` match the Rust types, the golden fixtures under `fixtures/` match the schemas
//! and decode, and every malformed input is a typed [`event_schemas::DecodeError`].
//!
//! One test binary (not one per file) so the crate links once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod decode_errors;
mod fixtures;
mod schema_files;
mod support;
