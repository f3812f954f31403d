//! Validated identifiers and small value types.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 256;
/// Longest fleet id, in bytes.
pub const MAX_FLEET_ID_LEN: usize = 64;

/// Why a value is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// Too long.
    #[error("{what} is {len} bytes, longer than {max}")]
    TooLong {
        /// Which kind of id.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Holds a control character.
    #[error("{0} holds a control character")]
    ControlCharacter(&'static str),
    /// Not the expected hex form.
    #[error("{0} is not {1} hex digits")]
    BadHex(&'static str, usize),
    /// Zero where zero is not allowed.
    #[error("{0} must not be zero")]
    Zero(&'static str),
}

fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty(what));
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter(what));
    }
    Ok(())
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_text($what, &s, $max)?;
                Ok($name(s))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $name::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_id!(
    /// The id a frontend gives a user: 1 to [`MAX_USER_ID_LEN`] bytes of
    /// UTF-8 without control characters. It is also the OPAQUE credential
    /// identifier.
    UserId,
    "user id",
    MAX_USER_ID_LEN
);

text_id!(
    /// The fleet's name: 1 to [`MAX_FLEET_ID_LEN`] bytes.
    FleetId,
    "fleet id",
    MAX_FLEET_ID_LEN
);

/// A client-chosen request id (16 random bytes) that makes a command
/// idempotent.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub [u8; 16]);

impl RequestId {
    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, IdError> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).map_err(|_| IdError::BadHex("request id", 32))?;
        Ok(RequestId(out))
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// SHA-256 of a request's body: a retry with the same [`RequestId`] must
/// carry the same digest, so a reused id cannot smuggle in another request.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestDigest(pub [u8; 32]);

impl RequestDigest {
    /// The digest of `parts`, each prefixed by its length so that no two
    /// different lists of parts hash alike.
    pub fn of(parts: &[&[u8]]) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        RequestDigest(h.finalize().into())
    }
}

impl fmt::Debug for RequestDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

/// The registration generation of a user: grows by one with every
/// registration, and is never reused, even across deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Generation(pub u64);

/// A Raft node id. Never zero, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(u64);

impl NodeId {
    /// Checks that `id` is not zero.
    pub fn new(id: u64) -> Result<Self, IdError> {
        if id == 0 {
            return Err(IdError::Zero("node id"));
        }
        Ok(NodeId(id))
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Milliseconds since the Unix epoch, read by the proposing node and carried
/// in the command (the state machine reads no clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

/// Bytes sealed by the HSM (ciphertext). `Debug` shows only the length: even
/// ciphertext has no business in logs.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBytes(pub Vec<u8>);

impl fmt::Debug for SealedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedBytes(<{} bytes>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_checked() {
        assert!(UserId::new("alice@example").is_ok());
        assert_eq!(UserId::new(""), Err(IdError::Empty("user id")));
        assert!(matches!(
            UserId::new("x".repeat(MAX_USER_ID_LEN + 1)),
            Err(IdError::TooLong { .. })
        ));
        assert!(UserId::new("x".repeat(MAX_USER_ID_LEN)).is_ok());
        assert_eq!(
            UserId::new("a\nb"),
            Err(IdError::ControlCharacter("user id"))
        );
        // Deserialisation runs the same checks.
        assert!(decode_user_id("").is_err());
        assert!(decode_user_id("a\u{7}b").is_err());
        assert_eq!(
            decode_user_id("bob").map(|u| u.to_string()),
            Ok("bob".to_owned())
        );
    }

    /// A user id decoded from a postcard string holding `text`.
    fn decode_user_id(text: &str) -> Result<UserId, String> {
        let bytes = postcard::to_allocvec(text).map_err(|e| e.to_string())?;
        postcard::from_bytes::<UserId>(&bytes).map_err(|e| e.to_string())
    }

    #[test]
    fn node_ids_are_never_zero() {
        assert!(NodeId::new(0).is_err());
        assert_eq!(NodeId::new(3).map(NodeId::get), Ok(3));
    }

    #[test]
    fn request_ids_parse_hex_and_digests_separate_parts() {
        let id = RequestId::from_hex("000102030405060708090a0b0c0d0e0f").expect("hex");
        assert_eq!(id.to_string(), "000102030405060708090a0b0c0d0e0f");
        assert!(RequestId::from_hex("00").is_err());
        assert_ne!(
            RequestDigest::of(&[b"ab", b"c"]),
            RequestDigest::of(&[b"a", b"bc"])
        );
    }

    #[test]
    fn sealed_bytes_debug_hides_content() {
        let s = SealedBytes(vec![0x41; 5]);
        assert_eq!(format!("{s:?}"), "SealedBytes(<5 bytes>)");
    }
}
