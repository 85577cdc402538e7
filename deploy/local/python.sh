#!/usr/bin/env bash
# Installs the Python side: uv (pinned, from PyPI) and the locked dependencies into .venv.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

UV_VERSION="${UV_VERSION:-0.13.9}"
PYTHON="${PYTHON:-python3}"

command -v "$PYTHON" >/dev/null || die "python3 not found; install Python 3.11+ (apt-get install python3) or set PYTHON"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11+ is required, found $("$PYTHON" --version 2>&1); set PYTHON to a newer interpreter"

uv_bin() {
  if command -v uv >/dev/null && [[ "$(uv --version 2>/dev/null)" == "uv $UV_VERSION"* ]]; then
    command -v uv
  elif [[ -x "$MAILSYNC_STACK_DIR/uv/bin/uv" ]]; then
    echo "$MAILSYNC_STACK_DIR/uv/bin/uv"
  else
    return 1
  fi
}

UV=$(uv_bin) || {
  mkdir -p "$MAILSYNC_STACK_DIR/uv"
  say "installing uv $UV_VERSION"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --prefix "$MAILSYNC_STACK_DIR/uv" "uv==$UV_VERSION" \
    >"$MAILSYNC_STACK_DIR/uv/install.log" 2>&1 \
    || die "could not install uv from PyPI; see $MAILSYNC_STACK_DIR/uv/install.log"
  UV="$MAILSYNC_STACK_DIR/uv/bin/uv"
}

mkdir -p "$MAILSYNC_STACK_DIR"
cd "$MAILSYNC_REPO"
"$UV" sync --frozen --quiet --python "$PYTHON" --extra testcontainers --extra otlp 2>"$MAILSYNC_STACK_DIR/uv-sync.log" \
  || die "uv sync failed (is uv.lock in step with pyproject.toml? run 'uv lock'); see $MAILSYNC_STACK_DIR/uv-sync.log"
