use ed25519_dalek::{Signer as _, SigningKey as EdSigning};
use p256::ecdsa::{Signature as EcSig, SigningKey as EcSigning};

use super::*;
use crate::bundle::tests::sample;
use crate::merkle;

pub(crate) struct Fixture {
    pub(crate) witness: EdSigning,
    pub(crate) operator: EcSigning,
    pub(crate) leaves: Vec<Hash>,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        Fixture {
            witness: EdSigning::from_bytes(&[0x57; 32]),
            operator: EcSigning::from_slice(&[0x0f; 32]).expect("key"),
            leaves: Vec::new(),
        }
    }

    pub(crate) fn pins(&self) -> Pins {
        Pins::new(
            self.witness.verifying_key().as_bytes(),
            self.operator
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes(),
        )
        .expect("pins")
    }

    /// Appends `bundle` to the fixture's log and signs it as the witness and
    /// the operator would.
    pub(crate) fn publish(&mut self, bundle: &Bundle) -> SignedBundle {
        let bytes = bundle.encode().expect("encode");
        self.leaves.push(merkle::leaf_hash(&bytes));
        let witness_signature = self.witness.sign(&bytes).to_bytes().to_vec();
        let op: EcSig = self
            .operator
            .sign(&countersign_message(&bytes, &witness_signature));
        let size = self.leaves.len();
        SignedBundle {
            witness_signature,
            operator_signature: op.to_bytes().to_vec(),
            log_index: (size - 1) as u64,
            tree_head: TreeHead::sign(
                &self.witness,
                size as u64,
                1_800_000_000_000,
                merkle::root(&self.leaves),
            ),
            inclusion_proof: merkle::inclusion_proof(&self.leaves, size - 1).expect("proof"),
            bundle: bytes,
        }
    }
}

const NOW: u64 = 1_850_000_000;

#[test]
fn a_published_bundle_verifies() {
    let mut f = Fixture::new();
    f.publish(&sample(1));
    let s = f.publish(&sample(2)).encode();
    let v = f.pins().verify(&s, "local-3", NOW, 1).expect("verifies");
    assert_eq!(v.bundle.epoch, 2);
    assert_eq!(v.log_index, 1);
    v.check_keys(&[1; 32], &[2; 32]).expect("keys");
    assert_eq!(
        v.check_keys(&[9; 32], &[2; 32]),
        Err(BundleError::KeyMismatch("OPAQUE server key"))
    );
    assert_eq!(
        v.check_keys(&[1; 32], &[9; 32]),
        Err(BundleError::KeyMismatch("HPKE key"))
    );
}

#[test]
fn any_flipped_byte_is_rejected() {
    let mut f = Fixture::new();
    f.publish(&sample(1));
    f.publish(&sample(2));
    let s = f.publish(&sample(3)).encode();
    let pins = f.pins();
    for i in 0..s.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = s.clone();
            bad[i] ^= bit;
            assert!(
                pins.verify(&bad, "local-3", NOW, 0).is_err(),
                "flipping bit {bit:#x} of byte {i} went unnoticed"
            );
        }
    }
}

#[test]
fn each_part_names_its_check() {
    let mut f = Fixture::new();
    f.publish(&sample(1));
    let good = f.publish(&sample(2));
    let pins = f.pins();
    let check = |s: &SignedBundle| pins.verify(&s.encode(), "local-3", NOW, 0).map(drop);

    let mut s = good.clone();
    s.bundle[40] ^= 1;
    assert_eq!(check(&s), Err(BundleError::WitnessSignature));
    let mut s = good.clone();
    s.witness_signature[3] ^= 1;
    assert_eq!(check(&s), Err(BundleError::WitnessSignature));
    let mut s = good.clone();
    s.operator_signature[3] ^= 1;
    assert_eq!(check(&s), Err(BundleError::OperatorSignature));
    let mut s = good.clone();
    s.tree_head.root[0] ^= 1;
    assert_eq!(check(&s), Err(BundleError::TreeHeadSignature));
    let mut s = good.clone();
    s.tree_head.signature[0] ^= 1;
    assert_eq!(check(&s), Err(BundleError::TreeHeadSignature));
    let mut s = good.clone();
    s.inclusion_proof[0][5] ^= 1;
    assert_eq!(check(&s), Err(BundleError::InclusionProof));
    let mut s = good.clone();
    s.log_index = 0;
    assert_eq!(check(&s), Err(BundleError::InclusionProof));

    // Only one of the two signatures.
    let mut s = good.clone();
    s.operator_signature.clear();
    assert_eq!(check(&s), Err(BundleError::MissingOperatorSignature));
    let mut s = good.clone();
    s.witness_signature.clear();
    assert_eq!(check(&s), Err(BundleError::MissingWitnessSignature));
    // A counter-signature by another key (e.g. a node's attestation key).
    let mut s = good.clone();
    let other = EcSigning::from_slice(&[0x22; 32]).expect("key");
    let sig: EcSig = other.sign(&countersign_message(&s.bundle, &s.witness_signature));
    s.operator_signature = sig.to_bytes().to_vec();
    assert_eq!(check(&s), Err(BundleError::OperatorSignature));
    // Witness signature by another witness key.
    let mut s = good.clone();
    s.witness_signature = EdSigning::from_bytes(&[1; 32])
        .sign(&s.bundle)
        .to_bytes()
        .to_vec();
    assert_eq!(check(&s), Err(BundleError::WitnessSignature));

    assert_eq!(
        pins.verify(&[], "local-3", NOW, 0),
        Err(BundleError::Missing)
    );
}

#[test]
fn window_fleet_and_epoch_are_enforced() {
    let mut f = Fixture::new();
    let s1 = f.publish(&sample(1)).encode();
    let s2 = f.publish(&sample(2)).encode();
    let pins = f.pins();
    assert!(matches!(
        pins.verify(&s2, "other", NOW, 0),
        Err(BundleError::WrongFleet { .. })
    ));
    assert!(matches!(
        pins.verify(&s2, "local-3", 1_700_000_000, 0),
        Err(BundleError::NotYetValid { .. })
    ));
    assert!(matches!(
        pins.verify(&s2, "local-3", 1_900_000_000, 0),
        Err(BundleError::Expired { .. })
    ));
    // Rotation: a newer epoch is accepted; the older one is then refused.
    pins.verify(&s2, "local-3", NOW, 1).expect("newer epoch");
    assert_eq!(
        pins.verify(&s1, "local-3", NOW, 2),
        Err(BundleError::EpochRollback { seen: 2, got: 1 })
    );
    pins.verify(&s1, "local-3", NOW, 1)
        .expect("same epoch again");
}

/// ℓ, the order of the Ed25519 base point, little-endian.
const ELL: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// `a + b` as 256-bit little-endian integers (no overflow here: S < ℓ <
/// 2^253).
fn add_le(a: &[u8], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let s = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = s as u8;
        carry = s >> 8;
    }
    assert_eq!(carry, 0);
    out
}

/// PROTOCOL.md §11.2, check 1: a signature whose S is not reduced (S + ℓ
/// satisfies the same equation) is refused.
#[test]
fn a_non_canonical_s_is_refused() {
    let f = Fixture::new();
    let pins = f.pins();
    let message = b"bundle bytes";
    let sig = f.witness.sign(message).to_bytes();
    assert!(pins.verify_witness(message, &sig).is_ok());
    let mut malleated = sig;
    malleated[32..].copy_from_slice(&add_le(&sig[32..], &ELL));
    assert_ne!(malleated, sig);
    assert_eq!(
        pins.verify_witness(message, &malleated).err(),
        Some(BundleError::WitnessSignature)
    );
}

/// Check 3: a small-order witness key (here the identity, encoded
/// `01 00 … 00`) would let `R = identity, S = 0` pass for every message
/// under a verifier without the check; it is refused, at pinning or at
/// every signature.
#[test]
fn a_small_order_key_or_r_is_refused() {
    let f = Fixture::new();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut forged = [0u8; 64];
    forged[..32].copy_from_slice(&identity);
    let operator = f.operator.verifying_key().to_encoded_point(false);
    // The forgery is real for a lax verifier: [0]B = identity + [k]identity.
    let weak = EdKey::from_bytes(&identity).expect("the identity decodes");
    assert!(
        weak.verify(b"any message", &EdSignature::from_bytes(&forged))
            .is_ok(),
        "the forgery is not valid even for a lax verifier: the test proves nothing"
    );
    match Pins::new(&identity, operator.as_bytes()) {
        Err(_) => {}
        Ok(pins) => assert_eq!(
            pins.verify_witness(b"any message", &forged).err(),
            Some(BundleError::WitnessSignature)
        ),
    }
    // A small-order R with the real key is refused too.
    let pins = f.pins();
    let mut small_r = f.witness.sign(b"m").to_bytes();
    small_r[..32].copy_from_slice(&identity);
    assert!(pins.verify_witness(b"m", &small_r).is_err());
}
