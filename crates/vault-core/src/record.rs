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
        /// Attempts granted since registration or the last success.
        attempts_used: u32,
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

impl UserRecord {
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
