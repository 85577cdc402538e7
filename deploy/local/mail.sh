#!/usr/bin/env bash
# Mail lab on 127.0.0.1 as plain local processes (no Docker, no systemd): Dovecot serves IMAP
# (STARTTLS + implicit TLS), LMTP and SASL; Postfix serves an MTA port for injecting inbound mail
# and submission (STARTTLS + implicit TLS) with SASL through Dovecot. Runs as root.
#
#   deploy/local/mail.sh install | start | stop | status | reload | adduser EMAIL PASSWORD | deluser EMAIL | reset
#   deploy/local/mail.sh addusers PASSWORD < emails   (bulk, for benchmarks)
#
# Config and state live under $MAILSYNC_STACK_DIR/mail/, rendered from deploy/local/mail/*.in.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# Absolute, so `postfix -c DIR` matches alternate_config_directories and sockets resolve anywhere.
MAILSYNC_STACK_DIR=$(realpath -m "$MAILSYNC_STACK_DIR")

TEMPLATES="$MAILSYNC_REPO/deploy/local/mail"
MAIL_DIR="$MAILSYNC_STACK_DIR/mail"
ETC_DIR="$MAIL_DIR/etc"
PF_CONF_DIR="$ETC_DIR/postfix"          # postfix -c DIR
DOVECOT_CONF="$ETC_DIR/dovecot.conf"
USERS_FILE="$ETC_DIR/users"             # Dovecot passwd-file: EMAIL:{SHA512-CRYPT}hash::::::
VMAILBOX_MAP="$PF_CONF_DIR/vmailbox"    # Postfix hash map of valid recipients, derived from users
TLS_DIR="$MAIL_DIR/tls"
DOVECOT_BASE_DIR="$MAIL_DIR/run/dovecot"
DOVECOT_STATE_DIR="$MAIL_DIR/state/dovecot"
PF_QUEUE_DIR="$MAIL_DIR/postfix-queue"
PF_DATA_DIR="$MAIL_DIR/postfix-data"
VMAIL_DIR="$MAIL_DIR/vmail"             # mail store: vmail/<domain>/<localpart>/Maildir
LOG_DIR="$MAIL_DIR/log"
LOCK_FILE="$MAIL_DIR/.lock"
VMAIL_USER="mailsync-vmail"

DOVECOT_PIDFILE="$DOVECOT_BASE_DIR/master.pid"
PF_PIDFILE="$PF_QUEUE_DIR/pid/master.pid"
# Session ids of the two masters, kept so stop can find children that outlive their master.
DOVECOT_SIDFILE="$MAIL_DIR/run/dovecot.sid"
PF_SIDFILE="$MAIL_DIR/run/postfix.sid"

PORT_VARS=(IMAP_PORT IMAPS_PORT LMTP_PORT SMTP_PORT SUBMISSION_PORT SUBMISSIONS_PORT)
DOVECOT_PORT_VARS=(IMAP_PORT IMAPS_PORT LMTP_PORT)
POSTFIX_PORT_VARS=(SMTP_PORT SUBMISSION_PORT SUBMISSIONS_PORT)

usage() {
  echo "usage: $0 {install|start|stop|status|reload|adduser EMAIL PASSWORD|addusers PASSWORD <emails|deluser EMAIL|reset}" >&2
  exit 2
}

[[ $(id -u) -eq 0 ]] || die "mail.sh must run as root (Dovecot and Postfix drop privileges themselves)"

# ---------------------------------------------------------------- install

have_binaries() {
  command -v dovecot >/dev/null && command -v doveadm >/dev/null && command -v postfix >/dev/null \
    && command -v postmap >/dev/null && command -v openssl >/dev/null && command -v envsubst >/dev/null \
    && [[ -x /usr/lib/dovecot/imap && -x /usr/lib/dovecot/lmtp ]]
}

ensure_vmail_user() {
  # Mail files belong to one unprivileged system user; Dovecot refuses to run mail processes as root.
  if ! getent passwd "$VMAIL_USER" >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$VMAIL_USER" || die "cannot create system user $VMAIL_USER"
  fi
}

cmd_install() {
  if have_binaries; then
    say "mail: dovecot and postfix already installed"
    ensure_vmail_user
    return 0
  fi
  command -v apt-get >/dev/null || die "apt-get not found: install dovecot-imapd dovecot-lmtpd postfix openssl by hand"
  # "No configuration" keeps the package from writing /etc/postfix/main.cf or starting anything.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  # No systemd: invoke-rc.d would start the system-wide daemons through /etc/init.d on 143/993/25.
  # A policy-rc.d answering 101 forbids that; only remove it if we created it.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\n# mailsync mail.sh install: keep packages from starting services\nexit 101\n' \
      >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  # Only what is missing: naming an installed package would upgrade it as a side effect.
  local pkgs=() p log="${TMPDIR:-/tmp}/mailsync-mail-apt.log" ok=0 err
  for p in dovecot-imapd dovecot-lmtpd postfix openssl gettext-base; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || pkgs+=("$p")
  done
  # Update the package lists only when apt does not know the packages or the first try fails
  # (stale lists give 404s).
  if ! apt-cache policy postfix 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -o DPkg::Lock::Timeout=120 >"$log" 2>&1 || true
  fi
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=120 "${pkgs[@]}" >"$log" 2>&1; then
    ok=1
  elif apt-get update -o DPkg::Lock::Timeout=120 >>"$log" 2>&1 \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=120 "${pkgs[@]}" >>"$log" 2>&1; then
    ok=1
  fi
  if [[ $own_policy -eq 1 ]]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  if [[ $ok -ne 1 ]]; then
    err=$(grep -E '^E:' "$log" | tail -n 1)
    die "apt-get install ${pkgs[*]} failed: ${err:-$(tail -n 1 "$log")} (full log: $log)"
  fi
  have_binaries || die "packages installed but dovecot/postfix binaries are missing (see $log)"
  ensure_vmail_user
  say "mail: installed $(dovecot --version | cut -d' ' -f1) and postfix $(postconf -d -h mail_version 2>/dev/null)"
}

need_installed() { have_binaries || die "dovecot/postfix not installed: run deploy/local/mail.sh install"; }

# ---------------------------------------------------------------- layout and config

# Unix sockets are limited to 107 bytes of path; Dovecot and Postfix put theirs under these dirs.
check_paths() {
  ((${#DOVECOT_BASE_DIR} + 32 <= 107)) \
    || die "MAILSYNC_STACK_DIR is too long for Dovecot's unix sockets ($DOVECOT_BASE_DIR): use a shorter path"
  ((${#PF_QUEUE_DIR} + 24 <= 107)) \
    || die "MAILSYNC_STACK_DIR is too long for Postfix's unix sockets ($PF_QUEUE_DIR): use a shorter path"
  local p var seen=" "
  for var in "${PORT_VARS[@]}"; do
    p=${!var}
    if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then die "$var=$p is not a TCP port number"; fi
    [[ $seen == *" $p "* ]] && die "$var=$p is used twice in the mail lab's ports: give each *_PORT its own value"
    seen+="$p "
  done
}

# Postfix, Dovecot and the mail user must be able to reach their files below the stack dir.
check_reachable() {
  local u
  for u in postfix dovecot dovenull "$VMAIL_USER"; do
    runuser -u "$u" -- test -x "$MAIL_DIR" 2>/dev/null \
      || die "user $u cannot enter $MAIL_DIR: every parent directory of MAILSYNC_STACK_DIR needs o+x (or set MAILSYNC_STACK_DIR elsewhere)"
  done
}

ensure_dirs() {
  install -d -m 0755 "$MAILSYNC_STACK_DIR" "$MAIL_DIR" "$ETC_DIR" "$PF_CONF_DIR" "$LOG_DIR" \
    "$MAIL_DIR/run" "$MAIL_DIR/state" "$DOVECOT_STATE_DIR"
  install -d -m 0700 "$TLS_DIR"
  # queue_directory must be root-owned; post-install creates its postfix-owned subdirs.
  install -d -m 0755 -o root -g root "$PF_QUEUE_DIR"
  install -d -m 0700 -o postfix -g postfix "$PF_DATA_DIR"
  # A re-created system user may get another uid (new machine, same work tree): re-own the store.
  if [[ -d $VMAIL_DIR && $(stat -c %u "$VMAIL_DIR") != "$(id -u "$VMAIL_USER")" ]]; then
    chown -R "$VMAIL_USER:$VMAIL_USER" "$VMAIL_DIR"
  fi
  install -d -m 0750 -o "$VMAIL_USER" -g "$VMAIL_USER" "$VMAIL_DIR"
}

# Self-signed certificate, made once and reused so clients can pin it between runs.
ensure_cert() {
  [[ -s $TLS_DIR/cert.pem && -s $TLS_DIR/key.pem ]] && return 0
  local err
  err=$(openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TLS_DIR/key.pem.tmp" -out "$TLS_DIR/cert.pem.tmp" 2>&1) \
    || die "openssl could not create the lab certificate: ${err##*$'\n'}"
  chmod 0600 "$TLS_DIR/key.pem.tmp"
  chmod 0644 "$TLS_DIR/cert.pem.tmp"
  mv "$TLS_DIR/key.pem.tmp" "$TLS_DIR/key.pem"
  mv "$TLS_DIR/cert.pem.tmp" "$TLS_DIR/cert.pem"
}

# Fill ${VAR} placeholders only for the names we own: $name/%u in the configs stay untouched.
render() {
  local src=$1 dst=$2 vars
  # shellcheck disable=SC2016  # literal ${NAME} list for envsubst
  vars='${MAIL_DOMAIN} ${IMAP_PORT} ${IMAPS_PORT} ${LMTP_PORT} ${SMTP_PORT} ${SUBMISSION_PORT}
    ${SUBMISSIONS_PORT} ${DOVECOT_BASE_DIR} ${DOVECOT_STATE_DIR} ${LOG_DIR} ${TLS_DIR} ${USERS_FILE}
    ${VMAIL_DIR} ${VMAIL_UID} ${VMAIL_GID} ${PF_QUEUE_DIR} ${PF_DATA_DIR} ${PF_CONF_DIR}
    ${OAUTH2_INTROSPECTION_PORT} ${MAIL_ETC_DIR}'
  [[ -f $src ]] || die "template $src is missing"
  VMAIL_UID=$(id -u "$VMAIL_USER") VMAIL_GID=$(id -g "$VMAIL_USER") \
    DOVECOT_BASE_DIR=$DOVECOT_BASE_DIR DOVECOT_STATE_DIR=$DOVECOT_STATE_DIR LOG_DIR=$LOG_DIR \
    TLS_DIR=$TLS_DIR USERS_FILE=$USERS_FILE VMAIL_DIR=$VMAIL_DIR PF_QUEUE_DIR=$PF_QUEUE_DIR \
    PF_DATA_DIR=$PF_DATA_DIR PF_CONF_DIR=$PF_CONF_DIR MAIL_ETC_DIR=$ETC_DIR \
    envsubst "$vars" <"$src" >"$dst.tmp"
  chmod 0644 "$dst.tmp"
  if cmp -s "$dst.tmp" "$dst"; then rm -f "$dst.tmp"; else backdate "$dst.tmp"; mv "$dst.tmp" "$dst"; fi
}

# Postfix re-reads a main.cf modified in the last ~2 s until it "cools down" (300 ms naps), so
# every postfix/postconf/postmap call right after an edit stalls 1-2 s. Our files are replaced
# atomically, so an older mtime is safe.
backdate() { touch -d "@$(($(date +%s) - 10))" "$1"; }

render_configs() {
  render "$TEMPLATES/dovecot.conf.in" "$DOVECOT_CONF"
  render "$TEMPLATES/dovecot-oauth2.conf.ext.in" "$ETC_DIR/dovecot-oauth2.conf.ext"
  render "$TEMPLATES/main.cf.in" "$PF_CONF_DIR/main.cf"
  render "$TEMPLATES/master.cf.in" "$PF_CONF_DIR/master.cf"
}

# `postfix -c DIR` is refused unless the default main.cf lists DIR in alternate_config_directories.
ensure_postfix_alt_dir() {
  if [[ ! -f /etc/postfix/main.cf ]]; then
    # "No configuration" install leaves none; this one only enables our instance, starts nothing.
    install -d -m 0755 /etc/postfix
    printf '%s\n' "# Created by mailsync deploy/local/mail.sh: the system-wide Postfix is not configured." \
      "compatibility_level = 3.6" >/etc/postfix/main.cf
    backdate /etc/postfix/main.cf
  fi
  local cur d keep=()
  cur=$(postconf -c /etc/postfix -h alternate_config_directories 2>/dev/null || true)
  # The value is a list separated by commas and/or blanks.
  if ! tr -s ', ' '\n' <<<"$cur" | grep -qxF "$PF_CONF_DIR"; then
    # Drop entries of stack dirs that no longer exist (old clones, temp dirs) while adding ours.
    for d in $(tr -s ', ' '  ' <<<"$cur"); do [[ -d $d ]] && keep+=("$d"); done
    keep+=("$PF_CONF_DIR")
    postconf -c /etc/postfix -e "alternate_config_directories = ${keep[*]}" \
      || die "cannot add $PF_CONF_DIR to alternate_config_directories in /etc/postfix/main.cf"
    backdate /etc/postfix/main.cf
  fi
}

# Postfix learns the valid recipients from a hash map derived from Dovecot's passwd-file.
recipient_list() { cut -d: -f1 "$USERS_FILE" | awk 'NF { print $1 "\tOK" }'; }
rebuild_recipient_map() {
  recipient_list >"$VMAILBOX_MAP.tmp"
  chmod 0644 "$VMAILBOX_MAP.tmp"
  mv "$VMAILBOX_MAP.tmp" "$VMAILBOX_MAP"
  postmap -c "$PF_CONF_DIR" "hash:$VMAILBOX_MAP" || die "postmap $VMAILBOX_MAP failed"
  # An idle smtpd notices a changed table only after serving one more session with the old one;
  # a reload replaces the idle processes right away.
  if postfix_running; then
    postfix -c "$PF_CONF_DIR" reload >/dev/null 2>&1 9>&- || say "mail: postfix reload failed"
  fi
}

ensure_users_file() {
  if [[ ! -f $USERS_FILE ]]; then
    : >"$USERS_FILE"
  fi
  # Read by Dovecot's auth process, which runs as the dovecot user; hashes stay hidden from others.
  chown root:dovecot "$USERS_FILE"
  chmod 0640 "$USERS_FILE"
  if [[ ! -f $VMAILBOX_MAP.db ]] || ! recipient_list | cmp -s - "$VMAILBOX_MAP"; then
    rebuild_recipient_map
  fi
}

# Everything start/adduser/deluser/reset need on disk; cheap enough to run every time.
prepare() {
  need_installed
  check_paths
  ensure_vmail_user
  ensure_dirs
  check_reachable
  ensure_cert
  render_configs
  ensure_postfix_alt_dir
  ensure_users_file
}

# Serialize commands that change state; the daemons must not inherit the lock (fd 9).
take_lock() {
  install -d -m 0755 "$MAIL_DIR"
  exec 9>"$LOCK_FILE"
  flock -w 120 9 || die "another mail.sh command holds $LOCK_FILE"
}

# ---------------------------------------------------------------- processes

read_pid() { [[ -f $1 ]] && tr -dc '0-9' <"$1"; }   # Postfix pads its pid file with spaces
# A dead master can linger as a zombie: the init here reaps orphans only every few seconds, and
# kill -0 succeeds on zombies.
proc_alive() {
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ -n $st && $st != Z* ]]
}
alive() { local p; p=$(read_pid "$1") && [[ -n $p ]] && proc_alive "$p"; }
dovecot_running() { alive "$DOVECOT_PIDFILE"; }
postfix_running() { alive "$PF_PIDFILE"; }

# Processes in the session of a master we started (both masters call setsid when they
# daemonize), limited to Dovecot/Postfix binaries in case the session id was reused since.
session_pids() {
  local sid pid exe
  sid=$(read_pid "$1") || return 0
  [[ -n $sid ]] || return 0
  for pid in $(ps -e -o pid=,sid=,stat= | awk -v s="$sid" '$2 == s && $3 !~ /^Z/ { print $1 }'); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    case $exe in
      /usr/sbin/dovecot | /usr/lib/dovecot/* | /usr/lib/postfix/* | /usr/sbin/post*) echo "$pid" ;;
    esac
  done
}

record_session() {
  local pid sid
  pid=$(read_pid "$1")
  sid=$(ps -o sid= -p "$pid" | tr -dc '0-9')
  echo "$sid" >"$2"
}

# Kill whatever is left in a recorded session (children that outlived their master).
sweep_session() {
  local sidfile=$1 name=$2 pids i
  pids=$(session_pids "$sidfile")
  if [[ -n $pids ]]; then
    say "mail: $name left processes behind, terminating: ${pids//$'\n'/ }"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      [[ -z $(session_pids "$sidfile") ]] && break
      sleep 0.1
    done
    pids=$(session_pids "$sidfile")
    # shellcheck disable=SC2086
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
  fi
  rm -f "$sidfile"
}

wait_gone() {   # wait_gone PID SECONDS
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    proc_alive "$1" || return 0
    sleep 0.1
  done
  return 1
}

log_tails() {
  local f
  for f in "$LOG_DIR/dovecot.log" "$LOG_DIR/postfix.log"; do
    [[ -s $f ]] || continue
    echo "----- tail $f" >&2
    tail -n 15 "$f" >&2
  done
}

# Postfix exits 1 without a word when it has no syslog and no terminal: a pseudo-terminal
# makes its messages visible.
postfix_diagnose() {
  echo "----- postfix -c $PF_CONF_DIR check" >&2
  script -qc "postfix -c '$PF_CONF_DIR' check" /dev/null </dev/null >&2 || true
}

check_ports() {
  local var
  for var in "$@"; do
    port_free "${!var}" \
      || die "port ${!var} on 127.0.0.1 is already in use by another process: set $var to a free port"
  done
}

# The daemons keep inherited stdout/stderr open, so a $(...) capture would wait for them
# forever: their start-up output goes to a file instead.
run_daemon_cmd() {   # run_daemon_cmd OUTFILE CMD...
  local out=$1
  shift
  "$@" </dev/null >"$out" 2>&1 9>&-
}

start_dovecot() {
  local out="$LOG_DIR/dovecot.start.out"
  rm -f "$DOVECOT_PIDFILE"
  run_daemon_cmd "$out" dovecot -c "$DOVECOT_CONF" || {
    cat "$out" >&2
    log_tails
    die "dovecot did not start: $(tail -n 1 "$out")"
  }
  local i
  for ((i = 0; i < 100; i++)); do dovecot_running && break; sleep 0.1; done
  dovecot_running || { log_tails; die "dovecot exited right after start (see $LOG_DIR/dovecot.log)"; }
  record_session "$DOVECOT_PIDFILE" "$DOVECOT_SIDFILE"
}

start_postfix() {
  local out="$LOG_DIR/postfix.start.out"
  run_daemon_cmd "$out" postfix -c "$PF_CONF_DIR" start || {
    cat "$out" >&2
    postfix_diagnose
    log_tails
    die "postfix did not start (config $PF_CONF_DIR)"
  }
  local i
  for ((i = 0; i < 100; i++)); do postfix_running && break; sleep 0.1; done
  postfix_running || { postfix_diagnose; log_tails; die "postfix exited right after start (see $LOG_DIR/postfix.log)"; }
  record_session "$PF_PIDFILE" "$PF_SIDFILE"
}

cmd_start() {
  take_lock
  local dv=0 pf=0 t0=$SECONDS
  dovecot_running && dv=1
  postfix_running && pf=1
  if ((dv && pf)); then
    say "mail: already running (dovecot pid $(read_pid "$DOVECOT_PIDFILE"), postfix pid $(read_pid "$PF_PIDFILE"))"
    return 0
  fi
  prepare
  ((dv)) || check_ports "${DOVECOT_PORT_VARS[@]}"
  ((pf)) || check_ports "${POSTFIX_PORT_VARS[@]}"
  # Creates the queue subdirectories with Postfix's owners and modes (`postfix start` would do it
  # too, but Dovecot needs private/ for its auth socket first).
  if ((!pf)); then
    local out
    out=$(postfix -c "$PF_CONF_DIR" post-install create-missing 2>&1 9>&-) || {
      echo "$out" >&2
      postfix_diagnose
      die "postfix post-install create-missing failed for $PF_CONF_DIR"
    }
  fi
  ((dv)) || start_dovecot
  ((pf)) || start_postfix
  local var
  for var in "${PORT_VARS[@]}"; do
    # Shares one 30 s budget across all ports.
    local left=$((30 - (SECONDS - t0)))
    ((left < 1)) && left=1
    wait_port "${!var}" "$left" || {
      log_tails
      die "mail lab port ${!var} ($var) did not open within 30 s"
    }
  done
  say "mail: running: IMAP 127.0.0.1:$IMAP_PORT (STARTTLS), IMAPS :$IMAPS_PORT, LMTP :$LMTP_PORT," \
    "SMTP :$SMTP_PORT, submission :$SUBMISSION_PORT (STARTTLS), submissions :$SUBMISSIONS_PORT; data in $MAIL_DIR"
}

stop_postfix() {
  local pid
  if postfix_running; then
    pid=$(read_pid "$PF_PIDFILE")
    postfix -c "$PF_CONF_DIR" stop >/dev/null 2>&1 9>&- || kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 20; then
      say "mail: postfix master $pid did not stop in 20 s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 5 || true
    fi
  fi
  sweep_session "$PF_SIDFILE" postfix
}

stop_dovecot() {
  local pid
  if dovecot_running; then
    pid=$(read_pid "$DOVECOT_PIDFILE")
    # SIGTERM to the master is what `doveadm stop` sends; it does not depend on a readable config.
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 20; then
      say "mail: dovecot master $pid did not stop in 20 s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 5 || true
    fi
  fi
  rm -f "$DOVECOT_PIDFILE"
  sweep_session "$DOVECOT_SIDFILE" dovecot
}

cmd_stop() {
  [[ -d $MAIL_DIR ]] || { say "mail: not running"; return 0; }
  take_lock
  # Postfix first: it delivers into Dovecot and authenticates through it.
  stop_postfix
  stop_dovecot
  say "mail: stopped"
}

# Re-render the configs and have a running Dovecot re-read them (open sessions stay connected).
cmd_reload() {
  take_lock
  prepare
  if dovecot_running; then
    doveadm -c "$DOVECOT_CONF" reload >/dev/null 2>&1 9>&- || die "doveadm reload failed (see $LOG_DIR/dovecot.log)"
    say "mail: dovecot reloaded its configuration"
  else
    say "mail: dovecot not running; the new configuration applies at the next start"
  fi
}

cmd_status() {
  local rc=0
  if dovecot_running; then
    echo "dovecot: running (pid $(read_pid "$DOVECOT_PIDFILE")) imap 127.0.0.1:$IMAP_PORT imaps :$IMAPS_PORT lmtp :$LMTP_PORT"
  else
    echo "dovecot: stopped"; rc=3
  fi
  if postfix_running; then
    echo "postfix: running (pid $(read_pid "$PF_PIDFILE")) smtp 127.0.0.1:$SMTP_PORT submission :$SUBMISSION_PORT submissions :$SUBMISSIONS_PORT"
  else
    echo "postfix: stopped"; rc=3
  fi
  return "$rc"
}

# ---------------------------------------------------------------- users

# Lower-cased EMAIL in the lab domain; no characters that could escape the passwd-file or paths.
normalize_email() {
  local email=${1,,}
  [[ $email =~ ^[a-z0-9][a-z0-9._+-]*@[a-z0-9][a-z0-9.-]*$ && $email != *..* ]] \
    || die "invalid address '$1': expected local@$MAIL_DOMAIN"
  [[ ${email#*@} == "${MAIL_DOMAIN,,}" ]] \
    || die "address '$1' is outside the lab domain $MAIL_DOMAIN (set MAIL_DOMAIN to change it)"
  echo "$email"
}

# Replace the passwd-file atomically. Dovecot re-reads it when mtime (whole seconds) or size
# changed, and checks at most once per second: a password change keeps the size, so the new
# file gets an mtime past the old one, and we return only once the clock has moved to the next
# second, when Dovecot's next lookup is sure to stat the file again.
write_users() {   # write_users < new content
  local old_mtime=0 now written
  [[ -f $USERS_FILE ]] && old_mtime=$(stat -c %Y "$USERS_FILE")
  cat >"$USERS_FILE.tmp"
  chown root:dovecot "$USERS_FILE.tmp"
  chmod 0640 "$USERS_FILE.tmp"
  now=$(date +%s)
  touch -d "@$((now > old_mtime ? now : old_mtime + 1))" "$USERS_FILE.tmp"
  mv "$USERS_FILE.tmp" "$USERS_FILE"
  written=$(date +%s)
  rebuild_recipient_map
  if dovecot_running; then
    while (($(date +%s) <= written)); do sleep 0.05; done
  fi
}

cmd_adduser() {
  [[ $# -eq 2 ]] || usage
  local email pw=$2 hash old
  email=$(normalize_email "$1")
  [[ -n $pw ]] || die "empty password for $email"
  [[ $pw != *$'\n'* ]] || die "password for $email contains a newline"
  take_lock
  prepare
  old=$(awk -F: -v u="$email" '$1 == u { print $2; exit }' "$USERS_FILE")
  # Same password again: keep the line (and the file) as is.
  if [[ -n $old ]] && doveadm -O pw -t "$old" -p "$pw" >/dev/null 2>&1; then
    say "mail: user $email already exists with that password"
    return 0
  fi
  hash=$(doveadm -O pw -s SHA512-CRYPT -p "$pw") || die "doveadm pw failed for $email"
  { awk -F: -v u="$email" '$1 != u' "$USERS_FILE"; echo "$email:$hash::::::"; } | write_users
  if [[ -n $old ]]; then say "mail: user $email: password changed"; else say "mail: user $email added"; fi
}

# Bulk add (benchmarks): every address read from stdin, one per line, gets PASSWORD; one hash and
# one rewrite of the passwd-file for all of them. Existing users keep their line.
cmd_addusers() {
  [[ $# -eq 1 ]] || usage
  local pw=$1 hash line email n=0
  [[ -n $pw && $pw != *$'\n'* ]] || die "addusers: empty password or one with a newline"
  take_lock
  prepare
  hash=$(doveadm -O pw -s SHA512-CRYPT -p "$pw") || die "doveadm pw failed"
  local tmp
  tmp=$(mktemp)
  while IFS= read -r line; do
    [[ -n $line ]] || continue
    email=$(normalize_email "$line")
    echo "$email:$hash::::::" >>"$tmp"
    n=$((n + 1))
  done
  { awk -F: 'NR == FNR { skip[$1] = 1; next } !($1 in skip)' "$tmp" "$USERS_FILE"; cat "$tmp"; } | write_users
  rm -f "$tmp"
  say "mail: $n users added or updated"
}

cmd_deluser() {
  [[ $# -eq 1 ]] || usage
  local email
  email=$(normalize_email "$1")
  take_lock
  prepare
  local known=0
  awk -F: -v u="$email" '$1 == u { found = 1 } END { exit !found }' "$USERS_FILE" && known=1
  if ((known)); then
    awk -F: -v u="$email" '$1 != u' "$USERS_FILE" | write_users
  fi
  # Close the user's open sessions so nothing writes into the mail dir being removed.
  if dovecot_running; then
    doveadm -c "$DOVECOT_CONF" kick "$email" >/dev/null 2>&1 9>&- || true
  fi
  rm -rf -- "${VMAIL_DIR:?}/${email#*@}/${email%%@*}"
  if ((known)); then say "mail: user $email removed with its mail"; else say "mail: no user $email (nothing to remove)"; fi
}

cmd_reset() {
  take_lock
  prepare
  : | write_users
  if dovecot_running; then
    doveadm -c "$DOVECOT_CONF" kick '*' >/dev/null 2>&1 9>&- || true
  fi
  find "$VMAIL_DIR" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
  # Mail still queued (deferred, held) would be delivered to users created later.
  if [[ -d $PF_QUEUE_DIR/deferred ]]; then
    postsuper -c "$PF_CONF_DIR" -d ALL >/dev/null 2>&1 9>&- || true
  fi
  say "mail: users and mail removed ($MAIL_DIR)"
}

# ---------------------------------------------------------------- main

[[ $# -ge 1 ]] || usage
cmd=$1
shift
case $cmd in
  install) [[ $# -eq 0 ]] || usage; cmd_install ;;
  start) [[ $# -eq 0 ]] || usage; need_installed; cmd_start ;;
  stop) [[ $# -eq 0 ]] || usage; cmd_stop ;;
  status) [[ $# -eq 0 ]] || usage; cmd_status ;;
  reload) [[ $# -eq 0 ]] || usage; need_installed; cmd_reload ;;
  adduser) cmd_adduser "$@" ;;
  addusers) cmd_addusers "$@" ;;
  deluser) cmd_deluser "$@" ;;
  reset) [[ $# -eq 0 ]] || usage; cmd_reset ;;
  *) usage ;;
esac
