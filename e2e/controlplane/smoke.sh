#!/usr/bin/env bash
# Smoke test: build (or reuse cached) binaries, start the control plane in a
# private network namespace, talk to it with kubectl and helm from inside the
# namespace, tear down. Needs root.
#   DDUOMQ_E2E_CONTROLLERS=0   skip kube-controller-manager/kube-scheduler (default 1)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "smoke.sh: $*" >&2; }

BIN=$("$HERE/build.sh" | tail -n 1)
# shellcheck source=/dev/null
. <("$HERE/build.sh" --print-versions)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dduomq-e2e-smoke.XXXXXX")
passed=0
finish() {
  local rc=$?
  if ((rc == 0)); then
    "$HERE/stop.sh" "$WORK" --purge || rc=$?
  else
    "$HERE/stop.sh" "$WORK" || true
    log "FAILED (rc=$rc); logs kept in $WORK/logs"
  fi
  echo "smoke: $passed passed, $((rc == 0 ? 0 : 1)) failed"
  exit "$rc"
}
trap finish EXIT

export DDUOMQ_E2E_CONTROLLERS="${DDUOMQ_E2E_CONTROLLERS:-1}"
"$HERE/start.sh" "$WORK" "$BIN"
# shellcheck source=/dev/null
. "$WORK/env"

# every client runs inside the namespace
k() { ip netns exec "$NETNS" "$BIN/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }
step() { log "\$ kubectl $*"; k "$@"; passed=$((passed + 1)); }

step version
v=$(k get --raw /version)
echo "$v"
grep -q "\"gitVersion\": *\"$K8S_VERSION\"" <<<"$v" || { log "/version is not $K8S_VERSION"; exit 1; }
passed=$((passed + 1))
step create namespace x
step get ns
k get ns x -o name | grep -x namespace/x >/dev/null
passed=$((passed + 1))

if [[ $DDUOMQ_E2E_CONTROLLERS == 1 ]]; then
  # kube-controller-manager's serviceaccount controller creates x/default
  log "waiting for serviceaccount x/default (kube-controller-manager)"
  for _ in $(seq 60); do
    k -n x get serviceaccount default -o name >/dev/null 2>&1 && break
    sleep 1
  done
  step -n x get serviceaccount default
fi

log "\$ helm list -A"
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"
"$BIN/helm" version
ip netns exec "$NETNS" "$BIN/helm" --kubeconfig "$KUBECONFIG" list -A
passed=$((passed + 1))

log "PASS"
