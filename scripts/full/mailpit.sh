#!/usr/bin/env bash
# Makes sure an SMTP sink listens on 127.0.0.1:1025 with its HTTP API on 127.0.0.1:8025,
# so that tests can send email over SMTP and read it back: Mailpit v1.33.1, keeping the
# messages in a scratch SQLite file that each start begins afresh. No Docker: Mailpit is
# built once from the Go module proxy into $HYBRIDLIVE_TOOLS and reused. Reuses a running
# server, starts it otherwise. Idempotent.
#
# The API the tests use: GET /api/v1/messages?limit=50, GET /api/v1/message/{ID} (JSON with
# Text and HTML), GET /api/v1/search?query=…, DELETE /api/v1/messages, GET /readyz. The web
# UI is blank in this build (its assets are not in the Go module); the API is complete.
#
# Environment: HYBRIDLIVE_TOOLS, HYBRIDLIVE_STATE.
set -euo pipefail

MAILPIT_VERSION=v1.33.1
# Mailpit 1.33 wants Go 1.25; Debian's golang package is older.
GO_MIN_MINOR=25
listen_host=127.0.0.1
smtp_port=1025
http_port=8025

tools="${HYBRIDLIVE_TOOLS:-$HOME/.local/share/hybridlive/tools}"
state="${HYBRIDLIVE_STATE:-$HOME/.local/state/hybridlive}/mailpit"
bin_dir="$tools/mailpit-$MAILPIT_VERSION/bin"
mailpit="$bin_dir/mailpit"
database="$state/mailpit.db"
log_file="$state/mailpit.log"
pid_file="$state/mailpit.pid"

source "$(dirname "$0")/../lib.sh"

smtp_open() { (exec 3<>"/dev/tcp/$listen_host/$smtp_port") 2>/dev/null; }

# Mailpit starts its HTTP and SMTP servers side by side: ready when /readyz answers (the
# database is open) and the SMTP port accepts connections.
ready() {
  curl -fsS --max-time 3 "http://$listen_host:$http_port/readyz" >/dev/null 2>&1 && smtp_open
}

ensure_go() {
  if ! command -v go >/dev/null 2>&1; then
    log "go is not installed: Mailpit $MAILPIT_VERSION needs Go >= 1.$GO_MIN_MINOR (Debian's golang is too old; install it from go.dev)"
    exit 1
  fi
  local version minor
  version=$(go env GOVERSION 2>/dev/null || true)
  minor=$(printf '%s\n' "$version" | sed -n 's/^go1\.\([0-9][0-9]*\).*/\1/p')
  if [ -z "$minor" ] || [ "$minor" -lt "$GO_MIN_MINOR" ]; then
    log "$(command -v go) is ${version:-of an unknown version}: Mailpit $MAILPIT_VERSION needs Go >= 1.$GO_MIN_MINOR (Debian's golang is too old; install it from go.dev)"
    exit 1
  fi
}

# A usable binary runs and reports its version ("…/mailpit v1.33.1 compiled with go1.26.8
# on linux/amd64"). --no-release-check: no request to GitHub (without it the command also
# exits 1 when offline).
binary_ok() {
  [ -x "$mailpit" ] \
    && "$mailpit" version --no-release-check 2>/dev/null | grep -q " $MAILPIT_VERSION compiled with "
}

ensure_binary() {
  if binary_ok; then
    return
  fi
  ensure_go
  log "building Mailpit $MAILPIT_VERSION into $bin_dir (once; about 1.5 minutes on 2 cores)"
  # Modules come from the Go module proxy into the default module cache (~/go/pkg/mod) and
  # the compiled packages into Go's build cache, both shared with the other Go-built tools.
  # GOTOOLCHAIN=local: build with this Go, never download one. The version goes in as the
  # release builds set it (a plain go install reports "dev"), so that binary_ok can check
  # it. Run outside any module of the caller's.
  mkdir -p "$bin_dir"
  (cd / && GOTOOLCHAIN=local GOBIN="$bin_dir" go install \
    -ldflags "-X github.com/axllent/mailpit/config.Version=$MAILPIT_VERSION" \
    "github.com/axllent/mailpit@$MAILPIT_VERSION")
  binary_ok || { log "$mailpit does not report version $MAILPIT_VERSION"; exit 1; }
}

# The Mailpit this script started earlier, if it is still alive (it may still be starting).
running_pid() {
  local pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q mailpit \
    && printf '%s\n' "$pid"
}

if ready; then
  log "an SMTP sink is listening on $listen_host:$smtp_port (API on $listen_host:$http_port)"
  exit 0
fi

command -v curl >/dev/null 2>&1 || apt_install curl
mkdir -p "$state"
if ! pid=$(running_pid); then
  ensure_binary
  log "starting Mailpit $MAILPIT_VERSION on $listen_host:$smtp_port, API on $listen_host:$http_port (log: $log_file)"
  # One previous log is kept; the messages are not (a scratch database, with its WAL files).
  [ ! -f "$log_file" ] || mv -f "$log_file" "$log_file.1"
  rm -f "$database" "$database-wal" "$database-shm"
  # --smtp-auth-accept-any --smtp-auth-allow-insecure: a client that logs in (any name and
  # password, over plain SMTP) is accepted, as is one that does not.
  # --max 5000: Mailpit keeps 500 messages by default and deletes the oldest beyond that,
  # which a test run could reach. --database: a file under the state directory rather
  # than Mailpit's default temporary file in /tmp (left behind if it is killed).
  # --disable-version-check: no request to GitHub from /api/v1/info.
  # --smtp-disable-rdns: no reverse DNS lookup of each client (127.0.0.1).
  # (POP3 stays off: Mailpit starts it only with --pop3-auth-file.)
  # setsid: a session of its own, so the server outlives the shell that started it.
  setsid nohup "$mailpit" \
    --smtp "$listen_host:$smtp_port" \
    --listen "$listen_host:$http_port" \
    --smtp-auth-accept-any \
    --smtp-auth-allow-insecure \
    --database "$database" \
    --max 5000 \
    --disable-version-check \
    --smtp-disable-rdns \
    >"$log_file" 2>&1 </dev/null &
  pid=$!
  printf '%s\n' "$pid" >"$pid_file"
else
  log "Mailpit is already starting (pid $pid)"
fi

# Bounded: 30 s, or until the process exits.
deadline=$((SECONDS + 30))
up=""
while [ "$SECONDS" -lt "$deadline" ]; do
  if ready; then up=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
if [ -z "$up" ]; then
  log "Mailpit does not answer on $listen_host:$smtp_port and http://$listen_host:$http_port/readyz; last lines of $log_file:"
  tail -n 30 "$log_file" >&2 || true
  exit 1
fi
log "Mailpit $MAILPIT_VERSION answers on $listen_host:$smtp_port, API on http://$listen_host:$http_port (pid $pid)"
