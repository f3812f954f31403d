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

bkv_log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

bkv_log "cargo test (doc tests)"
cargo test --workspace --locked --doc

# Unit and integration tests last, so the gate ends with the test runner's
# own summary line. Benches are left out: they are run by scripts/bench.sh.
bkv_log "cargo test (unit and integration tests)"
cargo test --workspace --locked --no-fail-fast --lib --bins --tests
