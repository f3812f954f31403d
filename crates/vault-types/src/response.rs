//! What applying a command returns.

use serde::{Deserialize, Serialize};

use crate::ids::{FleetId, Generation, SealedBytes};

/// A command's successful result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The fleet exists now.
    FleetInitialized {
        /// Its name.
        fleet_id: FleetId,
    },
    /// The user is registered under this generation.
    Registered {
        /// The new generation.
        generation: Generation,
    },
    /// One attempt was consumed; here is the sealed record to compute KE2.
    AttemptGranted {
        /// The record's generation.
        generation: Generation,
        /// The sealed OPAQUE record and `enc_K`.
        sealed_record: SealedBytes,
        /// Attempts left after this one.
        attempts_left: u32,
        /// The grant's serial in this generation (1-based, never reused):
        /// what `FinishGrant` names. Older builds counted from the last
        /// success instead.
        attempt: u32,
    },
    /// The attempt's outcome is recorded.
    AttemptFinished {
        /// The generation.
        generation: Generation,
        /// Whether it succeeded.
        success: bool,
        /// Attempts left now.
        attempts_left: u32,
        /// Whether this failure used up the last attempt and erased the record.
        locked: bool,
    },
    /// The user's record is erased.
    Deleted,
    /// The bundle is installed.
    BundleSet {
        /// Its epoch.
        epoch: u64,
    },
    /// Synthetic users added.
    Preloaded {
        /// How many were new.
        added: u32,
    },
    /// Material re-sealed (KEK rotation).
    Resealed {
        /// Records replaced.
        records: u32,
        /// Records left alone because they changed since they were read.
        skipped: u32,
        /// Whether the fleet's secrets were replaced.
        fleet: bool,
    },
}

/// Why a command was refused. Deterministic: every replica refuses alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    /// `InitFleet` ran before.
    #[error("the fleet is initialised already")]
    FleetAlreadyInitialized,
    /// A user command arrived before `InitFleet`.
    #[error("the fleet is not initialised")]
    FleetNotInitialized,
    /// `max_attempts` outside `1..=cap`.
    #[error("max_attempts {requested} is outside 1..={cap}")]
    MaxAttemptsOutOfRange {
        /// Asked for.
        requested: u32,
        /// The fleet's cap.
        cap: u32,
    },
    /// No such user, or the user was deleted.
    #[error("no such user")]
    NotFound,
    /// The attempts are used up and the record is erased.
    #[error("the record is locked: no attempts left")]
    Locked,
    /// The command names a generation other than the current one.
    #[error("generation {given:?} is not the current generation {current:?}")]
    StaleGeneration {
        /// The current one.
        current: Generation,
        /// The one named.
        given: Generation,
    },
    /// `FinishAttempt` with no attempt outstanding.
    #[error("no attempt is in progress for this generation")]
    NoAttemptInProgress,
    /// The request id was used before with a different request body.
    #[error("the request id was used before for a different request")]
    RequestIdReused,
    /// A bundle's epoch is not the one after the current one.
    #[error(
        "bundle epoch {given} does not follow the current epoch {current} (the next is current + 1)"
    )]
    EpochNotNext {
        /// The current epoch.
        current: u64,
        /// The one offered.
        given: u64,
    },
    /// A replayed `BeginAttempt` whose attempt was granted, after which the
    /// record locked (a later attempt found the budget spent): the attempt
    /// of this request was consumed, and there is nothing left to grant.
    #[error("the record is locked (this request's attempt was granted before it locked)")]
    LockedAfterGrant,
    /// A `Preload` of 0 or more than `max` users.
    #[error("a preload entry adds 1 to {max} users, not {count}")]
    PreloadCount {
        /// Asked for.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// A `Reseal` that is malformed: a blob not under the KEK version it
    /// names, too many records, or records before the fleet's secrets
    /// moved to that version.
    #[error("reseal refused: {0}")]
    Reseal(String),
    /// A `Register` whose record is sealed under another KEK version than
    /// the fleet's (the proposing node had not applied a rotation yet). Not
    /// recorded in the dedup table: a retry under the same request id may
    /// succeed.
    #[error("the record is sealed under KEK v{sealed}, not the fleet's v{fleet}; register again")]
    OldKek {
        /// The fleet's version.
        fleet: u32,
        /// The record's.
        sealed: u32,
    },
    /// A replayed `BeginAttempt` whose grant is older than a session lives
    /// ([`GRANT_REPLAY_WINDOW_MS`]), or was followed by a success that
    /// reset the counter: its session is gone, and a replay opens none.
    /// (Last in the enum: earlier variants keep their encoding.)
    #[error("the session this request began has expired")]
    GrantExpired,
}

/// How long after its grant a replayed `BeginAttempt` is still answered
/// with that grant (by the proposing nodes' clocks, carried in the
/// commands): the default session TTL. A frontend that replays request ids
/// of finished logins then holds no login places with them.
pub const GRANT_REPLAY_WINDOW_MS: u64 = 60_000;

/// What a log entry's application returns to openraft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A blank or membership entry: nothing for a client.
    Raft,
    /// A vault command's result.
    Vault(Result<Response, CommandError>),
}

/// What `Status(user)` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserStatus {
    /// Never registered.
    Unknown,
    /// Registered and usable.
    Active {
        /// Current generation.
        generation: Generation,
        /// Attempts left.
        attempts_left: u32,
        /// The budget.
        max_attempts: u32,
    },
    /// Attempts used up; the record is erased.
    Locked {
        /// The generation that locked.
        generation: Generation,
    },
    /// Deleted; the record is erased.
    Deleted {
        /// The generation that was deleted.
        generation: Generation,
    },
}
