//! The witness: an independent service that signs fleet-key bundles and
//! keeps an append-only Merkle log of every bundle it signed.
//!
//! - [`log::WitnessLog`]: the durable log (one file of checksummed
//!   records, each fsynced before it is acknowledged; a torn last record is
//!   detected and dropped on open, damage anywhere else refuses to open)
//!   and the rules: per fleet, epochs grow and each bundle names its
//!   predecessor's digest, so the witness never signs two different bundles
//!   for one fleet and epoch;
//! - [`keys`]: the witness's Ed25519 key and its TLS material on disk;
//! - [`service`]: the gRPC API (`proto/vault/v1/witness.proto`): `Submit`
//!   for the operator only (mTLS), reads for anyone.
//!
//! Boundaries: no fleet state, no HSM; it knows bundles only as bytes that
//! `vault_transparency` parses.

pub mod keys;
pub mod log;
pub mod service;
