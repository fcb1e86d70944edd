#!/usr/bin/env bash
# Tear down what start.sh WORKDIR started: stop its processes (by the pids it
# recorded, then anything left in its network namespace) and delete the
# namespace. Idempotent. Logs stay in WORKDIR/logs; --purge removes WORKDIR.
#
# Usage: stop.sh WORKDIR [--purge]
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 WORKDIR [--purge]" >&2
  exit 2
fi
WORK=$1
log() { echo "stop.sh: $*" >&2; }
[[ -d $WORK ]] || { log "$WORK does not exist; nothing to do"; exit 0; }

wait_gone() { # seconds pids...
  local deadline=$((SECONDS + $1)) p
  shift
  for p in "$@"; do
    while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  done
}
# One at a time, clients before the apiserver before etcd, so each can shut
# down gracefully (an apiserver whose etcd is already gone hangs on TERM).
for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
  f="$WORK/$name.pid"
  [[ -f $f ]] || continue
  pid=$(cat "$f")
  if kill -TERM "$pid" 2>/dev/null; then
    wait_gone 20 "$pid"
    if kill -KILL "$pid" 2>/dev/null; then
      log "$name (pid $pid) did not exit within 20s of TERM; killed"
    else
      log "stopped $name (pid $pid)"
    fi
  fi
  rm -f "$f"
done

if [[ -f $WORK/netns ]]; then
  ns=$(cat "$WORK/netns")
  # Pod namespaces of the test kubelet (<ns>-p<n>): their processes first.
  mapfile -t podns < <(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$ns-p[0-9]+$" || true)
  for p in "${podns[@]}"; do
    mapfile -t left < <(ip netns pids "$p" 2>/dev/null || true)
    if ((${#left[@]})); then
      kill -KILL "${left[@]}" 2>/dev/null || true
      wait_gone 5 "${left[@]}"
    fi
    ip netns del "$p" || true
  done
  ((${#podns[@]} == 0)) || log "deleted ${#podns[@]} pod network namespaces"
  if ip netns list | awk '{print $1}' | grep -x "$ns" >/dev/null; then
    # anything still running in our namespace was started there by us
    mapfile -t left < <(ip netns pids "$ns" 2>/dev/null || true)
    if ((${#left[@]})); then
      log "killing leftover processes in $ns: ${left[*]}"
      kill -KILL "${left[@]}" 2>/dev/null || true
      wait_gone 5 "${left[@]}"
    fi
    ip netns del "$ns"
    log "deleted network namespace $ns"
  fi
  rm -f "$WORK/netns"
fi
rm -f "$WORK/env"

if [[ ${2:-} == --purge ]]; then
  rm -rf "$WORK"
  log "removed $WORK"
fi
