#!/usr/bin/env bash
# Fails when a crate depends on what its role forbids (docs/ARCHITECTURE.md):
# RocksDB only in vault-storage, PKCS#11 only in vault-hsm, no I/O crates
# under vault-core, vault-types, vault-protocol or vault-transparency, and
# the app side (vault-client), the witness and the shared fleet library
# (vault-fleet) link neither openraft nor RocksDB nor the state machine.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
forbid() { # crate, pattern, reason
  local crate=$1 pattern=$2 reason=$3 found
  local tree
  # A cargo tree that fails must fail the check, not pass it silently.
  if ! tree=$(cargo tree --locked -p "$crate" -e normal,build --prefix none); then
    echo "boundary check: cargo tree -p $crate failed" >&2
    fail=1
    return
  fi
  found=$(grep -E "^($pattern) v" <<<"$tree" | sort -u || true)
  if [ -n "$found" ]; then
    echo "boundary broken: $crate depends on $(echo "$found" | tr '\n' ' ')($reason)" >&2
    fail=1
  fi
}
for c in vault-types vault-core vault-protocol vault-transparency; do
  forbid "$c" "rocksdb|librocksdb-sys|cryptoki|tonic|tokio|openraft" "no I/O in $c"
done
forbid vault-core "opaque-ke|hpke" "the state machine stores sealed bytes; OPAQUE is vault-protocol's"
for c in vault-client vault-witness vault-fleet; do
  forbid "$c" "cryptoki|openraft|vault-raft|vault-storage|vault-core" "apps, the witness and the fleet library link no PKCS#11, no Raft and no state machine"
done
for c in vault-hsm vault-cli vault-raft vault-fleet vault-protocol vault-proto vault-testkit vault-client vault-bench vault-chaos vault-witness vault-transparency; do
  forbid "$c" "rocksdb|librocksdb-sys" "RocksDB only in vault-storage"
done
for c in vault-storage vault-raft vault-proto; do
  forbid "$c" "cryptoki" "PKCS#11 only in vault-hsm"
done
[ "$fail" = 0 ] && echo "crate boundaries hold: vault-core, vault-types, vault-protocol and vault-transparency have no I/O crates; RocksDB only in vault-storage; PKCS#11 only in vault-hsm; vault-client, vault-witness and vault-fleet link no openraft"

exit "$fail"
