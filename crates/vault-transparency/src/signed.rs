//! The signed bundle nodes hand out, and the checks an app runs on it.
//!
//! Layout (big-endian; `short` = `u16` length + bytes, `long` = `u32`):
//!
//! ```text
//! "BKV-SIGNED-BUNDLE"  17 bytes
//! version              u8 = 1
//! bundle               long  (the bundle bytes, see crate::bundle)
//! witness_signature    short (Ed25519 over the bundle bytes, 64 bytes)
//! operator_signature   short (ECDSA P-256/SHA-256 over digest || witness_signature, r || s)
//! log_index            u64   (the bundle's leaf in the witness log)
//! tree_head            u64 size, u64 timestamp_ms, 32-byte root, short signature
//! inclusion_proof      u16 count, then count 32-byte hashes
//! ```

use ed25519_dalek::{Signature as EdSignature, VerifyingKey as EdKey};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature as EcSignature, VerifyingKey as EcKey};

use crate::Hash;
use crate::bundle::{self, Bundle};
use crate::codec::{Reader, Writer};
use crate::head::TreeHead;
use crate::merkle;

/// The magic that opens a signed bundle.
pub const MAGIC: &[u8; 17] = b"BKV-SIGNED-BUNDLE";
/// The container version.
pub const VERSION: u8 = 1;
/// Longest inclusion proof accepted (a tree of 2^64 leaves needs 64).
pub const MAX_PROOF: usize = 64;

/// A bundle with everything needed to check it offline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedBundle {
    /// The bundle's canonical bytes.
    pub bundle: Vec<u8>,
    /// The witness's Ed25519 signature over `bundle`.
    pub witness_signature: Vec<u8>,
    /// The operator's ECDSA P-256 signature over [`countersign_message`].
    pub operator_signature: Vec<u8>,
    /// The bundle's leaf index in the witness log.
    pub log_index: u64,
    /// A tree head that includes the leaf.
    pub tree_head: TreeHead,
    /// The leaf's audit path in `tree_head`'s tree.
    pub inclusion_proof: Vec<Hash>,
}

/// What the operator counter-signs: the bundle digest, then the witness
/// signature.
pub fn countersign_message(bundle_bytes: &[u8], witness_signature: &[u8]) -> Vec<u8> {
    let mut m = bundle::digest(bundle_bytes).to_vec();
    m.extend_from_slice(witness_signature);
    m
}

/// Which check a bundle failed. An app that gets any of these sends
/// nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The node handed out no bundle.
    #[error("the fleet handed out no signed key bundle")]
    Missing,
    /// The bytes do not parse.
    #[error("malformed signed bundle: {0}")]
    Malformed(String),
    /// The witness signature is absent.
    #[error("the bundle carries no witness signature")]
    MissingWitnessSignature,
    /// The operator counter-signature is absent.
    #[error("the bundle carries no operator counter-signature")]
    MissingOperatorSignature,
    /// The witness signature does not verify under the pinned witness key.
    #[error("the witness signature does not verify under the pinned witness key")]
    WitnessSignature,
    /// The counter-signature does not verify under the pinned operator key.
    #[error("the operator counter-signature does not verify under the pinned operator key")]
    OperatorSignature,
    /// The tree head's signature does not verify.
    #[error("the witness tree head signature does not verify")]
    TreeHeadSignature,
    /// The inclusion proof does not lead to the tree head's root.
    #[error("the inclusion proof does not place the bundle in the witness log")]
    InclusionProof,
    /// The bundle names another fleet.
    #[error("the bundle is for fleet {got:?}, expected {expected:?}")]
    WrongFleet {
        /// The fleet the client talks to.
        expected: String,
        /// The bundle's.
        got: String,
    },
    /// Not valid yet.
    #[error("the bundle is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Start of validity.
        not_before: u64,
        /// The client's clock.
        now: u64,
    },
    /// No longer valid.
    #[error("the bundle expired at {not_after} (now {now})")]
    Expired {
        /// End of validity.
        not_after: u64,
        /// The client's clock.
        now: u64,
    },
    /// Older than a bundle this client has seen.
    #[error("epoch rollback: the bundle has epoch {got}, this client has seen epoch {seen}")]
    EpochRollback {
        /// Newest epoch seen.
        seen: u64,
        /// The bundle's.
        got: u64,
    },
    /// A key the fleet uses is not the bundle's.
    #[error("the {0} the fleet uses is not the one in its signed bundle")]
    KeyMismatch(&'static str),
}

impl SignedBundle {
    /// The container bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(self.bundle.len() + 400));
        w.raw(MAGIC);
        w.u8(VERSION);
        w.long(&self.bundle);
        w.short(&self.witness_signature);
        w.short(&self.operator_signature);
        w.u64(self.log_index);
        self.tree_head.write(&mut w);
        w.u16(self.inclusion_proof.len().min(MAX_PROOF) as u16);
        for h in self.inclusion_proof.iter().take(MAX_PROOF) {
            w.raw(h);
        }
        w.0
    }

    /// Parses container bytes (strictly: no trailing bytes).
    pub fn parse(bytes: &[u8]) -> Result<SignedBundle, BundleError> {
        let m = |f: &'static str| BundleError::Malformed(format!("cannot read {f}"));
        let mut r = Reader::new(bytes);
        if r.raw(17, "magic").map_err(m)? != MAGIC {
            return Err(BundleError::Malformed("not a signed bundle (magic)".into()));
        }
        let version = r.u8("version").map_err(m)?;
        if version != VERSION {
            return Err(BundleError::Malformed(format!("unknown version {version}")));
        }
        let bundle = r.long("bundle").map_err(m)?.to_vec();
        let witness_signature = r.short("witness signature").map_err(m)?.to_vec();
        let operator_signature = r.short("operator signature").map_err(m)?.to_vec();
        let log_index = r.u64("log index").map_err(m)?;
        let tree_head = TreeHead::read(&mut r).map_err(m)?;
        let count = r.u16("proof length").map_err(m)? as usize;
        if count > MAX_PROOF {
            return Err(BundleError::Malformed("inclusion proof too long".into()));
        }
        let mut inclusion_proof = Vec::with_capacity(count);
        for _ in 0..count {
            inclusion_proof.push(r.hash("proof hash").map_err(m)?);
        }
        r.end().map_err(m)?;
        Ok(SignedBundle {
            bundle,
            witness_signature,
            operator_signature,
            log_index,
            tree_head,
            inclusion_proof,
        })
    }
}

/// What an app pins: the witness's and the operator's public keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pins {
    witness: EdKey,
    operator: EcKey,
}

/// A bundle that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The bundle.
    pub bundle: Bundle,
    /// Its digest.
    pub digest: Hash,
    /// Its leaf index in the witness log.
    pub log_index: u64,
    /// The tree head that includes it.
    pub tree_head: TreeHead,
}

impl Verified {
    /// Checks that the keys a fleet actually uses are the bundle's.
    pub fn check_keys(&self, opaque: &[u8], hpke: &[u8]) -> Result<(), BundleError> {
        if opaque != self.bundle.opaque_public_key.as_slice() {
            return Err(BundleError::KeyMismatch("OPAQUE server key"));
        }
        if hpke != self.bundle.hpke_public_key.as_slice() {
            return Err(BundleError::KeyMismatch("HPKE key"));
        }
        Ok(())
    }
}

/// Why pinned keys do not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// The witness key is not 32 bytes of a valid Ed25519 point.
    #[error("the witness public key must be 32 bytes of Ed25519 (64 hex digits)")]
    Witness,
    /// The operator key is not a SEC1 P-256 point.
    #[error("the operator public key must be a SEC1 P-256 point (130 hex digits)")]
    Operator,
}

impl Pins {
    /// Pins from raw key bytes: Ed25519 (32 bytes) and SEC1 P-256.
    pub fn new(witness: &[u8], operator: &[u8]) -> Result<Pins, PinError> {
        let w: [u8; 32] = witness.try_into().map_err(|_| PinError::Witness)?;
        Ok(Pins {
            witness: EdKey::from_bytes(&w).map_err(|_| PinError::Witness)?,
            operator: EcKey::from_sec1_bytes(operator).map_err(|_| PinError::Operator)?,
        })
    }

    /// Pins from hex.
    pub fn from_hex(witness: &str, operator: &str) -> Result<Pins, PinError> {
        let w = hex::decode(witness.trim()).map_err(|_| PinError::Witness)?;
        let o = hex::decode(operator.trim()).map_err(|_| PinError::Operator)?;
        Pins::new(&w, &o)
    }

    /// The witness key.
    pub fn witness(&self) -> &EdKey {
        &self.witness
    }

    /// Checks the witness's signature over bundle bytes.
    pub fn verify_witness(&self, bundle: &[u8], signature: &[u8]) -> Result<(), BundleError> {
        if signature.is_empty() {
            return Err(BundleError::MissingWitnessSignature);
        }
        let sig = EdSignature::from_slice(signature).map_err(|_| BundleError::WitnessSignature)?;
        self.witness
            .verify_strict(bundle, &sig)
            .map_err(|_| BundleError::WitnessSignature)
    }

    /// Checks the operator's counter-signature.
    pub fn verify_operator(
        &self,
        bundle: &[u8],
        witness_signature: &[u8],
        signature: &[u8],
    ) -> Result<(), BundleError> {
        if signature.is_empty() {
            return Err(BundleError::MissingOperatorSignature);
        }
        let sig = EcSignature::from_slice(signature).map_err(|_| BundleError::OperatorSignature)?;
        self.operator
            .verify(&countersign_message(bundle, witness_signature), &sig)
            .map_err(|_| BundleError::OperatorSignature)
    }

    /// Every check an app runs on a signed bundle before it sends anything
    /// secret: both signatures, the tree head's signature, the inclusion
    /// proof, the fleet, the validity window at `now` (Unix seconds), and
    /// that the epoch is not older than `newest_seen`. The caller then
    /// checks the keys it talks to with [`Verified::check_keys`].
    pub fn verify(
        &self,
        signed: &[u8],
        fleet_id: &str,
        now: u64,
        newest_seen: u64,
    ) -> Result<Verified, BundleError> {
        if signed.is_empty() {
            return Err(BundleError::Missing);
        }
        let s = SignedBundle::parse(signed)?;
        self.verify_witness(&s.bundle, &s.witness_signature)?;
        self.verify_operator(&s.bundle, &s.witness_signature, &s.operator_signature)?;
        if !s.tree_head.verify(&self.witness) {
            return Err(BundleError::TreeHeadSignature);
        }
        if !merkle::verify_inclusion(
            &merkle::leaf_hash(&s.bundle),
            s.log_index,
            s.tree_head.tree_size,
            &s.inclusion_proof,
            &s.tree_head.root,
        ) {
            return Err(BundleError::InclusionProof);
        }
        let bundle = Bundle::parse(&s.bundle).map_err(|e| BundleError::Malformed(e.0))?;
        if bundle.fleet_id != fleet_id {
            return Err(BundleError::WrongFleet {
                expected: fleet_id.to_owned(),
                got: bundle.fleet_id,
            });
        }
        if now < bundle.not_before {
            return Err(BundleError::NotYetValid {
                not_before: bundle.not_before,
                now,
            });
        }
        if now >= bundle.not_after {
            return Err(BundleError::Expired {
                not_after: bundle.not_after,
                now,
            });
        }
        if bundle.epoch < newest_seen {
            return Err(BundleError::EpochRollback {
                seen: newest_seen,
                got: bundle.epoch,
            });
        }
        Ok(Verified {
            digest: bundle::digest(&s.bundle),
            bundle,
            log_index: s.log_index,
            tree_head: s.tree_head,
        })
    }
}

#[cfg(test)]
#[path = "signed_tests.rs"]
mod tests;
