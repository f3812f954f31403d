//! The client side of Backup Key Vault.
//!
//! - [`Client`]: register a password-protected backup key K, recover it,
//!   ask a user's status, delete. Talks to any node of the fleet with mutual
//!   TLS (a frontend certificate), retries unavailable nodes with backoff,
//!   and keeps the two calls of one flow on one node.
//! - [`backup`]: encrypting a backup file with K, streaming, in chunks that
//!   each authenticate their position and whether they are the last.
//! - [`Ksf`]: the Argon2id parameters that stretch the password.
//! - [`Trust`]: the pinned witness and operator keys, and the fleet-key
//!   bundle checks run before anything secret is sent.
//!
//! Everything secret (password, K, export and session keys) stays in this
//! process; what crosses the network is what `vault_protocol` says.

pub mod backup;
mod client;
pub mod trust;

pub use client::{Client, ClientError, DEFAULT_MAX_ATTEMPTS, Endpoint, Ksf, Status};
pub use trust::{PinnedTrust, Trust};
pub use vault_transparency::{BundleError, Pins};
