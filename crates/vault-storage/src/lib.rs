//! The storage of a vault node: the Raft log, Raft metadata and the vault
//! state machine in one RocksDB database, plus snapshot files.
//!
//! This is the only crate that links RocksDB. It implements openraft's
//! storage-v2 traits ([`LogStore`]: `RaftLogStorage`, [`StateMachineStore`]:
//! `RaftStateMachine`) and passes openraft's own storage test suite.
//!
//! Invariants it keeps:
//! - votes and log appends are synced to disk before openraft is told they
//!   are done; each append is one write batch, and one fsync serves every
//!   append written since the last (group commit); with a checkpointer, the
//!   HSM checkpoint records them after the fsync and before openraft hears;
//! - the state machine writes the changed state keys, `last_applied` and the
//!   membership in one atomic write batch, not synced (what it applies is
//!   durable in the log); the writes of the log and the state machine go
//!   through one writer thread, in order, and stop at the first failure;
//! - a snapshot is read from one RocksDB snapshot (state and the applied index
//!   it claims, consistently), written to a temporary file, synced and
//!   renamed; installing one replaces the state in one atomic batch;
//! - every stored value carries a format version and a CRC-32; the database
//!   carries a format marker checked on open. Corruption and unknown formats
//!   are errors that say so, never a panic or a silent reset.
//!
//! RocksDB calls run on the writer thread or tokio's blocking pool, never on
//! the async runtime.

mod chain;
mod db;
mod log_store;
mod snapshot;
mod state_machine;
pub mod tamper;
mod writer;

pub use db::{FORMAT_MARKER, StorageStats, StoreError};
pub use log_store::LogStore;
pub use state_machine::{SnapshotBuilder, StateMachineStore, StateReader, applied_commitment};

pub use vault_raft::{Entry, TypeConfig};

/// Opens (or creates) the node's database under `dir` and returns its log
/// store and state machine, which share it.
pub fn open(dir: &std::path::Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    open_with_dedup_capacity(dir, vault_core::DEFAULT_DEDUP_CAPACITY)
}

/// [`open`] with a dedup table of another size (every replica of a fleet
/// must use the same).
pub fn open_with_dedup_capacity(
    dir: &std::path::Path,
    dedup_capacity: usize,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    open_checkpointed(dir, dedup_capacity, None)
}

/// [`open_with_dedup_capacity`], advancing `checkpointer` (the node's HSM
/// checkpoint, [`vault_raft::checkpoint`]) whenever a log append, a vote or
/// an installed snapshot becomes durable, before openraft hears of it.
pub fn open_checkpointed(
    dir: &std::path::Path,
    dedup_capacity: usize,
    checkpointer: Option<std::sync::Arc<dyn vault_raft::checkpoint::Checkpointer>>,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = std::sync::Arc::new(db::Db::open(dir)?);
    let writer = std::sync::Arc::new(writer::Writer::start(db.clone(), checkpointer)?);
    let log = LogStore::new(db.clone(), writer.clone());
    let sm = StateMachineStore::open(db, writer, dir.join("snapshots"), dedup_capacity)?;
    Ok((log, sm))
}
