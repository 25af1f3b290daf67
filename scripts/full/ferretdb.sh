#!/usr/bin/env bash
# Makes sure a MongoDB-protocol server listens on 127.0.0.1:27017 for the full profile:
# FerretDB v1.24.2 storing in the local PostgreSQL (scripts/services.sh starts it), in a
# database of its own. No Docker: FerretDB is built once from the Go module proxy into
# $HYBRIDLIVE_TOOLS and reused. Reuses a running server, starts it otherwise. Idempotent.
#
# Environment: FERRETDB_POSTGRESQL_URL (default
# postgres://postgres:postgres@127.0.0.1:5432/ferretdb), HYBRIDLIVE_TOOLS, HYBRIDLIVE_STATE.
set -euo pipefail

FERRETDB_VERSION=v1.24.2
# FerretDB 1.24 wants Go 1.24; Debian's golang package is older.
GO_MIN_MINOR=24
listen_host=127.0.0.1
listen_port=27017

tools="${HYBRIDLIVE_TOOLS:-$HOME/.local/share/hybridlive/tools}"
state="${HYBRIDLIVE_STATE:-$HOME/.local/state/hybridlive}/ferretdb"
bin_dir="$tools/ferretdb-$FERRETDB_VERSION/bin"
ferretdb="$bin_dir/ferretdb"
# pool_max_conns: FerretDB keeps up to 50 PostgreSQL connections by default (idle ones for
# 30 min), half of a default server's 100, and the tests' own pools then run out of
# connections on the shared server.
pg_url="${FERRETDB_POSTGRESQL_URL:-postgres://postgres:postgres@127.0.0.1:5432/ferretdb?pool_max_conns=8}"
log_file="$state/ferretdb.log"
pid_file="$state/ferretdb.pid"

source "$(dirname "$0")/../lib.sh"

port_open() { (exec 3<>"/dev/tcp/$listen_host/$listen_port") 2>/dev/null; }

# A real `ping` over the wire (OP_MSG, opcode 2013), not just an open port: FerretDB
# accepts connections before its PostgreSQL pool answers. Plain python3, no driver needed.
ping_ok() {
  python3 - "$listen_host" "$listen_port" <<'PY' 2>/dev/null
import socket, struct, sys

def cstring(s):
    return s.encode() + b"\0"

def bson(pairs):
    body = b""
    for key, value in pairs:
        if isinstance(value, int):
            body += b"\x10" + cstring(key) + struct.pack("<i", value)
        else:
            raw = value.encode()
            body += b"\x02" + cstring(key) + struct.pack("<i", len(raw) + 1) + raw + b"\0"
    return struct.pack("<i", len(body) + 5) + body + b"\0"

def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def ok_field(doc):
    # Top-level elements only; stops at the first type it does not know (none in a ping reply).
    sizes = {1: 8, 7: 12, 8: 1, 9: 8, 10: 0, 16: 4, 17: 8, 18: 8}
    i = 4
    while i < len(doc) - 1:
        kind = doc[i]
        end = doc.index(b"\0", i + 1)
        key = doc[i + 1:end].decode()
        i = end + 1
        if key == "ok":
            if kind == 1:
                return struct.unpack_from("<d", doc, i)[0]
            if kind in (16, 18):
                return struct.unpack_from("<i" if kind == 16 else "<q", doc, i)[0]
            return None
        if kind in sizes:
            i += sizes[kind]
        elif kind in (2, 3, 4):
            n = struct.unpack_from("<i", doc, i)[0]
            i += n + (4 if kind == 2 else 0)
        elif kind == 5:
            i += 5 + struct.unpack_from("<i", doc, i)[0]
        else:
            return None
    return None

host, port = sys.argv[1], int(sys.argv[2])
payload = struct.pack("<I", 0) + b"\0" + bson([("ping", 1), ("$db", "admin")])
message = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload
with socket.create_connection((host, port), timeout=3) as sock:
    sock.settimeout(3)
    sock.sendall(message)
    length, _, _, opcode = struct.unpack("<iiii", recv_exact(sock, 16))
    reply = recv_exact(sock, length - 16)
if opcode != 2013 or reply[4] != 0:
    sys.exit(1)
sys.exit(0 if ok_field(reply[5:]) == 1 else 1)
PY
}

ensure_go() {
  if ! command -v go >/dev/null 2>&1; then
    log "go is not installed: FerretDB $FERRETDB_VERSION needs Go >= 1.$GO_MIN_MINOR (Debian's golang is too old; install it from go.dev)"
    exit 1
  fi
  local version minor
  version=$(go env GOVERSION 2>/dev/null || true)
  minor=$(printf '%s\n' "$version" | sed -n 's/^go1\.\([0-9][0-9]*\).*/\1/p')
  if [ -z "$minor" ] || [ "$minor" -lt "$GO_MIN_MINOR" ]; then
    log "$(command -v go) is ${version:-of an unknown version}: FerretDB $FERRETDB_VERSION needs Go >= 1.$GO_MIN_MINOR (Debian's golang is too old; install it from go.dev)"
    exit 1
  fi
}

# A usable binary prints its version (one built without version.txt panics at start) and
# was built with document writes made atomic (below).
binary_ok() {
  [ -x "$ferretdb" ] && [ -f "$bin_dir/.atomic-document-writes" ] \
    && "$ferretdb" --version 2>/dev/null | grep -qx "version: $FERRETDB_VERSION"
}

# FerretDB 1.24 applies an update or findAndModify as: read the matching documents, change
# them in Go, write each whole document back — with no lock, so two at once on one
# document lose one of the changes (16 writers x 25 `$inc` on one document left 35-39, not
# 400; a `$set deleted: true` racing count updates was lost on 27 posts of 30). MongoDB
# applies each write to a document atomically, and the content store relies on that. So the
# build serialises those writes in the server (one mutex: a test server's throughput is
# not the point), which gives the contract tests MongoDB's guarantee to check the adapter
# against. See the README ("FerretDB and MongoDB").
make_document_writes_atomic() {
  local handler="$1/internal/handler"
  cat >"$handler/hybridlive_atomic_writes.go" <<'GO'
package handler

import "sync"

// documentWrites serialises read-modify-write commands (added by Hybrid Live's build).
var documentWrites sync.Mutex
GO
  local file func file_func
  for file_func in msg_update.go:updateDocument msg_findandmodify.go:findAndModifyDocument \
    msg_delete.go:execDelete; do
    file="${file_func%%:*}"
    func="${file_func##*:}"
    grep -q "^func (h \*Handler) $func(.*{\$" "$handler/$file" \
      || { log "FerretDB's $file has no $func to serialise"; exit 1; }
    sed -i "/^func (h \\*Handler) $func(.*{\$/a documentWrites.Lock(); defer documentWrites.Unlock()" \
      "$handler/$file"
  done
}

ensure_binary() {
  if binary_ok; then
    return
  fi
  ensure_go
  log "building FerretDB $FERRETDB_VERSION into $bin_dir (once; about 5 minutes on 2 cores)"
  # Modules come from the Go module proxy into the default module cache (~/go/pkg/mod) and
  # the compiled packages into Go's build cache, both shared with the other Go-built tools
  # (a rebuild costs seconds). GOTOOLCHAIN=local: build with this Go, never download one.
  export GOTOOLCHAIN=local
  # Not `go install …/cmd/ferretdb@$FERRETDB_VERSION`: the module lacks the generated
  # build/version/version.txt, and such a binary panics at start ("Invalid
  # build/version/version.txt file content"). So: a writable copy of the module's source
  # (3 MB), the file its release builds generate, then go install from there. (Both go
  # commands run outside any module of the caller's.)
  build_dir=$(mktemp -d)
  trap 'rm -rf "$build_dir"' EXIT
  local src
  src=$(cd "$build_dir" && go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$src" ] && [ -d "$src" ] || { log "go mod download gave no source directory"; exit 1; }
  cp -R "$src/." "$build_dir/src"
  chmod -R u+w "$build_dir/src"
  printf '%s\n' "$FERRETDB_VERSION" >"$build_dir/src/build/version/version.txt"
  make_document_writes_atomic "$build_dir/src"
  mkdir -p "$bin_dir"
  rm -f "$bin_dir/.atomic-document-writes"
  (cd "$build_dir/src" && GOBIN="$bin_dir" GOFLAGS=-buildvcs=false go install ./cmd/ferretdb)
  touch "$bin_dir/.atomic-document-writes"
  rm -rf "$build_dir"
  trap - EXIT
  binary_ok || { log "$ferretdb does not report version $FERRETDB_VERSION"; exit 1; }
}

# FerretDB v1 keeps each MongoDB database as a schema of one PostgreSQL database, which it
# does not create: make it, UTF8 with a C collation (FerretDB compares strings bytewise, as
# MongoDB does).
ensure_database() {
  command -v psql >/dev/null 2>&1 \
    || { log "psql is missing; run scripts/services.sh first (it installs postgresql-client)"; exit 1; }
  local base query db admin_url
  base="${pg_url%%\?*}"
  query=""
  [ "$base" = "$pg_url" ] || query="?${pg_url#*\?}"
  db="${base##*/}"
  # psql does not know pgx's pool_max_conns.
  query=$(printf '%s' "$query" | sed -E 's/[?&]pool_max_conns=[0-9]*//; s/^&/?/')
  admin_url="${base%/*}/postgres$query"
  if ! psql "$admin_url" -qAtc 'select 1' >/dev/null 2>&1; then
    # (The message leaves the URL's credentials out.)
    log "cannot reach PostgreSQL at $(printf '%s' "${base%/*}" | sed 's#//[^@/]*@#//#'); run scripts/services.sh first"
    exit 1
  fi
  if [ -n "$(psql "$admin_url" -qAt -v "db=$db" <<<"select 1 from pg_database where datname = :'db'")" ]; then
    return
  fi
  log "creating PostgreSQL database $db for FerretDB"
  # C.UTF-8 where the server's OS has it (Debian does), plain C otherwise.
  create_database "$admin_url" "$db" C.UTF-8 2>/dev/null || create_database "$admin_url" "$db" C
}

create_database() {
  psql "$1" -q -v ON_ERROR_STOP=1 -v "db=$2" -v "locale=$3" >/dev/null <<'SQL'
CREATE DATABASE :"db" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE :'locale' LC_CTYPE :'locale';
SQL
}

# The FerretDB this script started earlier, if it is still alive (it may still be starting).
running_pid() {
  local pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q ferretdb \
    && printf '%s\n' "$pid"
}

if port_open; then
  log "a MongoDB-protocol server is listening on $listen_host:$listen_port"
  exit 0
fi

command -v python3 >/dev/null 2>&1 || { log "python3 is needed to ping FerretDB"; exit 1; }
mkdir -p "$state"
if ! pid=$(running_pid); then
  ensure_binary
  ensure_database
  log "starting FerretDB $FERRETDB_VERSION on $listen_host:$listen_port (log: $log_file)"
  # FerretDB logs every connection and every failed command: one previous log is kept.
  [ ! -f "$log_file" ] || mv -f "$log_file" "$log_file.1"
  # The URL goes by FerretDB's own variable, not --postgresql-url, so that its password
  # stays out of `ps`. --state-dir keeps only state.json (the instance's UUID);
  # --debug-addr=- turns off the debug HTTP server (it would take 127.0.0.1:8088); no
  # telemetry from tests.
  # setsid: a session of its own, so the server outlives the shell that started it.
  FERRETDB_POSTGRESQL_URL="$pg_url" setsid nohup "$ferretdb" \
    --handler=postgresql \
    --listen-addr="$listen_host:$listen_port" \
    --state-dir="$state" \
    --debug-addr=- \
    --telemetry=disable \
    >"$log_file" 2>&1 </dev/null &
  pid=$!
  printf '%s\n' "$pid" >"$pid_file"
else
  log "FerretDB is already starting (pid $pid)"
fi

# Bounded: 60 s, or until the process exits.
deadline=$((SECONDS + 60))
up=""
while [ "$SECONDS" -lt "$deadline" ]; do
  if ping_ok; then up=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
if [ -z "$up" ]; then
  log "FerretDB does not answer ping on $listen_host:$listen_port; last lines of $log_file:"
  tail -n 30 "$log_file" >&2 || true
  exit 1
fi
log "FerretDB $FERRETDB_VERSION answers on $listen_host:$listen_port (pid $pid)"
