//! Byte formats: the record a node seals in its HSM, and the plaintext of
//! the app's HPKE-sealed `RegisterFinish` payload.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{FORMAT_V1, ProtocolError};

/// What the node seals in its HSM and stores per user: the OPAQUE password
/// file and `enc_K`. Zeroized on drop.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct StoredRecord {
    /// `ServerRegistration`, serialized.
    pub password_file: Vec<u8>,
    /// The app's wrapped K.
    pub enc_k: Vec<u8>,
}

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredRecord { .. }")
    }
}

impl StoredRecord {
    /// Versioned bytes (the plaintext that the HSM seals).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        // Two byte strings always encode.
        Zeroizing::new(postcard::to_extend(self, vec![FORMAT_V1]).unwrap_or_default())
    }

    /// From [`StoredRecord::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<StoredRecord, ProtocolError> {
        match bytes.split_first() {
            Some((&FORMAT_V1, rest)) => {
                postcard::from_bytes(rest).map_err(|_| ProtocolError::Malformed("stored record"))
            }
            _ => Err(ProtocolError::Malformed("stored record")),
        }
    }
}

/// The plaintext of the HPKE-sealed `RegisterFinish` payload.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct RegisterPayload {
    pub(crate) upload: Vec<u8>,
    pub(crate) enc_k: Vec<u8>,
}

impl RegisterPayload {
    pub(crate) fn encode(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(postcard::to_extend(self, vec![FORMAT_V1]).unwrap_or_default())
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<RegisterPayload, ProtocolError> {
        match bytes.split_first() {
            Some((&FORMAT_V1, rest)) => postcard::from_bytes(rest)
                .map_err(|_| ProtocolError::Malformed("registration payload")),
            _ => Err(ProtocolError::Malformed("registration payload")),
        }
    }
}
