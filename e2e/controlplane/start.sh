#!/usr/bin/env bash
# Start etcd + kube-apiserver (and optionally kube-controller-manager and
# kube-scheduler) inside a private network namespace.
#
# Usage: start.sh WORKDIR BINDIR
#   WORKDIR  scratch dir (created); receives pki/, etcd data, logs/, pids,
#            admin.kubeconfig and env (shell-sourceable: NETNS, KUBECONFIG, ...)
#   BINDIR   output of build.sh
# Env:
#   DDUOMQ_E2E_CONTROLLERS=1   also start kube-controller-manager + kube-scheduler
#   DDUOMQ_E2E_READY_TIMEOUT   seconds to wait for /readyz (default 180)
#
# Network: the namespace "dduomq-e2e-<pid>" has only `lo` and a dummy
# interface dduomq0 (a port-less bridge where the kernel lacks the dummy
# driver) with 10.244.0.1/24. etcd listens on 127.0.0.1 inside the
# namespace, the apiserver on 10.244.0.1:6443. Nothing is reachable from or
# routed to the host network. Run clients with
#   ip netns exec "$NETNS" kubectl --kubeconfig "$KUBECONFIG" ...
# Tear down with stop.sh WORKDIR (start.sh does so itself if it fails).
# Needs root (ip netns).
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 WORKDIR BINDIR" >&2
  exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
WORK="$(cd "$1" && pwd)"
BIN="$(cd "$2" && pwd)"
NETNS="dduomq-e2e-$$"
ADDR=10.244.0.1
PORT=6443
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
READY_TIMEOUT="${DDUOMQ_E2E_READY_TIMEOUT:-180}"
PKI="$WORK/pki"
LOGS="$WORK/logs"

log() { echo "start.sh: $*" >&2; }

for b in etcd kube-apiserver kubectl; do
  [[ -x $BIN/$b ]] || { log "missing $BIN/$b (run build.sh)"; exit 1; }
done
if [[ -e $WORK/netns ]]; then
  log "$WORK already holds a running control plane ($(cat "$WORK/netns")); run stop.sh first"
  exit 1
fi
command -v openssl >/dev/null || { log "openssl not found"; exit 1; }

ok=0
cleanup_on_failure() {
  if [[ $ok != 1 ]]; then
    log "start failed; logs in $LOGS; tearing down"
    for f in "$LOGS"/*.log; do
      [[ -f $f ]] || continue
      echo "---- tail $f" >&2
      tail -n 20 "$f" >&2
    done
    "$HERE/stop.sh" "$WORK" || true
  fi
}
trap cleanup_on_failure EXIT

mkdir -p "$PKI" "$LOGS" "$WORK/etcd"
chmod 700 "$WORK/etcd" "$PKI"

# ---- network namespace ------------------------------------------------------
ip netns add "$NETNS"
echo "$NETNS" >"$WORK/netns"
ip -n "$NETNS" link set lo up
# A dummy interface carries the address; kernels without the dummy driver
# (e.g. some VMs: "Unknown device type") get a bridge without ports instead,
# which behaves the same here (local address, nothing attached).
IFTYPE=dummy
if ! ip -n "$NETNS" link add dduomq0 type dummy 2>/dev/null; then
  IFTYPE=bridge
  ip -n "$NETNS" link add dduomq0 type bridge
fi
ip -n "$NETNS" addr add "$ADDR/24" dev dduomq0
ip -n "$NETNS" link set dduomq0 up
log "network namespace $NETNS: lo + dduomq0 ($IFTYPE) $ADDR/24"

# ---- PKI --------------------------------------------------------------------
ossl() { openssl "$@" 2>/dev/null; }
# new_ca NAME CN
new_ca() {
  ossl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 \
    -keyout "$PKI/$1.key" -out "$PKI/$1.crt" -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyCertSign,cRLSign"
}
new_ca ca dduomq-e2e-ca
# front-proxy CA (request-header authn, as kubeadm sets up); without it
# controller-manager/scheduler log "missing content for CA bundle" forever.
new_ca front-proxy-ca dduomq-e2e-front-proxy-ca

# issue NAME SUBJECT EXTENSIONS... (signed by $CA, default "ca")
issue() {
  local name=$1 subj=$2 ca=${CA:-ca} ext
  shift 2
  ext="$PKI/$name.ext"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "$@" >"$ext"
  ossl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj"
  ossl x509 -req -sha256 -days 30 -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -CAcreateserial -extfile "$ext" -out "$PKI/$name.crt"
  rm -f "$PKI/$name.csr" "$ext"
}
SERVER_EXT=("keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth")
CLIENT_EXT=("keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth")
issue apiserver "/CN=kube-apiserver" "${SERVER_EXT[@]}" \
  "subjectAltName=IP:$ADDR,IP:127.0.0.1,IP:$SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
issue admin "/O=system:masters/CN=dduomq-e2e-admin" "${CLIENT_EXT[@]}"
issue controller-manager "/CN=system:kube-controller-manager" "${CLIENT_EXT[@]}"
issue scheduler "/CN=system:kube-scheduler" "${CLIENT_EXT[@]}"
CA=front-proxy-ca issue front-proxy-client "/CN=front-proxy-client" "${CLIENT_EXT[@]}"
# service-account token signing key pair
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key"
ossl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
chmod 600 "$PKI"/*.key
log "PKI generated in $PKI"

# kubeconfig NAME USER -> $WORK/NAME.kubeconfig (certs embedded)
kubeconfig() {
  local kc="$WORK/$1.kubeconfig"
  local k=("$BIN/kubectl" --kubeconfig "$kc")
  "${k[@]}" config set-cluster dduomq-e2e --server "https://$ADDR:$PORT" \
    --certificate-authority "$PKI/ca.crt" --embed-certs=true >/dev/null
  "${k[@]}" config set-credentials "$2" --client-certificate "$PKI/$1.crt" \
    --client-key "$PKI/$1.key" --embed-certs=true >/dev/null
  "${k[@]}" config set-context dduomq-e2e --cluster dduomq-e2e --user "$2" >/dev/null
  "${k[@]}" config use-context dduomq-e2e >/dev/null
  chmod 600 "$kc"
}
kubeconfig admin dduomq-e2e-admin
kubeconfig controller-manager system:kube-controller-manager
kubeconfig scheduler system:kube-scheduler

# ---- processes ----------------------------------------------------------------
# run NAME ARGS...: start inside the netns, own session, pid in $WORK/NAME.pid
run() {
  local name=$1
  shift
  ip netns exec "$NETNS" setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 &
  echo $! >"$WORK/$name.pid"
  log "started $name (pid $!)"
}
alive() { kill -0 "$(cat "$WORK/$1.pid")" 2>/dev/null; }

run etcd "$BIN/etcd" \
  --name dduomq-e2e \
  --data-dir "$WORK/etcd" \
  --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 \
  --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster dduomq-e2e=http://127.0.0.1:2380 \
  --listen-metrics-urls http://127.0.0.1:2381 \
  --unsafe-no-fsync=true

run kube-apiserver "$BIN/kube-apiserver" \
  --advertise-address "$ADDR" \
  --bind-address "$ADDR" \
  --secure-port "$PORT" \
  --etcd-servers http://127.0.0.1:2379 \
  --client-ca-file "$PKI/ca.crt" \
  --tls-cert-file "$PKI/apiserver.crt" \
  --tls-private-key-file "$PKI/apiserver.key" \
  --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" \
  --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User \
  --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
  --proxy-client-key-file "$PKI/front-proxy-client.key" \
  --allow-privileged=true \
  --profiling=false

KUBECONFIG="$WORK/admin.kubeconfig"
kctl() { ip netns exec "$NETNS" "$BIN/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }

start=$SECONDS
until out=$(kctl get --raw /readyz 2>&1) && [[ $out == ok ]]; do
  for p in etcd kube-apiserver; do
    alive "$p" || { log "$p exited"; exit 1; }
  done
  if ((SECONDS - start > READY_TIMEOUT)); then
    log "apiserver not ready after ${READY_TIMEOUT}s: $out"
    kctl get --raw '/readyz?verbose' >&2 || true
    exit 1
  fi
  sleep 1
done
log "kube-apiserver ready after $((SECONDS - start))s"

if [[ ${DDUOMQ_E2E_CONTROLLERS:-0} == 1 ]]; then
  for b in kube-controller-manager kube-scheduler; do
    [[ -x $BIN/$b ]] || { log "missing $BIN/$b"; exit 1; }
  done
  run kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$WORK/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$WORK/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$WORK/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" \
    --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR"
  run kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$WORK/scheduler.kubeconfig" \
    --authentication-kubeconfig "$WORK/scheduler.kubeconfig" \
    --authorization-kubeconfig "$WORK/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 \
    --leader-elect=false
  # healthz of both, over loopback inside the namespace
  start=$SECONDS
  for hp in kube-controller-manager:10257 kube-scheduler:10259; do
    until ip netns exec "$NETNS" curl -fsk "https://127.0.0.1:${hp#*:}/healthz" >/dev/null 2>&1; do
      alive "${hp%%:*}" || { log "${hp%%:*} exited"; exit 1; }
      ((SECONDS - start <= READY_TIMEOUT)) || { log "${hp%%:*} not healthy"; exit 1; }
      sleep 1
    done
    log "${hp%%:*} healthy"
  done
fi

cat >"$WORK/env" <<EOF
NETNS=$NETNS
KUBECONFIG=$KUBECONFIG
APISERVER=https://$ADDR:$PORT
BINDIR=$BIN
EOF
ok=1
log "control plane up; source $WORK/env; stop with $HERE/stop.sh $WORK"
