//! The KEK ceremony: copying the fleet KEK from one HSM to another without it
//! ever existing in plaintext outside an HSM.
//!
//! 1. The receiving token B exports its transport public key
//!    ([`export_transport_key`]). The operator checks its fingerprint out of
//!    band (B's console prints it).
//! 2. On the sending token A, the security officer imports that key as a
//!    *trusted* session object; then the user wraps every KEK under it with
//!    RSA-OAEP ([`wrap_keks_for`]). A's KEK has `CKA_WRAP_WITH_TRUSTED`, so A
//!    refuses to wrap it under any key the security officer did not trust.
//!    The trusted key is a session object: it disappears with the session.
//! 3. B unwraps each KEK with its transport private key into a sensitive
//!    object ([`import_keks`]) and checks that its check value matches A's.
//!
//! RSA-OAEP uses SHA-1 and MGF1-SHA-1 because SoftHSM 2.6 rejects any other
//! OAEP hash for wrapping (`CKR_ARGUMENTS_BAD`). OAEP's security does not rest
//! on SHA-1's collision resistance; the transport key is 3072-bit RSA.

use std::path::Path;

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::blob::KekVersion;
use crate::error::DeviceError;
use crate::pkcs11::keys::{
    PEER_TRANSPORT_LABEL, TRANSPORT_LABEL, check_value, find_keks, find_one, kek_template,
};
use crate::pkcs11::token::Token;
use crate::provision::{ProvisionError, TRANSPORT_KEY_BITS};
use crate::secret::SecretBytes;

/// Format version of the JSON files the ceremony passes between machines.
pub const CEREMONY_FORMAT: u32 = 1;
/// Name of the wrapping mechanism, recorded in [`WrappedKeks`].
pub const WRAP_MECHANISM: &str = "RSA-OAEP(SHA-1, MGF1-SHA-1, empty label)";

/// Why a ceremony step failed.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    /// Module, token, PIN or device trouble.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// The token has no transport key pair.
    #[error(
        "token {0:?} has no transport key (bkv-transport); provision it with `vaultctl hsm init`"
    )]
    NoTransportKey(String),
    /// The sending token holds no KEK.
    #[error("token {0:?} holds no fleet KEK to send")]
    NoKek(String),
    /// The transport key offered is too small or malformed.
    #[error("transport public key rejected: {0}")]
    BadTransportKey(String),
    /// The file is of a format or mechanism this build does not know.
    #[error(
        "ceremony file is format {found}, mechanism {mechanism:?}; this build reads format {CEREMONY_FORMAT}, {WRAP_MECHANISM}"
    )]
    UnknownFormat {
        /// Its format number.
        found: u32,
        /// Its mechanism.
        mechanism: String,
    },
    /// The wrapped KEKs were made for another transport key.
    #[error("wrapped KEKs are for transport key {expected}, but this token's is {actual}")]
    WrongRecipient {
        /// Fingerprint the file names.
        expected: String,
        /// Fingerprint of this token's transport key.
        actual: String,
    },
    /// After unwrapping, the KEK's check value differs from the sender's.
    #[error(
        "KEK v{version} arrived with check value {actual}, sender's is {expected}; the copy was destroyed"
    )]
    CheckValueMismatch {
        /// KEK version.
        version: u32,
        /// Sender's check value.
        expected: String,
        /// Receiver's check value.
        actual: String,
    },
    /// The receiving token already holds a different KEK of this version.
    #[error("token already holds a different KEK v{0}; refusing to replace it")]
    KekConflict(u32),
    /// The file carries a KEK version this token destroyed (a rotation
    /// crypto-shredded it): it is never taken back.
    #[error(
        "KEK v{0} was destroyed on this token (a rotation shredded it); it is never imported again"
    )]
    Destroyed(u32),
}

impl From<DeviceError> for CeremonyError {
    fn from(e: DeviceError) -> Self {
        CeremonyError::Provision(e.into())
    }
}

impl From<crate::error::OpenError> for CeremonyError {
    fn from(e: crate::error::OpenError) -> Self {
        CeremonyError::Provision(e.into())
    }
}

/// The receiving token's transport public key, as it travels to the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportPublicKey {
    /// [`CEREMONY_FORMAT`].
    pub format: u32,
    /// Label of the receiving token.
    pub token_label: String,
    /// Serial of the receiving token.
    pub token_serial: String,
    /// RSA modulus, big-endian.
    #[serde(with = "hex::serde")]
    pub modulus: Vec<u8>,
    /// RSA public exponent, big-endian.
    #[serde(with = "hex::serde")]
    pub exponent: Vec<u8>,
}

impl TransportPublicKey {
    /// SHA-256 over the modulus and exponent, each prefixed by its length as
    /// a 4-byte big-endian number; lowercase hex. Operators compare it on
    /// both consoles before the KEK is sent.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.modulus, &self.exponent] {
            h.update((part.len() as u32).to_be_bytes());
            h.update(part);
        }
        hex::encode(h.finalize())
    }

    fn check(&self) -> Result<(), CeremonyError> {
        if self.format != CEREMONY_FORMAT {
            return Err(CeremonyError::UnknownFormat {
                found: self.format,
                mechanism: WRAP_MECHANISM.into(),
            });
        }
        let bits = self.modulus.iter().skip_while(|b| **b == 0).count() * 8;
        if (bits as u64) < TRANSPORT_KEY_BITS {
            return Err(CeremonyError::BadTransportKey(format!(
                "modulus has {bits} bits, at least {TRANSPORT_KEY_BITS} are required"
            )));
        }
        if self.exponent.is_empty() || self.exponent.len() > 8 {
            return Err(CeremonyError::BadTransportKey("bad public exponent".into()));
        }
        Ok(())
    }
}

/// The KEKs of the sending token, each wrapped under the receiver's
/// transport key. Ciphertext only: safe to carry on a USB stick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKeks {
    /// [`CEREMONY_FORMAT`].
    pub format: u32,
    /// [`WRAP_MECHANISM`].
    pub mechanism: String,
    /// Fingerprint of the transport key they are wrapped under.
    pub transport_fingerprint: String,
    /// Label of the sending token.
    pub source_token_label: String,
    /// Serial of the sending token.
    pub source_token_serial: String,
    /// One entry per KEK version.
    pub keks: Vec<WrappedKek>,
}

/// One wrapped KEK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKek {
    /// KEK version.
    pub version: u32,
    /// The sender's check value of this KEK.
    pub check_value: String,
    /// RSA-OAEP ciphertext of the key.
    #[serde(with = "hex::serde")]
    pub wrapped: Vec<u8>,
}

fn oaep() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    ))
}

/// Step 1, on the receiving token: its transport public key. The public key
/// is a public object, so no PIN is needed.
pub fn export_transport_key(
    module: &Path,
    label: &str,
) -> Result<TransportPublicKey, CeremonyError> {
    let token = Token::find(module, label)?;
    let session = token.session(false)?;
    let handle = find_one(&session, ObjectClass::PUBLIC_KEY, TRANSPORT_LABEL)?
        .ok_or_else(|| CeremonyError::NoTransportKey(label.to_owned()))?;
    let attrs = session
        .get_attributes(
            handle,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )
        .map_err(|e| DeviceError::from_cryptoki("read transport public key", e))?;
    let (mut modulus, mut exponent) = (Vec::new(), Vec::new());
    for attr in attrs {
        match attr {
            Attribute::Modulus(m) => modulus = m,
            Attribute::PublicExponent(e) => exponent = e,
            _ => {}
        }
    }
    let key = TransportPublicKey {
        format: CEREMONY_FORMAT,
        token_label: label.to_owned(),
        token_serial: token.report()?.serial,
        modulus,
        exponent,
    };
    key.check()?;
    Ok(key)
}

/// Step 2, on the sending token: wrap every KEK under `peer`, which the
/// security officer first imports as trusted.
pub fn wrap_keks_for(
    module: &Path,
    label: &str,
    so_pin: &SecretBytes,
    user_pin: &SecretBytes,
    peer: &TransportPublicKey,
) -> Result<WrappedKeks, CeremonyError> {
    peer.check()?;
    let token = Token::find(module, label)?;
    let session = token.session(true)?;
    token.login_so(&session, so_pin)?;
    // Only the security officer may set CKA_TRUSTED. A session object lives
    // exactly as long as this session, so the trust ends with the ceremony.
    let trusted = import_peer_key(&session, peer, true)?;
    session
        .logout()
        .map_err(|e| DeviceError::from_cryptoki("log out security officer", e))?;
    token.login_user(&session, user_pin)?;
    let keks = wrap_all(&session, trusted, label)?;
    Ok(WrappedKeks {
        format: CEREMONY_FORMAT,
        mechanism: WRAP_MECHANISM.into(),
        transport_fingerprint: peer.fingerprint(),
        source_token_label: label.to_owned(),
        source_token_serial: token.report()?.serial,
        keks,
    })
}

fn import_peer_key(
    session: &Session,
    peer: &TransportPublicKey,
    trusted: bool,
) -> Result<ObjectHandle, DeviceError> {
    let mut template = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Modulus(peer.modulus.clone()),
        Attribute::PublicExponent(peer.exponent.clone()),
        Attribute::Wrap(true),
        Attribute::Encrypt(false),
        Attribute::Verify(false),
        Attribute::Label(PEER_TRANSPORT_LABEL.as_bytes().to_vec()),
    ];
    if trusted {
        template.push(Attribute::Trusted(true));
    }
    session
        .create_object(&template)
        .map_err(|e| DeviceError::from_cryptoki("import peer transport key", e))
}

fn wrap_all(
    session: &Session,
    wrapping_key: ObjectHandle,
    label: &str,
) -> Result<Vec<WrappedKek>, CeremonyError> {
    let keks = find_keks(session)?;
    if keks.is_empty() {
        return Err(CeremonyError::NoKek(label.to_owned()));
    }
    let mut out = Vec::with_capacity(keks.len());
    for (version, handle) in keks {
        let wrapped = session
            .wrap_key(&oaep(), wrapping_key, handle)
            .map_err(|e| DeviceError::from_cryptoki("wrap KEK", e))?;
        out.push(WrappedKek {
            version: version.0,
            check_value: check_value(session, handle)?,
            wrapped,
        });
    }
    Ok(out)
}

/// Options of the receiving side.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Let the received KEK be wrapped again (under trusted keys only), so
    /// this token can be the sender of a later ceremony. Off by default: a
    /// received copy stays where it landed.
    pub rewrappable: bool,
}

/// Step 3, on the receiving token: unwrap each KEK into a sensitive object
/// and check it against the sender's check value. Versions the token holds
/// already with the same check value are skipped. Returns the versions added.
pub fn import_keks(
    module: &Path,
    label: &str,
    user_pin: &SecretBytes,
    wrapped: &WrappedKeks,
    options: ImportOptions,
) -> Result<Vec<KekVersion>, CeremonyError> {
    if wrapped.format != CEREMONY_FORMAT || wrapped.mechanism != WRAP_MECHANISM {
        return Err(CeremonyError::UnknownFormat {
            found: wrapped.format,
            mechanism: wrapped.mechanism.clone(),
        });
    }
    let own = export_transport_key(module, label)?.fingerprint();
    if own != wrapped.transport_fingerprint {
        return Err(CeremonyError::WrongRecipient {
            expected: wrapped.transport_fingerprint.clone(),
            actual: own,
        });
    }
    let token = Token::find(module, label)?;
    let session = token.session(true)?;
    token.login_user(&session, user_pin)?;
    let transport = find_one(&session, ObjectClass::PRIVATE_KEY, TRANSPORT_LABEL)?
        .ok_or_else(|| CeremonyError::NoTransportKey(label.to_owned()))?;
    let existing = find_keks(&session)?;
    let destroyed = crate::pkcs11::keys::destroyed_keks(&session)?;
    let mut added = Vec::new();
    for kek in &wrapped.keks {
        let version = KekVersion(kek.version);
        // A version destroyed here stays destroyed: a wrapped file kept
        // from an earlier ceremony must not bring back what a rotation
        // shredded.
        if destroyed.contains(&kek.version) {
            return Err(CeremonyError::Destroyed(kek.version));
        }
        if let Some(&have) = existing.get(&version) {
            if check_value(&session, have)? == kek.check_value {
                continue;
            }
            return Err(CeremonyError::KekConflict(kek.version));
        }
        let handle = session
            .unwrap_key(
                &oaep(),
                transport,
                &kek.wrapped,
                &kek_template(version, options.rewrappable),
            )
            .map_err(|e| DeviceError::from_cryptoki("unwrap KEK", e))?;
        let actual = check_value(&session, handle)?;
        if actual != kek.check_value {
            session
                .destroy_object(handle)
                .map_err(|e| DeviceError::from_cryptoki("destroy mismatched KEK", e))?;
            return Err(CeremonyError::CheckValueMismatch {
                version: kek.version,
                expected: kek.check_value.clone(),
                actual,
            });
        }
        added.push(version);
    }
    Ok(added)
}

/// Hooks for the HSM conformance tests; not for production use.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// Tries step 2 with the peer key imported by the user, *without* the
    /// security officer's trust. A correct token refuses to wrap.
    pub fn wrap_under_untrusted_key(
        module: &Path,
        label: &str,
        user_pin: &SecretBytes,
        peer: &TransportPublicKey,
    ) -> Result<WrappedKeks, CeremonyError> {
        let token = Token::find(module, label)?;
        let session = token.session(true)?;
        token.login_user(&session, user_pin)?;
        let untrusted = import_peer_key(&session, peer, false)?;
        let keks = wrap_all(&session, untrusted, label)?;
        Ok(WrappedKeks {
            format: CEREMONY_FORMAT,
            mechanism: WRAP_MECHANISM.into(),
            transport_fingerprint: peer.fingerprint(),
            source_token_label: label.to_owned(),
            source_token_serial: String::new(),
            keks,
        })
    }

    /// What a PIN holder can do without this crate's checks (no destroyed
    /// record, no fingerprint): unwrap `kek` with the token's transport
    /// private key, as a session object that is destroyed again at once.
    /// `Ok` means the KEK came back.
    pub fn unwrap_raw(
        module: &Path,
        label: &str,
        user_pin: &SecretBytes,
        kek: &WrappedKek,
    ) -> Result<(), CeremonyError> {
        let token = Token::find(module, label)?;
        let session = token.session(true)?;
        token.login_user(&session, user_pin)?;
        let transport = find_one(&session, ObjectClass::PRIVATE_KEY, TRANSPORT_LABEL)?
            .ok_or_else(|| CeremonyError::NoTransportKey(label.to_owned()))?;
        let mut template = kek_template(KekVersion(kek.version), false);
        template.retain(|a| !matches!(a, Attribute::Token(_)));
        template.push(Attribute::Token(false));
        let handle = session
            .unwrap_key(&oaep(), transport, &kek.wrapped, &template)
            .map_err(|e| DeviceError::from_cryptoki("unwrap KEK", e))?;
        session
            .destroy_object(handle)
            .map_err(|e| DeviceError::from_cryptoki("destroy unwrapped KEK", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bits: usize) -> TransportPublicKey {
        let mut modulus = vec![0x80];
        modulus.extend(std::iter::repeat_n(0x11, bits / 8 - 1));
        TransportPublicKey {
            format: CEREMONY_FORMAT,
            token_label: "b".into(),
            token_serial: "1".into(),
            modulus,
            exponent: vec![1, 0, 1],
        }
    }

    #[test]
    fn transport_keys_below_3072_bits_are_refused() {
        assert!(key(3072).check().is_ok());
        assert!(matches!(
            key(2048).check(),
            Err(CeremonyError::BadTransportKey(_))
        ));
        let mut k = key(3072);
        k.format = 2;
        assert!(matches!(
            k.check(),
            Err(CeremonyError::UnknownFormat { .. })
        ));
    }

    #[test]
    fn fingerprint_covers_modulus_and_exponent() {
        let a = key(3072);
        let mut b = a.clone();
        b.exponent = vec![3];
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
    }
}
