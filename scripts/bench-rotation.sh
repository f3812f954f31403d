#!/usr/bin/env bash
# KEK rotation rate on the local fleet that ./scripts/fleet.sh up started.
#
#   ./scripts/bench-rotation.sh [--users N] [--preload M]
#
# Registers N real users (default 20000; `vault-bench --workload
# register-new`, each a record sealed by a node's HSM), first preloads M
# synthetic users (default 0; e.g. 1000000, to rotate inside a fleet of
# that size: synthetic records are not sealed blobs, so the rotation walks
# past them), then runs a whole rotation as an operator would: `vaultctl
# hsm new-kek` on the first node's token, the ceremony to every other node,
# `vaultctl cluster rotate-kek`, `vaultctl cluster destroy-kek` of the old
# version. Prints the rate and writes it into docs/BENCHMARKS.md (the
# "KEK rotation" section, which bench.sh keeps). The fleet is left on the
# new KEK with the users registered (./scripts/fleet.sh clean removes
# them). Exit codes: 0 done; 1 no fleet or a step failed; 2 bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

USERS=20000
PRELOAD=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --users|--preload)
      [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "$1 needs a number" >&2; exit 2; }
      [ "$1" = --users ] && USERS=$2 || PRELOAD=$2
      shift 2 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

bkv_need_fleet
status() { "$V" cluster status --json; }
field() { python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }

if [ "$PRELOAD" -gt 0 ]; then
  bkv_log "preloading $PRELOAD synthetic users"
  "$V" cluster preload --users "$PRELOAD" >/dev/null
fi
bkv_log "registering $USERS real users"
"$B" --workload register-new --concurrency 10 --ops "$USERS" --duration 100000 >/dev/null 2>&1

OLD=$(status | field "max(n.get('fleet_kek_version') or 0 for n in s['nodes'])")
NODES=$(status | field "' '.join(str(n['node_id']) for n in s['nodes'])")
FIRST=${NODES%% *}
tok() { # node id -> "dir label user_pin so_pin"
  echo "$FLEET_DIR/hsm/node-$1 node-$1 $FLEET_DIR/secrets/node-$1.user.pin $FLEET_DIR/secrets/node-$1.so.pin"
}
read -r D1 L1 P1 S1 <<<"$(tok "$FIRST")"
NEW=$("$V" hsm new-kek --softhsm-dir "$D1" --label "$L1" --user-pin-file "$P1" 2>/dev/null)
bkv_log "KEK v$NEW made on node $FIRST; ceremony to the others"
for id in $NODES; do
  [ "$id" = "$FIRST" ] && continue
  read -r D L P _ <<<"$(tok "$id")"
  "$V" hsm ceremony --from-dir "$D1" --from-label "$L1" --from-so-pin-file "$S1" \
    --from-user-pin-file "$P1" --to-dir "$D" --to-label "$L" --to-user-pin-file "$P" >/dev/null 2>&1
done
bkv_log "rotating v$OLD -> v$NEW"
start=$(date +%s.%N)
LINE=$("$V" cluster rotate-kek --to "$NEW" --batch 250)
secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
"$V" cluster destroy-kek --version "$OLD" >/dev/null
RATE=$(echo "$LINE" | sed -n 's/.*(\([0-9]*\) records\/s).*/\1/p')
RESEALED=$(echo "$LINE" | sed -n 's/.*: \([0-9]*\) records re-sealed.*/\1/p')
echo "$LINE"
echo "destroyed KEK v$OLD on every node"

SECTION="**KEK rotation** (\`./scripts/bench-rotation.sh --users $USERS --preload $PRELOAD\`, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD)): $RESEALED real records re-sealed from v$OLD to v$NEW in $secs s including the command's start and checks, **$RATE records/s** (unseal and seal in the leader's SoftHSM, 250 records per committed entry), in a fleet that also held $PRELOAD synthetic users (walked past, not re-sealed). At that rate 1 000 000 users take about $(awk -v r="${RATE:-1}" 'BEGIN { printf "%.0f", 1000000 / (r > 0 ? r : 1) / 60 }') minutes. The leader does every re-seal in its own HSM, one record after another, while serving; recoveries go on during a rotation (each step is one entry, like any other)."
MD=docs/BENCHMARKS.md
python3 - "$MD" "$SECTION" <<'PY'
import sys
path, section = sys.argv[1], sys.argv[2]
begin, end = "<!-- rotation -->", "<!-- /rotation -->"
text = open(path).read()
block = f"{begin}\n{section}\n{end}\n"
if begin in text and end in text:
    a = text.index(begin)
    b = text.index(end) + len(end) + 1
    text = text[:a] + block + text[b:]
else:
    text = text.rstrip("\n") + "\n\n" + block
open(path, "w").write(text)
PY
bkv_log "wrote the KEK rotation section of $MD"
