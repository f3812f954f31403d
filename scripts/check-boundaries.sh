#!/usr/bin/env bash
# Fails when a crate depends on what its role forbids (docs/ARCHITECTURE.md):
# RocksDB only in vault-storage, PKCS#11 only in vault-hsm, and no I/O
# crates under vault-core or vault-types.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
forbid() { # crate, pattern, reason
  local crate=$1 pattern=$2 reason=$3 found
  found=$(cargo tree --locked -p "$crate" -e normal,build --prefix none 2>/dev/null | grep -E "^($pattern) v" | sort -u || true)
  if [ -n "$found" ]; then
    echo "boundary broken: $crate depends on $(echo "$found" | tr '\n' ' ')($reason)" >&2
    fail=1
  fi
}
for c in vault-types vault-core vault-transparency; do
  forbid "$c" "rocksdb|librocksdb-sys|cryptoki|tonic|tokio|openraft" "no I/O in $c"
done
for c in vault-client vault-witness; do
  forbid "$c" "cryptoki" "apps and the witness link no PKCS#11"
done
for c in vault-hsm vault-cli vault-raft vault-proto vault-testkit vault-client vault-bench vault-chaos vault-witness vault-transparency; do
  forbid "$c" "rocksdb|librocksdb-sys" "RocksDB only in vault-storage"
done
for c in vault-storage vault-raft vault-proto; do
  forbid "$c" "cryptoki" "PKCS#11 only in vault-hsm"
done
[ "$fail" = 0 ] && echo "crate boundaries hold: vault-core, vault-types and vault-transparency have no I/O crates; RocksDB only in vault-storage; PKCS#11 only in vault-hsm (not in vault-client or vault-witness)"
exit "$fail"
