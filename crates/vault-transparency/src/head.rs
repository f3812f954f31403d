//! The witness's signed tree head.
//!
//! The witness signs, with its Ed25519 key,
//! `"BKV-WITNESS-STH-v1" || tree_size (u64) || timestamp_ms (u64) || root (32)`.
//! The prefix keeps a tree head from ever being mistaken for a bundle (which
//! opens with `"BKV-FLEET-BUNDLE"`), the other thing the key signs.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::Hash;
use crate::codec::{Reader, Writer};

/// Domain prefix of what a tree-head signature covers.
pub const STH_CONTEXT: &[u8; 18] = b"BKV-WITNESS-STH-v1";

/// A tree head and the witness's signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    /// Leaves in the tree.
    pub tree_size: u64,
    /// When the witness signed it (Unix milliseconds).
    pub timestamp_ms: u64,
    /// The Merkle root.
    #[serde(with = "hex::serde")]
    pub root: Hash,
    /// Ed25519 signature (64 bytes).
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
}

impl TreeHead {
    /// The bytes the signature covers.
    pub fn signed_bytes(tree_size: u64, timestamp_ms: u64, root: &Hash) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(66));
        w.raw(STH_CONTEXT);
        w.u64(tree_size);
        w.u64(timestamp_ms);
        w.raw(root);
        w.0
    }

    /// Signs a tree head (the witness's side).
    pub fn sign(key: &SigningKey, tree_size: u64, timestamp_ms: u64, root: Hash) -> TreeHead {
        let sig = key.sign(&Self::signed_bytes(tree_size, timestamp_ms, &root));
        TreeHead {
            tree_size,
            timestamp_ms,
            root,
            signature: sig.to_bytes().to_vec(),
        }
    }

    /// `true` when the witness key `witness` signed this head.
    pub fn verify(&self, witness: &VerifyingKey) -> bool {
        let Ok(sig) = Signature::from_slice(&self.signature) else {
            return false;
        };
        witness
            .verify_strict(
                &Self::signed_bytes(self.tree_size, self.timestamp_ms, &self.root),
                &sig,
            )
            .is_ok()
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u64(self.tree_size);
        w.u64(self.timestamp_ms);
        w.raw(&self.root);
        w.short(&self.signature);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<TreeHead, &'static str> {
        Ok(TreeHead {
            tree_size: r.u64("tree size")?,
            timestamp_ms: r.u64("tree head timestamp")?,
            root: r.hash("tree root")?,
            signature: r.short("tree head signature")?.to_vec(),
        })
    }
}
