#!/usr/bin/env bash
# The standard benchmark set, against the local fleet that
# ./scripts/fleet.sh up started; writes docs/BENCHMARKS.md.
#
#   ./scripts/bench.sh              every workload, 10 s each
#   DURATION=30 ./scripts/bench.sh  longer runs
#
# Results (JSON per run) also go to .fleet/bench/. Exit codes: 0 done;
# 1 no fleet or a run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

case "${1:-}" in
  -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

DURATION="${DURATION:-10}"
FLEET_DIR="${FLEET_DIR:-$PWD/.fleet}"
export BKV_FLEET_DIR="$FLEET_DIR" BKV_FLEET_CONFIG="${FLEET_CONFIG:-$PWD/cluster-configs/local-3.toml}"
B="$CARGO_TARGET_DIR/debug/vault-bench"
V="$CARGO_TARGET_DIR/debug/vaultctl"
[ -x "$B" ] || { echo "no vault-bench: run ./scripts/fleet.sh up first (it builds everything)" >&2; exit 1; }
"$V" cluster status --wait-converged 10 >/dev/null 2>&1 \
  || { echo "no converged fleet: run ./scripts/fleet.sh up first" >&2; exit 1; }
OUT="$FLEET_DIR/bench"
mkdir -p "$OUT"

RUNS=(
  "recover 1"
  "recover 5"
  "recover 20"
  "register 5"
  "recover-wrong 5"
  "status 5"
  "mixed 10"
)
ROWS=()
first=1
for run in "${RUNS[@]}"; do
  set -- $run
  workload=$1 conc=$2
  extra=()
  [ "$first" = 1 ] && extra=(--ceiling) && first=0
  bkv_log "$workload, $conc clients, ${DURATION} s"
  line=$("$B" --workload "$workload" --concurrency "$conc" --duration "$DURATION" \
           --json "$OUT/$workload-$conc.json" "${extra[@]}" 2>/dev/null)
  echo "$line"
  [ "$workload $conc" = "recover 20" ] && STORAGE=$(echo "$line" | grep '^node ' || true)
  j="$OUT/$workload-$conc.json"
  field() { sed -n "s/^ *\"$1\": \([0-9.]*\).*/\1/p" "$j" | head -1; }
  ROWS+=("| $workload | $conc | $(printf '%.0f' "$(field throughput_per_s)") | $(field p50) | $(field p90) | $(field p99) | $(field p99_9) | $(field errors) | $(printf '%.2f' "$(field client_cpu_cores)") |")
  [ -n "$(field ceiling_single_core_opaque_logins_per_s)" ] && CEILING=$(field ceiling_single_core_opaque_logins_per_s)
done

CPU=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
{
  echo "# Benchmarks"
  echo
  echo "Written by \`scripts/bench.sh\` on $(date -u +%Y-%m-%d) (commit $(git rev-parse --short HEAD))."
  echo "Rerun: \`./scripts/fleet.sh up && ./scripts/bench.sh\` (\`DURATION=30\` for longer runs)."
  echo
  echo "**Machine:** $(nproc) cores ($CPU), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)."
  echo "**Fleet:** \`cluster-configs/local-3.toml\`: 3 nodes on loopback on this same machine, SoftHSM2, RocksDB with fsync on, mutual TLS; the dev profile (crypto crates at opt-level 3, everything else unoptimized)."
  echo "**Client:** \`vault-bench\` on the same machine, fast Argon2id profile; its own CPU use is the last column (client and fleet share the cores)."
  echo
  echo "| workload | clients | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | client cores |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "\`recover\` is a full recovery: RecoverStart (BeginAttempt committed) and RecoverFinish (FinishAttempt committed). \`register\` is RegisterStart + RegisterFinish (a read barrier, an HSM seal, a commit). \`recover-wrong\` stops at KE2. \`status\` is a linearizable read."
  echo
  echo "**Ceiling:** one core does $(printf '%.0f' "${CEILING:-0}") OPAQUE server logins per second (KE2 + KE3 checks, in-process, no Raft, no HSM): about $(awk -v c="${CEILING:-0}" 'BEGIN { printf "%.0f", 2 * c }') on both cores if OPAQUE were all the fleet did."
  echo
  echo "**Group commit** (recover, 20 clients; from the nodes' \`bkv_storage_*\` metrics, fsyncs counting log appends, votes and state-machine applies):"
  echo
  echo "${STORAGE:-(no storage metrics)}" | sed 's/^/- /'
  echo
  echo "**Targets** (3-node loopback fleet on this 2-core machine, fsync on): ≥ 2 000 full recoveries/s, p50 ≤ 5 ms for a full recovery at 5 clients, ≥ 2 000 registrations/s. The fleet is far from them and has not been profiled yet. Observed: followers batch several entries per fsync, but the leader appends each entry alone (one fsync per entry), so it does not group-commit client writes yet. Unverified suspects, in the order they will be checked: everything but the crypto crates runs unoptimized in the shared dev profile (tonic, hyper, openraft, prost, rustls' handshakes); each commit costs two fsyncs per node (log append, then state-machine apply); a recovery is two commits and a follower adds a forward hop to each; the read barrier in \`status\` and \`register\` is a quorum round trip."
  echo
  echo "Raw results: \`.fleet/bench/*.json\`."
} > docs/BENCHMARKS.md
bkv_log "wrote docs/BENCHMARKS.md"
