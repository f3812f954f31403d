//! Byte formats: the plaintext of the app's HPKE-sealed `RegisterFinish`
//! payload, and the record a node seals in its HSM.
//!
//! Both are fixed-length concatenations after a version byte: every field
//! has one size in this ciphersuite, so there are no length prefixes to
//! get wrong, no trailing bytes and no second encoding of the same value.
//! A decoder accepts exactly one length and refuses anything else; a
//! payload that would store a record whose K can never come back (a
//! wrapped key or an upload of the wrong size) never gets past it.

use vault_types::Generation;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{
    ENC_K_LEN, NONCE_LEN, ProtocolError, REGISTRATION_REQUEST_LEN, REGISTRATION_RESPONSE_LEN,
    UPLOAD_LEN,
};

/// Format version of the `RegisterFinish` payload and of the stored record
/// in protocol v2.
pub const FORMAT_V2: u8 = 2;

/// Length of the `RegisterFinish` payload's plaintext: version ‖ the
/// registration request the app sent ‖ the response it received ‖ upload
/// ‖ enc_K ‖ nonce ‖ u64be generation ‖ u32be max_attempts.
pub const PAYLOAD_LEN: usize = 1
    + REGISTRATION_REQUEST_LEN
    + REGISTRATION_RESPONSE_LEN
    + UPLOAD_LEN
    + ENC_K_LEN
    + NONCE_LEN
    + 8
    + 4;

/// Length of a stored record's plaintext: version ‖ password file ‖ enc_K
/// ‖ nonce.
pub const RECORD_LEN: usize = 1 + UPLOAD_LEN + ENC_K_LEN + NONCE_LEN;

/// A fixed-size field from `bytes` at `*at`, advancing `*at`.
fn field<const N: usize>(bytes: &[u8], at: &mut usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[*at..*at + N]);
    *at += N;
    out
}

/// Checks the version byte and the exact length.
fn framed<'a>(bytes: &'a [u8], len: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
    match bytes.first() {
        Some(&FORMAT_V2) if bytes.len() == len => Ok(bytes),
        _ => Err(ProtocolError::Malformed(what)),
    }
}

/// What the node seals in its HSM and stores per user: the OPAQUE password
/// file, `enc_K`, and the registration nonce that names the record's OPRF
/// key. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct StoredRecord {
    /// `ServerRegistration` (the `RegistrationUpload`), serialized.
    pub password_file: Vec<u8>,
    /// The app's wrapped K.
    pub enc_k: Vec<u8>,
    /// The registration nonce `n`: the OPRF key of this record is the one
    /// of credential identifier `user ‖ 0x00 ‖ n`.
    pub nonce: [u8; NONCE_LEN],
}

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredRecord { .. }")
    }
}

impl StoredRecord {
    /// Versioned bytes (the plaintext that the HSM seals).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(RECORD_LEN));
        out.push(FORMAT_V2);
        out.extend_from_slice(&self.password_file);
        out.extend_from_slice(&self.enc_k);
        out.extend_from_slice(&self.nonce);
        out
    }

    /// From [`StoredRecord::encode`]'s bytes, exactly.
    pub fn decode(bytes: &[u8]) -> Result<StoredRecord, ProtocolError> {
        let bytes = framed(bytes, RECORD_LEN, "stored record")?;
        let mut at = 1;
        let password_file = bytes[at..at + UPLOAD_LEN].to_vec();
        at += UPLOAD_LEN;
        let enc_k = bytes[at..at + ENC_K_LEN].to_vec();
        at += ENC_K_LEN;
        let nonce = field::<NONCE_LEN>(bytes, &mut at);
        Ok(StoredRecord {
            password_file,
            enc_k,
            nonce,
        })
    }
}

/// The plaintext of the HPKE-sealed `RegisterFinish` payload: everything
/// the frontend must neither read nor change.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RegisterPayload {
    /// The OPAQUE `RegistrationRequest` the app sent (its blinded element).
    pub request: Vec<u8>,
    /// The `RegistrationResponse` the app received and built its record
    /// on: the node checks it is the fleet's own evaluation, so a relay
    /// that answered with an OPRF key of its own is found out.
    pub response: Vec<u8>,
    /// The OPAQUE `RegistrationUpload` (192 bytes).
    pub upload: Vec<u8>,
    /// K wrapped under the export key (60 bytes).
    pub enc_k: Vec<u8>,
    /// The registration nonce from `RegisterStart`.
    pub nonce: [u8; NONCE_LEN],
    /// The user's generation from `RegisterStart` (compare-and-set).
    #[zeroize(skip)]
    pub generation: Generation,
    /// The app's budget of wrong guesses (1 to the fleet's cap).
    pub max_attempts: u32,
}

impl std::fmt::Debug for RegisterPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegisterPayload { .. }")
    }
}

impl RegisterPayload {
    /// The plaintext: `0x02 ‖ request ‖ response ‖ upload ‖ enc_K ‖ n ‖
    /// u64be(g) ‖ u32be(max)`.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
        if self.request.len() != REGISTRATION_REQUEST_LEN
            || self.response.len() != REGISTRATION_RESPONSE_LEN
            || self.upload.len() != UPLOAD_LEN
            || self.enc_k.len() != ENC_K_LEN
        {
            return Err(ProtocolError::Malformed("registration payload"));
        }
        let mut out = Zeroizing::new(Vec::with_capacity(PAYLOAD_LEN));
        out.push(FORMAT_V2);
        out.extend_from_slice(&self.request);
        out.extend_from_slice(&self.response);
        out.extend_from_slice(&self.upload);
        out.extend_from_slice(&self.enc_k);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.generation.0.to_be_bytes());
        out.extend_from_slice(&self.max_attempts.to_be_bytes());
        Ok(out)
    }

    /// From [`RegisterPayload::encode`]'s bytes, exactly.
    pub fn decode(bytes: &[u8]) -> Result<RegisterPayload, ProtocolError> {
        let bytes = framed(bytes, PAYLOAD_LEN, "registration payload")?;
        let mut at = 1;
        let request = bytes[at..at + REGISTRATION_REQUEST_LEN].to_vec();
        at += REGISTRATION_REQUEST_LEN;
        let response = bytes[at..at + REGISTRATION_RESPONSE_LEN].to_vec();
        at += REGISTRATION_RESPONSE_LEN;
        let upload = bytes[at..at + UPLOAD_LEN].to_vec();
        at += UPLOAD_LEN;
        let enc_k = bytes[at..at + ENC_K_LEN].to_vec();
        at += ENC_K_LEN;
        let nonce = field::<NONCE_LEN>(bytes, &mut at);
        let generation = Generation(u64::from_be_bytes(field::<8>(bytes, &mut at)));
        let max_attempts = u32::from_be_bytes(field::<4>(bytes, &mut at));
        Ok(RegisterPayload {
            request,
            response,
            upload,
            enc_k,
            nonce,
            generation,
            max_attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> RegisterPayload {
        RegisterPayload {
            request: vec![8; REGISTRATION_REQUEST_LEN],
            response: vec![9; REGISTRATION_RESPONSE_LEN],
            upload: vec![1; UPLOAD_LEN],
            enc_k: vec![2; ENC_K_LEN],
            nonce: [3; NONCE_LEN],
            generation: Generation(0x0102_0304_0506_0708),
            max_attempts: 7,
        }
    }

    #[test]
    fn the_payload_has_one_encoding_of_one_length() {
        let bytes = payload().encode().unwrap();
        assert_eq!(bytes.len(), PAYLOAD_LEN);
        assert_eq!(PAYLOAD_LEN, 393);
        assert_eq!(
            &bytes[PAYLOAD_LEN - 12..],
            &[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 7]
        );
        let back = RegisterPayload::decode(&bytes).unwrap();
        assert_eq!(back.upload, payload().upload);
        assert_eq!(back.generation, Generation(0x0102_0304_0506_0708));
        assert_eq!(back.max_attempts, 7);
        // Any other length, or another version, is refused.
        for bad in [
            &bytes[..PAYLOAD_LEN - 1],
            &[bytes.as_slice(), &[0]].concat()[..],
            &[&[1u8][..], &bytes[1..]].concat()[..],
            &[][..],
        ] {
            assert!(RegisterPayload::decode(bad).is_err(), "{} bytes", bad.len());
        }
        // Fields of the wrong size never encode.
        let mut short = payload();
        short.enc_k.pop();
        assert!(short.encode().is_err());
        let mut long = payload();
        long.upload.push(0);
        assert!(long.encode().is_err());
        let mut no_request = payload();
        no_request.request.clear();
        assert!(no_request.encode().is_err());
    }

    #[test]
    fn the_record_has_one_encoding_of_one_length() {
        let r = StoredRecord {
            password_file: vec![4; UPLOAD_LEN],
            enc_k: vec![5; ENC_K_LEN],
            nonce: [6; NONCE_LEN],
        };
        let bytes = r.encode();
        assert_eq!(bytes.len(), RECORD_LEN);
        let back = StoredRecord::decode(&bytes).unwrap();
        assert_eq!(back.nonce, [6; NONCE_LEN]);
        assert!(StoredRecord::decode(&bytes[1..]).is_err());
        assert!(StoredRecord::decode(&[bytes.as_slice(), &[0]].concat()).is_err());
        assert!(StoredRecord::decode(&[2, 0]).is_err());
        assert!(StoredRecord::decode(&[]).is_err());
    }
}
