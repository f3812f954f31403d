//! The operator's signing key: an EC P-256 key pair on a token of its own
//! (separate from the fleet KEK and every node key) that counter-signs
//! fleet-key bundles. Provisioned by [`crate::provision::init_operator_token`].

use std::path::Path;
use std::sync::Mutex;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use sha2::{Digest, Sha256};

use crate::attestation::{AttestationPublicKey, AttestationSignature};
use crate::error::{DeviceError, HsmError, OpenError};
use crate::pkcs11::keys::{OPERATOR_LABEL, find_one};
use crate::pkcs11::read_ec_public;
use crate::pkcs11::token::Token;
use crate::secret::SecretBytes;

/// The operator key on its token, logged in.
pub struct OperatorKey {
    session: Mutex<Session>,
    private: ObjectHandle,
    public: AttestationPublicKey,
    label: String,
}

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorKey")
            .field("token", &self.label)
            .finish_non_exhaustive()
    }
}

impl OperatorKey {
    /// Finds the token labelled `label`, logs in with `pin`, finds the key.
    pub fn open(module: &Path, label: &str, pin: &SecretBytes) -> Result<OperatorKey, OpenError> {
        let token = Token::find(module, label)?;
        let session = token.session(false)?;
        token.login_user(&session, pin)?;
        let missing = || OpenError::KeyMissing {
            label: label.to_owned(),
            what: "operator key pair",
            object: OPERATOR_LABEL.to_owned(),
        };
        let private =
            find_one(&session, ObjectClass::PRIVATE_KEY, OPERATOR_LABEL)?.ok_or_else(missing)?;
        let public_handle =
            find_one(&session, ObjectClass::PUBLIC_KEY, OPERATOR_LABEL)?.ok_or_else(missing)?;
        let public = read_ec_public(&session, public_handle)?;
        Ok(OperatorKey {
            session: Mutex::new(session),
            private,
            public,
            label: label.to_owned(),
        })
    }

    /// The public key (SEC1 uncompressed P-256): what apps pin.
    pub fn public_key(&self) -> &AttestationPublicKey {
        &self.public
    }

    /// Signs `message` with ECDSA P-256/SHA-256 inside the token (the host
    /// hashes; the token signs the digest with raw `CKM_ECDSA`).
    pub fn sign(&self, message: &[u8]) -> Result<AttestationSignature, HsmError> {
        let digest = Sha256::digest(message);
        let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let sig = session
            .sign(&Mechanism::Ecdsa, self.private, &digest)
            .map_err(|e| HsmError::Device(DeviceError::from_cryptoki("operator sign", e)))?;
        Ok(AttestationSignature(sig))
    }
}
