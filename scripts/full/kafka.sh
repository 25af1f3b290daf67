#!/usr/bin/env bash
# Makes sure an Apache Kafka 4.x broker (one KRaft node, broker and controller in one JVM)
# answers on 127.0.0.1:9092 — without Docker and without downloads other than Maven's.
# Kafka's jars come from Maven Central once (kafka_2.13 and kafka-tools with their runtime
# dependencies, plus the SLF4J binding that is only in Kafka's release tarball) and are
# cached under $HYBRIDLIVE_TOOLS/kafka-<version>/lib; configuration, data and the log live
# in $HYBRIDLIVE_STATE/kafka/ and are kept across restarts: it is a real broker.
# Reuses whatever already listens on 9092. Idempotent.
#
#   scripts/full/kafka.sh          ensure the broker is up
#   scripts/full/kafka.sh --reset  stop the broker, wipe its data, start it empty
#   scripts/full/kafka.sh --stop   stop the broker this script started
#
# KAFKA_HEAP_OPTS overrides the heap (default -Xms256m -Xmx512m). KAFKA_PORT (default 9092)
# and KAFKA_CONTROLLER_PORT (default KAFKA_PORT + 1) move the listeners: with a
# HYBRIDLIVE_STATE of its own, a second broker beside the first (a test that kills and
# restarts its broker: testkit::kafka::OwnBroker).
set -euo pipefail

KAFKA_VERSION=4.4.0
SCALA_BINARY=2.13
# Pinned: Maven 3.8's default dependency plugin (2.8) works too, but a pinned one resolves
# the same everywhere.
DEP_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
# How long to wait for an answer after the broker's log last grew, and at most.
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
WAIT_SECONDS=120
MAX_WAIT_SECONDS=900

action=start
for arg in "$@"; do
  case "$arg" in
    --reset) action=reset ;;
    --stop) action=stop ;;
    *) printf 'usage: %s [--reset|--stop]\n' "$0" >&2; exit 2 ;;
  esac
done

source "$(dirname "$0")/../lib.sh"

tools="${HYBRIDLIVE_TOOLS:-$HOME/.local/share/hybridlive/tools}"
state="${HYBRIDLIVE_STATE:-$HOME/.local/state/hybridlive}"
home="$tools/kafka-$KAFKA_VERSION"
lib="$home/lib"
marker="$home/.resolved"
dir="$state/kafka"
data="$dir/data"
props="$dir/server.properties"
log4j="$dir/log4j2.properties"
logfile="$dir/kafka.log"
pidfile="$dir/kafka.pid"

port_open() { (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; }

# A real Kafka request rather than a TCP connect (the listener accepts connections before
# the broker has caught up with its metadata): ApiVersions v0, correlation id 1, client id
# "hl". The answer starts with its size, the correlation id and error code 0.
kafka_answers() {
  local reply
  reply=$({
    exec 3<>/dev/tcp/127.0.0.1/$PORT || exit 1
    printf '\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x01\x00\x02hl' >&3
    timeout 5 head -c 10 <&3 | od -An -tx1 | tr -d ' \n'
  } 2>/dev/null) || return 1
  [ "${reply:8:12}" = "000000010000" ]
}

# The pid in the pid file, if it is still this broker (pids get reused).
our_pid() {
  local pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $props" || return 1
  printf '%s\n' "$pid"
}

stop_broker() {
  local pid
  if ! pid=$(our_pid); then
    rm -f "$pidfile"
    return 0
  fi
  log "stopping Kafka (pid $pid)"
  kill "$pid" 2>/dev/null || true
  # A clean shutdown (no log recovery at the next start) takes a few seconds.
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    log "Kafka did not stop within 60 s; killing it"
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  fi
  rm -f "$pidfile"
}

fail_with_log() {
  log "$1; the last 30 lines of $logfile:"
  tail -n 30 "$logfile" >&2 2>/dev/null || true
  # A fatal error is often followed by a page of shutdown lines: show the first errors too.
  if grep -qE '^\[[^]]*\] (ERROR|FATAL) ' "$logfile" 2>/dev/null; then
    log "its first errors:"
    grep -m 3 -A 1 -E '^\[[^]]*\] (ERROR|FATAL) ' "$logfile" >&2 || true
  fi
  exit 1
}

# Waits (bounded) until the broker answers Kafka requests; $1 is its pid, if it is ours.
# Returns 1 if there is nothing left to wait for: that process has exited or, without one,
# nothing listens any more (a broker that was killed a moment ago). A broker loads every
# partition it holds before it answers — minutes for thousands of them on 2 cores — so the
# wait goes on while its log grows, up to MAX_WAIT_SECONDS, and ends WAIT_SECONDS after
# the log last grew.
wait_ready() {
  local pid="${1:-}" start=$SECONDS size last_size=-1 last_growth=$SECONDS
  while [ $((SECONDS - last_growth)) -lt "$WAIT_SECONDS" ] \
    && [ $((SECONDS - start)) -lt "$MAX_WAIT_SECONDS" ]; do
    if kafka_answers; then return 0; fi
    if [ -n "$pid" ]; then
      kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 1; }
    else
      port_open || return 1
    fi
    size=$(stat -c %s "$logfile" 2>/dev/null || echo 0)
    if [ "$size" != "$last_size" ]; then last_size=$size last_growth=$SECONDS; fi
    sleep 0.5
  done
  fail_with_log "Kafka did not answer on 127.0.0.1:$PORT after $((SECONDS - start)) s (its log still for $((SECONDS - last_growth)) s)"
}

# One run at a time (two at once would both start a broker on the same data directory);
# a second run waits here, then finds the first one's broker and reuses it.
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9

case "$action" in
  stop)
    our_pid >/dev/null || log "no Kafka started by this script is running"
    stop_broker
    exit 0
    ;;
  reset)
    stop_broker
    if port_open; then
      log "something else listens on 127.0.0.1:$PORT (not started by this script); not resetting it"
      exit 1
    fi
    log "wiping $data"
    rm -rf "$data"
    ;;
esac

# For Kafka's command-line tools run from these jars (-Dlog4j2.configurationFile=…): only
# warnings, on stderr, so that a console consumer's stdout holds only the records.
mkdir -p "$dir"
cat >"$dir/tools-log4j2.properties" <<'EOF'
status = warn
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
EOF

# A broker of ours that was asked to stop still answers for a second or so: not one to
# reuse. Let it finish, then start it again.
if pid=$(our_pid) && grep -qE 'Transition from [A-Z_]+ to SHUTTING_DOWN' "$logfile" 2>/dev/null; then
  log "Kafka (pid $pid) is shutting down; starting it again once it has stopped"
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && fail_with_log "Kafka (pid $pid) did not finish shutting down"
  rm -f "$pidfile"
fi

# Whatever answers on the port is reused (it may be still starting: wait for it). What goes
# away meanwhile, such as a broker killed a moment ago, is replaced below.
if port_open && wait_ready "$(our_pid || true)"; then
  log "Kafka is listening on 127.0.0.1:$PORT"
  exit 0
fi

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
if [ "${java_major%%.*}" -lt 17 ] 2>/dev/null; then
  log "Kafka $KAFKA_VERSION needs Java 17 or newer; 'java' is $java_major"
  exit 1
fi

# Kafka's jars, resolved once. kafka-tools is for the command-line tools (topics, console
# producer and consumer) that tests and people use against this broker; like Kafka's own
# libs/ it brings Connect's jars along, which the broker ignores.
resolve_kafka() {
  local partial="$home/lib.partial" core_jar log4j_version binding
  log "resolving Kafka $KAFKA_VERSION through Maven into $home (once; about a minute)"
  rm -rf "$lib" "$partial" "$marker"
  mkdir -p "$partial"
  cat >"$home/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.hybridlive</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_BINARY</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  mvn -B -q -f "$home/pom.xml" "$DEP_PLUGIN:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$partial" >"$home/mvn.log" 2>&1 \
    || { tail -n 30 "$home/mvn.log" >&2; log "Maven could not resolve Kafka $KAFKA_VERSION"; exit 1; }
  # The SLF4J binding is not a dependency in Kafka's POMs (only its tarball ships it), and
  # without it the broker logs nothing: take the one for the copied slf4j-api (1.7.x:
  # log4j-slf4j-impl, 2.x: log4j-slf4j2-impl) at the version of the copied log4j-core.
  core_jar=$(cd "$partial" && ls log4j-core-*.jar 2>/dev/null | head -n 1)
  [ -n "$core_jar" ] || { log "no log4j-core among Kafka's dependencies"; exit 1; }
  log4j_version=${core_jar#log4j-core-}
  log4j_version=${log4j_version%.jar}
  if ls "$partial"/slf4j-api-1.*.jar >/dev/null 2>&1; then
    binding=log4j-slf4j-impl
  elif ls "$partial"/slf4j-api-2.*.jar >/dev/null 2>&1; then
    binding=log4j-slf4j2-impl
  else
    log "no slf4j-api among Kafka's dependencies"
    exit 1
  fi
  mvn -B -q -f "$home/pom.xml" "$DEP_PLUGIN:copy" \
    -Dartifact="org.apache.logging.log4j:$binding:$log4j_version" \
    -DoutputDirectory="$partial" >>"$home/mvn.log" 2>&1 \
    || { tail -n 30 "$home/mvn.log" >&2; log "Maven could not resolve $binding $log4j_version"; exit 1; }
  mv "$partial" "$lib"
  printf 'kafka_%s %s, %s %s, %s jars\n' "$SCALA_BINARY" "$KAFKA_VERSION" "$binding" \
    "$log4j_version" "$(ls "$lib" | wc -l)" >"$marker"
}

mkdir -p "$home"
[ -f "$marker" ] && [ -d "$lib" ] || resolve_kafka

mkdir -p "$dir"
# Written at every start, so the file always matches this script.
cat >"$props" <<EOF
# Written by scripts/full/kafka.sh at each start: edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data
num.partitions=1
# One node: the internal topics cannot have the default three replicas.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# 50 partitions each by default: on one node they only slow every start (each is loaded
# and recovered) and the first consumer group. Read when the topic is first created: a
# data directory that has them keeps its 50.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.num.partitions=1
# No 3 s wait for more members before a consumer group's first rebalance.
group.initial.rebalance.delay.ms=0
EOF
cat >"$log4j" <<'EOF'
# Written by scripts/full/kafka.sh: everything to stdout, which goes to kafka.log.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# One line per request otherwise.
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF

classpath="$lib/*"
java_opts=(-Djava.awt.headless=true "-Dlog4j2.configurationFile=$log4j" "-Dkafka.logs.dir=$dir")
jvm_opts=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
  -XX:+ExplicitGCInvokesConcurrent)
read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"

if pid=$(our_pid); then
  # Ours, alive, but not listening: still starting (or going away, after a kill).
  log "Kafka is starting or stopping (pid $pid); waiting for it"
  if wait_ready "$pid"; then
    log "Kafka is listening on 127.0.0.1:$PORT"
    exit 0
  fi
fi

# Formatting writes meta.properties with a cluster id and, with --standalone, the
# single-voter quorum (controller.quorum.bootstrap.servers, not static voters). Done once:
# a formatted directory is kept, and --ignore-formatted makes a repeat harmless.
if [ ! -f "$data/meta.properties" ]; then
  # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding, not starting with '-'.
  cluster_id=-
  while [ "${cluster_id#-}" != "$cluster_id" ]; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  log "formatting $data (cluster id $cluster_id)"
  mkdir -p "$data"
  java "${java_opts[@]}" -cp "$classpath" kafka.tools.StorageTool format --standalone \
    -t "$cluster_id" -c "$props" --ignore-formatted >"$dir/format.log" 2>&1 \
    || { cat "$dir/format.log" >&2; log "formatting $data failed"; exit 1; }
fi

# The previous run's log is kept once, for a look at why it stopped.
[ -f "$logfile" ] && mv -f "$logfile" "$logfile.1"
log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$PORT (data: $data, log: $logfile)"
partitions=$(find "$data" -mindepth 1 -maxdepth 1 -type d -name '*-[0-9]*' 2>/dev/null | wc -l)
if [ "$partitions" -gt 1000 ]; then
  log "it holds $partitions partition directories and loads each before it answers: this start may take minutes"
fi
# setsid: a session of its own, so the broker outlives the shell (and a Ctrl-C) that started
# it. The pid is written from inside, since setsid may fork ($! would be the wrong one).
rm -f "$pidfile"
setsid bash -c 'printf "%s\n" "$$" >"$0"; exec nohup "$@"' "$pidfile" \
  java "${heap[@]}" "${jvm_opts[@]}" "${java_opts[@]}" -cp "$classpath" \
  kafka.Kafka "$props" >"$logfile" 2>&1 </dev/null 9>&- &
for _ in $(seq 1 50); do [ -s "$pidfile" ] && break; sleep 0.1; done
pid=$(cat "$pidfile" 2>/dev/null || true)
[ -n "$pid" ] || fail_with_log "Kafka did not start"
wait_ready "$pid" || fail_with_log "Kafka exited during startup"
log "Kafka is listening on 127.0.0.1:$PORT (pid $pid)"
