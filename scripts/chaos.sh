#!/usr/bin/env bash
# Chaos scenarios against fresh local fleets (real node processes, RocksDB,
# SoftHSM, mutual TLS on loopback; peer links through a fault-injecting
# proxy). Installs what is missing and builds first.
#
#   ./scripts/chaos.sh SCENARIO [--seed N] [--duration S] [--node-variant V]
#   ./scripts/chaos.sh --all [--seed N] [--duration S]
#   ./scripts/chaos.sh --list
#
# SCENARIO is a name from tests/chaos/scenarios/ (or a path to a TOML file).
# Each run prints a summary and writes report.json, history.jsonl and node
# logs under $CARGO_TARGET_DIR/chaos/ (or --out DIR). Exit codes: 0 every
# invariant held; 1 a violation (the summary prints the replay command);
# 2 bad arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

DIR=tests/chaos/scenarios
files=()
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --list) for f in "$DIR"/*.toml; do
              printf '%-22s %s\n' "$(basename "$f" .toml)" "$(sed -n 's/^description = "\(.*\)"/\1/p' "$f")"
            done; exit 0 ;;
    --all) files+=("$DIR"/*.toml) ;;
    --seed|--duration|--out|--node-variant)
      [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
      args+=("$1" "$2"); shift ;;
    -*) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    *) if [ -f "$1" ]; then files+=("$1")
       elif [ -f "$DIR/$1.toml" ]; then files+=("$DIR/$1.toml")
       else echo "no scenario $1 (see --list)" >&2; exit 2; fi ;;
  esac
  shift
done
[ ${#files[@]} -gt 0 ] || { echo "name a scenario or --all (see --help)" >&2; exit 2; }

bkv_ensure_packages
bkv_log "building (cargo target dir: $CARGO_TARGET_DIR)"
bkv_build_all
exec "$CARGO_TARGET_DIR/debug/vault-chaos" "${args[@]}" "${files[@]}"
