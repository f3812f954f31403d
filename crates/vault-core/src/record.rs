//! Per-user records and the fleet-wide settings.

use serde::{Deserialize, Serialize};
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
    /// Grows with every registration; kept across deletion and locking so a
    /// generation is never reused.
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
        /// Attempts granted since registration or the last success.
        attempts_used: u32,
    },
    /// The attempts ran out; the material is erased.
    Locked,
    /// Deleted; the material is erased.
    Deleted,
}
