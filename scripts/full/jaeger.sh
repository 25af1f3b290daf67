#!/usr/bin/env bash
# Makes sure a trace collector answers on this machine: Jaeger v2 (v1.75.0 of the
# github.com/jaegertracing/jaeger module), all in one process with its in-memory store,
# taking OTLP over HTTP on 127.0.0.1:4318 (and gRPC on :4317) and answering its query API
# and UI on :16686. No Docker: Jaeger is built once from the Go module proxy into
# $HYBRIDLIVE_TOOLS and reused. Reuses a running collector, starts it otherwise. Idempotent.
# Its traces live in memory: a restart begins empty.
#
# The API the tests use: GET /api/traces/{trace-id} (JSON: data[].spans[] with
# operationName, references, process), GET /api/services.
#
# Environment: HYBRIDLIVE_TOOLS, HYBRIDLIVE_STATE.
set -euo pipefail

JAEGER_VERSION=v1.75.0
# Jaeger 1.75 wants Go 1.24 or newer.
GO_MIN_MINOR=24
listen_host=127.0.0.1
otlp_port=4318
query_port=16686
health_port=13133

tools="${HYBRIDLIVE_TOOLS:-$HOME/.local/share/hybridlive/tools}"
state="${HYBRIDLIVE_STATE:-$HOME/.local/state/hybridlive}/jaeger"
home="$tools/jaeger-$JAEGER_VERSION"
jaeger="$home/bin/jaeger"
log_file="$state/jaeger.log"
pid_file="$state/jaeger.pid"

source "$(dirname "$0")/../lib.sh"

# Ready when the health check says so and the query API answers.
ready() {
  curl -fsS --max-time 3 "http://$listen_host:$health_port/status" >/dev/null 2>&1 \
    && curl -fsS --max-time 3 "http://$listen_host:$query_port/api/services" >/dev/null 2>&1
}

ensure_go() {
  if ! command -v go >/dev/null 2>&1; then
    log "go is not installed: Jaeger $JAEGER_VERSION needs Go >= 1.$GO_MIN_MINOR (install it from go.dev)"
    exit 1
  fi
  local version minor
  version=$(go env GOVERSION 2>/dev/null || true)
  minor=$(printf '%s\n' "$version" | sed -n 's/^go1\.\([0-9][0-9]*\).*/\1/p')
  if [ -z "$minor" ] || [ "$minor" -lt "$GO_MIN_MINOR" ]; then
    log "$(command -v go) is ${version:-of an unknown version}: Jaeger $JAEGER_VERSION needs Go >= 1.$GO_MIN_MINOR"
    exit 1
  fi
}

# The binary is usable when the build finished (the marker is written last) and it runs.
binary_ok() {
  [ -x "$jaeger" ] && [ -f "$home/built" ] && "$jaeger" version >/dev/null 2>&1
}

ensure_binary() {
  if binary_ok; then
    return
  fi
  ensure_go
  log "building Jaeger $JAEGER_VERSION into $home (once; about 5 minutes on 2 cores)"
  # Jaeger's command is a tool of a module of ours (the module proxy serves it that way):
  # a throwaway module pins it, and `go build` compiles it with the pinned dependencies.
  # Modules land in the default module cache (~/.go/pkg/mod), shared with the other
  # Go-built tools. GOTOOLCHAIN=local: build with this Go, never download one.
  rm -rf "$home"
  mkdir -p "$home/module" "$home/bin"
  (
    cd "$home/module"
    export GOTOOLCHAIN=local
    go mod init hybridlive.local/jaeger >/dev/null 2>&1
    go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION"
    go build -o "$jaeger" github.com/jaegertracing/jaeger/cmd/jaeger
  )
  touch "$home/built"
  binary_ok || { log "$jaeger does not run"; exit 1; }
}

# The Jaeger this script started earlier, if it is still alive (it may still be starting).
running_pid() {
  local pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q jaeger \
    && printf '%s\n' "$pid"
}

if ready; then
  log "a Jaeger collector answers: OTLP/HTTP on $listen_host:$otlp_port, query on $listen_host:$query_port"
  exit 0
fi

command -v curl >/dev/null 2>&1 || apt_install curl
mkdir -p "$state"
if ! pid=$(running_pid); then
  ensure_binary
  log "starting Jaeger $JAEGER_VERSION: OTLP/HTTP on $listen_host:$otlp_port, query on $listen_host:$query_port (log: $log_file)"
  [ ! -f "$log_file" ] || mv -f "$log_file" "$log_file.1"
  # Without --config Jaeger runs its all-in-one configuration: every receiver (OTLP among
  # them) on localhost, the in-memory store, the query service and UI on :16686.
  # setsid: a session of its own, so the server outlives the shell that started it.
  setsid nohup "$jaeger" >"$log_file" 2>&1 </dev/null &
  pid=$!
  printf '%s\n' "$pid" >"$pid_file"
else
  log "Jaeger is already starting (pid $pid)"
fi

# Bounded: 60 s, or until the process exits.
deadline=$((SECONDS + 60))
up=""
while [ "$SECONDS" -lt "$deadline" ]; do
  if ready; then up=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.3
done
if [ -z "$up" ]; then
  log "Jaeger does not answer on http://$listen_host:$query_port/api/services; last lines of $log_file:"
  tail -n 30 "$log_file" >&2 || true
  exit 1
fi
log "Jaeger $JAEGER_VERSION answers: OTLP/HTTP on $listen_host:$otlp_port, query on http://$listen_host:$query_port (pid $pid)"
