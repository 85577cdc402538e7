#!/usr/bin/env bash
# Runs the four mailsync services as background processes against the local stack.
#   services.sh start|stop|status [fetcher|linker|sender|janitor ...]
# Logs: .stack/services/<name>.log (JSON lines). Health: http://127.0.0.1:<port>/readyz
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"

declare -A PORTS=([fetcher]=${FETCHER_HTTP_PORT:-38081} [linker]=${LINKER_HTTP_PORT:-38082}
  [sender]=${SENDER_HTTP_PORT:-38083} [janitor]=${JANITOR_HTTP_PORT:-38084})
ALL=(fetcher linker sender janitor)
DIR="$MAILSYNC_STACK_DIR/services"
PY="$MAILSYNC_REPO/.venv/bin/python"

cmd=${1:-status}
shift || true
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=("${ALL[@]}")
for n in "${names[@]}"; do [[ -n "${PORTS[$n]:-}" ]] || die "unknown service '$n' (known: ${ALL[*]})"; done
mkdir -p "$DIR"

ready() { "$PY" - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=3) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

start_one() {
  local name=$1 port=${PORTS[$1]} pidfile="$DIR/$1.pid"
  if pid_alive "$pidfile"; then return 0; fi
  port_free "$port" || die "port $port for the $name service is in use; set ${name^^}_HTTP_PORT to a free port"
  [[ -x "$PY" ]] || die "no .venv; run 'make install' first"
  (
    cd "$MAILSYNC_REPO"
    export MAILSYNC_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
    export MAILSYNC_MONGO_URI="mongodb://127.0.0.1:$FERRETDB_PORT/"
    export MAILSYNC_HTTP_PORT="$port"
    # Credential encryption key for the local stack (the fetcher refuses to start without one).
    if [[ -z ${MAILSYNC_CREDENTIALS_KEYS:-} && -z ${MAILSYNC_CREDENTIALS_KEYS_FILE:-} ]]; then
      keyfile="$MAILSYNC_STACK_DIR/credentials.keys"
      [[ -s $keyfile ]] || (umask 077 && "$PY" -c 'from mailsync.credentials import generate_key; print("local1:" + generate_key())' >"$keyfile")
      export MAILSYNC_CREDENTIALS_KEYS_FILE="$keyfile"
    fi
    # The local mail lab: its self-signed certificate is the trusted CA, and its 127.0.0.1 hosts are
    # allowed (production refuses loopback/private hosts a user types in).
    lab_ca="$MAILSYNC_STACK_DIR/mail/tls/cert.pem"
    export MAILSYNC_FETCHER_TLS_CA_FILE="${MAILSYNC_FETCHER_TLS_CA_FILE:-$lab_ca}"
    export MAILSYNC_SENDER_TLS_CAFILE="${MAILSYNC_SENDER_TLS_CAFILE:-$lab_ca}"
    export MAILSYNC_FETCHER_ALLOWED_NETWORKS="${MAILSYNC_FETCHER_ALLOWED_NETWORKS:-[\"127.0.0.1\"]}"
    setsid nohup "$PY" -m "services.$name" >>"$DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
  )
}

case "$cmd" in
  start)
    for n in "${names[@]}"; do start_one "$n"; done
    for n in "${names[@]}"; do
      for ((i = 0; i < 300; i++)); do
        ready "${PORTS[$n]}" && break
        pid_alive "$DIR/$n.pid" || { tail -n 20 "$DIR/$n.log" >&2; die "the $n service exited; log: $DIR/$n.log"; }
        sleep 0.1
      done
      ready "${PORTS[$n]}" || die "the $n service is not ready after 30 s; log: $DIR/$n.log"
      say "$n ready on http://127.0.0.1:${PORTS[$n]}/readyz"
    done
    ;;
  stop)
    for n in "${names[@]}"; do stop_pid "$DIR/$n.pid" "$n"; done
    ;;
  status)
    rc=0
    for n in "${names[@]}"; do
      if pid_alive "$DIR/$n.pid"; then echo "$n: running (port ${PORTS[$n]})"; else echo "$n: stopped"; rc=3; fi
    done
    exit $rc
    ;;
  *) die "usage: services.sh {start|stop|status} [service ...]" ;;
esac
