//! How a client decides to trust a fleet's keys.
//!
//! An app pins two public keys, the witness's and the operator's, and
//! nothing else. Before it sends anything secret (the sealed registration,
//! or KE3) it checks the signed bundle the node handed out:
//! [`vault_transparency::Pins::verify`] (both signatures, the tree head,
//! the inclusion proof, the fleet, the validity window, no epoch older
//! than the newest it has seen) and that the OPAQUE and HPKE keys it is
//! about to use are the bundle's. The newest epoch seen is kept in a small
//! file, so a restart does not forget it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use vault_proto::v1::FleetKeys;
use vault_transparency::signed::Verified;
use vault_transparency::{BundleError, Pins};

use crate::ClientError;

/// What a client trusts.
#[derive(Debug)]
pub enum Trust {
    /// The pinned witness and operator keys (what an app uses).
    Pinned(Box<PinnedTrust>),
    /// Whatever keys a node with a fleet certificate hands out. Only for
    /// operator tools and tests on a fleet without a witness: a party that
    /// holds the fleet CA could hand out other keys.
    FleetCertificateOnly,
}

/// Pins and the newest epoch seen per fleet.
#[derive(Debug)]
pub struct PinnedTrust {
    pins: Pins,
    seen: Mutex<BTreeMap<String, u64>>,
    store: Option<PathBuf>,
}

fn read_store(path: &Path) -> Result<BTreeMap<String, u64>, ClientError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| ClientError::Setup(format!("epoch file {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(ClientError::Setup(format!(
            "epoch file {}: {e}",
            path.display()
        ))),
    }
}

fn write_store(path: &Path, seen: &BTreeMap<String, u64>) -> Result<(), ClientError> {
    let text = serde_json::to_string_pretty(seen)
        .map_err(|e| ClientError::Setup(format!("epoch file: {e}")))?;
    // Exclusive temporary file, exact mode, rename: a planted file or link
    // at a predictable name neither lends its mode nor gets written through.
    vault_fleet::pki::write_file(path, text.as_bytes(), 0o600)
        .map_err(|e| ClientError::Setup(format!("epoch file {}: {e}", path.display())))
}

impl PinnedTrust {
    /// Pins, with the newest epochs kept in `store` (created on first
    /// use); `None` keeps them in memory only.
    pub fn new(pins: Pins, store: Option<PathBuf>) -> Result<PinnedTrust, ClientError> {
        let seen = match &store {
            Some(p) => read_store(p)?,
            None => BTreeMap::new(),
        };
        Ok(PinnedTrust {
            pins,
            seen: Mutex::new(seen),
            store,
        })
    }

    /// The newest epoch seen for `fleet` (0: none).
    pub fn newest_epoch(&self, fleet: &str) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(fleet).copied().unwrap_or(0)
    }

    /// Checks `keys` (from a node's answer) for `fleet`; remembers a newer
    /// epoch.
    pub fn check(&self, fleet: &str, keys: &FleetKeys) -> Result<Verified, ClientError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let newest = seen.get(fleet).copied().unwrap_or(0);
        let verified = self
            .pins
            .verify(&keys.signed_bundle, fleet, now, newest)
            .map_err(ClientError::Bundle)?;
        verified
            .check_keys(&keys.opaque_public_key, &keys.hpke_public_key)
            .map_err(ClientError::Bundle)?;
        if verified.bundle.epoch > newest {
            seen.insert(fleet.to_owned(), verified.bundle.epoch);
            if let Some(p) = &self.store {
                write_store(p, &seen)?;
            }
        }
        Ok(verified)
    }
}

impl Trust {
    /// Checks a node's keys for `fleet` before anything secret is sent.
    pub(crate) fn check(&self, fleet: &str, keys: &FleetKeys) -> Result<(), ClientError> {
        match self {
            Trust::Pinned(p) => p.check(fleet, keys).map(drop),
            Trust::FleetCertificateOnly => Ok(()),
        }
    }
}

/// A [`BundleError`] for "the server's OPAQUE key is not the bundle's".
pub(crate) fn opaque_key_mismatch() -> ClientError {
    ClientError::Bundle(BundleError::KeyMismatch("OPAQUE server key"))
}
