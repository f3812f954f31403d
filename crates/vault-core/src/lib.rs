//! The replicated state of a vault fleet and the pure function that advances
//! it: `apply(state, position, proposal) -> reply`.
//!
//! No I/O, no clock, no randomness, no HSM: whatever is non-deterministic was
//! done by the proposing node and arrives inside the [`Proposal`]. So every
//! replica that applies the same log holds the same state, which
//! [`VaultState::digest`] lets tests and operators compare.
//!
//! Invariants this crate keeps (and tests, with proptest):
//! - **guess bound**: between two successful recoveries of one registration
//!   generation, at most `max_attempts` attempts are granted;
//! - **erasure**: a locked or deleted record holds no sealed material, and no
//!   reply — not even a replayed one from the dedup table — hands it out;
//! - **idempotency**: a request id applied before returns its recorded reply
//!   when the body digest matches, and `RequestIdReused` when it does not;
//!   it never grants a second attempt;
//! - **determinism**: the dedup table is bounded and evicts by log position.
//!
//! Must not depend on: RocksDB, PKCS#11, the network, a clock, OPAQUE (the
//! protocol's cryptography is `vault-protocol`; the state machine only
//! stores the sealed bytes it is given).

mod dedup;
mod key;
pub mod lthash;
mod record;
mod state;

pub use dedup::{DEFAULT_DEDUP_CAPACITY, DedupEntry};

pub use key::StateKey;
pub use record::{Fleet, RecordStatus, UserRecord};
pub use state::{Applied, StateError, VaultState};
pub use vault_types::Proposal;

/// Where a proposal sits in the log: its entry's index times 2^16 plus its
/// place in the entry's batch. Unique and increasing along the log, so the
/// dedup table can evict by it (a batch holds at most
/// [`vault_types::MAX_BATCH`] proposals, far fewer than 2^16).
pub fn log_position(index: u64, place: usize) -> u64 {
    (index << 16) | (place as u64 & 0xffff)
}
