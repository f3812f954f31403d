//! The fleet-key bundle, version 1 (byte layout in `docs/PROTOCOL.md`).
//!
//! All integers are big-endian. `short` is a `u16` length and the bytes.
//!
//! ```text
//! "BKV-FLEET-BUNDLE"  16 bytes
//! version             u8 = 1
//! fleet_id            short (UTF-8, 1..=64 bytes)
//! epoch               u64 (>= 1, strictly increasing per fleet)
//! not_before          u64 (Unix seconds)
//! not_after           u64 (Unix seconds, > not_before)
//! opaque_public_key   short (32 bytes, ristretto255)
//! hpke_public_key     short (32 bytes, X25519)
//! previous_digest     32 bytes (SHA-256 of the fleet's previous bundle; zeros for its first)
//! node count          u16 (1..=64)
//! per node, ids strictly ascending:
//!   node_id           u64
//!   datacenter        short (UTF-8, 1..=64 bytes)
//!   attestation_key   short (65 bytes, SEC1 uncompressed P-256)
//! ```
//!
//! The digest of a bundle is SHA-256 of these bytes.

use sha2::{Digest, Sha256};

use crate::Hash;
use crate::codec::{Reader, Writer};

/// The magic that opens every bundle (and separates it from anything else
/// the witness signs).
pub const MAGIC: &[u8; 16] = b"BKV-FLEET-BUNDLE";
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Most nodes a bundle may name.
pub const MAX_NODES: usize = 64;
/// Longest fleet id or datacenter name, in bytes.
pub const MAX_NAME: usize = 64;

/// One node as a bundle names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeKey {
    /// The node id.
    pub node_id: u64,
    /// Its datacenter.
    pub datacenter: String,
    /// Its attestation public key (SEC1 uncompressed P-256, 65 bytes).
    pub attestation_key: Vec<u8>,
}

/// A fleet-key bundle: what an app needs to know to trust a fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The fleet's id.
    pub fleet_id: String,
    /// Grows by at least one with every bundle of this fleet.
    pub epoch: u64,
    /// Valid from (Unix seconds).
    pub not_before: u64,
    /// Valid until (Unix seconds).
    pub not_after: u64,
    /// The OPAQUE server public key.
    pub opaque_public_key: Vec<u8>,
    /// The HPKE public key that apps seal registrations to.
    pub hpke_public_key: Vec<u8>,
    /// Digest of the fleet's previous bundle; zeros for its first.
    pub previous_digest: Hash,
    /// The nodes, ids ascending.
    pub nodes: Vec<NodeKey>,
}

/// Why bytes are not a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed fleet-key bundle: {0}")]
pub struct MalformedBundle(pub String);

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control)
}

impl Bundle {
    /// Checks the rules that [`Bundle::parse`] enforces, before encoding.
    pub fn validate(&self) -> Result<(), MalformedBundle> {
        let bad = |m: &str| Err(MalformedBundle(m.to_owned()));
        if !name_ok(&self.fleet_id) {
            return bad("fleet id must be 1 to 64 bytes without control characters");
        }
        if self.epoch == 0 {
            return bad("epoch must be at least 1");
        }
        if self.not_after <= self.not_before {
            return bad("not_after must be later than not_before");
        }
        if self.opaque_public_key.len() != 32 {
            return bad("OPAQUE public key must be 32 bytes");
        }
        if self.hpke_public_key.len() != 32 {
            return bad("HPKE public key must be 32 bytes");
        }
        if self.nodes.is_empty() || self.nodes.len() > MAX_NODES {
            return bad("a bundle names 1 to 64 nodes");
        }
        for pair in self.nodes.windows(2) {
            if pair[0].node_id >= pair[1].node_id {
                return bad("node ids must be strictly ascending");
            }
        }
        for n in &self.nodes {
            if !name_ok(&n.datacenter) {
                return bad("datacenter must be 1 to 64 bytes without control characters");
            }
            if n.attestation_key.len() != 65 || n.attestation_key[0] != 0x04 {
                return bad("attestation key must be a 65-byte uncompressed P-256 point");
            }
        }
        Ok(())
    }

    /// The canonical bytes (validated first).
    pub fn encode(&self) -> Result<Vec<u8>, MalformedBundle> {
        self.validate()?;
        let mut w = Writer(Vec::with_capacity(256 + 80 * self.nodes.len()));
        w.raw(MAGIC);
        w.u8(VERSION);
        w.short(self.fleet_id.as_bytes());
        w.u64(self.epoch);
        w.u64(self.not_before);
        w.u64(self.not_after);
        w.short(&self.opaque_public_key);
        w.short(&self.hpke_public_key);
        w.raw(&self.previous_digest);
        w.u16(self.nodes.len() as u16);
        for n in &self.nodes {
            w.u64(n.node_id);
            w.short(n.datacenter.as_bytes());
            w.short(&n.attestation_key);
        }
        Ok(w.0)
    }

    /// Parses canonical bytes; anything else (unknown version, trailing
    /// bytes, unsorted nodes, wrong key lengths) is refused.
    pub fn parse(bytes: &[u8]) -> Result<Bundle, MalformedBundle> {
        let m = |f: &'static str| MalformedBundle(format!("cannot read {f}"));
        let mut r = Reader::new(bytes);
        if r.raw(16, "magic").map_err(m)? != MAGIC {
            return Err(MalformedBundle("not a fleet-key bundle (magic)".into()));
        }
        let version = r.u8("version").map_err(m)?;
        if version != VERSION {
            return Err(MalformedBundle(format!("unknown version {version}")));
        }
        let text = |b: &[u8], f: &str| {
            String::from_utf8(b.to_vec()).map_err(|_| MalformedBundle(format!("{f} is not UTF-8")))
        };
        let fleet_id = text(r.short("fleet id").map_err(m)?, "fleet id")?;
        let epoch = r.u64("epoch").map_err(m)?;
        let not_before = r.u64("not_before").map_err(m)?;
        let not_after = r.u64("not_after").map_err(m)?;
        let opaque_public_key = r.short("OPAQUE key").map_err(m)?.to_vec();
        let hpke_public_key = r.short("HPKE key").map_err(m)?.to_vec();
        let previous_digest = r.hash("previous digest").map_err(m)?;
        let count = r.u16("node count").map_err(m)? as usize;
        let mut nodes = Vec::with_capacity(count.min(MAX_NODES));
        for _ in 0..count {
            nodes.push(NodeKey {
                node_id: r.u64("node id").map_err(m)?,
                datacenter: text(r.short("datacenter").map_err(m)?, "datacenter")?,
                attestation_key: r.short("attestation key").map_err(m)?.to_vec(),
            });
        }
        r.end().map_err(m)?;
        let bundle = Bundle {
            fleet_id,
            epoch,
            not_before,
            not_after,
            opaque_public_key,
            hpke_public_key,
            previous_digest,
            nodes,
        };
        bundle.validate()?;
        Ok(bundle)
    }

    /// The node with this id.
    pub fn node(&self, id: u64) -> Option<&NodeKey> {
        self.nodes.iter().find(|n| n.node_id == id)
    }
}

/// SHA-256 of bundle bytes: what the previous-digest chain and the
/// operator's counter-signature name.
pub fn digest(bundle_bytes: &[u8]) -> Hash {
    Sha256::digest(bundle_bytes).into()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(epoch: u64) -> Bundle {
        let mut key = vec![0x04];
        key.extend_from_slice(&[7; 64]);
        Bundle {
            fleet_id: "local-3".into(),
            epoch,
            not_before: 1_800_000_000,
            not_after: 1_900_000_000,
            opaque_public_key: vec![1; 32],
            hpke_public_key: vec![2; 32],
            previous_digest: [0; 32],
            nodes: (1..=3)
                .map(|id| NodeKey {
                    node_id: id,
                    datacenter: format!("dc{id}"),
                    attestation_key: key.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips_and_is_strict() {
        let b = sample(1);
        let bytes = b.encode().expect("encode");
        assert_eq!(Bundle::parse(&bytes).expect("parse"), b);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Bundle::parse(&longer).is_err());
        assert!(Bundle::parse(&bytes[..bytes.len() - 1]).is_err());
        let mut version = bytes.clone();
        version[16] = 2;
        assert!(Bundle::parse(&version).is_err());
        let mut unsorted = b.clone();
        unsorted.nodes.swap(0, 1);
        assert!(unsorted.encode().is_err());
        let mut zero = b.clone();
        zero.epoch = 0;
        assert!(zero.encode().is_err());
        let mut window = b;
        window.not_after = window.not_before;
        assert!(window.encode().is_err());
    }
}
