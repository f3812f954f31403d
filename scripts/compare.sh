#!/usr/bin/env bash
# Compares two builds of vault-node on the local fleet, A/B: restarts the
# fleet's nodes (data kept) from build A, runs vault-bench, restarts them
# from build B, runs it again, and so on for N rounds. This machine's speed
# drifts by tens of percent within minutes, so only runs that alternate
# like this compare; a difference smaller than the spread between rounds
# of one build is noise.
#
#   ./scripts/compare.sh [--rounds N] NODE_A NODE_B [VAULT_BENCH_ARGS...]
#
# NODE_A and NODE_B are vault-node binaries (copied first, so a rebuild
# during the run changes nothing). VAULT_BENCH_ARGS default to
# `--workload recover --concurrency 5 --duration 8`. For each run it prints
# vault-bench's summary and the nodes' CPU per operation (user + system
# time of the three node processes over the whole vault-bench run, its
# set-up included: `delete` registers its pool first, so there it is mostly
# registration; compare it between A and B only). At the end, and on
# failure or Ctrl-C, it restarts the nodes from the fleet's own build.
#
# Example, the old build against the new:
#   git stash; ./scripts/fleet.sh up; mkdir -p /tmp/old
#   cp "$CARGO_TARGET_DIR/debug/vault-node" /tmp/old/; git stash pop
#   ./scripts/fleet.sh up
#   ./scripts/compare.sh --rounds 3 /tmp/old/vault-node \
#     "$CARGO_TARGET_DIR/debug/vault-node" --workload delete --concurrency 1 --pool 1500
#
# Start the fleet first (./scripts/fleet.sh up). Exit codes: 0 done; 1 no
# fleet, a node did not start, or a run failed; 2 bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }
ROUNDS=3
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --rounds)
    [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds needs a positive number" >&2; exit 2; }
    ROUNDS=$2; shift 2 ;;
esac
[ $# -ge 2 ] || { usage >&2; exit 2; }
A=$1 B_NODE=$2
shift 2
for bin in "$A" "$B_NODE"; do
  [ -f "$bin" ] && [ -x "$bin" ] || { echo "not an executable file: $bin" >&2; exit 2; }
done
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(--workload recover --concurrency 5 --duration 8)

bkv_need_fleet
tmp=$(mktemp -d)
mkdir -p "$tmp/a" "$tmp/b"
# fleet.sh finds its nodes by a path containing "vault-node".
cp "$A" "$tmp/a/vault-node"
cp "$B_NODE" "$tmp/b/vault-node"
restore() {
  bkv_log "restarting the nodes from the fleet's own build"
  ./scripts/fleet.sh down >/dev/null 2>&1 || true
  ./scripts/fleet.sh start >/dev/null 2>&1 \
    || echo "the fleet did not come back: ./scripts/fleet.sh up" >&2
  rm -rf "$tmp"
}
trap restore EXIT

# User + system clock ticks of the fleet's node processes.
node_ticks() {
  local sum=0 f pid
  for f in "$FLEET_DIR"/node-*.pid; do
    pid=$(cat "$f")
    # Fields 14 and 15 of /proc/PID/stat, counted after the command name.
    sum=$((sum + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')))
  done
  echo "$sum"
}
hz=$(getconf CLK_TCK)

bkv_log "$ROUNDS rounds of A ($A) and B ($B_NODE): vault-bench ${ARGS[*]}"
for r in $(seq "$ROUNDS"); do
  for side in a b; do
    ./scripts/fleet.sh down >/dev/null 2>&1
    VAULT_NODE="$tmp/$side/vault-node" ./scripts/fleet.sh start >"$tmp/start.log" 2>&1 \
      || { cat "$tmp/start.log" >&2; echo "the nodes of build ${side^^} did not start" >&2; exit 1; }
    before=$(node_ticks)
    "$B" "${ARGS[@]}" >"$tmp/run.txt" 2>&1 || { cat "$tmp/run.txt" >&2; exit 1; }
    after=$(node_ticks)
    summary=$(grep -E '^[A-Za-z-]+: [0-9]+ ok' "$tmp/run.txt" | tail -1)
    ops=$(sed -E 's/^[^:]+: ([0-9]+) ok.*/\1/' <<<"$summary")
    cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v n="${ops:-0}" \
      'BEGIN { if (n > 0) printf "%.2f ms", 1000 * t / hz / n; else printf "n/a" }')
    echo "${side^^} round $r: $summary; node CPU per op $cpu"
  done
done
