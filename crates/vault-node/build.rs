//! Refuses to build the deliberately unsafe node by accident.
//!
//! The feature `unsafe-ke2-before-commit` makes a node answer KE2 before
//! the attempt is committed (the chaos checker's bite test needs such a
//! node). `cargo build --all-features` would turn it on silently, so a
//! build with it fails unless `BKV_BUILD_UNSAFE_NODE` says, in so many
//! words, that this is the test variant (`scripts/lib/common.sh` sets it
//! for `vault-node-unsafe-ke2`, and only there).

const CONSENT: &str = "yes-this-node-releases-ke2-before-commit";

fn main() {
    println!("cargo:rerun-if-env-changed=BKV_BUILD_UNSAFE_NODE");
    if std::env::var_os("CARGO_FEATURE_UNSAFE_KE2_BEFORE_COMMIT").is_some()
        && std::env::var("BKV_BUILD_UNSAFE_NODE").as_deref() != Ok(CONSENT)
    {
        eprintln!(
            "vault-node: the feature `unsafe-ke2-before-commit` builds a node that hands out \
             KE2 before the attempt is committed (a free password guess per crash). It exists \
             only for the chaos checker's bite test. To build it anyway, set \
             BKV_BUILD_UNSAFE_NODE={CONSENT} (scripts/lib/common.sh does, for \
             vault-node-unsafe-ke2). `--all-features` never should."
        );
        std::process::exit(1);
    }
}
