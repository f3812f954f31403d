//! The vocabulary of Backup Key Vault: validated ids, the commands that go
//! into the Raft log, their responses and their errors.
//!
//! No I/O, no clock, no randomness: everything here is plain data with
//! checked constructors. Every log entry is encoded with a leading format
//! version byte ([`codec`]) so that a later format can be read beside this
//! one.

pub mod codec;
mod command;
mod ids;
mod response;

pub use codec::CodecError;
pub use command::{
    Batch, Command, MAX_BATCH, MAX_PRELOAD_PER_ENTRY, MAX_RESEAL_PER_ENTRY, MAX_SESSION_TTL_MS,
    PRELOAD_RECORD_LEN, Proposal, RequestMeta, sealed_kek_version,
};
pub use ids::{
    FleetId, Generation, IdError, MAX_FLEET_ID_LEN, MAX_USER_ID_LEN, NodeId, RequestDigest,
    RequestId, SealedBytes, Timestamp, UserId,
};
pub use response::{CommandError, GRANT_REPLAY_WINDOW_MS, Reply, Response, UserStatus};
