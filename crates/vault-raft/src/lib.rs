//! The fleet's Raft plumbing, without storage: openraft's type config, the
//! fleet config file, certificate identities and issuance, and the Raft
//! network over gRPC with mutual TLS.
//!
//! - [`config`]: the versioned TOML fleet file, validated into [`config::Fleet`].
//! - [`identity`]: what a certificate says its holder is (a node, the
//!   operator, a frontend) and the names that say it.
//! - [`pki`]: issuing the fleet CA, node, operator and frontend certificates.
//! - [`tls`]: rustls/tonic TLS settings and the once-per-process provider.
//! - [`wire`]: how openraft messages travel inside protobuf bytes.
//! - [`network`]: openraft's `RaftNetworkFactory` over persistent channels.
//! - [`peer`]: the server side of the peer API, with the caller checks.
//! - [`proposer`]: proposing a command here or forwarding it to the leader.
//!
//! Storage (RocksDB) lives in `vault-storage`, which depends on this crate
//! for [`TypeConfig`]; this crate never links RocksDB.

use std::io::Cursor;

pub mod config;
pub mod identity;
pub mod network;
pub mod peer;
pub mod pki;
pub mod proposer;
pub mod tls;
pub mod wire;

openraft::declare_raft_types!(
    /// The openraft types of a vault fleet.
    pub TypeConfig:
        D = vault_types::Batch,
        R = Vec<vault_types::Reply>,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A Raft log entry of a vault fleet.
pub type Entry = openraft::Entry<TypeConfig>;

/// A running Raft node of a vault fleet.
pub type Raft = openraft::Raft<TypeConfig>;
