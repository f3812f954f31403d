//! What every party of a fleet needs to know about it, without Raft or
//! storage: the fleet file, who a certificate says its holder is, issuing
//! certificates, TLS settings, and the checks of who may call what.
//!
//! - [`config`]: the versioned TOML fleet file, validated into [`config::Fleet`].
//! - [`identity`]: what a certificate says its holder is (a node, the
//!   operator, a frontend) and the names that say it.
//! - [`pki`]: issuing the fleet CA, node, operator and frontend certificates.
//! - [`tls`]: rustls/tonic TLS settings and the once-per-process provider.
//! - [`callers`]: the identity of a gRPC caller, and the static checks
//!   "must be the operator", "must be a frontend", "must be a node".
//! - [`serve`]: accepting TLS connections with a connection cap, a
//!   handshake deadline and TCP keepalive.
//!
//! Must not depend on: openraft, RocksDB, PKCS#11. The app SDK
//! (`vault-client`), the witness and the tools link this crate, and none of
//! them speaks Raft; what needs the Raft membership (is this node a member?)
//! stays in `vault-raft`.

pub mod callers;
pub mod config;
pub mod identity;
pub mod pki;
pub mod serve;
pub mod tls;
