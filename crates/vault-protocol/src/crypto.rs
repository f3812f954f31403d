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

use crate::{
    AEAD_NONCE_LEN, KEY_LEN, NONCE_LABEL, NONCE_LEN, ProtocolError, RESPONSE_INFO, WRAP_INFO,
};

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
    let mut nonce = [0u8; AEAD_NONCE_LEN];
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
    if sealed.len() < AEAD_NONCE_LEN + 16 {
        return Err(ProtocolError::Malformed(what));
    }
    let (nonce, ct) = sealed.split_at(AEAD_NONCE_LEN);
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

/// OPAQUE's credential identifier of a registration: `user ‖ 0x00 ‖ n`.
/// A user id holds no control characters, so the split is unambiguous.
/// opaque-ke derives the record's OPRF key from the OPRF seed and this
/// identifier: each registration has a key of its own.
pub fn credential_identifier(user: &UserId, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut id = user.as_str().as_bytes().to_vec();
    id.push(0);
    id.extend_from_slice(nonce);
    id
}

/// The authenticator of a registration nonce: the first 16 bytes of
/// HKDF-SHA512-Expand(PRK = `key`, info = label ‖ u16be(len user) ‖ user ‖
/// u64be(generation) ‖ random half), used as a PRF.
fn nonce_tag(key: &[u8; 64], user: &UserId, generation: Generation, random: &[u8]) -> [u8; 16] {
    let mut info = NONCE_LABEL.to_vec();
    let u = user.as_str().as_bytes();
    info.extend_from_slice(&(u.len() as u16).to_be_bytes());
    info.extend_from_slice(u);
    info.extend_from_slice(&generation.0.to_be_bytes());
    info.extend_from_slice(random);
    let mut tag = [0u8; 16];
    // A 64-byte PRK is SHA-512's length, and 16 bytes are far below
    // HKDF's output limit: neither call can fail.
    if let Ok(h) = Hkdf::<Sha512>::from_prk(key) {
        let _ = h.expand(&info, &mut tag);
    }
    tag
}

/// A fresh registration nonce for `user` at `generation`: 16 random bytes
/// and their authenticator under the node's `key` (derived from the fleet
/// secrets, the same on every node).
pub(crate) fn new_nonce(
    rng: &mut (impl CryptoRng + RngCore),
    key: &[u8; 64],
    user: &UserId,
    generation: Generation,
) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut n[..16]);
    let tag = nonce_tag(key, user, generation, &n[..16]);
    n[16..].copy_from_slice(&tag);
    n
}

/// Whether `n` was issued by the fleet for `user` at `generation`. A
/// captured nonce cannot be reused in a later registration (the
/// generation moved), so no registration can recreate the OPRF key of an
/// earlier record.
pub(crate) fn nonce_is_valid(
    key: &[u8; 64],
    user: &UserId,
    generation: Generation,
    n: &[u8; NONCE_LEN],
) -> bool {
    use subtle::ConstantTimeEq;
    let tag = nonce_tag(key, user, generation, &n[..16]);
    bool::from(tag.ct_eq(&n[16..]))
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
    let mut aad = b"bkv/v2/record\0".to_vec();
    aad.extend_from_slice(fleet.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(user.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(&generation.0.to_be_bytes());
    aad
}
