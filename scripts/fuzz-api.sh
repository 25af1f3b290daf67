#!/usr/bin/env bash
# The OpenAPI-driven fuzzer: runs schemathesis (every check, every phase, the stateful one
# included) against a real instance built from this tree, so the served document has to tell
# the truth about every status, body and constraint. Idempotent and unattended:
# - installs schemathesis from PyPI into a venv kept under $HYBRIDLIVE_TOOLS (reused);
# - starts or reuses PostgreSQL and Redis (scripts/services.sh) and makes a fresh database
#   and Redis key prefix for the run, removed afterwards;
# - takes the debug `hybridlive` of the test build (building it if needed) or
#   $HYBRIDLIVE_BIN, runs `hybridlive dev` (the API and every projection, lite profile) on a
#   free local port, registers a user for a token;
# - writes the JUnit XML and the text summary to target/fuzz-api/, stops the instance and
#   exits non-zero on any failure.
# FUZZ_MAX_EXAMPLES (default 50: about 50 s of fuzzing here on 2 shared cores, 4 200 cases;
# 10 took 15 s and missed a NUL byte reaching PostgreSQL) bounds the cases per operation.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

version=4.32.5
tools="${HYBRIDLIVE_TOOLS:-$HOME/.local/share/hybridlive/tools}"
venv="$tools/schemathesis-$version"
out="${CARGO_TARGET_DIR:-target}/fuzz-api"
max_examples="${FUZZ_MAX_EXAMPLES:-50}"
log_fuzz() { printf 'fuzz-api: %s\n' "$*" >&2; }

# A venv cannot be moved once made, so a marker file says it was completed: an interrupted
# install is thrown away and made again instead of being reused half-done.
if [ ! -e "$venv/.installed" ]; then
  command -v python3 >/dev/null 2>&1 || apt_install python3
  python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
  rm -rf "$venv"
  log_fuzz "installing schemathesis $version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
  touch "$venv/.installed"
fi

servers=$(scripts/services.sh)
eval "$servers"
base_url="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
run="fuzz_$(date +%s)_$$"
export DATABASE_URL="${base_url%/*}/hybridlive_$run"
export REDIS_PREFIX="hl:$run:"
# A key-encryption key of the run's own, which `admin grant-role` needs as much as `dev`.
KEY_ENCRYPTION_KEY="$(head -c 32 /dev/urandom | base64 -w0)"
export KEY_ENCRYPTION_KEY

bin="${HYBRIDLIVE_BIN:-}"
if [ -z "$bin" ]; then
  # The binary the test suite runs, built as the suite builds it: after `cargo test` (as in
  # scripts/test.sh) nothing is compiled again, whereas `cargo build -p hybridlive` unifies
  # the dependencies' features otherwise and compiles many of them a second time.
  cargo test --locked --workspace --no-run >&2
  bin="${CARGO_TARGET_DIR:-target}/debug/hybridlive"
fi

rm -rf "$out"
mkdir -p "$out"
pid=""
cleanup() {
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  psql "$base_url" -qc "DROP DATABASE IF EXISTS \"hybridlive_$run\" WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "$REDIS_PREFIX*" 2>/dev/null |
    xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$bin" migrate --create-database >"$out/migrate.log" 2>&1
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
api="http://127.0.0.1:$port"
# The fuzzer is one client sending thousands of requests a minute, many of them to the
# credential endpoints: limits that high still run the limiter on every request, and the
# document still says 429.
HTTP_ADDR="127.0.0.1:$port" RATE_LIMIT_PER_IP=1000000 RATE_LIMIT_PER_USER=1000000 \
  RATE_LIMIT_AUTH_PER_IP=1000000 RUST_LOG="${RUST_LOG:-warn}" \
  "$bin" dev >"$out/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$api/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
  sleep 0.3
done
curl -fsS "$api/readyz" >/dev/null

# The fuzzer's own account; its token never reaches a log (schemathesis masks the
# Authorization header in its output and reports).
name="fuzz_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
curl -fsS -X POST "$api/v1/auth/register" -H 'content-type: application/json' \
  -d "{\"username\":\"$name\",\"email\":\"$name@example.com\",\"password\":\"$password\"}" >/dev/null
# An admin, so that the audit and analytics routes are fuzzed past their 403.
"$bin" admin grant-role "$name" admin >>"$out/migrate.log" 2>&1
token=$(curl -fsS -X POST "$api/v1/auth/login" -H 'content-type: application/json' \
  -d "{\"login\":\"$name\",\"password\":\"$password\"}" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

log_fuzz "schemathesis $version against $api (max $max_examples examples per operation)"
started=$(date +%s)
status=0
# Left out, and only these: the two SSE streams never end (a request would wait for its
# timeout), and `DELETE /v1/me` would erase the fuzzer's own account mid-run. Every check
# runs by default; no `--checks all` here, which would switch back on the checks
# scripts/fuzz-api.toml turns off for single operations.
"$venv/bin/st" --config-file scripts/fuzz-api.toml run "$api/openapi.json" \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$max_examples" \
  --seed "${FUZZ_SEED:-$RANDOM}" \
  --workers 1 \
  --request-timeout 10 \
  --header "Authorization: Bearer $token" \
  --exclude-operation-id user_stream \
  --exclude-operation-id post_stream \
  --exclude-operation-id erase_me \
  --report junit --report-junit-path "$out/junit.xml" \
  --no-color >"$out/summary.txt" 2>&1 || status=$?
log_fuzz "finished in $(($(date +%s) - started)) s with status $status; report in $out/"
tail -n 40 "$out/summary.txt" >&2
exit "$status"
