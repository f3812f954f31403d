//! Per-user records and the fleet-wide settings.

use serde::{Deserialize, Serialize};
use vault_types::codec::{self, CodecError, VALUE_V1};
use vault_types::{FleetId, Generation, SealedBytes, Timestamp};

/// Fleet-wide state, set by `InitFleet` and `SetBundle`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// The fleet's name.
    pub fleet_id: FleetId,
    /// The OPAQUE server setup, sealed.
    pub sealed_server_setup: SealedBytes,
    /// The fleet's HPKE private key, sealed.
    pub sealed_hpke_key: SealedBytes,
    /// The most attempts a registration may ask for.
    pub max_attempts_cap: u32,
    /// The current signed fleet-key bundle and its epoch.
    pub bundle: Option<(u64, Vec<u8>)>,
    /// When the fleet was created (proposer's clock).
    pub created_at: Timestamp,
}

/// One user's registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The version of this user's state: it grows with every registration,
    /// and a lockout or a delete moves it once more (the tombstone has a
    /// generation of its own), so a registration sealed over the active
    /// record can never apply after it was locked or deleted. Never reused.
    pub generation: Generation,
    /// Active with its material, or an erased tombstone.
    pub status: RecordStatus,
    /// When this generation was registered.
    pub registered_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
}

/// Whether a record still holds its sealed material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordStatus {
    /// Usable.
    Active {
        /// The sealed OPAQUE record and `enc_K`.
        sealed_record: SealedBytes,
        /// The attempt budget.
        max_attempts: u32,
        /// Attempts granted and not forgiven by a success: always the
        /// newest ones, serials `grants - attempts_used + 1 ..= grants`.
        attempts_used: u32,
        /// The serial of the newest attempt granted for this generation
        /// (the first is 1). A success forgives the attempts up to its
        /// own serial, never one granted after it (issue 26).
        grants: u32,
    },
    /// The attempts ran out; the material is erased. `of` is the
    /// generation whose budget ran out (the tombstone's is the next one).
    Locked {
        /// The generation that locked.
        of: Generation,
    },
    /// Deleted; the material is erased. `of` is the generation that was
    /// deleted (the tombstone's is the next one).
    Deleted {
        /// The generation that was deleted.
        of: Generation,
    },
}

/// Format version of user records that carry a grant serial that differs
/// from their count of attempts used. A record whose serial equals the
/// count is still written in the first format, byte for byte as before, so
/// a state written by an older build keeps its commitment.
pub const USER_V2: u8 = 2;

/// A user record as the first format wrote it: no grant serial (it was the
/// count of attempts used).
#[derive(Serialize, Deserialize)]
struct UserRecordV1 {
    generation: Generation,
    status: RecordStatusV1,
    registered_at: Timestamp,
    updated_at: Timestamp,
}

#[derive(Serialize, Deserialize)]
enum RecordStatusV1 {
    Active {
        sealed_record: SealedBytes,
        max_attempts: u32,
        attempts_used: u32,
    },
    Locked {
        of: Generation,
    },
    Deleted {
        of: Generation,
    },
}

impl UserRecord {
    /// The persisted bytes: the first format when it can say everything
    /// (no serial, or a serial equal to the attempts used), else format 2.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let status = match &self.status {
            RecordStatus::Active {
                sealed_record,
                max_attempts,
                attempts_used,
                grants,
            } if grants == attempts_used => RecordStatusV1::Active {
                sealed_record: sealed_record.clone(),
                max_attempts: *max_attempts,
                attempts_used: *attempts_used,
            },
            RecordStatus::Active { .. } => return codec::encode(USER_V2, self),
            RecordStatus::Locked { of } => RecordStatusV1::Locked { of: *of },
            RecordStatus::Deleted { of } => RecordStatusV1::Deleted { of: *of },
        };
        codec::encode(
            VALUE_V1,
            &UserRecordV1 {
                generation: self.generation,
                status,
                registered_at: self.registered_at,
                updated_at: self.updated_at,
            },
        )
    }

    /// A record from either format.
    pub fn decode(bytes: &[u8]) -> Result<UserRecord, CodecError> {
        if bytes.first() != Some(&VALUE_V1) {
            return codec::decode("user record", USER_V2, bytes);
        }
        let v: UserRecordV1 = codec::decode("user record", VALUE_V1, bytes)?;
        let status = match v.status {
            RecordStatusV1::Active {
                sealed_record,
                max_attempts,
                attempts_used,
            } => RecordStatus::Active {
                sealed_record,
                max_attempts,
                attempts_used,
                grants: attempts_used,
            },
            RecordStatusV1::Locked { of } => RecordStatus::Locked { of },
            RecordStatusV1::Deleted { of } => RecordStatus::Deleted { of },
        };
        Ok(UserRecord {
            generation: v.generation,
            status,
            registered_at: v.registered_at,
            updated_at: v.updated_at,
        })
    }

    /// Erases the record's material: `tombstone` (locked or deleted) under
    /// the next generation, so that nothing sealed over the erased one can
    /// apply again.
    pub(crate) fn bury(&mut self, tombstone: RecordStatus, at: Timestamp) {
        self.status = tombstone;
        // 2^64 generations are out of reach; saturating keeps apply total.
        self.generation = Generation(self.generation.0.saturating_add(1));
        self.updated_at = at;
    }
}
