#!/usr/bin/env bash
# Makes sure one Apache Cassandra 5.0 node answers CQL on 127.0.0.1:9042 for the full
# profile's tests, without Docker: its jars come from Maven Central (resolved once into
# $HYBRIDLIVE_TOOLS/cassandra-<version>/lib), its config, data and logs live in
# $HYBRIDLIVE_STATE/cassandra/, and it runs in the background (pid file there). Reuses a node
# that is already listening; idempotent. Stop it with `kill $(cat <state>/cassandra/cassandra.pid)`
# (SIGTERM: it flushes and keeps its data; after kill -9 or a crash it restarts empty).
#
# Environment: CASSANDRA_VERSION (default below), CASSANDRA_HEAP (default 1g),
# CASSANDRA_WAIT (seconds to wait for CQL, default 180), CASSANDRA_JVM_OPTS (extra JVM
# options), HYBRIDLIVE_TOOLS, HYBRIDLIVE_STATE.
set -euo pipefail

# The newest 5.0.x that Maven Central serves (5.0.10 is not there).
version="${CASSANDRA_VERSION:-5.0.9}"
heap="${CASSANDRA_HEAP:-1g}"
wait_seconds="${CASSANDRA_WAIT:-180}"
tools="${HYBRIDLIVE_TOOLS:-$HOME/.local/share/hybridlive/tools}"
state="${HYBRIDLIVE_STATE:-$HOME/.local/state/hybridlive}"
home="$tools/cassandra-$version"
lib="$home/lib"
base="$state/cassandra"
conf="$base/conf"
data="$base/data"
logs="$base/logs"
pidfile="$base/cassandra.pid"

source "$(dirname "$0")/../lib.sh"

port_open() { (exec 3<>/dev/tcp/127.0.0.1/9042) 2>/dev/null; }

# A real CQL exchange over bash's /dev/tcp (protocol v4: STARTUP, then a QUERY of
# system.local): a listening port alone can still refuse requests while the node starts.
# Prints the server's release_version.
cql_release_version() {
  local header reply
  exec 3<>/dev/tcp/127.0.0.1/9042 || return 1
  # STARTUP {CQL_VERSION: 3.0.0}: a frame header (version 4, flags 0, stream 1, opcode 1,
  # body length 22) and the body (a string map of one entry).
  printf '\x04\x00\x00\x01\x01\x00\x00\x00\x16\x00\x01\x00\x0bCQL_VERSION\x00\x053.0.0' >&3
  header=$(timeout 10 head -c 9 <&3 | od -An -tu1 | tr -s ' \n' ' ')
  # READY is opcode 2 with an empty body.
  [ "$(echo "$header" | awk '{print $5}')" = 2 ] || { exec 3<&-; return 1; }
  # QUERY (opcode 7): a long string, consistency ONE, no flags; 47 bytes of body.
  printf '\x04\x00\x00\x02\x07\x00\x00\x00\x2f\x00\x00\x00\x28%s\x00\x01\x00' \
    'SELECT release_version FROM system.local' >&3
  header=$(timeout 10 head -c 9 <&3 | od -An -tu1 | tr -s ' \n' ' ')
  local opcode length
  opcode=$(echo "$header" | awk '{print $5}')
  length=$(echo "$header" | awk '{print $6*16777216 + $7*65536 + $8*256 + $9}')
  # RESULT is opcode 8; its rows end with the version string.
  [ "$opcode" = 8 ] || { exec 3<&-; return 1; }
  reply=$(timeout 10 head -c "$length" <&3 | tr -c '0-9.\n' '\n' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+' | tail -n 1)
  exec 3<&-
  [ -n "$reply" ] && printf '%s\n' "$reply"
}

if port_open; then
  log "Cassandra is listening on 127.0.0.1:9042"
  exit 0
fi

# One run at a time (two would resolve into the same directory and start two nodes); the
# node itself must not inherit the lock.
mkdir -p "$base"
exec 9>"$base/.lock"
flock 9
if port_open; then
  log "Cassandra is listening on 127.0.0.1:9042"
  exit 0
fi

# Java 17 (Cassandra 5.0 runs on 11 or 17, not on 21 and later): take the one on PATH if
# it is 17, else Debian's, installing it if need be.
java_major() { "$1" -version 2>&1 | sed -nE '1s/.*version "([0-9]+).*/\1/p'; }
debian_java17() {
  local candidate
  for candidate in /usr/lib/jvm/java-17-openjdk-*/bin/java; do
    [ -x "$candidate" ] && printf '%s\n' "$candidate" && return
  done
}
java_bin="$(command -v java || true)"
if [ -z "$java_bin" ] || [ "$(java_major "$java_bin")" != 17 ]; then
  java_bin=$(debian_java17)
  if [ -z "$java_bin" ]; then
    apt_install openjdk-17-jre-headless
    java_bin=$(debian_java17)
  fi
fi
command -v mvn >/dev/null 2>&1 || apt_install maven

# Jars: cassandra-all and its runtime dependencies, copied by Maven from a throwaway pom
# into a directory of their own (Cassandra's logback must not meet another server's
# log4j). The marker is written last, so an interrupted copy is redone from scratch.
if [ ! -f "$home/.resolved" ]; then
  log "resolving cassandra-all $version and its dependencies from Maven Central into $lib (once)"
  rm -rf "$lib" "$home/pom"
  mkdir -p "$home/pom"
  cat >"$home/pom/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.hybridlive</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$version</version>
    </dependency>
  </dependencies>
</project>
EOF
  # Maven's output (its errors included) goes to a file, shown only when it fails.
  if ! (cd "$home/pom" && mvn -B -q -Dstyle.color=never dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$lib") >"$home/mvn.log" 2>&1 \
    || [ ! -f "$lib/cassandra-all-$version.jar" ]; then
    log "Maven could not resolve org.apache.cassandra:cassandra-all:$version:"
    cat "$home/mvn.log" >&2
    exit 1
  fi
  touch "$home/.resolved"
fi

mkdir -p "$conf" "$data" "$logs" "$base/triggers"

# A single test node, small and quick. Rewritten at every start so changes here apply.
# storage_compatibility_mode NONE: the node never meets a 4.x one, and it lets TTLs reach
# past 2038. Hints, views, UDFs, snapshots and caches are off or small; timeouts are
# longer than the defaults, as 2 busy cores can be slow to answer.
cat >"$conf/cassandra.yaml" <<EOF
cluster_name: hybridlive-test
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:7000"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: 7000
start_native_transport: true
native_transport_port: 9042
data_file_directories:
  - $data/data
commitlog_directory: $data/commitlog
saved_caches_directory: $data/saved_caches
hints_directory: $data/hints
cdc_raw_directory: $data/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 8MiB
commitlog_total_space: 256MiB
storage_compatibility_mode: NONE
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
hinted_handoff_enabled: false
materialized_views_enabled: false
sasi_indexes_enabled: false
user_defined_functions_enabled: false
cdc_enabled: false
dynamic_snitch: false
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
memtable_flush_writers: 1
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
native_transport_max_threads: 32
key_cache_size: 16MiB
row_cache_size: 0MiB
counter_cache_size: 8MiB
file_cache_size: 64MiB
read_request_timeout: 5000ms
range_request_timeout: 10000ms
write_request_timeout: 5000ms
counter_write_request_timeout: 10000ms
EOF

# Logs to a file only, at INFO; the noisiest debug loggers stay quiet.
cat >"$conf/logback.xml" <<EOF
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>$logs/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.SizeAndTimeBasedRollingPolicy">
      <fileNamePattern>$logs/system.log.%d{yyyy-MM-dd}.%i.zip</fileNamePattern>
      <maxFileSize>20MB</maxFileSize>
      <maxHistory>3</maxHistory>
      <totalSizeCap>100MB</totalSizeCap>
    </rollingPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE"/>
  </root>
</configuration>
EOF

# A node of ours that is still starting (a run of this script that gave up, or one going
# on in parallel) is waited for, not started twice.
pid=""
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if ! kill -0 "$pid" 2>/dev/null || ! grep -q CassandraDaemon "/proc/$pid/cmdline" 2>/dev/null; then
    pid=""
  fi
fi

if [ -z "$pid" ]; then
  jamm=("$lib"/jamm-*.jar)
  jvm_opts=(
    -Xms"$heap" -Xmx"$heap" -Xss256k
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
    -XX:+ExitOnOutOfMemoryError
    -XX:+PerfDisableSharedMem
    -ea -javaagent:"${jamm[0]}"
    -Djdk.attach.allowAttachSelf=true
    -Djava.net.preferIPv4Stack=true
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    -Dchronicle.analytics.disable=true
    # The --add-exports/--add-opens of Cassandra 5.0's conf/jvm17-server.options.
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dcassandra-foreground=yes
    -Dcassandra.config="file://$conf/cassandra.yaml"
    -Dcassandra.storagedir="$data"
    -Dcassandra.logdir="$logs"
    -Dcassandra.triggers_dir="$base/triggers"
    -Dlogback.configurationFile="$conf/logback.xml"
    # One node: no gossip to settle (saves 5 s or more at each start).
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    # A test node: schema changes and system-table writes are not flushed to sstables at
    # once (the commit log has them; a clean stop flushes them), which makes CREATE
    # KEYSPACE/TABLE about three times faster; the switches of Cassandra's own tests.
    -Dcassandra.test.flush_local_schema_changes=false
    -Dcassandra.unsafesystem=true
    # Nor does it fsync the files it writes (a crash of the machine may lose recent writes,
    # which a test node can afford): flushes, and so DROP KEYSPACE, are quicker.
    -Dcassandra.skip_sync=true
  )
  # Extra JVM options, split on blanks (e.g. CASSANDRA_JVM_OPTS="-XX:TieredStopAtLevel=1").
  read -r -a extra_opts <<<"${CASSANDRA_JVM_OPTS:-}"
  jvm_opts+=("${extra_opts[@]}")
  # Cassandra mlockall()s its address space when it may: as root (CAP_IPC_LOCK) the whole
  # committed heap would stay resident from the start (1.5 GB here, and 5 s of startup).
  # Without that capability and with a small RLIMIT_MEMLOCK the call fails with a warning.
  launcher=()
  if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null 2>&1; then
    launcher=(setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock)
  fi
  # Schema changes stay in memtables (see above) until a clean stop flushes them. After a
  # stop that was not clean (kill -9, a crash, a machine stopped) the schema on disk lags
  # the commit log, and a restart would replay rows for tables it does not know (dropping
  # them) and bring the keyspaces back only at the start after: such a node starts empty.
  if [ -d "$data/data" ] \
    && ! tail -n 50 "$logs/system.log" 2>/dev/null | grep -q "Cassandra shutdown complete"; then
    log "Cassandra's last stop was not clean: starting it with empty data"
    rm -rf "$data"
    mkdir -p "$data"
  fi
  log "starting Cassandra $version on 127.0.0.1:9042 (heap $heap; config, data, logs: $base)"
  # A fresh system.log per start, so that the readiness line found below is this start's.
  [ -f "$logs/system.log" ] && mv -f "$logs/system.log" "$logs/system.log.prev"
  (
    exec 9>&-
    ulimit -l 64 2>/dev/null || true
    # setsid: a session of its own, so the node outlives the shell (and a Ctrl-C) that
    # started it; in a background subshell it needs no fork, so the pid stays $!.
    exec setsid "${launcher[@]}" nohup "$java_bin" "${jvm_opts[@]}" -cp "$lib/*" \
      org.apache.cassandra.service.CassandraDaemon
  ) >"$logs/console.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$pidfile"
else
  log "Cassandra (pid $pid) is starting; waiting for it"
fi

failed() {
  log "$1"
  if [ -s "$logs/system.log" ]; then
    log "the end of $logs/system.log:"
    tail -n 40 "$logs/system.log" >&2
  fi
  if [ -s "$logs/console.log" ]; then
    log "the end of $logs/console.log:"
    tail -n 40 "$logs/console.log" >&2
  fi
  exit 1
}

deadline=$((SECONDS + wait_seconds))
release=""
while [ "$SECONDS" -lt "$deadline" ]; do
  kill -0 "$pid" 2>/dev/null || failed "Cassandra (pid $pid) exited"
  if grep -q "Starting listening for CQL clients" "$logs/system.log" 2>/dev/null && port_open; then
    release=$(cql_release_version 2>/dev/null || true)
    [ -n "$release" ] && break
  fi
  sleep 1
done
[ -n "$release" ] || failed "Cassandra did not answer CQL on 127.0.0.1:9042 within ${wait_seconds} s"
log "Cassandra $release is listening on 127.0.0.1:9042 (pid $pid; logs: $logs)"
