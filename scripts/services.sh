#!/usr/bin/env bash
# Makes sure the services of the lite profile are up on this machine: PostgreSQL on
# 127.0.0.1:5432 and Redis on 127.0.0.1:6379 — and with --kafka also a Kafka-protocol broker
# on 127.0.0.1:9092 (tansu, built from crates.io once and cached), and with --browser
# Debian's Chromium and its WebDriver (/usr/bin/chromium, /usr/bin/chromedriver) for the
# demo page's browser tests. Reuses what is running, starts what is installed but stopped,
# installs what is missing. Idempotent.
set -euo pipefail

with_kafka=""
with_browser=""
for arg in "$@"; do
  case "$arg" in
    --kafka) with_kafka=1 ;;
    --browser) with_browser=1 ;;
    *) printf 'usage: %s [--kafka] [--browser]\n' "$0" >&2; exit 2 ;;
  esac
done

log() { printf 'services: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

ensure_postgres() {
  command -v pg_isready >/dev/null 2>&1 || apt_install postgresql-client
  if pg_up; then
    log "PostgreSQL is running"
  else
    local installed_now=""
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql
      installed_now=1
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
    pg_up || { log "PostgreSQL did not start; see /var/log/postgresql/"; exit 1; }
    if [ -n "$installed_now" ]; then
      # A fresh Debian cluster wants a password over TCP: give the postgres role the one
      # the project's default DATABASE_URL uses (local development and CI only).
      as_root su postgres -c "psql -q -c \"ALTER ROLE postgres PASSWORD 'postgres'\"" >/dev/null
    fi
  fi
  if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -qAtc 'select 1' >/dev/null 2>&1; then
    log "cannot log in to PostgreSQL as postgres/postgres on 127.0.0.1; set DATABASE_URL to a superuser URL"
    [ -n "${DATABASE_URL:-}" ] || exit 1
  fi
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
  command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
  if redis_up; then
    log "Redis is running"
    return
  fi
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  log "starting Redis"
  mkdir -p /tmp/hybridlive-redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /tmp/hybridlive-redis --logfile /tmp/hybridlive-redis/redis.log
  for _ in $(seq 1 40); do redis_up && break; sleep 0.25; done
  redis_up || { log "Redis did not start; see /tmp/hybridlive-redis/redis.log"; exit 1; }
}

# Kafka: no Kafka or Redpanda package is reachable from these machines, so the tests use
# tansu (an Apache-Kafka-compatible broker in Rust, crates.io) with its SQLite storage
# engine. Built once (about 13 min on 2 cores) into $HYBRIDLIVE_TOOLS and reused.
TANSU_VERSION=0.6.0
tools="${HYBRIDLIVE_TOOLS:-$HOME/.local/share/hybridlive/tools}"
state="${HYBRIDLIVE_STATE:-$HOME/.local/state/hybridlive}"

kafka_up() { (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; }

ensure_kafka() {
  if kafka_up; then
    log "a Kafka-protocol broker is listening on 127.0.0.1:9092"
    return
  fi
  local tansu="$tools/bin/tansu"
  if [ ! -x "$tansu" ] || ! "$tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    log "building tansu $TANSU_VERSION into $tools (once; about 13 minutes on 2 cores)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql \
      --root "$tools" --quiet
  fi
  # A scratch broker for tests and development: each start begins with empty storage, so
  # the SQLite file cannot grow without bound across test runs (tests use topic prefixes
  # of their own; a relay's checkpoint may be ahead of a fresh broker — use real Kafka,
  # docker-compose, for anything that must keep its topics).
  mkdir -p "$state/tansu"
  rm -f "$state/tansu"/tansu.db*
  log "starting tansu on 127.0.0.1:9092 (data, emptied at each start: $state/tansu)"
  # (tansu reads a sqlite:// path relative to its working directory.)
  (
    cd "$state/tansu"
    nohup "$tansu" broker \
      --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine sqlite://tansu.db \
      >tansu.log 2>&1 </dev/null &
  )
  for _ in $(seq 1 60); do kafka_up && break; sleep 0.5; done
  kafka_up || { log "tansu did not start; see $state/tansu/tansu.log"; exit 1; }
  # tansu 0.6.0's SQLite schema has no index on record headers, and it looks them up once
  # per fetched record: fetching grows with the square of the topic's size (7k records with
  # headers: 10 s instead of 0.3 s). Its DDL is `create … if not exists`, so the index stays.
  command -v sqlite3 >/dev/null 2>&1 || apt_install sqlite3
  sqlite3 "$state/tansu/tansu.db" \
    "CREATE INDEX IF NOT EXISTS header_record_idx ON header (topition, offset_id);"
}

# The browser tests drive headless Chromium through chromedriver; both come from Debian
# (the driver package matches the browser's version), never from a download of their own.
ensure_browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    log "Chromium and chromedriver are installed"
    return
  fi
  apt_install chromium chromium-driver
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] \
    || { log "chromium-driver did not install /usr/bin/chromedriver"; exit 1; }
}

ensure_postgres
ensure_redis
if [ -n "$with_kafka" ]; then ensure_kafka; fi
if [ -n "$with_browser" ]; then ensure_browser; fi
