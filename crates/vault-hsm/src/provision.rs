//! Creating a vault token and its keys (`vaultctl hsm init`).
//!
//! A freshly provisioned token holds:
//! - `bkv-kek-v1`, the fleet KEK (AES-256), only on the token that founds the
//!   fleet: sensitive, usable only for AES-GCM, and wrappable only under a key
//!   the security officer marked trusted (`CKA_WRAP_WITH_TRUSTED`); every
//!   other token receives it in a ceremony;
//! - `bkv-attestation`, an EC P-256 key pair whose private half is sensitive
//!   and never extractable;
//! - `bkv-transport`, an RSA-3072 key pair whose private half is sensitive,
//!   never extractable, and can only unwrap: it receives the KEK.

use std::path::{Path, PathBuf};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::AuthPin;

use crate::attestation::P256_EC_PARAMS;
use crate::blob::KekVersion;
use crate::error::{DeviceError, OpenError};
use crate::pkcs11::keys::{
    ATTESTATION_LABEL, OPERATOR_LABEL, TLS_LABEL, TRANSPORT_LABEL, find_one, kek_template,
};
use crate::pkcs11::token::{Token, load_module};
use crate::report::KeyReport;
use crate::secret::SecretBytes;
use crate::token_key::KeyRole;

/// RSA modulus of the transport key, in bits.
pub const TRANSPORT_KEY_BITS: u64 = 3072;
/// PKCS#11 token labels are 32 bytes, space padded.
pub const MAX_TOKEN_LABEL: usize = 32;

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Module, token or PIN trouble.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A PKCS#11 call failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A token with this label exists already; provisioning never overwrites.
    #[error("a token labelled {label:?} exists already; choose another label or delete it first")]
    TokenExists {
        /// The label.
        label: String,
    },
    /// The module has no uninitialised slot to create a token in.
    #[error("PKCS#11 module {module:?} has no free slot for a new token")]
    NoFreeSlot {
        /// The module.
        module: PathBuf,
    },
    /// The label is empty or longer than PKCS#11 allows.
    #[error("token label must be 1 to {MAX_TOKEN_LABEL} bytes of printable ASCII, got {0:?}")]
    BadLabel(String),
    /// PKCS#11 PINs for token initialisation must be UTF-8.
    #[error("the {0} PIN is not valid UTF-8")]
    PinNotUtf8(&'static str),
    /// The PIN is shorter or longer than the token accepts.
    #[error("the {which} PIN is {len} bytes; this token accepts {min} to {max}")]
    PinLength {
        /// Which PIN.
        which: &'static str,
        /// Its length.
        len: usize,
        /// The token's minimum.
        min: usize,
        /// The token's maximum.
        max: usize,
    },
}

/// What `vaultctl hsm init` asks for.
#[derive(Debug)]
pub struct InitRequest<'a> {
    /// The PKCS#11 module.
    pub module: &'a Path,
    /// Label of the new token.
    pub label: &'a str,
    /// Security officer PIN to set.
    pub so_pin: &'a SecretBytes,
    /// User PIN to set.
    pub user_pin: &'a SecretBytes,
    /// Generate the fleet KEK here (the founding node) rather than receive it
    /// in a ceremony later.
    pub generate_kek: bool,
}

fn auth_pin(pin: &SecretBytes, which: &'static str) -> Result<AuthPin, ProvisionError> {
    let text = std::str::from_utf8(pin.expose()).map_err(|_| ProvisionError::PinNotUtf8(which))?;
    Ok(AuthPin::from(text.to_owned()))
}

fn check_label(label: &str) -> Result<(), ProvisionError> {
    let ok = !label.is_empty()
        && label.len() <= MAX_TOKEN_LABEL
        && label.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && !label.ends_with(' ');
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::BadLabel(label.to_owned()))
    }
}

/// Initialises a new token in a free slot, sets its PINs and generates the
/// vault's keys. Returns the key report of the new token.
pub fn init_token(req: &InitRequest<'_>) -> Result<KeyReport, ProvisionError> {
    let (token, session) = create_token(req)?;
    if req.generate_kek {
        generate_kek(&session, KekVersion(1))?;
    }
    generate_ec_signing_key(&session, ATTESTATION_LABEL, "generate attestation key")?;
    crate::pkcs11::transport::generate(&session, TRANSPORT_LABEL, 0)?;
    generate_ec_signing_key(&session, TLS_LABEL, "generate TLS key")?;
    bear_checkpoint(req.module, req.label, req.user_pin)?;
    report_with(&token, &session)
}

/// Writes the anti-rollback checkpoint a node's token is born with
/// ([`crate::checkpoint::BORN`]), unless it has one. A node token holds a
/// checkpoint from the moment it holds its TLS identity (its TLS key cannot
/// be removed without the node losing its name), so a checkpoint missing
/// later was lost or removed, never not yet made: the node then catches up
/// before it votes, instead of starting as a new node with a clean slate.
fn bear_checkpoint(
    module: &std::path::Path,
    label: &str,
    user_pin: &SecretBytes,
) -> Result<(), ProvisionError> {
    let store = crate::CheckpointStore::open(module, label, user_pin)?;
    let fail = |e: crate::HsmError| match e {
        crate::HsmError::Device(d) => ProvisionError::Device(d),
        other => ProvisionError::Device(DeviceError::local(
            "write the new checkpoint",
            other.to_string(),
        )),
    };
    if store.read().map_err(fail)?.is_none() {
        store.write(crate::checkpoint::BORN).map_err(fail)?;
    }
    Ok(())
}

/// Initialises a new operator token: one EC P-256 signing key pair
/// (`bkv-operator`, private half sensitive and never extractable) that
/// counter-signs fleet-key bundles. It holds no KEK and no node keys, so
/// `req.generate_kek` must be false. Returns the key report.
pub fn init_operator_token(req: &InitRequest<'_>) -> Result<KeyReport, ProvisionError> {
    if req.generate_kek {
        return Err(ProvisionError::BadLabel(
            "an operator token holds no fleet KEK".into(),
        ));
    }
    let (token, session) = create_token(req)?;
    generate_ec_signing_key(&session, OPERATOR_LABEL, "generate operator key")?;
    // The CA keys are per fleet: `vaultctl pki init` makes them.
    generate_ec_signing_key(&session, &KeyRole::Tls.label(), "generate TLS key")?;
    report_with(&token, &session)
}

/// Makes sure the token labelled `label` has the signing key pair of
/// `role`, generating it (as the user) if a token made before the key
/// moved into the HSM lacks it. Returns whether it was generated.
pub fn ensure_signing_key(
    module: &std::path::Path,
    label: &str,
    user_pin: &SecretBytes,
    role: KeyRole<'_>,
) -> Result<bool, ProvisionError> {
    let token = Token::find(module, label)?;
    let session = token.session(true)?;
    token.login_user(&session, user_pin)?;
    if find_one(&session, ObjectClass::PRIVATE_KEY, &role.label())?.is_some() {
        return Ok(false);
    }
    generate_ec_signing_key(&session, &role.label(), "generate a signing key")?;
    drop(session);
    if role == KeyRole::Tls {
        bear_checkpoint(module, label, user_pin)?;
    }
    Ok(true)
}

/// Creates the token, sets its PINs, and returns it with a session logged
/// in as the user.
fn create_token(req: &InitRequest<'_>) -> Result<(Token, Session), ProvisionError> {
    check_label(req.label)?;
    // A module offers one free slot at a time; two threads initialising at
    // once would race for it.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INIT.lock().unwrap_or_else(|p| p.into_inner());
    match Token::find(req.module, req.label) {
        Ok(_) => {
            return Err(ProvisionError::TokenExists {
                label: req.label.to_owned(),
            });
        }
        Err(OpenError::TokenNotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let ctx = load_module(req.module)?;
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| DeviceError::from_cryptoki("list slots", e))?;
    let mut free = None;
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| DeviceError::from_cryptoki("read token info", e))?;
        if !info.token_initialized() {
            free = Some((slot, info.min_pin_length(), info.max_pin_length()));
            break;
        }
    }
    let (slot, min, max) = free.ok_or_else(|| ProvisionError::NoFreeSlot {
        module: req.module.to_owned(),
    })?;
    // Tokens answer a PIN of the wrong length with misleading codes (SoftHSM
    // says "PIN incorrect"), so check against the limits the token reports.
    for (which, pin) in [("SO", req.so_pin), ("user", req.user_pin)] {
        if pin.len() < min || pin.len() > max {
            return Err(ProvisionError::PinLength {
                which,
                len: pin.len(),
                min,
                max,
            });
        }
    }
    ctx.init_token(slot, &auth_pin(req.so_pin, "SO")?, req.label)
        .map_err(|e| DeviceError::from_cryptoki("initialise token", e))?;

    // SoftHSM renumbers slots once a token is initialised: find it by label.
    let token = Token::find(req.module, req.label)?;
    let session = token.session(true)?;
    token.login_so(&session, req.so_pin)?;
    session
        .init_pin(&auth_pin(req.user_pin, "user")?)
        .map_err(|e| DeviceError::from_cryptoki("set user PIN", e))?;
    session
        .logout()
        .map_err(|e| DeviceError::from_cryptoki("log out security officer", e))?;
    token.login_user(&session, req.user_pin)?;
    Ok((token, session))
}

/// The key report of an existing token, logged in as the user.
pub fn report(
    module: &Path,
    label: &str,
    user_pin: &SecretBytes,
) -> Result<KeyReport, ProvisionError> {
    let token = Token::find(module, label)?;
    let session = token.session(false)?;
    token.login_user(&session, user_pin)?;
    report_with(&token, &session)
}

/// KEK rotation, step 1, on the founding token: generates the next KEK
/// version (one above the highest this token holds), with the founder's
/// template (extractable only under SO-trusted keys, for the ceremony).
/// Returns the new version.
pub fn new_kek(
    module: &Path,
    label: &str,
    user_pin: &SecretBytes,
) -> Result<KekVersion, ProvisionError> {
    let token = Token::find(module, label)?;
    let session = token.session(true)?;
    token.login_user(&session, user_pin)?;
    let keks = crate::pkcs11::keys::find_keks(&session)?;
    let Some(highest) = keks.keys().next_back() else {
        return Err(ProvisionError::Device(DeviceError::local(
            "generate a new KEK",
            format!(
                "token {label:?} holds no KEK: rotation starts on the token that founded the fleet's KEK"
            ),
        )));
    };
    // Above every version this token holds or ever destroyed.
    let destroyed = crate::pkcs11::keys::destroyed_keks(&session)?;
    let top = destroyed.last().copied().unwrap_or(0).max(highest.0);
    let next = top
        .checked_add(1)
        .map(KekVersion)
        .ok_or_else(|| DeviceError::local("generate a new KEK", "KEK versions are exhausted"))?;
    generate_kek(&session, next)?;
    Ok(next)
}

pub(crate) fn report_with(token: &Token, session: &Session) -> Result<KeyReport, ProvisionError> {
    Ok(KeyReport {
        token: token.report()?,
        keys: crate::pkcs11::keys::describe_all(session)?,
    })
}

fn generate_kek(session: &Session, version: KekVersion) -> Result<ObjectHandle, DeviceError> {
    let mut template = kek_template(version, true);
    template.push(Attribute::ValueLen(32u64.into()));
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(|e| DeviceError::from_cryptoki("generate fleet KEK", e))
}

fn generate_ec_signing_key(
    session: &Session,
    label: &str,
    what: &'static str,
) -> Result<(), DeviceError> {
    let label = label.as_bytes().to_vec();
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
        Attribute::EcParams(P256_EC_PARAMS.to_vec()),
        Attribute::Label(label.clone()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label),
    ];
    session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .map_err(|e| DeviceError::from_cryptoki(what, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked() {
        assert!(check_label("node-1").is_ok());
        assert!(check_label("").is_err());
        assert!(check_label("x".repeat(33).as_str()).is_err());
        assert!(check_label("tab\there").is_err());
        assert!(check_label("trailing ").is_err());
    }
}
