#!/usr/bin/env bash
# `make run`: install what is missing, start the stack and the four services, seed the demo.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
start=$(date +%s.%N)

"$HERE/python.sh"
"$HERE/stack.sh" up
cd "$MAILSYNC_REPO"
export MAILSYNC_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT" MAILSYNC_MONGO_URI="mongodb://127.0.0.1:$FERRETDB_PORT/"
.venv/bin/mailsync topics apply >/dev/null || die "could not create the Kafka topics; see .stack/kafka/logs/server.log"
"$HERE/mail.sh" adduser "demo@$MAIL_DOMAIN" "demo-password" >/dev/null
# The operator console (/console on the fetcher) without a login: only this local demo turns it off.
export MAILSYNC_FETCHER_CONSOLE_AUTH="${MAILSYNC_FETCHER_CONSOLE_AUTH:-false}"
export MAILSYNC_FETCHER_CONSOLE_LOCAL_TENANT="${MAILSYNC_FETCHER_CONSOLE_LOCAL_TENANT:-demo}"
"$HERE/services.sh" start
# The demo inbox goes through onboarding like any user's: connection test, encrypted password, sync.
onboard=(.venv/bin/python -m services.fetcher.onboarding --url "http://127.0.0.1:${FETCHER_HTTP_PORT:-38081}" --tenant demo)
if ! "${onboard[@]}" show --inbox-id demo-inbox >/dev/null 2>&1; then
  DEMO_PASSWORD=demo-password "${onboard[@]}" add --owner demo-user --inbox-id demo-inbox \
    --email "demo@$MAIL_DOMAIN" --imap "127.0.0.1:$IMAPS_PORT:tls" --smtp "127.0.0.1:$SUBMISSIONS_PORT:tls" \
    --password-env DEMO_PASSWORD >"$MAILSYNC_STACK_DIR/services/demo-onboarding.log" 2>&1 \
    || die "onboarding the demo inbox failed; see $MAILSYNC_STACK_DIR/services/demo-onboarding.log"
fi
.venv/bin/python "$HERE/demo_seed.py"

elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
cat <<INFO

mailsync is running (started in ${elapsed} s). Everything listens on 127.0.0.1 only.

  Kafka       127.0.0.1:$KAFKA_PORT      tail events:  .venv/bin/mailsync tail --from-beginning
  FerretDB    mongodb://127.0.0.1:$FERRETDB_PORT/   (database "mailsync")
  IMAP        127.0.0.1:$IMAPS_PORT (TLS), :$IMAP_PORT (STARTTLS)   demo login: demo@$MAIL_DOMAIN / demo-password
  SMTP        127.0.0.1:$SUBMISSIONS_PORT (TLS), :$SUBMISSION_PORT (STARTTLS), inbound MTA :$SMTP_PORT
  Console     http://127.0.0.1:${FETCHER_HTTP_PORT:-38081}/console   (operator console, tenant "demo", no login locally)
  Services    fetcher :38081  linker :38082  sender :38083  janitor :38084   (GET /healthz, /readyz)
  Logs        .stack/services/<service>.log (JSON), .stack/kafka/logs, .stack/ferretdb, .stack/mail

Stop everything with: make stop
INFO
