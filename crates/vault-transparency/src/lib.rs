//! Fleet-key transparency: what lets an app trust a fleet it has never seen.
//!
//! - [`bundle`]: the byte-exact fleet-key bundle (fleet id, epoch, OPAQUE
//!   and HPKE public keys, nodes' attestation keys, validity, previous
//!   digest);
//! - [`merkle`]: RFC 9162 Merkle tree hashing, inclusion and consistency
//!   proofs, as the witness's append-only log uses them;
//! - [`head`]: the witness's signed tree head;
//! - [`signed`]: the signed bundle that nodes hand out (bundle, witness
//!   signature, operator counter-signature, log index, tree head, inclusion
//!   proof) and [`signed::Pins::verify`], every check an app runs;
//! - [`audit`]: the checks `vaultctl audit` runs on a whole witness log;
//! - [`evidence`]: nodes' signed deployment statements and their checks.
//!
//! Boundaries: no I/O, no clock (callers pass the time), no PKCS#11 (an
//! app links this crate). Invariants: parsing is strict (no trailing bytes,
//! canonical order), so one bundle has exactly one encoding and one digest;
//! every check that fails names itself.

pub mod audit;
pub mod bundle;
mod codec;
pub mod evidence;
pub mod head;
pub mod merkle;
pub mod signed;

pub use bundle::{Bundle, NodeKey};
pub use head::TreeHead;
pub use signed::{BundleError, Pins, SignedBundle};

/// A SHA-256 digest.
pub type Hash = [u8; 32];
