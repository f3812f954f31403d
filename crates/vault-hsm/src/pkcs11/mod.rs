//! [`Pkcs11Hsm`]: the [`Hsm`] trait over a PKCS#11 module.

use std::collections::BTreeMap;
use std::fmt;

use cryptoki::context::Function;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use sha2::{Digest, Sha256};

use crate::attestation::{AttestationPublicKey, AttestationSignature, sec1_from_ec_point};
use crate::blob::{self, IV_LEN, KekVersion, MAX_PLAINTEXT, SealedBlob, TAG_LEN};
use crate::config::HsmConfig;
use crate::error::{DeviceError, HsmError, OpenError};
use crate::hsm::Hsm;
use crate::report::KeyReport;
use crate::secret::SecretBytes;

pub(crate) mod keys;
pub(crate) mod pool;
pub(crate) mod token;
pub(crate) mod transport;

use keys::{ATTESTATION_LABEL, find_keks, find_one};
use pool::SessionPool;
use token::Token;

/// An HSM reached through a PKCS#11 module: one token, found by label, with
/// the fleet KEK(s) and this node's attestation key on it.
pub struct Pkcs11Hsm {
    token: Token,
    pin: SecretBytes,
    pool: SessionPool,
    keks: std::sync::RwLock<BTreeMap<KekVersion, ObjectHandle>>,
    attestation: ObjectHandle,
    attestation_public: AttestationPublicKey,
}

impl fmt::Debug for Pkcs11Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Hsm")
            .field("token", &self.token.label)
            .field(
                "kek_versions",
                &self.kek_versions().iter().map(|v| v.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Pkcs11Hsm {
    /// Loads the module, finds the token by label, logs in with the
    /// configured PIN and finds the vault's keys.
    pub fn open(config: &HsmConfig) -> Result<Self, OpenError> {
        let token = Token::find(&config.module, &config.token_label)?;
        let pin = config.pin.load()?;
        let pool = SessionPool::open(&token, &pin, config.sessions)?;
        let (keks, attestation, attestation_public) = pool
            .with(&token, &pin, |s| Ok(find_vault_keys(s)?))
            .map_err(|e| match e {
                HsmError::Device(d) => OpenError::Device(d),
                other => OpenError::Device(DeviceError::local("find keys", other.to_string())),
            })?;
        let missing = |what, object: String| OpenError::KeyMissing {
            label: token.label.clone(),
            what,
            object,
        };
        if keks.is_empty() {
            return Err(missing("fleet KEK", keys::kek_label(KekVersion(1))));
        }
        let (attestation, attestation_public) = match (attestation, attestation_public) {
            (Some(h), Some(p)) => (h, p),
            _ => {
                return Err(missing(
                    "attestation key pair",
                    ATTESTATION_LABEL.to_owned(),
                ));
            }
        };
        Ok(Pkcs11Hsm {
            token,
            pin,
            pool,
            keks: std::sync::RwLock::new(keks),
            attestation,
            attestation_public,
        })
    }

    /// The label of the token this HSM uses.
    pub fn token_label(&self) -> &str {
        &self.token.label
    }

    /// Every KEK version this HSM holds.
    pub fn kek_versions(&self) -> Vec<KekVersion> {
        self.keks_now().keys().copied().collect()
    }

    /// The KEK versions this token records as destroyed.
    pub fn destroyed_kek_versions(&self) -> Result<std::collections::BTreeSet<u32>, HsmError> {
        self.with_session(|s| Ok(keys::destroyed_keks(s)?))
    }

    fn keks_now(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<KekVersion, ObjectHandle>> {
        self.keks.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle of KEK `version`, looking the token up again once if this
    /// process has not seen it yet.
    fn kek(&self, version: KekVersion) -> Result<ObjectHandle, HsmError> {
        if let Some(&h) = self.keks_now().get(&version) {
            return Ok(h);
        }
        self.refresh_keks()?;
        self.keks_now()
            .get(&version)
            .copied()
            .ok_or(HsmError::UnknownKekVersion(version.0))
    }

    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        self.pool.with(&self.token, &self.pin, f)
    }
}

type VaultKeys = (
    BTreeMap<KekVersion, ObjectHandle>,
    Option<ObjectHandle>,
    Option<AttestationPublicKey>,
);

fn find_vault_keys(session: &Session) -> Result<VaultKeys, DeviceError> {
    let keks = find_keks(session)?;
    let private = find_one(session, ObjectClass::PRIVATE_KEY, ATTESTATION_LABEL)?;
    let public = match find_one(session, ObjectClass::PUBLIC_KEY, ATTESTATION_LABEL)? {
        Some(handle) => Some(read_ec_public(session, handle)?),
        None => None,
    };
    Ok((keks, private, public))
}

pub(crate) fn read_ec_public(
    session: &Session,
    handle: ObjectHandle,
) -> Result<AttestationPublicKey, DeviceError> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::EcPoint])
        .map_err(|e| DeviceError::from_cryptoki("read attestation public key", e))?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => sec1_from_ec_point(&p),
            _ => None,
        })
        .map(AttestationPublicKey)
        .ok_or_else(|| DeviceError::local("read attestation public key", "no valid CKA_EC_POINT"))
}

fn device(op: &'static str) -> impl FnOnce(cryptoki::error::Error) -> HsmError {
    move |e| HsmError::Device(DeviceError::from_cryptoki(op, e))
}

impl Hsm for Pkcs11Hsm {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.seal_under(self.current_kek_version(), aad, plaintext)
    }

    fn seal_under(
        &self,
        version: KekVersion,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(HsmError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let kek = self.kek(version)?;
        let header = blob::header(version);
        let gcm_aad = blob::gcm_aad(&header, aad);
        self.with_session(|s| {
            let mut iv = [0u8; IV_LEN];
            s.generate_random_slice(&mut iv)
                .map_err(device("draw IV"))?;
            let mut iv_param = iv;
            let params = GcmParams::new(&mut iv_param, &gcm_aad, ((TAG_LEN * 8) as u64).into())
                .map_err(device("seal"))?;
            let ciphertext = s
                .encrypt(&Mechanism::AesGcm(params), kek, plaintext)
                .map_err(device("seal"))?;
            Ok(blob::assemble(version, &iv, &ciphertext))
        })
    }

    fn unseal(&self, aad: &[u8], bytes: &[u8]) -> Result<SecretBytes, HsmError> {
        let parsed = SealedBlob::parse(bytes)?;
        let kek = self.kek(parsed.kek_version)?;
        let gcm_aad = parsed.gcm_aad(aad);
        self.with_session(|s| {
            let mut iv = *parsed.iv;
            let params = GcmParams::new(&mut iv, &gcm_aad, ((TAG_LEN * 8) as u64).into())
                .map_err(device("unseal"))?;
            match s.decrypt(&Mechanism::AesGcm(params), kek, parsed.ciphertext) {
                Ok(plain) => Ok(SecretBytes::new(plain)),
                // A tag that does not verify is the caller's problem (altered
                // blob, wrong context), not the device's. The standard answer
                // is CKR_ENCRYPTED_DATA_INVALID; SoftHSM 2.6 answers
                // CKR_GENERAL_ERROR from C_Decrypt when OpenSSL rejects the
                // tag. C_DecryptInit succeeded, so the key and parameters
                // were accepted and the ciphertext is what was refused.
                Err(cryptoki::error::Error::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::GeneralError
                    | RvError::FunctionFailed,
                    Function::Decrypt,
                )) => Err(HsmError::Unauthentic),
                Err(e) => Err(device("unseal")(e)),
            }
        })
    }

    fn current_kek_version(&self) -> KekVersion {
        // Never empty: open refuses a token without a KEK, and
        // destroy_kek keeps the last one.
        self.keks_now()
            .keys()
            .next_back()
            .copied()
            .unwrap_or(KekVersion(1))
    }

    fn refresh_keks(&self) -> Result<Vec<KekVersion>, HsmError> {
        let found = self.with_session(|s| Ok(find_keks(s)?))?;
        let versions = found.keys().copied().collect();
        if !found.is_empty() {
            *self.keks.write().unwrap_or_else(|p| p.into_inner()) = found;
        }
        Ok(versions)
    }

    fn destroy_kek(&self, version: KekVersion) -> Result<(), HsmError> {
        // The pool's sessions are read-only; destroying takes a read-write
        // one (logged in already: PKCS#11 login state is per application).
        let session = self.token.session(true).map_err(HsmError::Device)?;
        self.token
            .login_user(&session, &self.pin)
            .map_err(|e| HsmError::Device(DeviceError::local("log in", e.to_string())))?;
        let found = find_keks(&session)?;
        let destroyed = keys::destroyed_keks(&session)?;
        if found.contains_key(&version) {
            if found.len() < 2 {
                return Err(HsmError::Device(DeviceError::local(
                    "destroy a KEK",
                    format!("KEK v{} is the only one on this token", version.0),
                )));
            }
            // Forget it first: no seal or unseal starts with it from now on.
            let mut remaining = found;
            remaining.remove(&version);
            *self.keks.write().unwrap_or_else(|p| p.into_inner()) = remaining;
            // Recorded first: a crash after it leaves a version this token
            // will never use or take back, which is what was asked.
            keys::record_destroyed_kek(&session, version)?;
            for handle in keys::kek_objects(&session, version)? {
                session
                    .destroy_object(handle)
                    .map_err(device("destroy KEK"))?;
            }
            if !keys::kek_objects(&session, version)?.is_empty() {
                return Err(HsmError::Device(DeviceError::local(
                    "destroy a KEK",
                    format!(
                        "KEK v{} is still on the token after C_DestroyObject",
                        version.0
                    ),
                )));
            }
        } else {
            // Never held here (a node that joined after it): recorded all
            // the same, so a ceremony file made for this token that carries
            // it is refused too.
            keys::record_destroyed_kek(&session, version)?;
        }
        // A ceremony file kept from before carries this version wrapped
        // under the transport key: replace the key, so that nothing wrapped
        // under it opens here again (done again by a rerun, if a crash came
        // first).
        let newest = destroyed.last().copied().unwrap_or(0).max(version.0);
        transport::bring_up_to(&session, newest)?;
        Ok(())
    }

    fn sign(&self, message: &[u8]) -> Result<AttestationSignature, HsmError> {
        let digest = Sha256::digest(message);
        self.with_session(|s| {
            let sig = s
                .sign(&Mechanism::Ecdsa, self.attestation, &digest)
                .map_err(device("sign"))?;
            Ok(AttestationSignature(sig))
        })
    }

    fn attestation_public_key(&self) -> AttestationPublicKey {
        self.attestation_public.clone()
    }

    fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        self.with_session(|s| {
            s.generate_random_slice(out)
                .map_err(device("draw random bytes"))
        })
    }

    fn key_report(&self) -> Result<KeyReport, HsmError> {
        let token = self.token.report()?;
        let keys = self.with_session(|s| Ok(keys::describe_all(s)?))?;
        Ok(KeyReport { token, keys })
    }
}
