//! Typed errors of the HSM layer.
//!
//! Every PKCS#11 return value is mapped to a [`DeviceError`] in exactly one
//! place ([`DeviceError::from_cryptoki`]), which also decides whether the
//! failure is worth retrying. Errors never carry secret material: no PIN, no
//! plaintext, no key bytes.

use std::path::PathBuf;

use cryptoki::error::{Error as CkError, RvError};

/// A failed PKCS#11 call: which operation, what the module said, and whether
/// trying again (after a pause, or on a fresh session) may succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {reason}{}", if *.retryable { " (retryable)" } else { "" })]
pub struct DeviceError {
    /// The operation, as a verb phrase ("open session", "seal").
    pub op: &'static str,
    /// What the module or the wrapper reported, e.g. `CKR_DEVICE_ERROR`.
    pub reason: String,
    /// `true` when the same call may succeed later.
    pub retryable: bool,
    /// The PKCS#11 return value, when the module returned one.
    pub rv: Option<RvError>,
}

impl DeviceError {
    /// The one place where a `cryptoki` error becomes one of ours.
    pub fn from_cryptoki(op: &'static str, err: CkError) -> Self {
        match err {
            CkError::Pkcs11(rv, function) => DeviceError {
                op,
                reason: format!("{function:?} returned {rv}"),
                retryable: is_retryable(rv),
                rv: Some(rv),
            },
            other => DeviceError {
                op,
                reason: other.to_string(),
                retryable: false,
                rv: None,
            },
        }
    }

    /// An error found by our own checks rather than returned by the module.
    pub fn local(op: &'static str, reason: impl Into<String>) -> Self {
        DeviceError {
            op,
            reason: reason.into(),
            retryable: false,
            rv: None,
        }
    }
}

/// Return values that describe a transient condition of the device or of
/// one session, not a property of the request.
fn is_retryable(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::DeviceMemory
            | RvError::HostMemory
            | RvError::DeviceError
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::SessionClosed
            | RvError::SessionHandleInvalid
            | RvError::SessionCount
            | RvError::OperationActive
            | RvError::FunctionCanceled
            | RvError::CantLock
            | RvError::UserNotLoggedIn
    )
}

/// Why an HSM could not be opened: configuration, token, PIN or keys.
/// None of these get better by retrying without an operator's help.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configured PKCS#11 module file does not exist.
    #[error(
        "PKCS#11 module {path:?} does not exist (is SoftHSM2 installed? run ./scripts/test.sh or ./scripts/fleet.sh up, which install it)"
    )]
    ModuleNotFound {
        /// The configured path.
        path: PathBuf,
    },
    /// The module exists but could not be loaded or initialised.
    #[error("load PKCS#11 module {path:?}: {reason}")]
    ModuleLoad {
        /// The configured path.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// No initialised token carries the configured label.
    #[error(
        "no token labelled {label:?} in PKCS#11 module {module:?} (tokens present: {available:?})"
    )]
    TokenNotFound {
        /// The label that was asked for.
        label: String,
        /// The module that was searched.
        module: PathBuf,
        /// Labels of the tokens that do exist.
        available: Vec<String>,
    },
    /// The PIN could not be read from where the config says it is.
    #[error("read PIN: {0}")]
    Pin(#[from] PinError),
    /// The token refused the PIN.
    #[error("token {label:?} refused the user PIN (wrong PIN)")]
    WrongPin {
        /// The token's label.
        label: String,
    },
    /// The token locked its PIN after too many wrong attempts.
    #[error("token {label:?} has locked its PIN; the security officer must reset it")]
    PinLocked {
        /// The token's label.
        label: String,
    },
    /// A key the vault needs is not on the token.
    #[error(
        "token {label:?} has no {what} (object label {object:?}); provision it with `vaultctl hsm init`"
    )]
    KeyMissing {
        /// The token's label.
        label: String,
        /// What the key is for, in words.
        what: &'static str,
        /// The object label that was searched for.
        object: String,
    },
    /// Any other PKCS#11 failure while opening.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Why a PIN could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The PIN file could not be read.
    #[error("read PIN file {path:?}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error, as text.
        reason: String,
    },
    /// Anyone on the machine could read the PIN file.
    #[error(
        "PIN file {path:?} is open to its group or others (mode {mode:o}); run `chmod 600` on it"
    )]
    FileTooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The PIN file is not a regular file (a FIFO, a device, a directory)
    /// or belongs to another user.
    #[error("PIN file {path:?}: {reason}")]
    FileNotPrivate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The environment variable that should hold the PIN is not set.
    #[error("environment variable {var} (the PIN) is not set")]
    EnvMissing {
        /// The variable's name.
        var: String,
    },
    /// The PIN source held nothing.
    #[error("the PIN from {source_name} is empty")]
    Empty {
        /// Where it came from, e.g. a file path.
        source_name: String,
    },
}

/// Why an HSM operation (seal, unseal, sign, random, report) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HsmError {
    /// The blob is shorter than a header and a tag, or otherwise malformed.
    #[error("sealed blob is malformed: {0}")]
    MalformedBlob(&'static str),
    /// The blob's format version is not one this build reads.
    #[error("sealed blob has unsupported format version {0}")]
    UnsupportedBlobVersion(u8),
    /// The blob names a KEK version that this HSM does not hold.
    #[error("sealed blob names KEK version {0}, which this HSM does not hold")]
    UnknownKekVersion(u32),
    /// The tag did not verify: the blob was altered or the associated data
    /// differs from what it was sealed with.
    #[error("sealed blob failed authentication (tampered, or sealed for other associated data)")]
    Unauthentic,
    /// The plaintext is larger than a sealed value may be.
    #[error("plaintext of {len} bytes exceeds the sealing limit of {max} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The PKCS#11 module failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl HsmError {
    /// `true` when the same call may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, HsmError::Device(d) if d.retryable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    #[test]
    fn device_errors_say_retryable_or_not() {
        let transient = DeviceError::from_cryptoki(
            "seal",
            CkError::Pkcs11(RvError::DeviceMemory, Function::Encrypt),
        );
        assert!(transient.retryable);
        assert!(HsmError::from(transient.clone()).is_retryable());
        assert!(transient.to_string().contains("seal"));

        let permanent = DeviceError::from_cryptoki(
            "seal",
            CkError::Pkcs11(RvError::KeyHandleInvalid, Function::EncryptInit),
        );
        assert!(!permanent.retryable);
        assert!(!HsmError::Unauthentic.is_retryable());
    }
}
