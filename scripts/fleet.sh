#!/usr/bin/env bash
# A local fleet on this machine: every node of the fleet file
# (default cluster-configs/local-3.toml, three nodes; FLEET_CONFIG picks
# another, e.g. cluster-configs/local-5.toml).
#
#   ./scripts/fleet.sh up      install what is missing, build, provision
#                              (`vaultctl fleet provision`: one SoftHSM
#                              token per node, the fleet KEK made on the
#                              first node and copied by ceremony, an
#                              operator token, the fleet's certificates),
#                              start a local witness and every node,
#                              initialize the fleet and publish its keys
#                              (epoch 1) on first start, wait for a leader
#                              and print the status. On a running or
#                              stopped fleet: restart it, keeping data.
#   ./scripts/fleet.sh start   start the witness and nodes that are not running (no
#                              build, no provisioning; e.g. after a kill)
#   ./scripts/fleet.sh down    stop the nodes and the witness (SIGTERM;
#                              SIGKILL after 15 s)
#   ./scripts/fleet.sh status  the fleet's status (vaultctl cluster status)
#   ./scripts/fleet.sh logs    the last lines of every node's log
#   ./scripts/fleet.sh clean   stop the nodes and delete the fleet directory
#
# BKV_NO_BUILD=1 skips the install and build steps of `up` and uses the
# binaries already in $CARGO_TARGET_DIR/debug (tests/scripts.rs does, from
# inside `cargo test`).
#
# VAULT_NODE=/path/to/vault-node starts the nodes from another build of the
# node (for A/B comparisons: scripts/compare.sh); its path must contain
# "vault-node".
#
# State lives in one directory, .fleet/ (override with FLEET_DIR): hsm/
# (SoftHSM token dirs, one per node and hsm/operator), secrets/ (PIN files,
# mode 600), pki/ (CAs, node, operator and frontend certificates),
# witness/ (the witness's key, TLS material and log), pins.json (the
# witness and operator public keys that apps pin), node-N/data (RocksDB),
# node-N.log, node-N.pid, witness.log, witness.pid.
#
# Exit codes: 0 done; 1 a step failed; 2 bad usage.
#
# Nodes run from one fleet directory per fleet file: give FLEET_DIR too
# when switching FLEET_CONFIG, or the new file meets the old tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

FLEET_DIR="${FLEET_DIR:-$PWD/.fleet}"
FLEET_CONFIG="${FLEET_CONFIG:-$PWD/cluster-configs/local-3.toml}"
BIN="$CARGO_TARGET_DIR/debug"
NODE_BIN="${VAULT_NODE:-$BIN/vault-node}"
export BKV_FLEET_DIR="$FLEET_DIR" BKV_FLEET_CONFIG="$FLEET_CONFIG"

usage() { sed -n '2,42p' "$0" | sed 's/^# \{0,1\}//'; }
WITNESS_ADDR="${WITNESS_ADDR:-127.0.0.1:7400}"
export BKV_WITNESS="$WITNESS_ADDR"

build() {
  if [ "${BKV_NO_BUILD:-}" = 1 ]; then
    bkv_log "BKV_NO_BUILD=1: using the binaries in $BIN"
    return 0
  fi
  bkv_ensure_packages
  bkv_log "building (target dir $CARGO_TARGET_DIR; the first build compiles RocksDB, ~20 min on 2 cores)"
  # The same profile and selection as test.sh, so both reuse one build.
  cargo build --locked --workspace --all-targets
}

# The fleet file's node ids (validated by vaultctl), into NODES.
read_nodes() {
  local ids
  ids=$("$BIN/vaultctl" fleet nodes) || { echo "cannot read the fleet file $FLEET_CONFIG" >&2; exit 1; }
  mapfile -t NODES <<<"$ids"
}

# The local witness (its key and log) and pins.json, the witness and
# operator public keys that apps pin. The witness is another party's in a
# deployment; here it is provisioned beside the fleet.
provision_witness() {
  local witness_key operator_key
  witness_key=$("$BIN/vault-witness" init --dir "$FLEET_DIR/witness")
  operator_key=$("$BIN/vaultctl" hsm operator-key --softhsm-dir "$FLEET_DIR/hsm/operator" --label operator \
    --user-pin-file "$FLEET_DIR/secrets/operator.user.pin")
  printf '{\n  "witness_key": "%s",\n  "operator_key": "%s"\n}\n' \
    "$witness_key" "$operator_key" > "$FLEET_DIR/pins.json.tmp"
  mv "$FLEET_DIR/pins.json.tmp" "$FLEET_DIR/pins.json"
}

# The pid in pid file $1 if that process runs program $2 (pids get reused).
pid_from() {
  [ -f "$1" ] || return 1
  local pid
  pid=$(cat "$1")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "$2" || return 1
  echo "$pid"
}

witness_pid() { pid_from "$FLEET_DIR/witness.pid" vault-witness; }

start_witness() {
  if pid=$(witness_pid); then
    bkv_log "witness: running already (pid $pid)"
    return 0
  fi
  setsid "$BIN/vault-witness" serve --dir "$FLEET_DIR/witness" --listen "$WITNESS_ADDR" \
    --operator-ca "$FLEET_DIR/pki/fleet-ca.pem" >>"$FLEET_DIR/witness.log" 2>&1 < /dev/null &
  echo $! > "$FLEET_DIR/witness.pid"
  bkv_log "witness: started (pid $!, $WITNESS_ADDR, log $FLEET_DIR/witness.log)"
}

pid_of() { pid_from "$FLEET_DIR/node-$1.pid" vault-node; }

down() {
  local pids=()
  if pid=$(witness_pid); then
    bkv_log "witness: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
  fi
  rm -f "$FLEET_DIR/witness.pid"
  # Every node this directory started (its pid file), whatever the fleet
  # file says now.
  local f n
  for f in "$FLEET_DIR"/node-*.pid; do
    [ -e "$f" ] || continue
    n=${f##*/node-}; n=${n%.pid}
    if pid=$(pid_of "$n"); then
      bkv_log "node-$n: stopping (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$FLEET_DIR/node-$n.pid"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      bkv_log "pid $pid did not stop in 15 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

start_nodes() {
  for n in "${NODES[@]}"; do
    if pid=$(pid_of "$n"); then
      bkv_log "node-$n: running already (pid $pid)"
      continue
    fi
    mkdir -p "$FLEET_DIR/node-$n"
    setsid "$NODE_BIN" --node-id "$n" >>"$FLEET_DIR/node-$n.log" 2>&1 < /dev/null &
    echo $! > "$FLEET_DIR/node-$n.pid"
    bkv_log "node-$n: started (pid $!, log $FLEET_DIR/node-$n.log)"
  done
  sleep 1
  for n in "${NODES[@]}"; do
    if ! pid_of "$n" >/dev/null; then
      echo "node-$n exited at once; its log ends:" >&2
      tail -n 20 "$FLEET_DIR/node-$n.log" >&2
      down
      exit 1
    fi
  done
}

up() {
  build
  read_nodes
  bkv_log "provisioning tokens, PINs and certificates (kept if they exist)"
  "$BIN/vaultctl" fleet provision --frontend local
  provision_witness
  down
  start_witness
  start_nodes
  bkv_log "initializing the fleet (a no-op if it is initialized)"
  "$BIN/vaultctl" cluster init --wait 60
  bkv_log "waiting for one leader and equal applied indexes"
  "$BIN/vaultctl" cluster status --wait-converged 60
  bkv_log "publishing the fleet's keys through the witness (a no-op if published)"
  "$BIN/vaultctl" fleet publish-keys --if-missing
  cat <<EOT

The fleet is up (${#NODES[@]} nodes of $FLEET_CONFIG). Its state is in $FLEET_DIR.
  status:        $BIN/vaultctl cluster status [--json]   (or ./scripts/fleet.sh status; it lists every address)
  metrics:       curl http://<metrics_addr>/metrics   (/ready, /live; addresses in the fleet file)
  frontend API:  the nodes' frontend_addr, mutual TLS: CA $FLEET_DIR/pki/fleet-ca.pem,
                 client certificate $FLEET_DIR/pki/frontend-local.pem (+ .key)
  witness:       $WITNESS_ADDR (CA $FLEET_DIR/witness/tls/ca.pem); pins: $FLEET_DIR/pins.json
  audit:         $BIN/vaultctl audit   (see README, "How to audit a fleet")
  stop:          ./scripts/fleet.sh down
EOT
}

case "${1:-}" in
  up) up ;;
  start) read_nodes; start_witness; start_nodes; "$BIN/vaultctl" cluster status --wait-converged 60 ;;
  down) down ;;
  status) "$BIN/vaultctl" cluster status "${@:2}" ;;
  logs) echo "--- witness ($FLEET_DIR/witness.log)"; tail -n "${LINES:-40}" "$FLEET_DIR/witness.log" 2>/dev/null || true
        for f in "$FLEET_DIR"/node-*.log; do [ -e "$f" ] || continue; n=${f##*/node-}; n=${n%.log}; echo "--- node-$n ($FLEET_DIR/node-$n.log)"; tail -n "${LINES:-40}" "$FLEET_DIR/node-$n.log" 2>/dev/null || true; done ;;
  clean) down; rm -rf "$FLEET_DIR"; bkv_log "removed $FLEET_DIR" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
