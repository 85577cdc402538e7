#!/usr/bin/env bash
# Validates the deployment files with pinned tools (installed by deploy/tools.sh):
#   hadolint on deploy/docker/*.Dockerfile;
#   helm lint and helm template of deploy/helm/mailsync with the default values and with every
#   deploy/helm/mailsync/ci/*-values.yaml, each rendering piped through kubeconform -strict
#   (Kubernetes schemas for K8S_SCHEMA_VERSION, our strict schemas for the ServiceMonitor and
#   ScaledObject kinds in deploy/helm/crd-schemas). Fails on any error or warning.
# Writes the renderings to $MAILSYNC_STACK_DIR/tools/rendered/<values>.yaml for inspection.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=local/env.sh
source "$HERE/local/env.sh"
K8S_SCHEMA_VERSION="${K8S_SCHEMA_VERSION:-1.33.0}"
export K8S_SCHEMA_VERSION

"$HERE/tools.sh" install
BIN=$("$HERE/tools.sh" bin)
SCHEMAS=$("$HERE/tools.sh" schemas)
CHART="$HERE/helm/mailsync"
OUT="$MAILSYNC_STACK_DIR/tools/rendered"
mkdir -p "$OUT"

say "hadolint $(echo "$HERE"/docker/*.Dockerfile | wc -w) Dockerfiles"
"$BIN/hadolint" --failure-threshold warning "$HERE"/docker/*.Dockerfile

render() { # name [values file]
  local name=$1 args=()
  [[ -n ${2:-} ]] && args=(-f "$2")
  "$BIN/helm" lint --strict "$CHART" "${args[@]}"
  "$BIN/helm" template mailsync "$CHART" --namespace mailsync "${args[@]}" >"$OUT/$name.yaml"
  "$BIN/kubeconform" -strict -summary -kubernetes-version "$K8S_SCHEMA_VERSION" \
    -schema-location "$SCHEMAS" \
    -schema-location "$HERE/helm/crd-schemas/{{.ResourceKind}}{{.KindSuffix}}.json" \
    "$OUT/$name.yaml"
}

render default
for values in "$CHART"/ci/*-values.yaml; do
  render "$(basename "$values" .yaml)" "$values"
done
say "deployment files OK (renderings in $OUT)"
