//! Fleets in tests: real `vault-node` processes with real RocksDB, SoftHSM
//! tokens and mutual TLS, on loopback ports.
//!
//! - [`Template`]: provisions SoftHSM tokens (one KEK, copied to every node
//!   by the ceremony), PIN files and certificates once per test process;
//!   each [`TestFleet`] starts from a copy.
//! - [`TestFleet`]: writes a fleet file with free ports, starts, kills
//!   (SIGKILL), stops (SIGTERM) and restarts nodes, runs `vaultctl`, and
//!   kills every node it started when dropped, also when a test fails.
//! - [`client`]: gRPC clients with a chosen identity, to drive and probe a
//!   fleet the way a peer or a frontend would.
//!
//! Binaries come from the target dir this test runs from; build them first
//! (`cargo build --workspace --bins`, which `scripts/test.sh` does). A
//! binary older than a source file is refused, so a test never runs stale
//! code.

pub mod client;
mod fleet;
mod process;

pub use fleet::{ELECTION_MS, FleetSpec, Template, TestFleet, node_status};
pub use process::{Bins, free_ports};
