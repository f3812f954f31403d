//! The recovery protocol's cryptography (design brief §3), both sides, with
//! no I/O: the node's server steps and the app's client steps agree here on
//! every label, identifier and byte format (docs/PROTOCOL.md).
//!
//! - [`suite`]: the OPAQUE cipher suite and the fleet's server setup.
//! - [`server`]: the node's steps ([`FleetSecrets`], [`ServerLoginState`]).
//! - [`client`]: the app's steps ([`client::Registration`], [`client::Login`]).
//! - [`crypto`]: the labelled constructions both sides share: `enc_K`, the
//!   `RecoverFinish` answer, the HPKE payload's parameters, the AADs of
//!   what the HSM seals.
//! - [`formats`]: the byte formats of the sealed payload and the stored
//!   record.
//!
//! Protocol version 2 (docs/PROTOCOL.md):
//!
//! - OPAQUE (opaque-ke, [`suite::Suite`]): the credential identifier is
//!   `user ‖ 0x00 ‖ n`, where `n` is the registration nonce the node draws
//!   in `RegisterStart` (so each registration has its own OPRF key and no
//!   call but a metered `RecoverStart` evaluates a stored record's); the
//!   identities bound into the envelope and the key exchange are the user
//!   id (client) and the fleet id (server); context `bkv/v2`.
//! - `enc_K = nonce ‖ ChaCha20-Poly1305(HKDF-SHA512(export_key,
//!   "bkv/v1/backup-key-wrap"), K, aad = user id)`, made by the app.
//! - `RegisterFinish` payload `{RegistrationUpload, enc_K, n, g,
//!   max_attempts}` ([`formats::RegisterPayload`]) is HPKE-sealed by the
//!   app to the fleet (RFC 9180 base mode, X25519-HKDF-SHA256,
//!   HKDF-SHA256, ChaCha20-Poly1305; info `bkv/v2/register-finish`, aad =
//!   fleet id ‖ 0 ‖ user id), so the frontend relays only ciphertext and
//!   can change neither the generation it registers over nor the budget.
//! - The `RecoverFinish` answer is `enc_K` under ChaCha20-Poly1305 with a key
//!   derived from the OPAQUE session key (HKDF-SHA512, info
//!   `bkv/v1/recover-response`), so the frontend cannot read even `enc_K`.
//!
//! Randomness is a parameter ([`rand_core::CryptoRng`]): the node and the
//! frontend-side callers pass `OsRng` (KE2's randomness protects one login
//! only), and so does the app.
//!
//! Must not depend on: openraft, RocksDB, PKCS#11, the network. The app SDK
//! (`vault-client`) links this crate and never `vault-core`.

pub mod client;
pub mod crypto;
mod error;
pub mod formats;
pub mod server;
pub mod suite;

pub use crypto::{
    hpke_key_aad, new_hpke_key, open_answer, record_aad, seal_answer, unwrap_key, wrap_key,
};
pub use error::ProtocolError;
pub use formats::StoredRecord;
pub use server::{FleetSecrets, RegisterStarted, ServerLoginState, check_ke1, check_ke3};

/// OPAQUE context string of this protocol version.
pub const CONTEXT: &[u8] = b"bkv/v2";
/// HPKE `info` of the `RegisterFinish` payload.
pub const HPKE_INFO: &[u8] = b"bkv/v2/register-finish";
/// HKDF info of the key that wraps K under the OPAQUE export key
/// (unchanged since protocol v1).
pub const WRAP_INFO: &[u8] = b"bkv/v1/backup-key-wrap";
/// HKDF info of the key that protects the `RecoverFinish` answer
/// (unchanged since protocol v1).
pub const RESPONSE_INFO: &[u8] = b"bkv/v1/recover-response";
/// The label of the registration nonce's authenticator.
pub const NONCE_LABEL: &[u8] = b"bkv/v2/registration-nonce";

/// Length of an OPAQUE `RegistrationRequest` (a blinded element).
pub const REGISTRATION_REQUEST_LEN: usize = 32;
/// Length of an OPAQUE `RegistrationResponse` (evaluated element, server
/// public key).
pub const REGISTRATION_RESPONSE_LEN: usize = 64;
/// Length of an OPAQUE `RegistrationUpload` (client public key, masking
/// key, envelope).
pub const UPLOAD_LEN: usize = 192;
/// Length of KE1 (blinded element, client nonce, client ephemeral key).
pub const KE1_LEN: usize = 96;
/// Length of KE2.
pub const KE2_LEN: usize = 320;
/// Length of KE3 (the client's MAC).
pub const KE3_LEN: usize = 64;
/// Length of the backup key K.
pub const KEY_LEN: usize = 32;
/// Length of `enc_K`: nonce, K, tag.
pub const ENC_K_LEN: usize = AEAD_NONCE_LEN + KEY_LEN + 16;
/// Length of the registration nonce `n`: 16 random bytes and a 16-byte
/// authenticator binding them to the user and the generation.
pub const NONCE_LEN: usize = 32;
/// Length of an HPKE X25519 public key (also the encapsulated key).
pub const HPKE_PUBLIC_KEY_LEN: usize = 32;
/// Length of `RegisterFinish.sealed_registration`: the encapsulated key,
/// the payload, the AEAD tag.
pub const SEALED_REGISTRATION_LEN: usize = HPKE_PUBLIC_KEY_LEN + formats::PAYLOAD_LEN + 16;
/// Length of an AEAD nonce in `enc_K` and the `RecoverFinish` answer.
pub(crate) const AEAD_NONCE_LEN: usize = 12;

#[cfg(test)]
mod tests;
