//! The labelled constructions both sides share: the two AEAD layers
//! (`enc_K` under the export key, the `RecoverFinish` answer under the
//! session key), the HPKE parameters of the `RegisterFinish` payload, the
//! fleet HPKE key, and the associated data of what the HSM seals.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hpke::{Kem as _, Serializable};
use opaque_ke::Identifiers;
use rand_core::{CryptoRng, RngCore};
use sha2::Sha512;
use vault_types::{FleetId, Generation, UserId};
use zeroize::Zeroizing;

use crate::{KEY_LEN, NONCE_LEN, ProtocolError, RESPONSE_INFO, WRAP_INFO};

/// The HPKE KEM of the `RegisterFinish` payload.
pub(crate) type HpkeKem = hpke::kem::X25519HkdfSha256;
/// The HPKE KDF of the `RegisterFinish` payload.
pub(crate) type HpkeKdf = hpke::kdf::HkdfSha256;
/// The HPKE AEAD of the `RegisterFinish` payload.
pub(crate) type HpkeAead = hpke::aead::ChaCha20Poly1305;

pub(crate) fn hkdf_key(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA512's output limit.
    let _ = Hkdf::<Sha512>::new(None, ikm).expand(info, key.as_mut());
    key
}

pub(crate) fn aead_seal(
    rng: &mut (impl CryptoRng + RngCore),
    key: &[u8; 32],
    plaintext: &[u8],
    aad: &[u8],
) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // ChaCha20-Poly1305 encryption only fails past 256 GiB.
        .unwrap_or_default();
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    out
}

pub(crate) fn aead_open(
    key: &[u8; 32],
    sealed: &[u8],
    aad: &[u8],
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(ProtocolError::Malformed(what));
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| ProtocolError::Unauthentic(what))
}

pub(crate) fn identifiers<'a>(user: &'a UserId, fleet: &'a FleetId) -> Identifiers<'a> {
    Identifiers {
        client: Some(user.as_str().as_bytes()),
        server: Some(fleet.as_str().as_bytes()),
    }
}

pub(crate) fn hpke_aad(fleet: &FleetId, user: &UserId) -> Vec<u8> {
    let mut aad = fleet.as_str().as_bytes().to_vec();
    aad.push(0);
    aad.extend_from_slice(user.as_str().as_bytes());
    aad
}

pub(crate) fn bounded<'a>(
    bytes: &'a [u8],
    max: usize,
    what: &'static str,
) -> Result<&'a [u8], ProtocolError> {
    if bytes.len() > max {
        Err(ProtocolError::Malformed(what))
    } else {
        Ok(bytes)
    }
}

/// `enc_K`: K wrapped under the OPAQUE export key (docs/PROTOCOL.md).
pub fn wrap_key(
    rng: &mut (impl CryptoRng + RngCore),
    export_key: &[u8],
    user: &UserId,
    k: &[u8; KEY_LEN],
) -> Vec<u8> {
    aead_seal(
        rng,
        &hkdf_key(export_key, WRAP_INFO),
        k,
        user.as_str().as_bytes(),
    )
}

/// K from `enc_K` and the export key.
pub fn unwrap_key(
    export_key: &[u8],
    user: &UserId,
    enc_k: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, ProtocolError> {
    let k = aead_open(
        &hkdf_key(export_key, WRAP_INFO),
        enc_k,
        user.as_str().as_bytes(),
        "wrapped key",
    )?;
    let k: [u8; KEY_LEN] = k
        .as_slice()
        .try_into()
        .map_err(|_| ProtocolError::Malformed("wrapped key"))?;
    Ok(Zeroizing::new(k))
}

/// The `RecoverFinish` answer: `enc_K` under the OPAQUE session key
/// (docs/PROTOCOL.md).
pub fn seal_answer(
    rng: &mut (impl CryptoRng + RngCore),
    session_key: &[u8],
    user: &UserId,
    enc_k: &[u8],
) -> Vec<u8> {
    aead_seal(
        rng,
        &hkdf_key(session_key, RESPONSE_INFO),
        enc_k,
        user.as_str().as_bytes(),
    )
}

/// `enc_K` from a `RecoverFinish` answer and the session key.
pub fn open_answer(
    session_key: &[u8],
    user: &UserId,
    answer: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
    aead_open(
        &hkdf_key(session_key, RESPONSE_INFO),
        answer,
        user.as_str().as_bytes(),
        "recovery answer",
    )
}

/// A new fleet HPKE private key, deterministic in `seed` (32 bytes of HSM
/// randomness), serialized.
pub fn new_hpke_key(seed: [u8; 32]) -> Zeroizing<Vec<u8>> {
    let seed = Zeroizing::new(seed);
    let (sk, _) = HpkeKem::derive_keypair(seed.as_ref());
    Zeroizing::new(sk.to_bytes().to_vec())
}

/// Associated data binding a sealed fleet HPKE key to its fleet.
pub fn hpke_key_aad(fleet: &FleetId) -> Vec<u8> {
    let mut aad = b"bkv/v1/hpke-key\0".to_vec();
    aad.extend_from_slice(fleet.as_str().as_bytes());
    aad
}

/// Associated data binding a sealed user record to what it is: its fleet,
/// user and generation. A blob moved to another user or generation fails
/// to open.
pub fn record_aad(fleet: &FleetId, user: &UserId, generation: Generation) -> Vec<u8> {
    let mut aad = b"bkv/v1/record\0".to_vec();
    aad.extend_from_slice(fleet.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(user.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(&generation.0.to_be_bytes());
    aad
}
