# Shared defaults for the local stack scripts. Source it; every value can be overridden from the
# environment. Everything binds to 127.0.0.1; ports are high and uncommon so a developer's own
# Kafka/MongoDB/mail servers do not collide with ours.
# shellcheck shell=bash

MAILSYNC_REPO="${MAILSYNC_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
MAILSYNC_STACK_DIR="${MAILSYNC_STACK_DIR:-$MAILSYNC_REPO/.stack}"
MAILSYNC_HOST="127.0.0.1"

# Kafka (KRaft, single node: broker + controller)
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-39092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-39093}"

# FerretDB v1 (MongoDB wire protocol) on SQLite
FERRETDB_VERSION="${FERRETDB_VERSION:-v1.24.2}"
FERRETDB_PORT="${FERRETDB_PORT:-37017}"

# Mail lab: Dovecot (IMAP, LMTP, SASL for Postfix) and Postfix (submission, relay-free MTA)
MAIL_DOMAIN="${MAIL_DOMAIN:-mailsync.test}"
IMAP_PORT="${IMAP_PORT:-31143}"              # IMAP with STARTTLS
IMAPS_PORT="${IMAPS_PORT:-31993}"            # IMAP over implicit TLS
LMTP_PORT="${LMTP_PORT:-31024}"              # Dovecot LMTP, Postfix delivers here
SMTP_PORT="${SMTP_PORT:-31025}"              # Postfix MTA port: inbound mail, no AUTH
SUBMISSION_PORT="${SUBMISSION_PORT:-31587}"  # Postfix submission, STARTTLS + SASL
SUBMISSIONS_PORT="${SUBMISSIONS_PORT:-31465}" # Postfix submission, implicit TLS + SASL
# Dovecot's oauth2 passdb asks this local introspection endpoint (served by the onboarding tests).
OAUTH2_INTROSPECTION_PORT="${OAUTH2_INTROSPECTION_PORT:-31080}"

export MAILSYNC_REPO MAILSYNC_STACK_DIR MAILSYNC_HOST KAFKA_VERSION KAFKA_PORT KAFKA_CONTROLLER_PORT \
  FERRETDB_VERSION FERRETDB_PORT MAIL_DOMAIN IMAP_PORT IMAPS_PORT LMTP_PORT SMTP_PORT \
  SUBMISSION_PORT SUBMISSIONS_PORT OAUTH2_INTROSPECTION_PORT

# One-line error and exit: what went wrong and what to do.
die() { echo "mailsync-stack: error: $*" >&2; exit 1; }
say() { echo "mailsync-stack: $*" >&2; }

# Refuse a port some other process already holds (ours is detected by its pid file first).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Wait up to $2 seconds for 127.0.0.1:$1 to accept connections.
wait_port() {
  local port=$1 secs=${2:-60} i
  for ((i = 0; i < secs * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# pid file helpers: a component is running when its pid file names a live process.
pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pid() {
  local pidfile=$1 name=$2 i pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then say "$name did not stop in 30 s, killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
}
