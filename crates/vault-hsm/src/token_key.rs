//! P-256 signing keys that live in a token: generated there, sensitive,
//! never extractable, sign only. Three roles ([`KeyRole`]):
//!
//! - **TLS** (`bkv-tls`): a node's key on its token and the operator's on
//!   the operator token sign TLS handshakes through PKCS#11, so a copy of
//!   the files on a disk is not the node or the operator: the certificate
//!   is public, and there is no key file.
//! - **fleet CA** (`bkv-fleet-ca/<fleet id>`) and **frontend CA**
//!   (`bkv-frontend-ca/<fleet id>`), on the operator token: `vaultctl pki`
//!   issues certificates with them, so a copy of a fleet directory cannot
//!   mint a node certificate either. One operator token may serve several
//!   fleets; each has CA keys of its own, so a node certificate of one
//!   fleet never chains in another.
//!
//! [`TokenKey::open_role`] refuses a key that could have left the token
//! (not sensitive, extractable, ever extractable, or imported rather than
//! generated there). [`TokenKey::rustls`] wraps a key as a
//! `rustls::sign::SigningKey`: rustls asks for an ECDSA P-256 SHA-256
//! signature, the host hashes, the token signs the digest with raw
//! `CKM_ECDSA` (SoftHSM has no combined mechanism), and the `r ‖ s` it
//! returns is DER-encoded as TLS wants it. Signatures go through a small
//! pool of sessions, reopened when the module says one is gone.

use std::path::Path;
use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{ObjectClass, ObjectHandle};
use rustls::SignatureScheme;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::sign::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use crate::attestation::AttestationPublicKey;
use crate::error::{DeviceError, HsmError, OpenError};
use crate::pkcs11::keys::{TLS_LABEL, describe, find_one};
use crate::pkcs11::pool::SessionPool;
use crate::pkcs11::read_ec_public;
use crate::pkcs11::token::Token;
use crate::secret::SecretBytes;

/// The DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey,
/// prime256v1, a 65-byte uncompressed point in the bit string).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Sessions a [`TokenKey`] signs through (TLS handshakes on two ports).
const SESSIONS: usize = 2;

/// Object label prefix of a fleet's fleet CA key.
pub(crate) const FLEET_CA_PREFIX: &str = "bkv-fleet-ca/";
/// Object label prefix of a fleet's frontend CA key.
pub(crate) const FRONTEND_CA_PREFIX: &str = "bkv-frontend-ca/";

/// What a token's signing key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole<'a> {
    /// The TLS identity of a node or of the operator (`bkv-tls`).
    Tls,
    /// The fleet CA of the fleet with this id (operator token).
    FleetCa(&'a str),
    /// The frontend CA of the fleet with this id (operator token).
    FrontendCa(&'a str),
}

impl KeyRole<'_> {
    /// The label of the key pair's objects.
    pub fn label(&self) -> String {
        match self {
            KeyRole::Tls => TLS_LABEL.to_owned(),
            KeyRole::FleetCa(fleet) => format!("{FLEET_CA_PREFIX}{fleet}"),
            KeyRole::FrontendCa(fleet) => format!("{FRONTEND_CA_PREFIX}{fleet}"),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            KeyRole::Tls => {
                "TLS key pair (provision it with `vaultctl fleet provision` or `vaultctl hsm tls-key`)"
            }
            KeyRole::FleetCa(_) | KeyRole::FrontendCa(_) => {
                "CA key pair of this fleet (`vaultctl pki init` makes it on a new fleet)"
            }
        }
    }
}

/// A signing key on a token, logged in.
pub struct TokenKey {
    token: Token,
    pin: SecretBytes,
    sessions: SessionPool,
    private: ObjectHandle,
    public: AttestationPublicKey,
    label: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("token", &self.token.label)
            .field("key", &self.label)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// Finds the token labelled `label` in `module`, logs in with `pin`
    /// and finds its TLS key.
    pub fn open(module: &Path, label: &str, pin: &SecretBytes) -> Result<TokenKey, OpenError> {
        TokenKey::open_role(module, label, pin, KeyRole::Tls)
    }

    /// Like [`TokenKey::open`], for the key of `role`. Refuses a key whose
    /// attributes say it could have left the token.
    pub fn open_role(
        module: &Path,
        label: &str,
        pin: &SecretBytes,
        role: KeyRole<'_>,
    ) -> Result<TokenKey, OpenError> {
        let token = Token::find(module, label)?;
        let sessions = SessionPool::open(&token, pin, SESSIONS)?;
        let object = role.label();
        let missing = || OpenError::KeyMissing {
            label: label.to_owned(),
            what: role.what(),
            object: object.clone(),
        };
        let found = sessions.with(&token, pin, |session| {
            let private = find_one(session, ObjectClass::PRIVATE_KEY, &object)?;
            let public = find_one(session, ObjectClass::PUBLIC_KEY, &object)?;
            let (Some(private), Some(public)) = (private, public) else {
                return Ok(None);
            };
            let attrs = describe(session, private, "signing")?;
            let kept_in = attrs.sensitive == Some(true)
                && attrs.extractable == Some(false)
                && attrs.never_extractable == Some(true)
                && attrs.local == Some(true);
            if !kept_in {
                return Err(HsmError::Device(DeviceError::local(
                    "open signing key",
                    format!(
                        "{object:?} on token {label:?} could have left the token (sensitive {:?}, extractable {:?}, never extractable {:?}, generated on the token {:?}); generate it on the token",
                        attrs.sensitive, attrs.extractable, attrs.never_extractable, attrs.local
                    ),
                )));
            }
            Ok(Some((private, read_ec_public(session, public)?)))
        });
        let (private, public) = match found {
            Ok(Some(found)) => found,
            Ok(None) => return Err(missing()),
            Err(HsmError::Device(d)) => return Err(d.into()),
            Err(other) => {
                return Err(DeviceError::local("open signing key", other.to_string()).into());
            }
        };
        Ok(TokenKey {
            token,
            pin: pin.clone(),
            sessions,
            private,
            public,
            label: object,
        })
    }

    /// The public key, SEC1 uncompressed (65 bytes).
    pub fn public_key(&self) -> &AttestationPublicKey {
        &self.public
    }

    /// The public key as a DER SubjectPublicKeyInfo (what a certificate
    /// names).
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        spki_der(&self.public.0)
    }

    /// ECDSA P-256/SHA-256 over `message` inside the token: `r ‖ s`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let digest = Sha256::digest(message);
        self.sessions.with(&self.token, &self.pin, |session| {
            session
                .sign(&Mechanism::Ecdsa, self.private, &digest)
                .map_err(|e| HsmError::Device(DeviceError::from_cryptoki("sign", e)))
        })
    }

    /// ECDSA P-256/SHA-256 over `message` inside the token, DER-encoded
    /// (as X.509 and TLS carry it).
    pub fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let raw = self.sign(message)?;
        let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| {
            HsmError::Device(DeviceError::local(
                "sign",
                "the token returned something other than a P-256 signature",
            ))
        })?;
        Ok(sig.to_der().as_bytes().to_vec())
    }

    /// This key as rustls's signing key.
    pub fn rustls(self: &Arc<Self>) -> Arc<dyn SigningKey> {
        Arc::new(RustlsKey(self.clone()))
    }
}

/// A P-256 SubjectPublicKeyInfo in DER from a SEC1 uncompressed point.
pub fn spki_der(sec1: &[u8]) -> Vec<u8> {
    let mut out = P256_SPKI_PREFIX.to_vec();
    out.extend_from_slice(sec1);
    out
}

#[derive(Debug)]
struct RustlsKey(Arc<TokenKey>);

impl SigningKey for RustlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(RustlsSigner(self.0.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.0.public_key_spki_der()))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct RustlsSigner(Arc<TokenKey>);

impl Signer for RustlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // rustls signs inside a handshake on an async task; the device call
        // blocks, so on a multi-threaded runtime the worker hands its other
        // tasks on first (a current-thread runtime has no one to hand to).
        let sign = || self.0.sign_der(message);
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(sign)
            }
            _ => sign(),
        }
        .map_err(|e| rustls::Error::General(format!("HSM: {e}")))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}
