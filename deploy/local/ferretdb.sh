#!/usr/bin/env bash
# FerretDB v1 (MongoDB wire protocol, SQLite backend) as a local process on 127.0.0.1:$FERRETDB_PORT.
# Usage: deploy/local/ferretdb.sh {install|start|stop|status|reset}
# The binary is our own small main (deploy/local/ferretdb/) around FerretDB's embeddable package:
# upstream cmd/ferretdb built with `go install` panics on a missing version.txt (FerretDB issue 2982).
set -euo pipefail

# shellcheck source=deploy/local/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

SRC_DIR="$MAILSYNC_REPO/deploy/local/ferretdb"
FDB_DIR="$MAILSYNC_STACK_DIR/ferretdb"
BIN="$FDB_DIR/$FERRETDB_VERSION/ferretdb"
BUILD_LOG="$FDB_DIR/build.log"
DATA_DIR="$FDB_DIR/data"
LOG="$FDB_DIR/ferretdb.log"
PIDFILE="$FDB_DIR/ferretdb.pid"
LOG_LEVEL="${FERRETDB_LOG_LEVEL:-info}"
# Go's collector at GOGC=400 instead of 100: FerretDB allocates per document (BSON -> types -> JSON)
# and with the default spent ~20% of its CPU collecting. 20,000 inserts (CPU seconds of the process):
# message documents 2.6-2.9 -> 2.0-2.3, body documents 1.9 -> 1.2-1.5. A soft memory limit makes it
# collect as often as before once its heap nears 1 GiB (large scans), so memory stays bounded.
FERRETDB_GOGC="${FERRETDB_GOGC:-400}"
FERRETDB_GOMEMLIMIT="${FERRETDB_GOMEMLIMIT:-1GiB}"
START_TIMEOUT=30

# Never let go download another toolchain; go.mod's go directive is the minimum.
export GOTOOLCHAIN=local

# Build-time patch of FerretDB v1.24 (FERRETDB_ID_INDEX_PATCH=0 builds it unpatched): its SQLite backend
# pushes `{_id: <string|ObjectId>}` filters down as `_ferretdb_sjson->'$._id' = ?`, but the unique _id
# index is on `_ferretdb_sjson->"_id"`; SQLite matches index expressions by their text, so every find,
# update and delete by _id scanned the whole table. `->'_id'` is the same JSON value and uses the index
# (measured, 100k docs: find/update/delete by _id 80-400 ms -> ~0.5-1 ms; 10k docs: 9-35 ms -> ~0.5-1 ms).
# Existing data files need nothing: the index is unchanged.
# Second patch, same switch: its SQL wrapper (internal/util/fsql) builds `logger.With(args...)` for every
# statement before calling Debug, and slog's TextHandler formats (quotes) the attributes in With itself,
# whatever the level; for an insert that is the whole JSON of every document, ~25% of FerretDB's CPU.
# The patch only does it when debug logging is on (profiled with pprof: 20k message documents
# 136 -> 102 us each, body documents 121 -> 72 us).
FERRETDB_ID_INDEX_PATCH="${FERRETDB_ID_INDEX_PATCH:-1}"
PATCH_STAMP="$BIN.patch"
PATCH_ID="sqlite-id-index-v1+fsql-debug-log-v1"
((FERRETDB_ID_INDEX_PATCH)) || PATCH_ID="none"

# Binary is current when it is newer than every build input.
binary_current() {
  local f
  [[ -x $BIN ]] || return 1
  for f in main.go go.mod go.sum; do [[ $BIN -nt $SRC_DIR/$f ]] || return 1; done
  # Built with the wanted patch set (a binary from before the patch has no stamp: rebuilt once).
  [[ $PATCH_ID == none && ! -f $PATCH_STAMP ]] && return 0
  [[ -f $PATCH_STAMP && $(cat "$PATCH_STAMP") == "$PATCH_ID" ]]
}

# Build $BIN.tmp from a copy of our main whose go.mod replaces FerretDB by a patched copy of the module.
build_patched() {
  local work="$FDB_DIR/build-$FERRETDB_VERSION" mod_dir target
  rm -rf "$work"
  mkdir -p "$work/main"
  cp "$SRC_DIR/main.go" "$SRC_DIR/go.mod" "$SRC_DIR/go.sum" "$work/main/"
  (cd "$work/main" && go mod download github.com/FerretDB/FerretDB) || return 1
  mod_dir=$(cd "$work/main" && go list -m -f '{{.Dir}}' github.com/FerretDB/FerretDB) || return 1
  cp -r "$mod_dir" "$work/ferretdb"
  chmod -R u+w "$work/ferretdb"
  target="$work/ferretdb/internal/backends/sqlite/metadata/metadata.go"
  sed -i "s|IDColumn = DefaultColumn + \"->'\$._id'\"|IDColumn = DefaultColumn + \"->'_id'\"|" "$target"
  grep -q "IDColumn = DefaultColumn + \"->'_id'\"" "$target" || { echo "patch did not apply to $target"; return 1; }
  # `x.l.With(fields...).DebugContext(...)` -> `if x.l.Enabled(ctx, slog.LevelDebug) { ... }` (12 lines).
  sed -i -E 's/^(\s*)(tx|db)\.l\.With\(fields\.\.\.\)\.DebugContext\((.*)\)$/\1if \2.l.Enabled(ctx, slog.LevelDebug) {\n\1\t\2.l.With(fields...).DebugContext(\3)\n\1}/' \
    "$work/ferretdb/internal/util/fsql/tx.go" "$work/ferretdb/internal/util/fsql/db.go"
  [[ $(cat "$work/ferretdb/internal/util/fsql/"{tx,db}.go | grep -c 'l.Enabled(ctx, slog.LevelDebug)') == 12 ]] ||
    { echo "fsql debug-log patch did not apply"; return 1; }
  (cd "$work/main" && go mod edit -replace "github.com/FerretDB/FerretDB=$work/ferretdb" &&
    go build -trimpath -buildvcs=false -o "$BIN.tmp" .) || return 1
  rm -rf "$work"
}

do_install() {
  if binary_current; then say "ferretdb $FERRETDB_VERSION already built: $BIN"; return 0; fi
  command -v go >/dev/null || die "Go not found; install Go >= 1.24 (https://go.dev/dl/) and re-run '$0 install'"
  # The embedded FerretDB module version must match FERRETDB_VERSION (go.mod pins it).
  grep -q "github.com/FerretDB/FerretDB $FERRETDB_VERSION\$" "$SRC_DIR/go.mod" ||
    die "FERRETDB_VERSION=$FERRETDB_VERSION but $SRC_DIR/go.mod pins another version; run 'go get github.com/FerretDB/FerretDB@$FERRETDB_VERSION && go mod tidy' there"
  mkdir -p "$(dirname "$BIN")"
  say "building ferretdb $FERRETDB_VERSION with $(go env GOVERSION) (first build: about a minute), log: $BUILD_LOG"
  # Build to a temporary name, then rename, so a failed build never leaves a half-written binary.
  if ((FERRETDB_ID_INDEX_PATCH)); then
    if ! build_patched >"$BUILD_LOG" 2>&1; then
      rm -f "$BIN.tmp"
      die "patched ferretdb build failed (FERRETDB_ID_INDEX_PATCH=0 builds it unpatched); see $BUILD_LOG"
    fi
  elif ! (cd "$SRC_DIR" && go build -trimpath -buildvcs=false -o "$BIN.tmp" .) >"$BUILD_LOG" 2>&1; then
    rm -f "$BIN.tmp"
    die "ferretdb build failed (needs Go >= 1.24 and the Go module proxy); see $BUILD_LOG"
  fi
  mv -f "$BIN.tmp" "$BIN"
  if [[ $PATCH_ID == none ]]; then rm -f "$PATCH_STAMP"; else echo "$PATCH_ID" >"$PATCH_STAMP"; fi
  say "built $BIN"
}

# MongoDB `ping` over the wire (OP_MSG {ping: 1, $db: "admin"}) with the Python standard library only.
# Exit 0 when the reply has ok == 1.
wire_ping() {
  python3 - "$FERRETDB_PORT" <<'PY'
import socket, struct, sys

def elem_int(name, v): return b"\x10" + name + b"\x00" + struct.pack("<i", v)
def elem_str(name, v):
    raw = v + b"\x00"
    return b"\x02" + name + b"\x00" + struct.pack("<i", len(raw)) + raw

body = elem_int(b"ping", 1) + elem_str(b"$db", b"admin")
doc = struct.pack("<i", 4 + len(body) + 1) + body + b"\x00"
payload = struct.pack("<I", 0) + b"\x00" + doc            # flagBits, section kind 0, document
msg = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload  # header, opCode OP_MSG
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
        s.sendall(msg)
        buf = b""
        while len(buf) < 4 or len(buf) < struct.unpack("<i", buf[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit(1)
            buf += chunk
except OSError:
    sys.exit(1)
i = buf.find(b"\x01ok\x00")                                 # ok is a double in the reply
sys.exit(0 if i >= 0 and struct.unpack("<d", buf[i + 4:i + 12])[0] == 1.0 else 1)
PY
}

fail_start() {
  say "ferretdb did not become ready; last 20 lines of $LOG:"
  tail -n 20 "$LOG" >&2 || true
  stop_pid "$PIDFILE" ferretdb
  die "$1"
}

do_start() {
  if pid_alive "$PIDFILE"; then say "ferretdb already running (pid $(cat "$PIDFILE"))"; return 0; fi
  rm -f "$PIDFILE"
  binary_current || do_install
  port_free "$FERRETDB_PORT" ||
    die "port 127.0.0.1:$FERRETDB_PORT is already in use; free it or set FERRETDB_PORT to another port"
  mkdir -p "$DATA_DIR"
  [[ -f $LOG ]] && mv -f "$LOG" "$LOG.1"   # keep one previous run's log
  local t0=$SECONDS deadline=$((SECONDS + START_TIMEOUT)) pid ready=0
  # setsid: own session, so the terminal's Ctrl-C/hangup do not reach it; setsid and nohup both exec,
  # so $! is the ferretdb pid.
  GOGC="$FERRETDB_GOGC" GOMEMLIMIT="$FERRETDB_GOMEMLIMIT" setsid nohup "$BIN" -listen-addr "$MAILSYNC_HOST:$FERRETDB_PORT" -sqlite-dir "$DATA_DIR" \
    -log-level "$LOG_LEVEL" >"$LOG" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PIDFILE"
  # Ready = process alive, port open, and a MongoDB ping answers ok (or the listen log line without python3).
  # The deadline is wall-clock time: one ping attempt may itself take up to 2 s.
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || fail_start "ferretdb exited during start-up; see $LOG"
    if (exec 3<>"/dev/tcp/$MAILSYNC_HOST/$FERRETDB_PORT") 2>/dev/null; then
      if command -v python3 >/dev/null; then
        wire_ping && { ready=1; break; }
      elif grep -q "Listening on TCP" "$LOG"; then
        ready=1; break
      fi
    fi
    sleep 0.1
  done
  ((ready)) || fail_start "ferretdb did not answer ping on 127.0.0.1:$FERRETDB_PORT within ${START_TIMEOUT} s; see $LOG"
  say "ferretdb $FERRETDB_VERSION running (pid $pid) at mongodb://$MAILSYNC_HOST:$FERRETDB_PORT/ in $((SECONDS - t0)) s, data $DATA_DIR, log $LOG"
}

do_stop() {
  if ! pid_alive "$PIDFILE"; then rm -f "$PIDFILE"; say "ferretdb not running"; return 0; fi
  stop_pid "$PIDFILE" ferretdb   # TERM (clean shutdown via context cancel), KILL after 30 s
  say "ferretdb stopped"
}

do_status() {
  if pid_alive "$PIDFILE"; then
    echo "ferretdb running (pid $(cat "$PIDFILE")) on $MAILSYNC_HOST:$FERRETDB_PORT"
    return 0
  fi
  echo "ferretdb stopped"
  return 3
}

# Wipe all databases; a running server is stopped first (SQLite files must not vanish under it)
# and started again afterwards.
do_reset() {
  local was_running=0
  if pid_alive "$PIDFILE"; then was_running=1; do_stop; fi
  rm -rf "$DATA_DIR"
  say "ferretdb data wiped: $DATA_DIR"
  if ((was_running)); then do_start; fi
}

case "${1:-}" in
  install) do_install ;;
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  reset) do_reset ;;
  *) echo "usage: $0 {install|start|stop|status|reset}" >&2; exit 2 ;;
esac
