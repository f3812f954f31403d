# Shared by the scripts in scripts/: system packages, the cargo target dir.
# Source it; it defines functions and sets CARGO_TARGET_DIR.

# Debian packages the build and the tests need:
#   softhsm2      the PKCS#11 module every HSM test and the local fleet use
#   opensc        pkcs11-tool, to inspect tokens by hand
#   libclang-dev  bindgen, for librocksdb-sys
#   clang         the C++ compiler wrapper bindgen expects next to libclang
BKV_PACKAGES=(softhsm2 opensc libclang-dev)

bkv_log() { printf '==> %s\n' "$*" >&2; }

# Installs whatever of BKV_PACKAGES is missing, non-interactively.
bkv_ensure_packages() {
  local missing=()
  for p in "${BKV_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  bkv_log "installing missing system packages: ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; return 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# One persistent target dir per machine, shared by test.sh, fleet.sh and
# bench.sh, so that heavy C++ dependencies build once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/backup-key-vault/target}"

# Builds every target of the workspace, plus the deliberately unsafe node
# the chaos checker's bite test runs (vault-node built with the feature
# `unsafe-ke2-before-commit`, copied to vault-node-unsafe-ke2). The safe
# build runs last, so target/debug/vault-node is always the safe one. Both
# select the whole workspace with all targets, so RocksDB's features (and
# its 20-minute C++ build) stay the same.
bkv_build_all() {
  local d="$CARGO_TARGET_DIR/debug"
  # vault-node's build script refuses the feature without this consent, so
  # that `cargo build --all-features` cannot build the unsafe node.
  BKV_BUILD_UNSAFE_NODE=yes-this-node-releases-ke2-before-commit \
    cargo build --workspace --all-targets --locked --features vault-node/unsafe-ke2-before-commit
  cp "$d/vault-node" "$d/vault-node-unsafe-ke2.tmp"
  cp "$d/vault-node.d" "$d/vault-node-unsafe-ke2.d"
  mv "$d/vault-node-unsafe-ke2.tmp" "$d/vault-node-unsafe-ke2"
  cargo build --workspace --all-targets --locked
}

# For bench.sh and profile.sh: sets FLEET_DIR, exports the fleet dir and
# file for vault-bench and vaultctl, sets B (vault-bench) and V (vaultctl),
# and exits 1 with advice unless the local fleet is up and converged.
bkv_need_fleet() {
  FLEET_DIR="${FLEET_DIR:-$PWD/.fleet}"
  export BKV_FLEET_DIR="$FLEET_DIR" BKV_FLEET_CONFIG="${FLEET_CONFIG:-$PWD/cluster-configs/local-3.toml}"
  B="$CARGO_TARGET_DIR/debug/vault-bench"
  V="$CARGO_TARGET_DIR/debug/vaultctl"
  [ -x "$B" ] || { echo "no vault-bench: run ./scripts/fleet.sh up first (it builds everything)" >&2; exit 1; }
  "$V" cluster status --wait-converged 10 >/dev/null 2>&1 \
    || { echo "no converged fleet: run ./scripts/fleet.sh up first" >&2; exit 1; }
}
