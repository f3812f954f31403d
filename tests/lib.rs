//! End-to-end tests of real fleets: see `fleet.rs`. Run with
//! `cargo build --workspace --bins && cargo test --workspace --test fleet`
//! (`scripts/test.sh` does both).
