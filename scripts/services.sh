#!/usr/bin/env bash
# Makes sure the services of the lite profile are up on this machine: PostgreSQL on
# 127.0.0.1:5432 and Redis on 127.0.0.1:6379 — with --full also the production profile's
# servers: Apache Kafka on 127.0.0.1:9092, Apache Cassandra on 127.0.0.1:9042 and FerretDB
# (MongoDB wire protocol) on 127.0.0.1:27017 (--kafka: Kafka alone) — and with --browser
# Debian's Chromium and its WebDriver (/usr/bin/chromium, /usr/bin/chromedriver) for the
# demo page's browser tests. Reuses what is running, starts what is installed but stopped,
# installs what is missing. Idempotent. Prints the variables that point the processes at
# the servers it started (`eval "$(scripts/services.sh --full)"`).
set -euo pipefail
# Only the variables go to stdout, since callers eval it: everything else — this script's
# logs, and whatever the tools it runs print (pg_ctlcluster's "Removed stale pid file",
# apt's progress) — goes to stderr. The servers started here never see the saved stdout
# (`3>&-`): a long-lived process holding it would keep `$(scripts/services.sh)` waiting.
exec 3>&1 1>&2

servers=()
with_browser=""
for arg in "$@"; do
  case "$arg" in
    --kafka) servers+=(kafka) ;;
    --full) servers+=(kafka cassandra ferretdb) ;;
    --browser) with_browser=1 ;;
    *) printf 'usage: %s [--full | --kafka] [--browser]\n' "$0" >&2; exit 2 ;;
  esac
done

source "$(dirname "$0")/lib.sh"

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

ensure_postgres() {
  command -v pg_isready >/dev/null 2>&1 || apt_install postgresql-client
  if pg_up; then
    log "PostgreSQL is running"
  else
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
    pg_up || { log "PostgreSQL did not start; see /var/log/postgresql/"; exit 1; }
  fi
  if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -qAtc 'select 1' >/dev/null 2>&1 \
    && [ -z "${DATABASE_URL:-}" ]; then
    # A fresh Debian cluster (installed now, or shipped with the machine and never used)
    # wants a password over TCP: give the postgres role the one the project's default
    # DATABASE_URL uses (local development and CI only), through the local socket's peer
    # authentication.
    log "setting the postgres role's password to the development default"
    as_root su postgres -c "psql -q -c \"ALTER ROLE postgres PASSWORD 'postgres'\"" >/dev/null || true
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

# The full profile's servers, each installed once under $HYBRIDLIVE_TOOLS and started by a
# script of its own in scripts/full/ (Apache Kafka in KRaft mode and Apache Cassandra from
# Maven Central, FerretDB from the Go module proxy), all at once: Cassandra's start is the
# long one. Each script reuses a server that already answers.
full="$(dirname "$0")/full"

ensure_servers() {
  local pids=() names=() failed=""
  for name in "$@"; do
    "$full/$name.sh" &
    pids+=("$!")
    names+=("$name")
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { log "${names[$i]} did not start (see above)"; failed=1; }
  done
  [ -z "$failed" ] || exit 1
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

ensure_postgres 3>&-
ensure_redis 3>&-
if [ "${#servers[@]}" -gt 0 ]; then ensure_servers $(printf '%s\n' "${servers[@]}" | sort -u) 3>&-; fi
if [ -n "$with_browser" ]; then ensure_browser 3>&-; fi
# What the processes and tests need to reach them, on stdout (`eval "$(scripts/services.sh --full)"`).
for server in "${servers[@]}"; do
  case "$server" in
    kafka) echo 'export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"' ;;
    cassandra) echo 'export SCYLLA_NODES="${SCYLLA_NODES:-127.0.0.1:9042}"' ;;
    ferretdb) echo 'export MONGODB_URI="${MONGODB_URI:-mongodb://127.0.0.1:27017/}"' ;;
  esac
done | sort -u >&3
