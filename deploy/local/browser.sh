#!/usr/bin/env bash
# Headless Chromium for the operator console's end-to-end tests: Debian's `chromium` package
# (Playwright drives it through executable_path; no browser download). Idempotent: a no-op once
# the binary exists. Prints the binary's path on stdout.
#
#   deploy/local/browser.sh            install if missing, print the path
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

find_chromium() { command -v chromium || command -v chromium-browser || true; }

bin=$(find_chromium)
if [[ -z $bin ]]; then
  command -v apt-get >/dev/null || die "chromium not found and no apt-get: install Chromium by hand"
  [[ $(id -u) -eq 0 ]] || die "chromium not found: run 'sudo deploy/local/browser.sh' (apt-get install chromium)"
  mkdir -p "$MAILSYNC_STACK_DIR"
  log="$MAILSYNC_STACK_DIR/browser-apt.log"
  say "browser: installing Debian's chromium with apt (once; log: $log)"
  # No daemons come with chromium, but keep invoke-rc.d quiet all the same on systemd-less machines.
  if ! apt-cache policy chromium 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -o DPkg::Lock::Timeout=300 >"$log" 2>&1 || true
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=300 chromium fonts-liberation >>"$log" 2>&1; then
    apt-get update -o DPkg::Lock::Timeout=300 >>"$log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o DPkg::Lock::Timeout=300 chromium fonts-liberation >>"$log" 2>&1 \
      || die "apt-get install chromium failed: $(grep -E '^E:' "$log" | tail -n 1) (full log: $log)"
  fi
  bin=$(find_chromium)
  [[ -n $bin ]] || die "chromium installed but no binary on PATH (see $log)"
fi
echo "$bin"
