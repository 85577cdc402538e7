#!/usr/bin/env bash
# The local stack: Kafka, FerretDB and the mail lab as local processes on 127.0.0.1 (no Docker).
#   stack.sh install [COMPONENT...]   fetch/build what is missing (idempotent, cached in .stack/)
#   stack.sh up [COMPONENT...]        install, then start what is not running
#   stack.sh down [COMPONENT...]      stop (default: all, services first)
#   stack.sh status                   one line per component; exit 0 when all run
# COMPONENT is kafka, ferretdb or mail (default: all three).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"

ALL=(kafka ferretdb mail)
cmd=${1:-status}
shift || true
components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=("${ALL[@]}")
for c in "${components[@]}"; do
  [[ " ${ALL[*]} " == *" $c "* ]] || die "unknown component '$c' (known: ${ALL[*]})"
done

case "$cmd" in
  install)
    for c in "${components[@]}"; do "$HERE/$c.sh" install; done
    ;;
  up)
    for c in "${components[@]}"; do
      "$HERE/$c.sh" install
      "$HERE/$c.sh" start
    done
    ;;
  down)
    if [[ $# -eq 0 && -x "$HERE/services.sh" ]]; then "$HERE/services.sh" stop || true; fi
    for c in "${components[@]}"; do "$HERE/$c.sh" stop; done
    ;;
  status)
    rc=0
    for c in "${components[@]}"; do
      if "$HERE/$c.sh" status >/dev/null 2>&1; then echo "$c: running"; else echo "$c: stopped"; rc=3; fi
    done
    exit $rc
    ;;
  *)
    die "usage: stack.sh {install|up|down|status} [kafka|ferretdb|mail ...]"
    ;;
esac
