#!/usr/bin/env bash
# Makes sure the services of the lite profile are up on this machine: PostgreSQL on
# 127.0.0.1:5432 and Redis on 127.0.0.1:6379. Reuses what is running, starts what is
# installed but stopped, installs (Debian packages) what is missing. Idempotent.
set -euo pipefail

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

ensure_postgres
ensure_redis
