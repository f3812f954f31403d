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
//! - OPAQUE (opaque-ke, [`suite::Suite`]): credential identifier = user id;
//!   the identities bound into the envelope and the key exchange are the
//!   user id (client) and the fleet id (server); context `bkv/v1`.
//! - `enc_K = nonce ‖ ChaCha20-Poly1305(HKDF-SHA512(export_key,
//!   "bkv/v1/backup-key-wrap"), K, aad = user id)`, made by the app.
//! - `RegisterFinish` payload `{RegistrationUpload, enc_K}` is HPKE-sealed by
//!   the app to the fleet (RFC 9180 base mode, X25519-HKDF-SHA256,
//!   HKDF-SHA256, ChaCha20-Poly1305; info `bkv/v1/register-finish`, aad =
//!   fleet id ‖ 0 ‖ user id), so the frontend relays only ciphertext.
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
pub use server::{FleetSecrets, ServerLoginState, check_ke1};

/// OPAQUE context string of this protocol version.
pub const CONTEXT: &[u8] = b"bkv/v1";
/// HPKE `info` of the `RegisterFinish` payload.
pub const HPKE_INFO: &[u8] = b"bkv/v1/register-finish";
/// HKDF info of the key that wraps K under the OPAQUE export key.
pub const WRAP_INFO: &[u8] = b"bkv/v1/backup-key-wrap";
/// HKDF info of the key that protects the `RecoverFinish` answer.
pub const RESPONSE_INFO: &[u8] = b"bkv/v1/recover-response";

/// Largest OPAQUE message any call accepts (the largest, KE2, is 320 bytes
/// with this suite).
pub const MAX_OPAQUE_MESSAGE: usize = 512;
/// Largest HPKE-sealed `RegisterFinish` payload accepted.
pub const MAX_SEALED_PAYLOAD: usize = 2048;
/// Length of the backup key K.
pub const KEY_LEN: usize = 32;
/// Length of an HPKE X25519 public key.
pub const HPKE_PUBLIC_KEY_LEN: usize = 32;
/// Length of an AEAD nonce in `enc_K` and the `RecoverFinish` answer.
pub(crate) const NONCE_LEN: usize = 12;
/// Format version of the sealed payload and the stored record.
pub(crate) const FORMAT_V1: u8 = 1;

#[cfg(test)]
mod tests;
