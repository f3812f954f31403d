//! The HSM seam of Backup Key Vault.
//!
//! Every secret-key operation of a vault node goes through the [`Hsm`] trait:
//! sealing and unsealing stored secrets under the fleet KEK (AES-256-GCM in
//! the HSM), signing with the node's attestation key, drawing randomness, and
//! reporting the token and its key attributes. [`Pkcs11Hsm`] implements it over
//! PKCS#11 with `cryptoki`; SoftHSM2 is the development default, and a real
//! HSM is a different module path and token label.
//!
//! The [`ceremony`] and [`provision`] modules are the operator's side: create
//! a token's keys, and copy the fleet KEK from one HSM to another wrapped
//! under a transport key that the receiving HSM generated, so that the KEK
//! never exists in plaintext outside an HSM.
//!
//! Boundaries: this is the only crate that links PKCS#11. It does no network
//! or disk I/O of its own beyond loading the module and reading PIN files.
//! Invariants it keeps:
//! - keys are found by token label and object label, never by slot number;
//! - no PIN, plaintext or key bytes reach an error, `Debug` output or a log;
//! - each PKCS#11 session is used by one thread at a time;
//! - every PKCS#11 return value is mapped in one place
//!   ([`DeviceError::from_cryptoki`]) to a typed error that says whether a
//!   retry may help.

mod asynchronous;
pub mod attestation;
pub mod blob;
pub mod ceremony;
pub mod checkpoint;
mod config;
pub mod conformance;
mod error;
mod hsm;
pub mod operator;
mod pkcs11;
pub mod provision;
mod report;
mod secret;
pub mod softhsm;
pub mod token_key;

pub use asynchronous::AsyncHsm;
pub use attestation::{AttestationPublicKey, AttestationSignature, VerifyError};
pub use blob::KekVersion;
pub use checkpoint::CheckpointStore;
pub use config::{DEFAULT_SESSIONS, HsmConfig, PinSource, read_pin_file};
pub use error::{DeviceError, HsmError, OpenError, PinError};
pub use hsm::Hsm;
pub use operator::OperatorKey;
pub use pkcs11::Pkcs11Hsm;
pub use report::{KeyAttributes, KeyReport, TokenReport};
pub use secret::SecretBytes;
pub use token_key::{KeyRole, TokenKey};
