#!/usr/bin/env bash
# CPU each node of the local fleet uses while nothing calls it: user +
# system time from /proc/<pid>/stat over a window, per second of it.
#
#   ./scripts/idle-cpu.sh [SECONDS]     default 20
#
# Start the fleet first (./scripts/fleet.sh up) and send it nothing while
# this runs. Uses FLEET_DIR (default .fleet). Exit codes: 0 done; 1 no
# fleet; 2 bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
SECS="${1:-20}"
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
FLEET_DIR="${FLEET_DIR:-$PWD/.fleet}"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A PID START
for f in "$FLEET_DIR"/node-*.pid; do
  [ -e "$f" ] || { echo "no fleet in $FLEET_DIR (./scripts/fleet.sh up)" >&2; exit 1; }
  n=$(basename "$f" .pid); p=$(cat "$f")
  [ -r "/proc/$p/stat" ] || { echo "$n (pid $p) is not running" >&2; exit 1; }
  PID[$n]=$p START[$n]=$(ticks "$p")
done
HZ=$(getconf CLK_TCK)
sleep "$SECS"
for n in $(printf '%s\n' "${!PID[@]}" | sort); do
  used=$(( $(ticks "${PID[$n]}") - ${START[$n]} ))
  awk -v t="$used" -v hz="$HZ" -v s="$SECS" -v n="$n" \
    'BEGIN { printf "%s: %.1f ms of CPU per second (over %d s)\n", n, 1000 * t / hz / s, s }'
done
