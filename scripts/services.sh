#!/usr/bin/env bash
# Makes sure the services of the lite profile are up on this machine: PostgreSQL on
# 127.0.0.1:5432 and Redis on 127.0.0.1:6379 — with --full also the production profile's
# servers: Apache Kafka on 127.0.0.1:9092, Apache Cassandra on 127.0.0.1:9042 and FerretDB
# (MongoDB wire protocol) on 127.0.0.1:27017 (--kafka: Kafka alone) — with --mail the
# Mailpit SMTP sink on 127.0.0.1:1025 and its HTTP API on 127.0.0.1:8025 (not part of
# --full), with --tracing the Jaeger trace collector (OTLP/HTTP on 127.0.0.1:4318, query
# API and UI on 127.0.0.1:16686), and with --browser Debian's Chromium and its WebDriver (/usr/bin/chromium,
# /usr/bin/chromedriver) for the demo page's browser tests, and with --ops Debian's
# promtool (package prometheus), which checks ops/prometheus/. Reuses what is running, starts
# what is installed but stopped, installs what is missing. Idempotent. Prints the variables
# that point the processes at the servers it started (`eval "$(scripts/services.sh --full)"`).
set -euo pipefail
# Only the variables go to stdout, since callers eval it: everything else — this script's
# logs, and whatever the tools it runs print (pg_ctlcluster's "Removed stale pid file",
# apt's progress) — goes to stderr. The servers started here never see the saved stdout
# (`3>&-`): a long-lived process holding it would keep `$(scripts/services.sh)` waiting.
exec 3>&1 1>&2

servers=()
with_browser=""
with_ops=""
for arg in "$@"; do
  case "$arg" in
    --kafka) servers+=(kafka) ;;
    --full) servers+=(kafka cassandra ferretdb) ;;
    --mail) servers+=(mailpit) ;;
    --tracing) servers+=(jaeger) ;;
    --browser) with_browser=1 ;;
    --ops) with_ops=1 ;;
    *) printf 'usage: %s [--full | --kafka] [--mail] [--tracing] [--browser] [--ops]\n' "$0" >&2; exit 2 ;;
  esac
done

source "$(dirname "$0")/lib.sh"

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

# Connections the local cluster accepts. Debian's default, 100, is too few for the test
# suite: tests run in parallel, each with its own pool, replay processes and FerretDB's
# pool beside them, and a refused connection fails a batch in the middle.
PG_MAX_CONNECTIONS=300

# Whether the local Debian cluster is configured for PG_MAX_CONNECTIONS; configures it if
# not (takes effect at its next start).
pg_configured() {
  local conf="/etc/postgresql/$1/main/conf.d/hybridlive.conf"
  grep -qx "max_connections = $PG_MAX_CONNECTIONS" "$conf" 2>/dev/null && return 0
  as_root mkdir -p "$(dirname "$conf")"
  printf '# Written by hybridlive scripts/services.sh.\nmax_connections = %s\n' \
    "$PG_MAX_CONNECTIONS" | as_root tee "$conf" >/dev/null
  return 1
}

pg_start() {
  as_root pg_ctlcluster --skip-systemctl-redirect "$1" main "$2" || true
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  pg_up || { log "PostgreSQL did not $2; see /var/log/postgresql/"; exit 1; }
}

ensure_postgres() {
  command -v pg_isready >/dev/null 2>&1 || apt_install postgresql-client
  local version=""
  if ! pg_up && ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  if ls /etc/postgresql/*/main >/dev/null 2>&1; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
  fi
  if pg_up; then
    log "PostgreSQL is running"
    # The local cluster this script manages (not a server DATABASE_URL names), started
    # before it was configured: restarted once to take the configuration.
    if [ -n "$version" ] && [ -z "${DATABASE_URL:-}" ] && ! pg_configured "$version"; then
      log "restarting PostgreSQL $version to raise max_connections to $PG_MAX_CONNECTIONS"
      pg_start "$version" restart
    fi
  else
    pg_configured "$version" || true
    log "starting PostgreSQL $version"
    pg_start "$version" start
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
# Maven Central, FerretDB from the Go module proxy), the mail sink (Mailpit) and the trace
# collector (Jaeger), both from the Go module proxy too, all at once: Cassandra's start is the long one. Each script reuses a
# server that already answers.
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

# promtool checks the scrape configuration and runs the alert rules' unit tests; Debian's
# prometheus package brings it (the server it also installs is not started here).
ensure_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    log "promtool is installed"
    return
  fi
  apt_install --no-install-recommends prometheus
  command -v promtool >/dev/null 2>&1 || { log "the prometheus package brought no promtool"; exit 1; }
}

ensure_postgres 3>&-
ensure_redis 3>&-
if [ "${#servers[@]}" -gt 0 ]; then ensure_servers $(printf '%s\n' "${servers[@]}" | sort -u) 3>&-; fi
if [ -n "$with_browser" ]; then ensure_browser 3>&-; fi
if [ -n "$with_ops" ]; then ensure_promtool 3>&-; fi
# What the processes and tests need to reach them, on stdout (`eval "$(scripts/services.sh --full)"`).
for server in "${servers[@]}"; do
  case "$server" in
    kafka) echo 'export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"' ;;
    cassandra) echo 'export SCYLLA_NODES="${SCYLLA_NODES:-127.0.0.1:9042}"' ;;
    ferretdb) echo 'export MONGODB_URI="${MONGODB_URI:-mongodb://127.0.0.1:27017/}"' ;;
    mailpit)
      echo 'export SMTP_URL="${SMTP_URL:-smtp://127.0.0.1:1025}"'
      echo 'export MAILPIT_URL="${MAILPIT_URL:-http://127.0.0.1:8025}"'
      ;;
    # Where the processes send their spans is for each to say (OTEL_EXPORTER_OTLP_ENDPOINT):
    # the collector's addresses, not the variable itself.
    jaeger)
      echo 'export JAEGER_OTLP_ENDPOINT="${JAEGER_OTLP_ENDPOINT:-http://127.0.0.1:4318}"'
      echo 'export JAEGER_URL="${JAEGER_URL:-http://127.0.0.1:16686}"'
      ;;
  esac
done | sort -u >&3
