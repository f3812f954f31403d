#!/usr/bin/env bash
# Where the CPU goes while vault-bench drives the local fleet: samples every
# process on the machine with perf (no call graphs, ~1 kHz), then sums the
# samples by component (OPAQUE, gRPC, TLS, Raft, RocksDB, HSM, allocator,
# kernel scheduler and network, ...) and by process (each node, the client).
#
#   ./scripts/profile.sh                       recover, 20 clients, 10 s
#   ./scripts/profile.sh WORKLOAD CLIENTS SECS another run (vault-bench --help)
#
# Start the fleet first (./scripts/fleet.sh up). Needs perf (Debian package
# linux-perf, installed if missing) and the right to sample every process
# (root, or kernel.perf_event_paranoid at -1). Writes the tables to stdout
# and to .fleet/bench/profile-WORKLOAD-CLIENTS.md. Exit codes: 0 done; 1 no
# fleet, no perf, or the run failed; 2 bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

case "${1:-}" in -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
WORKLOAD="${1:-recover}" CLIENTS="${2:-20}" SECS="${3:-10}"
[[ "$CLIENTS" =~ ^[0-9]+$ && "$SECS" =~ ^[0-9]+$ && "$SECS" -ge 3 ]] \
  || { echo "usage: $0 [WORKLOAD [CLIENTS [SECONDS>=3]]]" >&2; exit 2; }

bkv_need_fleet
if ! command -v perf >/dev/null || ! perf --version >/dev/null 2>&1; then
  BKV_PACKAGES=(linux-perf)
  bkv_ensure_packages
fi

OUT="$FLEET_DIR/bench"
mkdir -p "$OUT"
tmp=$(mktemp -d)
bench_pid=
cleanup() {
  [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

names=()
for f in "$FLEET_DIR"/node-*.pid; do
  n=$(basename "$f" .pid)
  names+=("$(cat "$f")=$n")
done

bkv_log "$WORKLOAD, $CLIENTS clients for $SECS s; perf samples the middle $((SECS - 2)) s"
"$B" --workload "$WORKLOAD" --concurrency "$CLIENTS" --duration "$SECS" >"$tmp/bench.txt" 2>&1 &
bench_pid=$!
names+=("$bench_pid=vault-bench (the client)")
sleep 1
perf record -a -F 997 -o "$tmp/perf.data" -- sleep $((SECS - 2)) >/dev/null 2>"$tmp/perf.err" \
  || { cat "$tmp/perf.err" >&2; echo "perf record failed (permissions? see --help)" >&2; exit 1; }
wait "$bench_pid" || { cat "$tmp/bench.txt" >&2; exit 1; }
bench_pid=
perf script -i "$tmp/perf.data" -F comm,pid,ip,sym,dso >"$tmp/perf.txt" 2>/dev/null
{
  echo "\`./scripts/profile.sh $WORKLOAD $CLIENTS $SECS\` on $(date -u +%Y-%m-%d) (commit $(git rev-parse --short HEAD)):"
  echo
  grep -E '^([A-Z][A-Za-z]+|node [0-9]+): ' "$tmp/bench.txt" | sed 's/^/    /'
  echo
  python3 scripts/lib/profile-categories.py "$tmp/perf.txt" "${names[@]}"
} | tee "$OUT/profile-$WORKLOAD-$CLIENTS.md"
