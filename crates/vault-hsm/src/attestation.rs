//! The node attestation key: ECDSA P-256 over SHA-256.
//!
//! The private key never leaves the HSM. PKCS#11 tokens such as SoftHSM lack
//! a combined ECDSA-with-SHA-256 mechanism, so the host hashes and the HSM
//! signs the digest with raw `CKM_ECDSA`; the result is the same standard
//! ECDSA-P256-SHA256 signature that any library verifies.

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

/// A SEC1 uncompressed P-256 public key (65 bytes, `04 || X || Y`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationPublicKey(#[serde(with = "hex::serde")] pub Vec<u8>);

/// A signature: `r || s`, 32 bytes each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationSignature(#[serde(with = "hex::serde")] pub Vec<u8>);

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The public key is not a valid P-256 point.
    #[error("attestation public key is not a valid P-256 point")]
    BadPublicKey,
    /// The signature is not 64 bytes or not a valid scalar pair.
    #[error("attestation signature is malformed")]
    MalformedSignature,
    /// The signature does not match the message and key.
    #[error("attestation signature does not verify")]
    Invalid,
}

impl AttestationPublicKey {
    /// Checks `signature` over `message` in software.
    pub fn verify(
        &self,
        message: &[u8],
        signature: &AttestationSignature,
    ) -> Result<(), VerifyError> {
        let key = VerifyingKey::from_sec1_bytes(&self.0).map_err(|_| VerifyError::BadPublicKey)?;
        let sig =
            Signature::from_slice(&signature.0).map_err(|_| VerifyError::MalformedSignature)?;
        key.verify(message, &sig).map_err(|_| VerifyError::Invalid)
    }
}

/// DER of the P-256 curve OID (1.2.840.10045.3.1.7), the CKA_EC_PARAMS value.
pub const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Extracts the SEC1 point from CKA_EC_POINT, which PKCS#11 wraps in a DER
/// OCTET STRING (some modules omit the wrapping; both are accepted).
pub fn sec1_from_ec_point(ec_point: &[u8]) -> Option<Vec<u8>> {
    match ec_point {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 && rest[0] == 0x04 => Some(rest.to_vec()),
        [0x04, rest @ ..] if rest.len() == 64 => Some(ec_point.to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;

    #[test]
    fn verifies_standard_signatures_only() {
        let sk = SigningKey::from_slice(&[0x11; 32]).expect("key");
        let pk = AttestationPublicKey(
            sk.verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
        );
        let sig: Signature = sk.sign(b"evidence");
        let sig = AttestationSignature(sig.to_bytes().to_vec());
        assert_eq!(pk.verify(b"evidence", &sig), Ok(()));
        assert_eq!(pk.verify(b"evidencf", &sig), Err(VerifyError::Invalid));
        assert_eq!(
            pk.verify(b"evidence", &AttestationSignature(vec![1; 63])),
            Err(VerifyError::MalformedSignature)
        );
        assert_eq!(
            AttestationPublicKey(vec![4; 65]).verify(b"x", &sig),
            Err(VerifyError::BadPublicKey)
        );
    }

    #[test]
    fn ec_point_unwraps_der_octet_string() {
        let mut point = vec![0x04];
        point.extend_from_slice(&[9; 64]);
        let mut der = vec![0x04, 0x41];
        der.extend_from_slice(&point);
        assert_eq!(sec1_from_ec_point(&der), Some(point.clone()));
        assert_eq!(sec1_from_ec_point(&point), Some(point));
        assert_eq!(sec1_from_ec_point(&[0x04, 0x02, 1, 2]), None);
    }
}
