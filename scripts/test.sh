#!/usr/bin/env bash
# The test gate: installs what is missing, then fmt, clippy and every test of
# the workspace. Exits non-zero on any failure.
#
#   ./scripts/test.sh            the whole gate
#   CARGO_TARGET_DIR=... ./scripts/test.sh   use another build cache
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

case "${1:-}" in
  -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

bkv_ensure_packages
bkv_log "cargo target dir: $CARGO_TARGET_DIR"

bkv_log "cargo fmt --check"
cargo fmt --all -- --check

# Every cargo call here (and in fleet.sh) selects the whole workspace with
# all targets: the feature set cargo resolves, and so the build scripts it
# runs, depend on the selection, and a different one would rebuild
# RocksDB's C++ (20 minutes on 2 cores).
#
# Cargo gives a build script run in check mode (clippy) a hash of its own, so
# clippy would compile RocksDB's C++ a second time. Clippy only type-checks
# and never links, so it points librocksdb-sys at an empty library
# directory, which skips the C++ build; the tests below link the real one.
bkv_log "cargo clippy"
mkdir -p "$CARGO_TARGET_DIR/clippy-rocksdb-lib"
ROCKSDB_LIB_DIR="$CARGO_TARGET_DIR/clippy-rocksdb-lib" ROCKSDB_STATIC=1 \
  cargo clippy --workspace --all-targets --locked -- -D warnings

bkv_log "crate boundaries"
scripts/check-boundaries.sh

# The fleet tests (tests/fleet.rs, tests/chaos.rs…) run the vault-node and
# vaultctl binaries as separate processes; cargo only builds a package's
# binaries for that package's own tests, so build them all first, with the
# unsafe node variant the chaos bite test needs.
bkv_log "cargo build (binaries for the multi-process tests, and the unsafe bite-test node)"
bkv_build_all

# The unsafe node must not build by accident: --all-features (the same
# features bkv_build_all just built, so nothing recompiles) must fail in
# vault-node's build script.
bkv_log "cargo build --all-features must refuse the unsafe node"
if out=$(cargo build --workspace --all-targets --locked --all-features 2>&1); then
  echo "cargo build --all-features built the unsafe node; it must refuse" >&2
  exit 1
fi
grep -q "BKV_BUILD_UNSAFE_NODE" <<<"$out" || { echo "$out" | tail -20 >&2; echo "cargo build --all-features failed, but not with the unsafe-node refusal" >&2; exit 1; }

bkv_log "cargo test (doc tests)"
cargo test --workspace --locked --doc

# Unit and integration tests last, so the gate ends with the test runner's
# own summary line. Benches are left out: run them with `cargo bench` (README).
bkv_log "cargo test (unit and integration tests)"
cargo test --workspace --locked --no-fail-fast --lib --bins --tests
