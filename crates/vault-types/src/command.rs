//! The commands that go through the Raft log.

use serde::{Deserialize, Serialize};

use crate::ids::{FleetId, Generation, RequestDigest, RequestId, SealedBytes, Timestamp, UserId};

/// A request id and the digest of the request body it was first used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMeta {
    /// The client's id for this request.
    pub id: RequestId,
    /// SHA-256 of the request body (for `BeginAttempt`, of the user and KE1).
    pub digest: RequestDigest,
}

/// What the state machine is asked to do. Everything non-deterministic
/// (sealing, the time, ids) was done by the proposing node and is carried
/// here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates the fleet, once.
    InitFleet {
        /// The fleet's name.
        fleet_id: FleetId,
        /// The OPAQUE server setup, sealed by the proposing node's HSM.
        sealed_server_setup: SealedBytes,
        /// The fleet's HPKE private key (X25519), sealed likewise. Apps seal
        /// `RegisterFinish` payloads to its public key.
        sealed_hpke_key: SealedBytes,
        /// The most attempts any registration may ask for.
        max_attempts_cap: u32,
    },
    /// Registers (or re-registers) a user: a new generation with a full
    /// attempt budget, if and only if the user's generation is still
    /// `expected_generation` (compare-and-set).
    Register {
        /// The user.
        user: UserId,
        /// The user's generation the app saw in `RegisterStart` and sealed
        /// into its payload (0 for a user never seen); the record gets
        /// `expected_generation + 1`. Refused unless it is still the
        /// current one, so a replayed registration (any request id) can
        /// never undo a lockout, a delete or a password change, and two
        /// racing registrations cannot both win.
        expected_generation: Generation,
        /// The OPAQUE record, `enc_K` and the registration nonce, sealed by
        /// the proposing node for generation `expected_generation + 1`.
        sealed_record: SealedBytes,
        /// Wrong guesses allowed before the record is erased (the app's
        /// choice, from its sealed payload).
        max_attempts: u32,
    },
    /// Consumes one attempt and hands out the sealed record, so that the
    /// proposing node can compute KE2 once this entry is committed.
    BeginAttempt {
        /// The user.
        user: UserId,
    },
    /// Records the outcome of an attempt of `generation`.
    FinishAttempt {
        /// The user.
        user: UserId,
        /// The generation the attempt was granted for.
        generation: Generation,
        /// Whether KE3 verified.
        success: bool,
    },
    /// Erases a user's record, leaving a tombstone.
    Delete {
        /// The user.
        user: UserId,
    },
    /// Installs a new signed fleet-key bundle.
    SetBundle {
        /// The bundle bytes.
        bundle: Vec<u8>,
        /// Its epoch; must grow.
        epoch: u64,
    },
    /// Benchmarks' bulk path: adds `count` synthetic users
    /// `preload-<first + i>` (zero-padded to 10 digits) with synthetic
    /// sealed records of [`PRELOAD_RECORD_LEN`] bytes, so that a fleet can
    /// be sized like a real one in minutes. They cannot be recovered (their
    /// records were sealed by nobody); existing users are left alone.
    Preload {
        /// The first number.
        first: u64,
        /// How many, at most [`MAX_PRELOAD_PER_ENTRY`].
        count: u32,
    },
    /// KEK rotation: material re-sealed by the leader's HSM under KEK
    /// version `kek_version`. Counters, budgets and generations are never
    /// touched; a record replaced only if it is still the active record of
    /// the generation it was re-sealed for (a registration, a lockout or a
    /// delete in between wins, and the record is simply not replaced).
    Reseal {
        /// The KEK version every blob here is sealed under (checked
        /// against each blob's header).
        kek_version: u32,
        /// The fleet's OPAQUE server setup and HPKE key, re-sealed, if this
        /// entry moves them (the first step of a rotation: from then on,
        /// new records are sealed under `kek_version`).
        fleet: Option<(SealedBytes, SealedBytes)>,
        /// Users' records, each for the generation it was read at.
        records: Vec<(UserId, Generation, SealedBytes)>,
    },
    /// Records the outcome of one granted attempt of `generation`: the one
    /// whose grant answered `attempt` (its serial). A success forgives the
    /// attempts granted up to and including it, never one granted after
    /// it, so a success that lands late (after a newer one, or with guesses
    /// granted in between) gives nothing back. What this build proposes;
    /// `FinishAttempt`, which older builds wrote, forgives every attempt.
    /// (Last in the enum: earlier variants keep their encoding.)
    FinishGrant {
        /// The user.
        user: UserId,
        /// The generation the attempt was granted for.
        generation: Generation,
        /// The grant's serial (`AttemptGranted::attempt`).
        attempt: u32,
        /// Whether KE3 verified.
        success: bool,
    },
    /// `BeginAttempt` with the fleet's session TTL (the fleet file's
    /// `session_ttl_s`, in ms): a replay of its request id is answered with
    /// the grant only within that time of it, so it never opens a login
    /// state after the first one's could have expired, whatever the TTL
    /// (issue 25). What this build proposes; `BeginAttempt`, which older
    /// builds wrote, keeps the fixed [`crate::GRANT_REPLAY_WINDOW_MS`].
    /// (Last in the enum: earlier variants keep their encoding.)
    BeginAttemptTtl {
        /// The user.
        user: UserId,
        /// How long a replay may still get the grant, in ms: 1 to
        /// [`MAX_SESSION_TTL_MS`].
        session_ttl_ms: u64,
    },
}

/// The longest session TTL a fleet file may set (600 s), in ms.
pub const MAX_SESSION_TTL_MS: u64 = 600_000;

/// Most records one `Reseal` entry carries: at most about 150 KB (a user id
/// of up to 256 bytes and a record of about 320), so that openraft's 300
/// entries per AppendEntries stay inside the peers' 64 MiB message limit
/// even when a follower catches up over a run of them (one rotation step
/// runs at a time on a leader, so one entry carries one `Reseal`).
pub const MAX_RESEAL_PER_ENTRY: usize = 250;

/// The KEK version a sealed blob names in its header (format 1: a version
/// byte of 1, then the KEK version, big-endian), or `None` for bytes that
/// are not such a blob (the synthetic records of `Preload`, say).
pub fn sealed_kek_version(blob: &[u8]) -> Option<u32> {
    match blob {
        [1, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Length of a preloaded user's synthetic sealed record: about a real
/// record's (OPAQUE upload, `enc_K`, blob header and tag).
pub const PRELOAD_RECORD_LEN: usize = 320;
/// Most users one `Preload` entry adds (bounds an entry's apply time and
/// write batch).
pub const MAX_PRELOAD_PER_ENTRY: u32 = 10_000;

/// One log entry's payload: a command, when it was proposed, and the request
/// it answers.
///
/// Serialised as one byte string holding [`crate::codec::encode_proposal`]'s
/// output, so every entry, on disk and on the wire, starts with its format
/// version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Present for client requests; makes the command idempotent.
    pub request: Option<RequestMeta>,
    /// The proposing node's clock.
    pub at: Timestamp,
    /// The command.
    pub command: Command,
}

impl Proposal {
    /// Whether a peer may forward this proposal to the leader (`Peer.Forward`):
    /// only what a frontend call produces on a follower, well-formed.
    ///
    /// - A request id must be present (every frontend command has one; it
    ///   makes the command idempotent and its reply findable).
    /// - `Register` with a budget of at least one attempt and a sealed
    ///   record; `BeginAttempt`; `FinishGrant` of a real generation and
    ///   grant serial (≥ 1); never an older build's `FinishAttempt`;
    ///   `Delete`.
    /// - Operator commands (`InitFleet`, `SetBundle`, `Preload`, `Reseal`) are never
    ///   forwarded: the leader takes them from the operator's own
    ///   connection, authenticated by the operator's certificate (whose key
    ///   is in the operator's token), so a node's certificate cannot make
    ///   one. Membership changes are not commands at all (admin API, on the
    ///   leader).
    pub fn check_forwardable(&self) -> Result<(), &'static str> {
        if self.request.is_none() {
            return Err("a forwarded command must carry a request id");
        }
        match &self.command {
            Command::Register {
                sealed_record,
                max_attempts,
                ..
            } => {
                if *max_attempts == 0 {
                    return Err("a forwarded Register must allow at least one attempt");
                }
                if sealed_record.0.is_empty() {
                    return Err("a forwarded Register must carry a sealed record");
                }
                Ok(())
            }
            // This build proposes FinishGrant; an older build's finish
            // forgives every attempt, which no node of this build asks for
            // (a fleet runs one version: stop, upgrade, start).
            Command::FinishAttempt { .. } => Err(
                "a forwarded FinishAttempt is an older build's; this build finishes attempts with FinishGrant",
            ),
            Command::FinishGrant {
                generation,
                attempt,
                ..
            } if generation.0 == 0 || *attempt == 0 => {
                Err("a forwarded FinishGrant must name the generation and the grant it finishes")
            }
            Command::BeginAttemptTtl { session_ttl_ms, .. }
                if *session_ttl_ms == 0 || *session_ttl_ms > MAX_SESSION_TTL_MS =>
            {
                Err("a forwarded BeginAttemptTtl must carry a session TTL of 1 ms to 600 s")
            }
            // Nor an older build's BeginAttempt (its replays keep a fixed
            // window instead of the fleet's session TTL).
            Command::BeginAttempt { .. } => Err(
                "a forwarded BeginAttempt is an older build's; this build begins attempts with BeginAttemptTtl",
            ),
            Command::BeginAttemptTtl { .. }
            | Command::FinishGrant { .. }
            | Command::Delete { .. } => Ok(()),
            Command::InitFleet { .. }
            | Command::SetBundle { .. }
            | Command::Preload { .. }
            | Command::Reseal { .. } => Err(
                "operator commands are committed on the leader from the operator's connection, never forwarded by a peer",
            ),
        }
    }
}

/// One Raft log entry's payload: proposals the leader commits together, in
/// order (one log write, one fsync and one replication round for all of
/// them). Each keeps its own request id and gets its own reply; the state
/// machine applies them one after another as if they were consecutive
/// entries. Never empty.
///
/// Serialised as one byte string holding [`crate::codec::encode_batch`]'s output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch(pub Vec<Proposal>);

/// The most proposals one log entry carries.
pub const MAX_BATCH: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(request: bool, command: Command) -> Result<(), &'static str> {
        Proposal {
            request: request.then_some(RequestMeta {
                id: RequestId([1; 16]),
                digest: RequestDigest([2; 32]),
            }),
            at: Timestamp(0),
            command,
        }
        .check_forwardable()
    }

    fn user() -> UserId {
        UserId::new("alice").unwrap()
    }

    #[test]
    fn a_peer_forwards_only_well_formed_frontend_commands() {
        let register = |max_attempts, sealed: Vec<u8>| Command::Register {
            user: user(),
            expected_generation: Generation(0),
            sealed_record: SealedBytes(sealed),
            max_attempts,
        };
        let finish = |g, attempt| Command::FinishGrant {
            user: user(),
            generation: Generation(g),
            attempt,
            success: true,
        };
        let legacy = Command::FinishAttempt {
            user: user(),
            generation: Generation(1),
            success: true,
        };
        for ok in [
            register(10, vec![1]),
            Command::BeginAttemptTtl {
                user: user(),
                session_ttl_ms: 60_000,
            },
            finish(1, 1),
            Command::Delete { user: user() },
        ] {
            assert_eq!(forwarded(true, ok.clone()), Ok(()), "{ok:?}");
            assert!(forwarded(false, ok).is_err(), "no request id");
        }
        for bad in [
            register(0, vec![1]),
            register(10, vec![]),
            finish(0, 1),
            finish(1, 0),
            legacy,
            Command::BeginAttempt { user: user() },
            Command::BeginAttemptTtl {
                user: user(),
                session_ttl_ms: 0,
            },
            Command::BeginAttemptTtl {
                user: user(),
                session_ttl_ms: MAX_SESSION_TTL_MS + 1,
            },
        ] {
            assert!(forwarded(true, bad).is_err());
        }
        for operator in [
            Command::SetBundle {
                bundle: vec![1],
                epoch: u64::MAX,
            },
            Command::Preload { first: 0, count: 1 },
            Command::Reseal {
                kek_version: 2,
                fleet: None,
                records: vec![],
            },
            Command::InitFleet {
                fleet_id: FleetId::new("f").unwrap(),
                sealed_server_setup: SealedBytes(vec![1]),
                sealed_hpke_key: SealedBytes(vec![1]),
                max_attempts_cap: 10,
            },
        ] {
            let why = forwarded(true, operator).unwrap_err();
            assert!(why.contains("operator"), "{why}");
        }
    }
}
