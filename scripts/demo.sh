#!/usr/bin/env bash
# A walk through password-protected key recovery on the local fleet that
# ./scripts/fleet.sh up started:
#
#   register a demo user (3 attempts), encrypt a sample backup with its key K,
#   recover K and decrypt the backup, count wrong passwords down, SIGKILL the
#   leader and recover again, then use up the attempts and show that the key
#   is gone. The killed node is restarted at the end, and the fleet's keys
#   are audited: the witness log and deployment evidence (vaultctl audit).
#
#   ./scripts/demo.sh     (FLEET_DIR as for fleet.sh; default .fleet)
#
# Exit codes: 0 the demo ran as described; 1 a step did not do what it says.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

case "${1:-}" in
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

FLEET_DIR="${FLEET_DIR:-$PWD/.fleet}"
export BKV_FLEET_DIR="$FLEET_DIR" BKV_FLEET_CONFIG="${FLEET_CONFIG:-$PWD/cluster-configs/local-3.toml}"
V="$CARGO_TARGET_DIR/debug/vaultctl"
[ -x "$V" ] || { echo "no vaultctl: run ./scripts/fleet.sh up first" >&2; exit 1; }
"$V" cluster status --wait-converged 10 >/dev/null 2>&1 \
  || { echo "no converged fleet: run ./scripts/fleet.sh up first" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
USER_ID="demo-$(date +%s)"
PASSWORD="correct horse battery staple"
step() { printf '\n%s\n' "--- $*"; }
expect_exit() { # code, command...
  local want=$1; shift
  set +e; "$@"; local got=$?; set -e
  [ "$got" = "$want" ] || { echo "expected exit $want, got $got" >&2; exit 1; }
}

step "register $USER_ID with 3 attempts; K goes to a file only this demo reads"
echo "$PASSWORD" | "$V" register --user "$USER_ID" --password-stdin --max-attempts 3 --key-out "$WORK/k"

step "encrypt a 1 MiB sample backup with K"
head -c 1048576 /dev/urandom > "$WORK/chats.db"
"$V" backup encrypt --key-file "$WORK/k" --in "$WORK/chats.db" --out "$WORK/chats.bkv"

step "lose the phone: recover K with the password, decrypt the backup"
echo "$PASSWORD" | "$V" recover --user "$USER_ID" --password-stdin --key-out "$WORK/k2"
"$V" backup decrypt --key-file "$WORK/k2" --in "$WORK/chats.bkv" --out "$WORK/restored.db"
cmp -s "$WORK/chats.db" "$WORK/restored.db" && echo "the restored backup is identical"

step "two wrong passwords count the attempts down (exit 3)"
echo "hunter2" | expect_exit 3 "$V" recover --user "$USER_ID" --password-stdin
echo "letmein" | expect_exit 3 "$V" recover --user "$USER_ID" --password-stdin
"$V" status --user "$USER_ID"

LEADER=$("$V" cluster status --json | tr -d ' \n' | sed -n 's/.*"leaders":\[\([0-9]*\).*/\1/p')
[ -n "$LEADER" ] || { echo "no leader found" >&2; exit 1; }
step "SIGKILL the leader, node $LEADER, then recover again (a success resets the count)"
kill -9 "$(cat "$FLEET_DIR/node-$LEADER.pid")"
echo "$PASSWORD" | "$V" recover --user "$USER_ID" --password-stdin --key-out "$WORK/k3"
cmp -s "$WORK/k" "$WORK/k3" && echo "same K after the failover"
"$V" status --user "$USER_ID"

step "three wrong passwords use up the attempts; the right one is then refused (exit 4)"
for guess in 123456 qwerty dragon; do
  echo "$guess" | expect_exit 3 "$V" recover --user "$USER_ID" --password-stdin
done
echo "$PASSWORD" | expect_exit 4 "$V" recover --user "$USER_ID" --password-stdin
"$V" status --user "$USER_ID"
echo "the key is gone: the backup can no longer be decrypted by anyone"

step "restart node $LEADER"
./scripts/fleet.sh start >/dev/null
"$V" cluster status

step "audit the fleet's keys: the witness log, every epoch, and deployment evidence"
"$V" fleet evidence --out "$WORK/evidence.json" >/dev/null
"$V" audit --evidence "$WORK/evidence.json"
