//! The vault node: one process per HSM. It serves the peer and admin APIs
//! (Raft between nodes, operator calls) and the frontend API, keeps the
//! Raft log and state in RocksDB, and does every secret-key operation in
//! its HSM.
//!
//! - [`node::run`]: wiring, servers, readiness, graceful shutdown;
//! - [`admin`]: the admin API (status, init, membership, snapshots);
//! - [`frontend`]: the frontend API (OPAQUE registration and recovery);
//! - [`metrics`]: Prometheus metrics and the per-call measuring layer;
//! - [`http`]: the `/metrics`, `/ready`, `/live` endpoint;
//! - [`checkpoint`]: the anti-rollback checkpoint in the HSM.
//!
//! The fleet file is parsed by `vault_fleet::config`.

pub mod admin;
pub mod checkpoint;
pub mod frontend;
pub mod http;
pub mod lost;
pub mod metrics;
pub mod node;
mod startup;
pub mod transparency;
