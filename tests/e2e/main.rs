//! End-to-end tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod api_analytics;
mod api_audit;
mod api_auth;
mod api_commands;
mod api_contract;
mod api_queries;
mod api_rate_limits;
mod browser;
mod conversations;
mod kafka_read_your_writes;
mod live;
mod notifications;
mod people;
mod presence;
mod privacy;
mod read_models;
mod write_side;
