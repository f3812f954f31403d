//! The [`Hsm`] trait: everything the vault asks of a hardware security module.

use crate::attestation::{AttestationPublicKey, AttestationSignature};
use crate::blob::KekVersion;
use crate::error::HsmError;
use crate::report::KeyReport;
use crate::secret::SecretBytes;

/// What the vault needs from the HSM of one node.
///
/// Calls block the calling thread while the device works; async code goes
/// through [`crate::AsyncHsm`], which runs them on the blocking pool so that
/// Raft heartbeats never wait behind an HSM call. Implementations are shared
/// between threads and serialise access to each device session themselves.
pub trait Hsm: Send + Sync + 'static {
    /// Encrypts `plaintext` under the current fleet KEK with AES-256-GCM in
    /// the HSM, binding `aad` (what the value is: kind, fleet, user,
    /// generation). Returns the blob laid out as in [`crate::blob`].
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError>;

    /// Decrypts a blob made by [`Hsm::seal`] on any HSM holding the same KEK
    /// version, given the same `aad`.
    fn unseal(&self, aad: &[u8], blob: &[u8]) -> Result<SecretBytes, HsmError>;

    /// The KEK version that [`Hsm::seal`] uses now: the highest held.
    fn current_kek_version(&self) -> KekVersion;

    /// [`Hsm::seal`] under KEK `version`, which this HSM must hold (the
    /// fleet's version, which may be below the highest during a rotation).
    fn seal_under(
        &self,
        version: KekVersion,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, HsmError>;

    /// Every KEK version on the token, looked up again (a ceremony run by
    /// another process may have added one while this one ran).
    fn refresh_keks(&self) -> Result<Vec<KekVersion>, HsmError>;

    /// Destroys KEK `version` on the token for good (crypto-shredding
    /// every blob sealed under it), and replaces the token's transport key
    /// so that no ceremony file made before opens here again. Refused when
    /// it is the only one left. A version destroyed before, or never held
    /// here, is no error: it is recorded as destroyed, and the transport
    /// key is still checked (a crash may have come between).
    fn destroy_kek(&self, version: KekVersion) -> Result<(), HsmError>;

    /// Signs `message` (ECDSA P-256 with SHA-256) with this node's
    /// attestation key.
    fn sign(&self, message: &[u8]) -> Result<AttestationSignature, HsmError>;

    /// This node's attestation public key.
    fn attestation_public_key(&self) -> AttestationPublicKey;

    /// Fills `out` from the HSM's random number generator.
    fn random(&self, out: &mut [u8]) -> Result<(), HsmError>;

    /// The token's identity and the attributes of every vault key.
    fn key_report(&self) -> Result<KeyReport, HsmError>;
}
