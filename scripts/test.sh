#!/usr/bin/env bash
# The test command: starts (or installs) every server the tests talk to — PostgreSQL, Redis,
# Apache Kafka, Apache Cassandra, FerretDB (MongoDB wire protocol), Mailpit (an SMTP sink
# whose HTTP API gives the sent mail back), Jaeger (a trace collector whose query API gives
# the spans back), headless Chromium with chromedriver, and promtool — then
# runs every test of the workspace against them, and then the OpenAPI fuzzer
# (scripts/fuzz-api.sh). A variable set beforehand (DATABASE_URL, KAFKA_BROKERS,
# SCYLLA_NODES, MONGODB_URI, SMTP_URL with MAILPIT_URL) points the tests at a server of
# your own instead.
set -euo pipefail
cd "$(dirname "$0")/.."
servers=$(scripts/services.sh --full --mail --tracing --browser --ops)
eval "$servers"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
# The tests that need a production server fail, rather than skip, when its variable is unset.
export HYBRIDLIVE_REQUIRE_SERVERS=1
tests=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || tests=$?
else
  cargo test --workspace --no-fail-fast "$@" || tests=$?
fi
# The OpenAPI fuzzer against a real instance (scripts/fuzz-api.sh), whatever the tests
# said: both reports are wanted, and either failing fails the command.
fuzz=0
scripts/fuzz-api.sh || fuzz=$?
if [ "$tests" -ne 0 ]; then
  echo "test: cargo tests failed (status $tests)" >&2
fi
if [ "$fuzz" -ne 0 ]; then
  echo "test: the OpenAPI fuzzer failed (status $fuzz); report in target/fuzz-api/" >&2
fi
[ "$tests" -eq 0 ] && [ "$fuzz" -eq 0 ]
