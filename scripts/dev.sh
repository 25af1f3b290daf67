#!/usr/bin/env bash
# The quick start: starts (or installs) PostgreSQL and Redis, builds hybridlive, creates and
# migrates its database, and runs `hybridlive dev` (everything in one process) until Ctrl-C.
#
# With --full: the production shape on this machine, without Docker — PostgreSQL, Redis,
# Apache Kafka, Apache Cassandra and FerretDB (scripts/services.sh --full), the CQL keyspace
# and MongoDB indexes made by `migrate`, then three processes: the outbox relay, every
# projection fed by Kafka into Cassandra (timelines) and FerretDB (posts, comments,
# profiles), and the API with the demo page on http://127.0.0.1:8080. Their logs are in
# ~/.local/state/hybridlive/dev-full/; Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
full=""
if [ "${1:-}" = "--full" ]; then full=1; shift; fi
bin="${CARGO_TARGET_DIR:-target}/release/hybridlive"
if [ -z "$full" ]; then
  scripts/services.sh
  export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/hybridlive}"
  cargo build --release --locked -p hybridlive
  "$bin" migrate --create-database
  exec "$bin" dev "$@"
fi

servers=$(scripts/services.sh --full)
eval "$servers"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/hybridlive}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
# One node of each: the keyspace gets replication factor 1, so ONE is as strong as QUORUM.
export SCYLLA_CONSISTENCY="${SCYLLA_CONSISTENCY:-ONE}"
state="${HYBRIDLIVE_STATE:-$HOME/.local/state/hybridlive}/dev-full"
mkdir -p "$state"
# `serve` refuses the development JWT secret: this machine's own, made once and kept so
# that tokens survive a restart.
if [ -z "${JWT_SECRET:-}" ]; then
  [ -s "$state/jwt_secret" ] || (umask 077; head -c 48 /dev/urandom | base64 -w0 >"$state/jwt_secret")
  JWT_SECRET="$(cat "$state/jwt_secret")"
  export JWT_SECRET
fi
# Likewise the key-encryption key that wraps the people's data keys: lost, their personal
# data in the log can no longer be opened.
if [ -z "${KEY_ENCRYPTION_KEY:-}" ]; then
  [ -s "$state/key_encryption_key" ] || (umask 077; head -c 32 /dev/urandom | base64 -w0 >"$state/key_encryption_key")
  KEY_ENCRYPTION_KEY="$(cat "$state/key_encryption_key")"
  export KEY_ENCRYPTION_KEY
fi
cargo build --release --locked -p hybridlive
"$bin" migrate --create-database

pids=()
stop() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
}
trap stop EXIT INT TERM
METRICS_ADDR=127.0.0.1:9101 "$bin" relay >"$state/relay.log" 2>&1 &
pids+=("$!")
METRICS_ADDR=127.0.0.1:9102 "$bin" project all >"$state/project.log" 2>&1 &
pids+=("$!")
printf 'dev --full: relay and projections (Kafka → Cassandra, FerretDB, Redis) running; logs in %s\n' "$state" >&2
printf 'dev --full: the API and demo page on http://127.0.0.1:8080\n' >&2
"$bin" serve "$@" &
pids+=("$!")
# The first of the three to exit ends the others.
wait -n
