#!/usr/bin/env bash
# The test command: starts (or installs) the services the tests need — PostgreSQL, Redis,
# a Kafka-protocol broker (unless KAFKA_BROKERS names one) and headless Chromium with
# chromedriver — then runs every test of the workspace against them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${KAFKA_BROKERS:-}" ]; then
  scripts/services.sh --browser
else
  scripts/services.sh --kafka --browser
fi
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
