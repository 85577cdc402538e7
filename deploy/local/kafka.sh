#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft: broker and controller in one JVM) on 127.0.0.1, no Docker.
#
#   deploy/local/kafka.sh install   fetch the pinned Kafka jars from Maven Central (once)
#   deploy/local/kafka.sh start     install if needed, format storage once, start, wait until ready
#   deploy/local/kafka.sh stop      TERM, wait up to 30 s, then KILL
#   deploy/local/kafka.sh status    print running/stopped; exit 0 when running, 3 when stopped
#   deploy/local/kafka.sh reset     stop and wipe topics/offsets/metadata (jars are kept)
#
# Settings come from env.sh (KAFKA_VERSION, KAFKA_PORT, KAFKA_CONTROLLER_PORT, MAILSYNC_STACK_DIR);
# also KAFKA_HEAP_OPTS (default -Xms256m -Xmx512m), KAFKA_START_TIMEOUT (s, default 60), JAVA_HOME.
# Layout under $MAILSYNC_STACK_DIR/kafka: <version>/libs (jars), data (log.dirs), logs (server.log,
# install/format logs, JVM stdout), run (server.properties, pid file, start record).
#
# Optional SASL listener (off by default): KAFKA_SASL_PORT=39094 adds SASL_PLAINTEXT on that port with
# SCRAM-SHA-512 and PLAIN, for one user KAFKA_SASL_USER / KAFKA_SASL_PASSWORD (defaults mailsync /
# mailsync-dev-secret, a local development credential). The SCRAM credential is written at format
# time (StorageTool --add-scram) or, for storage formatted earlier, once after start (ConfigCommand).
# The PLAINTEXT listener stays as it is, so the other local tools keep working.
# KAFKA_SASL_SSL_PORT (with KAFKA_SASL_PORT) adds SASL_SSL, the production setup: same mechanisms over
# TLS with a certificate for 127.0.0.1/localhost signed by a local CA made once with openssl
# ($MAILSYNC_STACK_DIR/kafka/tls/ca.crt is the file clients trust: MAILSYNC_KAFKA_SSL_CAFILE).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$HERE/env.sh"

KAFKA_HOME="$MAILSYNC_STACK_DIR/kafka"
LIBS="$KAFKA_HOME/$KAFKA_VERSION/libs"
MARKER="$LIBS/.mailsync-installed"
DATA="$KAFKA_HOME/data"
LOGS="$KAFKA_HOME/logs"
RUN="$KAFKA_HOME/run"
PIDFILE="$RUN/kafka.pid"
PROPS="$RUN/server.properties"
STARTED="$RUN/started"
POM="$HERE/kafka/pom.xml"
LOG4J2="$HERE/kafka/log4j2.xml"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-}"
KAFKA_SASL_USER="${KAFKA_SASL_USER:-mailsync}"
KAFKA_SASL_PASSWORD="${KAFKA_SASL_PASSWORD:-mailsync-dev-secret}"
SCRAM_MARKER="$DATA/.mailsync-scram-user"
KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-}"
TLS="$KAFKA_HOME/tls"

usage() { echo "usage: $0 {install|start|stop|status|reset}" >&2; exit 2; }

# Milliseconds since the epoch (bash 5 EPOCHREALTIME, no subprocess).
now_ms() { local t=${EPOCHREALTIME//[!0-9]/}; echo $((10#$t / 1000)); }

# Serialise install/start/stop/reset of this stack dir (two shells starting at once).
take_lock() {
  mkdir -p "$KAFKA_HOME"
  command -v flock >/dev/null || return 0
  exec 9>"$KAFKA_HOME/.lock"
  flock -w 120 9 || die "another kafka.sh is busy with $KAFKA_HOME for 2 min; try again"
}

need_java() {
  command -v "$JAVA" >/dev/null || die "java not found: install JDK 17+ (Debian: apt-get install openjdk-17-jdk-headless) or set JAVA_HOME"
  local v major
  v=$("$JAVA" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n 1)
  [[ $v == 1.* ]] && v=${v#1.} # 1.8.0_412 is Java 8
  major=${v%%[!0-9]*}
  [[ ${KAFKA_VERSION%%.*} -lt 4 || ${major:-0} -ge 17 ]] ||
    die "Kafka $KAFKA_VERSION needs Java 17+, but $JAVA is Java ${major:-unknown}; install JDK 17 or point JAVA_HOME at one"
}

# Running = the pid file names a live JVM that was started with this stack's server.properties
# (guards against a stale pid file whose pid was reused).
kafka_pid() {
  pid_alive "$PIDFILE" || return 1
  local pid
  pid=$(cat "$PIDFILE")
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $PROPS" || return 1
  echo "$pid"
}

# JVMs of this stack that lost their pid file (exact server.properties path match, no regex).
stray_pids() {
  local d cmd
  for d in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue  # the process may be gone
    [[ $cmd == *" kafka.Kafka $PROPS "* ]] && echo "${d#/proc/}"
  done
  return 0
}

cmd_install() {
  [[ -f $MARKER ]] && return 0
  need_java
  command -v mvn >/dev/null || die "mvn not found: install Maven 3.6+ (Debian: apt-get install maven) to fetch the Kafka jars"
  mkdir -p "$LOGS" "${LIBS%/*}"
  local log="$LOGS/install-$KAFKA_VERSION.log" tmp="$LIBS.tmp.$$" t0
  t0=$(now_ms)
  rm -rf "$tmp"
  say "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS (log: $log)"
  # -B: no colours or progress bars in the log; output only reaches the log file.
  if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$tmp" >"$log" 2>&1; then
    rm -rf "$tmp"
    die "could not fetch Kafka $KAFKA_VERSION jars with Maven (network down, or no such KAFKA_VERSION on Maven Central?); see $log"
  fi
  [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || { rm -rf "$tmp"; die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing; see $log"; }
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  # Written last: its presence means the jar set is complete.
  echo "kafka $KAFKA_VERSION installed $(date -Is)" >"$MARKER"
  local jars=("$LIBS"/*.jar)
  say "Kafka $KAFKA_VERSION jars installed (${#jars[@]} jars, $(( ($(now_ms) - t0) / 1000 )) s)"
}

write_props() {
  cat >"$PROPS" <<EOF
# Generated by deploy/local/kafka.sh on every start; edits are overwritten.
node.id=1
process.roles=broker,controller
controller.quorum.voters=1@$MAILSYNC_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$MAILSYNC_HOST:$KAFKA_PORT,CONTROLLER://$MAILSYNC_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$MAILSYNC_HOST:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests: consumer groups form immediately instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
# After an unclean exit (kill -9) the restarted broker cannot register until its old session
# expires (DUPLICATE_BROKER_REGISTRATION); default 9 s, shortened for restarts in dev and tests.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
EOF
  [[ -n $KAFKA_SASL_PORT ]] || return 0
  local listeners="PLAINTEXT://$MAILSYNC_HOST:$KAFKA_PORT,SASL_PLAINTEXT://$MAILSYNC_HOST:$KAFKA_SASL_PORT"
  local map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT" name
  [[ -z $KAFKA_SASL_SSL_PORT ]] || {
    listeners="$listeners,SASL_SSL://$MAILSYNC_HOST:$KAFKA_SASL_SSL_PORT"
    map="$map,SASL_SSL:SASL_SSL"
  }
  # Later keys win in a Java properties file: these replace the listener lines above.
  cat >>"$PROPS" <<EOF
# Optional SASL listeners (KAFKA_SASL_PORT, KAFKA_SASL_SSL_PORT): SCRAM-SHA-512 and PLAIN, local use only.
listeners=$listeners,CONTROLLER://$MAILSYNC_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=$listeners
listener.security.protocol.map=$map
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
EOF
  for name in sasl_plaintext ${KAFKA_SASL_SSL_PORT:+sasl_ssl}; do
    cat >>"$PROPS" <<EOF
listener.name.$name.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.$name.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";
EOF
  done
  [[ -z $KAFKA_SASL_SSL_PORT ]] || cat >>"$PROPS" <<EOF
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS/server.pem
EOF
}

# A local CA and a server certificate for 127.0.0.1/localhost (made once; PEM keystore for Kafka:
# unencrypted PKCS#8 key followed by the certificate chain).
make_tls() {
  [[ -n $KAFKA_SASL_SSL_PORT && ! -f $TLS/server.pem ]] || return 0
  command -v openssl >/dev/null || die "openssl not found: install it (Debian: apt-get install openssl) for KAFKA_SASL_SSL_PORT"
  local log="$LOGS/tls.log"
  mkdir -p "$TLS"
  {
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=mailsync local Kafka CA" \
      -keyout "$TLS/ca.key" -out "$TLS/ca.crt" &&
      openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$TLS/server.key" -out "$TLS/server.csr" &&
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$TLS/san.ext" &&
      openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" -CAcreateserial \
        -days 3650 -extfile "$TLS/san.ext" -out "$TLS/server.crt" &&
      openssl pkcs8 -topk8 -nocrypt -in "$TLS/server.key" -out "$TLS/server.p8"
  } >"$log" 2>&1 || die "making the local Kafka TLS certificate failed; see $log"
  cat "$TLS/server.p8" "$TLS/server.crt" "$TLS/ca.crt" >"$TLS/server.pem"
  chmod 600 "$TLS"/*.key "$TLS"/*.p8 "$TLS/server.pem"
}

# SCRAM credential for storage formatted without it (added once through the PLAINTEXT listener).
ensure_scram_user() {
  [[ -n $KAFKA_SASL_PORT && ! -f $SCRAM_MARKER ]] || return 0
  local log="$LOGS/scram-user.log"
  if ! "$JAVA" -Xmx256m -cp "$LIBS/*" -Dlog4j2.configurationFile="$LOG4J2" \
      -Dkafka.logs.dir="$LOGS" -Dkafka.log.name=config-command kafka.admin.ConfigCommand \
      --bootstrap-server "$MAILSYNC_HOST:$KAFKA_PORT" --alter --entity-type users \
      --entity-name "$KAFKA_SASL_USER" \
      --add-config "SCRAM-SHA-512=[iterations=4096,password=$KAFKA_SASL_PASSWORD]" >"$log" 2>&1 9>&-; then
    die "adding the SCRAM user $KAFKA_SASL_USER failed; see $log"
  fi
  echo "$KAFKA_SASL_USER" >"$SCRAM_MARKER"
}

# A KRaft cluster id is 16 random bytes, URL-safe base64 without padding (22 chars). Kafka's own
# generator avoids a leading '-' (it reads as a CLI option), so do the same.
new_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ $id != -* ]] && break
  done
  echo "$id"
}

format_storage() {
  local cid log="$LOGS/format.log"
  cid=$(new_cluster_id)
  say "formatting $DATA (cluster id $cid)"
  local -a scram=()
  [[ -n $KAFKA_SASL_PORT ]] &&
    scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,iterations=4096,password=$KAFKA_SASL_PASSWORD]")
  # Static single voter (controller.quorum.voters), so no --standalone is needed.
  if ! "$JAVA" -Xmx256m -cp "$LIBS/*" -Dlog4j2.configurationFile="$LOG4J2" \
      -Dkafka.logs.dir="$LOGS" -Dkafka.log.name=storage-tool \
      kafka.tools.StorageTool format -t "$cid" -c "$PROPS" "${scram[@]}" >"$log" 2>&1 9>&-; then
    tail -n 20 "$log" >&2
    die "formatting Kafka storage failed; see $log and $LOGS/storage-tool.log"
  fi
  echo "$KAFKA_VERSION" >"$DATA/.mailsync-formatted-by"
  [[ -z $KAFKA_SASL_PORT ]] || echo "$KAFKA_SASL_USER" >"$SCRAM_MARKER"
}

# Last lines of the logs, then stop the JVM and exit with one error line.
start_failed() {
  local why=$1
  if [[ -s $LOGS/server.log ]]; then
    echo "--- last 20 lines of $LOGS/server.log" >&2
    tail -n 20 "$LOGS/server.log" >&2
  fi
  if [[ -s $LOGS/kafka.out ]]; then
    echo "--- last 20 lines of $LOGS/kafka.out" >&2
    tail -n 20 "$LOGS/kafka.out" >&2
  fi
  stop_pid "$PIDFILE" kafka
  local hint=""
  [[ -f $DATA/.mailsync-formatted-by && $(cat "$DATA/.mailsync-formatted-by") != "$KAFKA_VERSION" ]] &&
    hint="; data was formatted by Kafka $(cat "$DATA/.mailsync-formatted-by"), try '$0 reset'"
  die "kafka $why; logs: $LOGS$hint"
}

cmd_start() {
  local pid t0 i
  if pid=$(kafka_pid); then
    say "kafka already running (pid $pid, $MAILSYNC_HOST:$KAFKA_PORT)"
    return 0
  fi
  rm -f "$PIDFILE"
  t0=$(now_ms)
  cmd_install
  need_java
  [[ $KAFKA_PORT != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT are both $KAFKA_PORT; set one of them to another port"
  port_free "$KAFKA_PORT" || die "port $KAFKA_PORT is already in use by another process; set KAFKA_PORT to a free port"
  [[ -z $KAFKA_SASL_SSL_PORT || -n $KAFKA_SASL_PORT ]] || die "KAFKA_SASL_SSL_PORT needs KAFKA_SASL_PORT as well (the SCRAM user is shared); set both"
  [[ -z $KAFKA_SASL_SSL_PORT ]] || port_free "$KAFKA_SASL_SSL_PORT" || die "port $KAFKA_SASL_SSL_PORT is already in use by another process; set KAFKA_SASL_SSL_PORT to a free port"
  [[ -z $KAFKA_SASL_PORT ]] || port_free "$KAFKA_SASL_PORT" || die "port $KAFKA_SASL_PORT is already in use by another process; set KAFKA_SASL_PORT to a free port"
  port_free "$KAFKA_CONTROLLER_PORT" || die "port $KAFKA_CONTROLLER_PORT is already in use by another process; set KAFKA_CONTROLLER_PORT to a free port"
  mkdir -p "$DATA" "$LOGS" "$RUN"
  make_tls
  write_props
  [[ -f $DATA/meta.properties ]] || format_storage

  # Fresh log per run, so the readiness check below cannot match an old line.
  [[ -f $LOGS/server.log ]] && mv -f "$LOGS/server.log" "$LOGS/server.log.prev"
  local -a heap jvm
  read -r -a heap <<<"$KAFKA_HEAP_OPTS"
  jvm=("${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$LOG4J2" -Dkafka.logs.dir="$LOGS" -Dkafka.log.name=server)
  # Own session (setsid) so the terminal's Ctrl-C/hang-up does not reach it; the inner bash writes
  # its pid and execs java, so the pid file names the JVM itself. fd 9 (the lock) is not inherited.
  # shellcheck disable=SC2016 # $$ and $1 belong to the inner bash
  setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' kafka "$PIDFILE" \
    "$JAVA" "${jvm[@]}" -cp "$LIBS/*" kafka.Kafka "$PROPS" \
    </dev/null >"$LOGS/kafka.out" 2>&1 9>&- &
  for ((i = 0; i < 50; i++)); do [[ -s $PIDFILE ]] && break; sleep 0.1; done
  [[ -s $PIDFILE ]] || start_failed "did not start (no pid)"
  pid=$(cat "$PIDFILE")

  # Ready = the broker logged "Kafka Server started" (it is RUNNING and serves metadata) and the
  # client port accepts connections.
  for ((i = 0; i < KAFKA_START_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || start_failed "exited during startup"
    if grep -q 'Kafka Server started' "$LOGS/server.log" 2>/dev/null &&
      (exec 3<>"/dev/tcp/$MAILSYNC_HOST/$KAFKA_PORT") 2>/dev/null; then
      local ms=$(( $(now_ms) - t0 ))
      printf 'version=%s\npid=%s\nstarted_at=%s\nstartup_ms=%s\n' \
        "$KAFKA_VERSION" "$pid" "$(date -Is)" "$ms" >"$STARTED"
      ensure_scram_user
      [[ -z $KAFKA_SASL_PORT ]] || say "kafka SASL listener (SCRAM-SHA-512, PLAIN) on $MAILSYNC_HOST:$KAFKA_SASL_PORT, user $KAFKA_SASL_USER"
      [[ -z $KAFKA_SASL_SSL_PORT ]] || say "kafka SASL_SSL listener on $MAILSYNC_HOST:$KAFKA_SASL_SSL_PORT (CA: $TLS/ca.crt)"
      say "kafka $KAFKA_VERSION ready on $MAILSYNC_HOST:$KAFKA_PORT (pid $pid, $((ms / 1000)).$((ms % 1000 / 100)) s)"
      return 0
    fi
    sleep 0.1
  done
  start_failed "was not ready after $KAFKA_START_TIMEOUT s"
}

cmd_stop() {
  local pid
  if pid=$(kafka_pid); then
    say "stopping kafka (pid $pid)"
    stop_pid "$PIDFILE" kafka
  else
    rm -f "$PIDFILE"
  fi
  # A JVM of this stack whose pid file was lost: stop it the same way.
  for pid in $(stray_pids); do
    say "stopping kafka (pid $pid, had no pid file)"
    echo "$pid" >"$RUN/stray.pid"
    stop_pid "$RUN/stray.pid" kafka
  done
  rm -f "$STARTED"
}

cmd_status() {
  local pid
  if pid=$(kafka_pid); then
    local version=$KAFKA_VERSION since=""
    if [[ -f $STARTED ]]; then
      version=$(sed -n 's/^version=//p' "$STARTED")
      since=", since $(sed -n 's/^started_at=//p' "$STARTED")"
    fi
    echo "kafka: running (pid $pid, $MAILSYNC_HOST:$KAFKA_PORT, version $version$since)"
    return 0
  fi
  echo "kafka: stopped"
  return 3
}

cmd_reset() {
  cmd_stop
  rm -rf "$DATA"
  say "kafka data wiped ($DATA); jars kept; run '$0 start' to start with an empty cluster"
}

[[ $# -eq 1 ]] || usage
case $1 in
  install) take_lock; cmd_install ;;
  start) take_lock; cmd_start ;;
  stop) take_lock; cmd_stop ;;
  status) cmd_status ;;
  reset) take_lock; cmd_reset ;;
  *) usage ;;
esac
