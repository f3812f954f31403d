#!/usr/bin/env bash
# A local fleet on this machine.
#
#   ./scripts/fleet.sh up      install what is missing, build, provision one
#                              SoftHSM token per node (fleet KEK copied from
#                              node 1 by ceremony), then start the nodes
#   ./scripts/fleet.sh clean   delete the local fleet's state (.fleet/)
#
# State lives in .fleet/ (override with FLEET_DIR): one SoftHSM directory per
# node under hsm/, PIN files (mode 600) under secrets/.
#
# Exit codes: 0 done; 1 a step failed; 2 bad usage; 3 the HSMs are ready but
# the vault nodes cannot start yet (the node binary is not built yet).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

FLEET_DIR="${FLEET_DIR:-$PWD/.fleet}"
NODES=(1 2 3)

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

new_pin() {
  local path=$1
  [ -s "$path" ] && return 0
  (umask 077; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$path")
}

up() {
  bkv_ensure_packages
  bkv_log "building the workspace (target dir $CARGO_TARGET_DIR; the first build compiles RocksDB, ~20 min on 2 cores)"
  # The same selection as test.sh, so both reuse one build (see test.sh).
  cargo build --locked --workspace --all-targets
  local vaultctl="$CARGO_TARGET_DIR/debug/vaultctl"
  mkdir -p "$FLEET_DIR/hsm" "$FLEET_DIR/secrets"
  chmod 700 "$FLEET_DIR/secrets"
  for n in "${NODES[@]}"; do
    new_pin "$FLEET_DIR/secrets/node-$n.so.pin"
    new_pin "$FLEET_DIR/secrets/node-$n.user.pin"
    local dir="$FLEET_DIR/hsm/node-$n"
    if [ -d "$dir/tokens" ] && [ -n "$(ls -A "$dir/tokens")" ]; then
      bkv_log "node-$n: HSM token exists, keeping it"
      continue
    fi
    local kek=()
    [ "$n" = 1 ] && kek=(--kek)
    bkv_log "node-$n: provisioning its HSM token"
    "$vaultctl" hsm init --softhsm-dir "$dir" --label "node-$n" \
      --so-pin-file "$FLEET_DIR/secrets/node-$n.so.pin" \
      --user-pin-file "$FLEET_DIR/secrets/node-$n.user.pin" "${kek[@]}" >/dev/null
    if [ "$n" != 1 ]; then
      bkv_log "node-$n: KEK ceremony from node-1"
      "$vaultctl" hsm ceremony \
        --from-dir "$FLEET_DIR/hsm/node-1" --from-label node-1 \
        --from-so-pin-file "$FLEET_DIR/secrets/node-1.so.pin" \
        --from-user-pin-file "$FLEET_DIR/secrets/node-1.user.pin" \
        --to-dir "$dir" --to-label "node-$n" \
        --to-user-pin-file "$FLEET_DIR/secrets/node-$n.user.pin"
    fi
  done
  for n in "${NODES[@]}"; do
    "$vaultctl" hsm report --softhsm-dir "$FLEET_DIR/hsm/node-$n" --label "node-$n" \
      --user-pin-file "$FLEET_DIR/secrets/node-$n.user.pin" | head -2
  done
  echo
  echo "HSMs of nodes ${NODES[*]} are provisioned in $FLEET_DIR/hsm and share one fleet KEK."
  echo "Not yet: the vault node binary does not exist yet, so no node is started."
  exit 3
}

case "${1:-}" in
  up) up ;;
  clean) rm -rf "$FLEET_DIR"; bkv_log "removed $FLEET_DIR" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
