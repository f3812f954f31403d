#!/usr/bin/env bash
# A/B of whole fleets: for builds whose data directories or tokens are not
# compatible (so scripts/compare.sh, which swaps only the node binary on
# one fleet, cannot compare them). Each round, for each build in turn:
# provisions a fresh local fleet from that build (its own checkout's
# scripts/fleet.sh, BKV_NO_BUILD=1), runs recover at 1, 5 and 20 clients
# with one client binary for all, and stops the fleet. Builds alternate
# within each round, since this machine's speed drifts.
#
#   ./scripts/ab-fleets.sh [--rounds N] [--duration S] CLIENT LABEL=CHECKOUT:BINDIR...
#
# CLIENT is the vault-bench binary used for every build. Each BINDIR holds
# that build's vault-node, vaultctl, vault-witness (copies, so a rebuild
# during the run changes nothing). Example, the build at 9722beb against
# this checkout's:
#   git worktree add /tmp/old 9722beb
#   (cd /tmp/old && cargo build --workspace --all-targets --locked)
#   mkdir -p /tmp/old-bin && cp "$CARGO_TARGET_DIR"/debug/{vault-node,vaultctl,vault-witness} /tmp/old-bin/
#   cargo build --workspace --all-targets --locked   # (touch this checkout's sources first)
#   mkdir -p /tmp/new-bin && cp "$CARGO_TARGET_DIR"/debug/{vault-node,vaultctl,vault-witness,vault-bench} /tmp/new-bin/
#   ./scripts/ab-fleets.sh --rounds 2 /tmp/new-bin/vault-bench old=/tmp/old:/tmp/old-bin new=.:/tmp/new-bin
# (Two checkouts share one CARGO_TARGET_DIR's artifacts: after building
# the other, touch this one's sources before building it again.)
#
# Prints one line per run and the nodes' storage and call counters.
# Fleets live in /tmp/ab-fleet-LABEL, removed at the start of each run.
# Exit codes: 0 done; 1 a fleet did not come up; 2 bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
ROUNDS=2 DUR=10
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --rounds) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds needs a positive number" >&2; exit 2; }; ROUNDS=$2; shift 2 ;;
    --duration) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "--duration needs seconds" >&2; exit 2; }; DUR=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || { usage >&2; exit 2; }
CLIENT=$1; shift
[ -x "$CLIENT" ] || { echo "no client binary $CLIENT" >&2; exit 2; }
for b in "$@"; do
  [[ "$b" =~ ^[A-Za-z0-9_-]+=[^:]+:.+$ ]] || { echo "bad build $b (LABEL=CHECKOUT:BINDIR)" >&2; exit 2; }
done
RUN_BIN=$(mktemp -d)
trap 'rm -rf "$RUN_BIN"' EXIT

run() { # label checkout bindir round
  local label=$1 checkout=$2 bin=$3 r=$4 fleet=/tmp/ab-fleet-$1
  # fleet.sh wants the binaries in $CARGO_TARGET_DIR/debug.
  mkdir -p "$RUN_BIN/$label/debug"
  cp "$bin"/vault-node "$bin"/vaultctl "$bin"/vault-witness "$RUN_BIN/$label/debug/"
  rm -rf "$fleet"
  if ! (cd "$checkout" && CARGO_TARGET_DIR="$RUN_BIN/$label" BKV_NO_BUILD=1 FLEET_DIR=$fleet ./scripts/fleet.sh up) >"$fleet.up.log" 2>&1; then
    echo "$label: the fleet did not come up (log: $fleet.up.log)" >&2
    return 1
  fi
  for c in 1 5 20; do
    out=$(BKV_FLEET_DIR=$fleet BKV_FLEET_CONFIG="$checkout/cluster-configs/local-3.toml" \
      "$CLIENT" --workload recover --concurrency "$c" --duration "$DUR" 2>/dev/null) || true
    echo "$label round $r, $c clients: $(echo "$out" | head -1)"
    echo "$out" | grep -E '^node |calls served' | sed 's/^/    /'
  done
  (cd "$checkout" && CARGO_TARGET_DIR="$RUN_BIN/$label" BKV_NO_BUILD=1 FLEET_DIR=$fleet ./scripts/fleet.sh down) >/dev/null 2>&1 || true
}

for r in $(seq 1 "$ROUNDS"); do
  for b in "$@"; do
    label=${b%%=*} rest=${b#*=}
    run "$label" "${rest%%:*}" "${rest#*:}" "$r" || exit 1
  done
done
