#!/usr/bin/env bash
# The quick start: starts (or installs) PostgreSQL and Redis, builds hybridlive, creates and
# migrates its database, and runs `hybridlive dev` (everything in one process) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/hybridlive}"
cargo build --release --locked -p hybridlive
target/release/hybridlive migrate --create-database
exec target/release/hybridlive dev "$@"
