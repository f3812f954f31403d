//! The fleet's Raft plumbing, without storage: openraft's type config and
//! the Raft network over gRPC with mutual TLS.
//!
//! - [`wire`]: how openraft messages travel inside protobuf bytes.
//! - [`network`]: openraft's `RaftNetworkFactory` over persistent channels.
//! - [`peer`]: the server side of the peer API, with the caller checks.
//! - [`proposer`]: proposing a command here or forwarding it to the leader.
//! - [`checkpoint`]: the anti-rollback mark storage advances in the HSM.
//!
//! The fleet file, identities, PKI and TLS settings live in `vault-fleet`
//! (which links no openraft, so the app SDK and the witness can use it).
//! Storage (RocksDB) lives in `vault-storage`, which depends on this crate
//! for [`TypeConfig`]; this crate never links RocksDB.

use std::io::Cursor;

pub mod checkpoint;
pub mod network;
pub mod peer;
pub mod proposer;
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
