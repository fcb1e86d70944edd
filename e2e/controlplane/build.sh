#!/usr/bin/env bash
# Build a pinned, genuine Kubernetes control plane from Go modules (no Docker,
# no release downloads; only the Go module proxy): kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes), etcd
# (go.etcd.io/etcd/server/v3) and helm (helm.sh/helm/v3).
#
# Every binary is built from its own wrapper module in modules/<name>/ whose
# committed go.mod + go.sum pin the whole dependency graph; builds use
# -mod=readonly. Results are cached in
#   ${DDUOMQ_E2E_CACHE:-$HOME/.cache/dduomq-e2e}/bin-<key>/
# where <key> names the versions plus a hash of the wrapper modules and build
# recipe. A warm run only checks that all binaries exist.
#
# Usage:
#   build.sh          build (or reuse) binaries; the LAST line of stdout is the bin dir
#   build.sh --print-versions   print K8S_VERSION=, ETCD_VERSION=, HELM_VERSION= lines
#   build.sh --tidy   regenerate modules/*/go.mod and go.sum from the versions below
#                     (only needed after changing a version; commit the result)
#
# The machine is small and shared: every go invocation runs under nice -n 19
# with -p 1.
set -euo pipefail

# ---- pinned versions -------------------------------------------------------
K8S_VERSION=v1.35.4
K8S_STAGING_VERSION=v0.35.4          # k8s.io/* staging modules matching K8S_VERSION
K8S_GO_DIRECTIVE=1.25.0              # as in k8s.io/kubernetes@v1.35.4 go.mod (+ godebug default=go1.25)
# etcd version kubeadm v1.35 deploys (cmd/kubeadm/app/constants DefaultEtcdVersion=3.6.6-0)
ETCD_VERSION=v3.6.6
ETCD_GO_DIRECTIVE=1.24               # as in go.etcd.io/etcd/server/v3@v3.6.6 go.mod
HELM_VERSION=v3.22.0                 # latest helm v3 served by the module proxy
HELM_GO_DIRECTIVE=1.26.0             # as in helm.sh/helm/v3@v3.22.0 go.mod
# buildDate: the k8s.io/kubernetes@v1.35.4 tag time (module proxy .info), so
# builds are reproducible.
K8S_BUILD_DATE=2026-04-15T18:01:22Z
# The module proxy does not expose the git commit of a tag; use an explicit
# all-zero placeholder rather than pretending.
GIT_COMMIT_PLACEHOLDER=0000000000000000000000000000000000000000

# Every module k8s.io/kubernetes@v1.35.4 replaces with ./staging/src/k8s.io/*;
# wrappers map each of them to K8S_STAGING_VERSION.
K8S_STAGING_MODULES=(
  api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
  cloud-provider cluster-bootstrap code-generator component-base
  component-helpers controller-manager cri-api cri-client csi-translation-lib
  dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-cli-plugin
  sample-controller
)
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
BINARIES=("${K8S_BINARIES[@]}" etcd helm)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODULES="$HERE/modules"
CACHE="${DDUOMQ_E2E_CACHE:-$HOME/.cache/dduomq-e2e}"
MODULE_PREFIX=dduomq.local/e2e/controlplane

log() { echo "build.sh: $*" >&2; }

# All go commands: lowest CPU priority, one package at a time.
gocmd() { GOFLAGS=-p=1 nice -n 19 go "$@"; }

# ---- --tidy: (re)generate the wrapper modules' go.mod/go.sum ---------------
write_k8s_gomod() { # name require-line
  local name=$1 req=$2 m
  {
    echo "module $MODULE_PREFIX/$name"
    echo
    echo "go $K8S_GO_DIRECTIVE"
    echo
    echo "godebug default=go${K8S_GO_DIRECTIVE%.*}"
    echo
    echo "require $req"
    echo
    echo "replace ("
    for m in "${K8S_STAGING_MODULES[@]}"; do
      printf '\tk8s.io/%s => k8s.io/%s %s\n' "$m" "$m" "$K8S_STAGING_VERSION"
    done
    echo ")"
  } >"$MODULES/$name/go.mod"
}

tidy() {
  local name
  for name in "${K8S_BINARIES[@]}"; do
    rm -f "$MODULES/$name/go.sum"
    if [[ $name == kubectl ]]; then
      # kubectl's main package lives in the k8s.io/kubectl staging module.
      write_k8s_gomod "$name" "k8s.io/kubectl $K8S_STAGING_VERSION"
    else
      write_k8s_gomod "$name" "k8s.io/kubernetes $K8S_VERSION"
    fi
  done
  rm -f "$MODULES/etcd/go.sum"
  printf 'module %s/etcd\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$MODULE_PREFIX" "$ETCD_GO_DIRECTIVE" "$ETCD_VERSION" >"$MODULES/etcd/go.mod"
  # helm v3's cmd/helm is a main package spread over ~60 files (newRootCmd is
  # not importable), so the wrapper tracks it with a `tool` directive and
  # build() compiles helm.sh/helm/v3/cmd/helm itself.
  rm -f "$MODULES/helm/go.sum"
  printf 'module %s/helm\n\ngo %s\n\nrequire helm.sh/helm/v3 %s\n\ntool helm.sh/helm/v3/cmd/helm\n' \
    "$MODULE_PREFIX" "$HELM_GO_DIRECTIVE" "$HELM_VERSION" >"$MODULES/helm/go.mod"
  for name in "${BINARIES[@]}"; do
    log "go mod tidy in modules/$name"
    (cd "$MODULES/$name" && GOTOOLCHAIN=local gocmd mod tidy)
  done
}

# ---- build ------------------------------------------------------------------
k8s_ldflags() {
  local major=${K8S_VERSION#v}; major=${major%%.*}
  local minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  local f=(-s -w) pkg
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    f+=(-X "$pkg.buildDate=$K8S_BUILD_DATE"
        -X "$pkg.gitCommit=$GIT_COMMIT_PLACEHOLDER"
        -X "$pkg.gitTreeState=clean"
        -X "$pkg.gitVersion=$K8S_VERSION"
        -X "$pkg.gitMajor=$major"
        -X "$pkg.gitMinor=$minor")
  done
  echo "${f[*]}"
}

etcd_ldflags() {
  echo "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${GIT_COMMIT_PLACEHOLDER:0:7}"
}

helm_ldflags() {
  # Like helm's Makefile: k8s version constants derive from the k8s.io/client-go
  # version helm is built against (v0.X.Y -> 1.X).
  local cg major minor
  cg=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$MODULES/helm/go.mod")
  cg=${cg#v}; major=$(( ${cg%%.*} + 1 )); minor=${cg#*.}; minor=${minor%%.*}
  local p=helm.sh/helm/v3
  echo "-s -w -X $p/internal/version.version=$HELM_VERSION -X $p/internal/version.metadata=" \
       "-X $p/internal/version.gitCommit=$GIT_COMMIT_PLACEHOLDER -X $p/internal/version.gitTreeState=clean" \
       "-X $p/pkg/lint/rules.k8sVersionMajor=$major -X $p/pkg/lint/rules.k8sVersionMinor=$minor" \
       "-X $p/pkg/chartutil.k8sVersionMajor=$major -X $p/pkg/chartutil.k8sVersionMinor=$minor"
}

# Prints: <package> <tags> <ldflags...>
recipe() {
  case $1 in
    kube-*|kubectl) echo ". selinux,notest,grpcnotrace $(k8s_ldflags)" ;;  # as hack/lib/golang.sh
    etcd) echo ". - $(etcd_ldflags)" ;;
    helm) echo "helm.sh/helm/v3/cmd/helm - $(helm_ldflags)" ;;
  esac
}

cache_key() {
  local goversion name
  goversion=$(cd "$HERE" && GOTOOLCHAIN=local go env GOVERSION)
  {
    echo "$goversion"
    for name in "${BINARIES[@]}"; do
      echo "== $name $(recipe "$name")"
      cat "$MODULES/$name/go.mod" "$MODULES/$name/go.sum"
      [[ ! -f $MODULES/$name/main.go ]] || cat "$MODULES/$name/main.go"
    done
  } | sha256sum | cut -c1-12
}

verify_version() { # name binary
  local out want
  case $1 in
    kubectl) out=$("$2" version --client 2>&1); want="Client Version: $K8S_VERSION" ;;
    kube-*) out=$("$2" --version 2>&1); want="Kubernetes $K8S_VERSION" ;;
    etcd) out=$("$2" --version 2>&1); want="etcd Version: ${ETCD_VERSION#v}" ;;
    helm) out=$("$2" version --short 2>&1); want="$HELM_VERSION" ;;
  esac
  if [[ $out != *"$want"* ]]; then
    log "ERROR: $1 --version printed '$out', expected '$want'"
    return 1
  fi
}

build_one() { # name outdir
  local name=$1 out=$2 pkg tags ldflags start
  read -r pkg tags ldflags <<<"$(recipe "$name")"
  [[ $tags != - ]] || tags=""
  log "building $name ..."
  start=$SECONDS
  (
    cd "$MODULES/$name"
    CGO_ENABLED=0 GOTOOLCHAIN=local gocmd build -p 1 -mod=readonly -trimpath -buildvcs=false \
      -tags "$tags" -ldflags "$ldflags" -o "$out/.$name.tmp" "$pkg"
  )
  verify_version "$name" "$out/.$name.tmp"
  mv -f "$out/.$name.tmp" "$out/$name"
  log "built $name in $((SECONDS - start))s"
  echo "$name $((SECONDS - start))s $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$out/build-times.txt"
}

main() {
  if [[ ${1:-} == --print-versions ]]; then
    printf 'K8S_VERSION=%s\nETCD_VERSION=%s\nHELM_VERSION=%s\n' "$K8S_VERSION" "$ETCD_VERSION" "$HELM_VERSION"
    return 0
  fi
  if [[ ${1:-} == --tidy ]]; then
    tidy
    log "regenerated modules/*/go.mod and go.sum"
    return 0
  fi
  local key bindir name missing=()
  key="k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-$(cache_key)"
  bindir="$CACHE/bin-$key"
  for name in "${BINARIES[@]}"; do [[ -x $bindir/$name ]] || missing+=("$name"); done
  if ((${#missing[@]})); then
    mkdir -p "$bindir"
    # Serialise concurrent builders of the same cache.
    exec 9>"$CACHE/.build.lock"
    flock 9
    local total=$SECONDS
    for name in "${missing[@]}"; do
      [[ -x $bindir/$name ]] || build_one "$name" "$bindir"
    done
    log "all binaries built in $((SECONDS - total))s"
    exec 9>&-
  else
    log "cached: $bindir"
  fi
  echo "$bindir"
}

main "$@"; exit $?  # (exit on the same line: safe to edit this file while it runs)
