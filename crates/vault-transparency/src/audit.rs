//! The checks `vaultctl audit` runs on a witness log.
//!
//! Given every entry of the log, the tree heads the witness has signed,
//! the witness's consistency proofs between successive heads, and any
//! heads the auditor learned elsewhere (from apps, other auditors or its
//! own last run), [`audit`] verifies every head's signature, recomputes
//! every head's root from the entries, checks every consistency proof,
//! refuses two different heads of one size (a forked log), and walks each
//! fleet's bundles: epochs grow, each names its predecessor's digest.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;

use crate::bundle::{self, Bundle};
use crate::head::TreeHead;
use crate::{Hash, merkle};

/// One fleet-key epoch as the log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochRow {
    /// Leaf index in the log.
    pub index: u64,
    /// The bundle.
    pub bundle: Bundle,
    /// Its digest.
    pub digest: Hash,
    /// What changed from the fleet's previous epoch ("first epoch" for
    /// the first).
    pub changed: String,
}

/// A consistency proof the witness served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consistency {
    /// The smaller tree size.
    pub first: u64,
    /// The larger tree size.
    pub second: u64,
    /// The proof.
    pub proof: Vec<Hash>,
}

/// Why a log does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// A tree head's signature does not verify.
    #[error("the {origin} tree head of size {size} is not signed by the pinned witness key")]
    HeadSignature {
        /// Where the head came from.
        origin: &'static str,
        /// Its size.
        size: u64,
    },
    /// Two different signed heads of one size: the witness forked its log.
    #[error("forked log: two signed tree heads of size {size} with different roots ({a} and {b})")]
    Fork {
        /// The size.
        size: u64,
        /// One root (hex).
        a: String,
        /// The other root (hex).
        b: String,
    },
    /// A signed head's root is not the root of the entries served.
    #[error(
        "the {origin} tree head of size {size} does not match the entries the witness serves (fork or rewritten history)"
    )]
    RootMismatch {
        /// Where the head came from.
        origin: &'static str,
        /// Its size.
        size: u64,
    },
    /// A signed head is larger than the log served (entries withheld or
    /// the log rolled back).
    #[error(
        "the {origin} tree head of size {size} is larger than the {served} entries the witness serves (rollback)"
    )]
    HeadBeyondLog {
        /// Where the head came from.
        origin: &'static str,
        /// Its size.
        size: u64,
        /// Entries served.
        served: u64,
    },
    /// The witness's consistency proof does not verify.
    #[error("the consistency proof from size {first} to {second} does not verify")]
    Consistency {
        /// Smaller size.
        first: u64,
        /// Larger size.
        second: u64,
    },
    /// Successive heads have no consistency proof.
    #[error("no consistency proof from size {first} to {second}")]
    MissingConsistency {
        /// Smaller size.
        first: u64,
        /// Larger size.
        second: u64,
    },
    /// The witness served no tree head.
    #[error("the witness serves no signed tree head")]
    NoHead,
    /// The latest head does not cover the whole log.
    #[error("the latest tree head has size {size} but the witness serves {served} entries")]
    LatestHeadSize {
        /// Its size.
        size: u64,
        /// Entries served.
        served: u64,
    },
    /// An entry is not a bundle.
    #[error("log entry {index}: {reason}")]
    Entry {
        /// The index.
        index: u64,
        /// Why.
        reason: String,
    },
    /// A fleet's epochs went back or repeated.
    #[error("fleet {fleet}: entry {index} has epoch {got} after epoch {previous}")]
    EpochNotIncreasing {
        /// The fleet.
        fleet: String,
        /// The entry.
        index: u64,
        /// The epoch before it.
        previous: u64,
        /// Its epoch.
        got: u64,
    },
    /// A bundle does not name its predecessor's digest.
    #[error("fleet {fleet}: epoch {epoch} (entry {index}) does not chain to the previous bundle")]
    BrokenChain {
        /// The fleet.
        fleet: String,
        /// The epoch.
        epoch: u64,
        /// The entry.
        index: u64,
    },
}

/// Audits a log. `heads` are the witness's own (every head it signed,
/// ascending), `consistency` its proofs between successive heads, `known`
/// heads learned elsewhere. Returns the epoch table.
pub fn audit(
    witness: &VerifyingKey,
    entries: &[Vec<u8>],
    heads: &[TreeHead],
    consistency: &[Consistency],
    known: &[TreeHead],
) -> Result<Vec<EpochRow>, AuditError> {
    let leaves: Vec<Hash> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
    let served = leaves.len() as u64;
    let all = heads
        .iter()
        .map(|h| ("witness", h))
        .chain(known.iter().map(|h| ("known", h)));
    let mut by_size: BTreeMap<u64, &TreeHead> = BTreeMap::new();
    for (origin, h) in all.clone() {
        if !h.verify(witness) {
            return Err(AuditError::HeadSignature {
                origin,
                size: h.tree_size,
            });
        }
        if let Some(other) = by_size.get(&h.tree_size)
            && other.root != h.root
        {
            return Err(AuditError::Fork {
                size: h.tree_size,
                a: hex::encode(other.root),
                b: hex::encode(h.root),
            });
        }
        by_size.insert(h.tree_size, h);
    }
    for (origin, h) in all {
        if h.tree_size > served {
            return Err(AuditError::HeadBeyondLog {
                origin,
                size: h.tree_size,
                served,
            });
        }
        if merkle::root(&leaves[..h.tree_size as usize]) != h.root {
            return Err(AuditError::RootMismatch {
                origin,
                size: h.tree_size,
            });
        }
    }
    let latest = heads
        .iter()
        .max_by_key(|h| h.tree_size)
        .ok_or(AuditError::NoHead)?;
    if latest.tree_size != served {
        return Err(AuditError::LatestHeadSize {
            size: latest.tree_size,
            served,
        });
    }
    let mut sizes: Vec<&TreeHead> = heads.iter().filter(|h| h.tree_size > 0).collect();
    sizes.sort_by_key(|h| h.tree_size);
    sizes.dedup_by_key(|h| h.tree_size);
    for pair in sizes.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let proof = consistency
            .iter()
            .find(|c| c.first == a.tree_size && c.second == b.tree_size)
            .ok_or(AuditError::MissingConsistency {
                first: a.tree_size,
                second: b.tree_size,
            })?;
        if !merkle::verify_consistency(a.tree_size, b.tree_size, &a.root, &b.root, &proof.proof) {
            return Err(AuditError::Consistency {
                first: a.tree_size,
                second: b.tree_size,
            });
        }
    }
    epochs(entries)
}

/// Walks the entries' bundles fleet by fleet.
pub fn epochs(entries: &[Vec<u8>]) -> Result<Vec<EpochRow>, AuditError> {
    let mut last: BTreeMap<String, (Bundle, Hash)> = BTreeMap::new();
    let mut rows = Vec::with_capacity(entries.len());
    for (i, bytes) in entries.iter().enumerate() {
        let index = i as u64;
        let b = Bundle::parse(bytes).map_err(|e| AuditError::Entry {
            index,
            reason: e.to_string(),
        })?;
        let digest = bundle::digest(bytes);
        let changed = match last.get(&b.fleet_id) {
            None => {
                if b.previous_digest != [0; 32] {
                    return Err(AuditError::BrokenChain {
                        fleet: b.fleet_id,
                        epoch: b.epoch,
                        index,
                    });
                }
                "first epoch".to_owned()
            }
            Some((prev, prev_digest)) => {
                if b.epoch <= prev.epoch {
                    return Err(AuditError::EpochNotIncreasing {
                        fleet: b.fleet_id,
                        index,
                        previous: prev.epoch,
                        got: b.epoch,
                    });
                }
                if b.previous_digest != *prev_digest {
                    return Err(AuditError::BrokenChain {
                        fleet: b.fleet_id,
                        epoch: b.epoch,
                        index,
                    });
                }
                changes(prev, &b)
            }
        };
        last.insert(b.fleet_id.clone(), (b.clone(), digest));
        rows.push(EpochRow {
            index,
            bundle: b,
            digest,
            changed,
        });
    }
    Ok(rows)
}

/// What changed between two bundles of one fleet, in words.
pub fn changes(prev: &Bundle, next: &Bundle) -> String {
    let mut out = Vec::new();
    if prev.opaque_public_key != next.opaque_public_key {
        out.push("OPAQUE key".to_owned());
    }
    if prev.hpke_public_key != next.hpke_public_key {
        out.push("HPKE key".to_owned());
    }
    for n in &next.nodes {
        match prev.node(n.node_id) {
            None => out.push(format!("+node {}", n.node_id)),
            Some(p) if p.attestation_key != n.attestation_key => {
                out.push(format!("node {} attestation key", n.node_id));
            }
            Some(p) if p.datacenter != n.datacenter => {
                out.push(format!("node {} datacenter", n.node_id));
            }
            Some(_) => {}
        }
    }
    for p in &prev.nodes {
        if next.node(p.node_id).is_none() {
            out.push(format!("-node {}", p.node_id));
        }
    }
    if out.is_empty() {
        "validity only".to_owned()
    } else {
        out.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::bundle::tests::sample;

    struct Log {
        key: SigningKey,
        entries: Vec<Vec<u8>>,
        heads: Vec<TreeHead>,
    }

    impl Log {
        fn new() -> Log {
            Log {
                key: SigningKey::from_bytes(&[0x57; 32]),
                entries: Vec::new(),
                heads: Vec::new(),
            }
        }
        fn append(&mut self, b: &Bundle) {
            self.entries.push(b.encode().expect("encode"));
            let leaves: Vec<Hash> = self.entries.iter().map(|e| merkle::leaf_hash(e)).collect();
            self.heads.push(TreeHead::sign(
                &self.key,
                leaves.len() as u64,
                self.heads.len() as u64,
                merkle::root(&leaves),
            ));
        }
        fn proofs(&self) -> Vec<Consistency> {
            let leaves: Vec<Hash> = self.entries.iter().map(|e| merkle::leaf_hash(e)).collect();
            self.heads
                .windows(2)
                .map(|w| Consistency {
                    first: w[0].tree_size,
                    second: w[1].tree_size,
                    proof: merkle::consistency_proof(
                        &leaves[..w[1].tree_size as usize],
                        w[0].tree_size as usize,
                    )
                    .expect("proof"),
                })
                .collect()
        }
        fn audit(&self, known: &[TreeHead]) -> Result<Vec<EpochRow>, AuditError> {
            audit(
                &self.key.verifying_key(),
                &self.entries,
                &self.heads,
                &self.proofs(),
                known,
            )
        }
    }

    fn chained(epochs: u64) -> Vec<Bundle> {
        let mut out: Vec<Bundle> = Vec::new();
        for e in 1..=epochs {
            let mut b = sample(e);
            if let Some(prev) = out.last() {
                b.previous_digest = bundle::digest(&prev.encode().expect("encode"));
            }
            if e == 3 {
                b.opaque_public_key = vec![3; 32];
            }
            out.push(b);
        }
        out
    }

    #[test]
    fn a_clean_log_audits_and_lists_epochs() {
        let mut log = Log::new();
        for b in chained(4) {
            log.append(&b);
        }
        let rows = log.audit(&[]).expect("clean");
        let changed: Vec<&str> = rows.iter().map(|r| r.changed.as_str()).collect();
        assert_eq!(
            changed,
            ["first epoch", "validity only", "OPAQUE key", "OPAQUE key"]
        );
    }

    #[test]
    fn a_forked_log_is_detected() {
        let bundles = chained(3);
        let mut a = Log::new();
        let mut b = Log::new();
        for x in &bundles[..2] {
            a.append(x);
            b.append(x);
        }
        a.append(&bundles[2]);
        let mut other = bundles[2].clone();
        other.hpke_public_key = vec![9; 32];
        b.append(&other);
        // Each log on its own looks fine…
        a.audit(&[]).expect("a alone");
        b.audit(&[]).expect("b alone");
        // …but a head of the same size from the other branch is a fork.
        let err = a.audit(&[b.heads[2].clone()]).expect_err("fork");
        assert!(matches!(err, AuditError::Fork { size: 3, .. }), "{err}");
        // A head from the other branch's future is beyond this log.
        b.append(&chained(4)[3]);
        let err = a.audit(&[b.heads[3].clone()]).expect_err("beyond");
        assert!(matches!(err, AuditError::HeadBeyondLog { .. }), "{err}");
    }

    #[test]
    fn tampering_is_detected() {
        let mut log = Log::new();
        for b in chained(3) {
            log.append(&b);
        }
        let mut bad = log.heads.clone();
        bad[1].signature[0] ^= 1;
        let err = audit(
            &log.key.verifying_key(),
            &log.entries,
            &bad,
            &log.proofs(),
            &[],
        );
        assert!(matches!(err, Err(AuditError::HeadSignature { .. })));

        let mut entries = log.entries.clone();
        entries[0][30] ^= 1;
        let err = audit(
            &log.key.verifying_key(),
            &entries,
            &log.heads,
            &log.proofs(),
            &[],
        );
        assert!(matches!(err, Err(AuditError::RootMismatch { .. })));

        let mut proofs = log.proofs();
        proofs[1].proof[0][0] ^= 1;
        let err = audit(
            &log.key.verifying_key(),
            &log.entries,
            &log.heads,
            &proofs,
            &[],
        );
        assert!(matches!(
            err,
            Err(AuditError::Consistency {
                first: 2,
                second: 3
            })
        ));
    }

    #[test]
    fn epochs_must_grow_and_chain() {
        let bundles = chained(2);
        let mut log = Log::new();
        log.append(&bundles[1]);
        assert!(matches!(
            log.audit(&[]),
            Err(AuditError::BrokenChain { .. })
        ));
        let mut log = Log::new();
        log.append(&bundles[0]);
        let mut replay = bundles[0].clone();
        replay.previous_digest = bundle::digest(&bundles[0].encode().expect("encode"));
        log.append(&replay);
        assert!(matches!(
            log.audit(&[]),
            Err(AuditError::EpochNotIncreasing { .. })
        ));
    }
}
