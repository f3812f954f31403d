//! The anti-rollback checkpoint: a token object that a copy of a node's
//! disk cannot roll back.
//!
//! The node keeps in its token a data object, `bkv-checkpoint` (private,
//! so only a logged-in user reads it), holding a payload the node defines
//! (how far its durable Raft state has got, `vault_raft::checkpoint`)
//! authenticated with HMAC-SHA-256 under `bkv-checkpoint-mac`, a secret key
//! generated on the token (sensitive, never extractable). The value is
//!
//! ```text
//! "BKVCKPT2" ‖ u64 sequence ‖ u32 length (big endian) ‖ payload ‖
//!     HMAC(mac key, "BKVCKPT2" ‖ token label ‖ 0x00 ‖ sequence ‖ length ‖ payload)
//! ```
//!
//! so a value made on one token does not verify on another, and a value
//! written by anything but a holder of the key does not verify at all.
//!
//! SoftHSM does not let an application change a data object's value, so a
//! write creates a new object with the next sequence number and then
//! destroys the older ones. A crash in between leaves two objects; the
//! reader takes the highest sequence, and every object found must verify.
//!
//! What it cannot give on SoftHSM: SoftHSM's token is a directory of files.
//! Whoever restores the token directory together with the data directory
//! rolls the checkpoint back with it. A hardware HSM keeps the object
//! inside; there, only the HSM's own backup and restore could.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::error::{DeviceError, HsmError, OpenError};
use crate::pkcs11::keys::find_one;
use crate::pkcs11::token::Token;
use crate::secret::SecretBytes;

/// The data object's label.
pub const OBJECT_LABEL: &str = "bkv-checkpoint";
/// The HMAC key's label.
pub const MAC_LABEL: &str = "bkv-checkpoint-mac";
const MAGIC: &[u8; 8] = b"BKVCKPT2";
const HEADER: usize = 8 + 8 + 4;
const TAG_LEN: usize = 32;
/// The payload a node token's checkpoint is born with, at provisioning
/// (with the TLS key): "a node that has never run". The node reads it as
/// an empty checkpoint; a token with a TLS key and no checkpoint at all
/// lost it.
pub const BORN: &[u8] = b"bkv-checkpoint-born";
/// The largest payload accepted (a mark is well under 200 bytes).
pub const MAX_PAYLOAD: usize = 4096;

/// A node's checkpoint object, logged in.
pub struct CheckpointStore {
    token: Token,
    pin: SecretBytes,
    session: Mutex<Session>,
    mac: ObjectHandle,
    /// The highest sequence number seen (read or written); 0 before the
    /// first read or write.
    seq: AtomicU64,
    /// The object this store wrote last, which the next write replaces.
    current: Mutex<Option<ObjectHandle>>,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("token", &self.token.label)
            .finish_non_exhaustive()
    }
}

fn device(op: &'static str) -> impl Fn(CkError) -> HsmError {
    move |e| HsmError::Device(DeviceError::from_cryptoki(op, e))
}

impl CheckpointStore {
    /// Opens the token labelled `label` in `module` as the user, making the
    /// HMAC key there if this token has none yet (a token provisioned before
    /// checkpoints existed).
    pub fn open(
        module: &Path,
        label: &str,
        pin: &SecretBytes,
    ) -> Result<CheckpointStore, OpenError> {
        let token = Token::find(module, label)?;
        let session = token.session(true)?;
        token.login_user(&session, pin)?;
        let mac = match find_one(&session, ObjectClass::SECRET_KEY, MAC_LABEL)? {
            Some(h) => h,
            None => generate_mac_key(&session)?,
        };
        Ok(CheckpointStore {
            token,
            pin: pin.clone(),
            session: Mutex::new(session),
            mac,
            seq: AtomicU64::new(0),
            current: Mutex::new(None),
        })
    }

    /// Runs `f` with the session; a session the module says is gone is
    /// opened again (and logged in) once, and `f` retried.
    fn with<T>(&self, f: impl Fn(&Session) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let result = f(&session);
        if !crate::pkcs11::pool::session_gone(&result) {
            return result;
        }
        let fresh = self.token.session(true).map_err(HsmError::Device)?;
        self.token
            .login_user(&fresh, &self.pin)
            .map_err(|e| HsmError::Device(DeviceError::local("log in", e.to_string())))?;
        *session = fresh;
        f(&session)
    }

    fn tag(
        &self,
        session: &Session,
        seq: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let mut signed = Vec::with_capacity(HEADER + self.token.label.len() + 1 + payload.len());
        signed.extend_from_slice(MAGIC);
        signed.extend_from_slice(self.token.label.as_bytes());
        signed.push(0);
        signed.extend_from_slice(&seq.to_be_bytes());
        signed.extend_from_slice(&len.to_be_bytes());
        signed.extend_from_slice(payload);
        session
            .sign(&Mechanism::Sha256Hmac, self.mac, &signed)
            .map_err(device("authenticate the checkpoint"))
    }

    /// Every checkpoint object on the token, verified: `(handle, sequence,
    /// payload)`. Any object that does not verify is an error.
    fn objects(&self, session: &Session) -> Result<Vec<(ObjectHandle, u64, Vec<u8>)>, HsmError> {
        let handles = session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Label(OBJECT_LABEL.as_bytes().to_vec()),
            ])
            .map_err(device("find the checkpoint"))?;
        let mut found = Vec::with_capacity(handles.len());
        for object in handles {
            let value = session
                .get_attributes(object, &[cryptoki::object::AttributeType::Value])
                .map_err(device("read the checkpoint"))?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Value(v) => Some(v),
                    _ => None,
                })
                .unwrap_or_default();
            let (seq, payload) = self.verify(session, &value)?;
            found.push((object, seq, payload));
        }
        Ok(found)
    }

    fn verify(&self, session: &Session, value: &[u8]) -> Result<(u64, Vec<u8>), HsmError> {
        let bad = |why: &str| {
            HsmError::Device(DeviceError::local(
                "read the checkpoint",
                format!(
                    "the checkpoint object on token {:?} {why}: it was not written by this node's HSM key; refusing to guess how far this node got",
                    self.token.label
                ),
            ))
        };
        let rest = value
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("has an unknown format"))?;
        if rest.len() < 12 + TAG_LEN {
            return Err(bad("is too short"));
        }
        let (seq_bytes, rest) = rest.split_at(8);
        let (len_bytes, rest) = rest.split_at(4);
        let seq = u64::from_be_bytes(seq_bytes.try_into().unwrap_or_default());
        let len = u32::from_be_bytes(len_bytes.try_into().unwrap_or_default());
        if len as usize > MAX_PAYLOAD || rest.len() != len as usize + TAG_LEN {
            return Err(bad("has a wrong length"));
        }
        let (payload, tag) = rest.split_at(len as usize);
        let expected = self.tag(session, seq, len, payload)?;
        if !constant_time_eq(&expected, tag) {
            return Err(bad("does not authenticate"));
        }
        Ok((seq, payload.to_vec()))
    }

    /// The payload last written, after checking its tag; `None` when this
    /// token has no checkpoint yet. A value that does not verify is an
    /// error, never "no checkpoint".
    pub fn read(&self) -> Result<Option<Vec<u8>>, HsmError> {
        self.with(|session| {
            let found = self.objects(session)?;
            let newest = found.into_iter().max_by_key(|(_, seq, _)| *seq);
            Ok(newest.map(|(_, seq, payload)| {
                self.seq.fetch_max(seq, Ordering::SeqCst);
                payload
            }))
        })
    }

    /// Replaces the checkpoint with `payload`: creates an object with the
    /// next sequence number, then destroys the older ones. Returns once the
    /// token has it.
    pub fn write(&self, payload: &[u8]) -> Result<(), HsmError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(HsmError::Device(DeviceError::local(
                "write the checkpoint",
                format!("{} bytes is more than a checkpoint holds", payload.len()),
            )));
        }
        let len = payload.len() as u32;
        self.with(|session| {
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            let old: Vec<ObjectHandle> = match current.take() {
                // The object this store wrote last: the only one there.
                Some(handle) => vec![handle],
                None => {
                    // First write by this store: learn the sequence (and
                    // check what is there) before going past it.
                    let found = self.objects(session)?;
                    if let Some(max) = found.iter().map(|(_, seq, _)| *seq).max() {
                        self.seq.fetch_max(max, Ordering::SeqCst);
                    }
                    found.into_iter().map(|(h, _, _)| h).collect()
                }
            };
            let seq = self
                .seq
                .load(Ordering::SeqCst)
                .checked_add(1)
                .ok_or_else(|| {
                    HsmError::Device(DeviceError::local(
                        "write the checkpoint",
                        "sequence exhausted",
                    ))
                })?;
            let mut value = Vec::with_capacity(HEADER + payload.len() + TAG_LEN);
            value.extend_from_slice(MAGIC);
            value.extend_from_slice(&seq.to_be_bytes());
            value.extend_from_slice(&len.to_be_bytes());
            value.extend_from_slice(payload);
            value.extend(self.tag(session, seq, len, payload)?);
            let template = [
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Modifiable(false),
                Attribute::Label(OBJECT_LABEL.as_bytes().to_vec()),
                Attribute::Value(value),
            ];
            // SoftHSM's file store now and then fails a token object's
            // creation when it cannot save the object's file, answering
            // CKR_GENERAL_ERROR or CKR_TEMPLATE_INCONSISTENT to a template
            // that works every other time (both seen under load in the
            // gate's chaos runs): try up to four times more. A create that
            // half succeeded leaves an object of the same sequence and
            // value, which reads the same and goes with a later write.
            let mut tries = 0;
            let created = loop {
                match session.create_object(&template) {
                    Ok(h) => break h,
                    Err(CkError::Pkcs11(
                        RvError::GeneralError | RvError::TemplateInconsistent,
                        _,
                    )) if tries < 4 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(5 * tries));
                    }
                    Err(e) => return Err(device("write the checkpoint")(e)),
                }
            };
            self.seq.store(seq, Ordering::SeqCst);
            for object in old {
                match session.destroy_object(object) {
                    Ok(()) => {}
                    // A handle does not outlive a reopened session: leave
                    // the leftover to the next write, which finds it by
                    // label.
                    Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => return Ok(()),
                    Err(e) => return Err(device("remove an older checkpoint")(e)),
                }
            }
            *current = Some(created);
            Ok(())
        })
    }
}

fn generate_mac_key(session: &Session) -> Result<ObjectHandle, DeviceError> {
    session
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Label(MAC_LABEL.as_bytes().to_vec()),
            ],
        )
        .map_err(|e| DeviceError::from_cryptoki("generate the checkpoint key", e))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
