//! The versioned binary encoding of everything the vault persists or
//! replicates: one format-version byte, then the value in `postcard`.
//!
//! A decoder reads the version first and refuses one it does not know, so a
//! later format can be added beside this one without guessing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::{Batch, Command, Proposal, RequestMeta};
use crate::ids::Timestamp;

/// Format version of log-entry payloads written by this build.
pub const PROPOSAL_V1: u8 = 1;
/// Format version of log-entry payloads that hold a batch of proposals
/// (what this build writes to the log; version 1 held one proposal and is
/// still the format of a single forwarded proposal).
pub const BATCH_V2: u8 = 2;
/// Format version of state values written by this build.
pub const VALUE_V1: u8 = 1;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// No bytes at all.
    #[error("empty encoding")]
    Empty,
    /// A version this build does not read.
    #[error("unknown format version {found} of {what} (this build reads {expected})")]
    UnknownVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        expected: u8,
    },
    /// The payload does not decode.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
}

#[derive(serde::Deserialize)]
struct ProposalV1 {
    request: Option<RequestMeta>,
    at: Timestamp,
    command: Command,
}

/// A proposal as [`ProposalV1`] writes it, borrowed: the same bytes, with
/// no copy of the command (a registration's sealed record) per encoding.
#[derive(Serialize)]
struct ProposalV1Ref<'a> {
    request: Option<RequestMeta>,
    at: Timestamp,
    command: &'a Command,
}

impl<'a> From<&'a Proposal> for ProposalV1Ref<'a> {
    fn from(p: &'a Proposal) -> ProposalV1Ref<'a> {
        ProposalV1Ref {
            request: p.request,
            at: p.at,
            command: &p.command,
        }
    }
}

/// Encodes a versioned value.
pub fn encode<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_extend(value, vec![version]).map_err(|e| CodecError::Malformed {
        what: "value",
        reason: e.to_string(),
    })
}

/// Decodes a value written by [`encode`] with `version`.
pub fn decode<T: DeserializeOwned>(
    what: &'static str,
    version: u8,
    bytes: &[u8],
) -> Result<T, CodecError> {
    let (&found, payload) = bytes.split_first().ok_or(CodecError::Empty)?;
    if found != version {
        return Err(CodecError::UnknownVersion {
            what,
            found,
            expected: version,
        });
    }
    postcard::from_bytes(payload).map_err(|e| CodecError::Malformed {
        what,
        reason: e.to_string(),
    })
}

/// The bytes of a proposal.
pub fn encode_proposal(p: &Proposal) -> Result<Vec<u8>, CodecError> {
    encode(PROPOSAL_V1, &ProposalV1Ref::from(p))
}

/// A proposal from its bytes.
pub fn decode_proposal(bytes: &[u8]) -> Result<Proposal, CodecError> {
    let v: ProposalV1 = decode("proposal", PROPOSAL_V1, bytes)?;
    Ok(v.into())
}

impl From<ProposalV1> for Proposal {
    fn from(v: ProposalV1) -> Proposal {
        Proposal {
            request: v.request,
            at: v.at,
            command: v.command,
        }
    }
}

/// The bytes of a log entry's batch: version [`BATCH_V2`], then the
/// proposals in order, each as in version 1.
pub fn encode_batch(b: &Batch) -> Result<Vec<u8>, CodecError> {
    let items: Vec<ProposalV1Ref<'_>> = b.0.iter().map(ProposalV1Ref::from).collect();
    encode(BATCH_V2, &items)
}

/// A log entry's batch from its bytes. An empty batch is refused: the
/// leader never proposes one.
pub fn decode_batch(bytes: &[u8]) -> Result<Batch, CodecError> {
    let items: Vec<ProposalV1> = decode("log entry", BATCH_V2, bytes)?;
    if items.is_empty() {
        return Err(CodecError::Malformed {
            what: "log entry",
            reason: "an empty batch".into(),
        });
    }
    Ok(Batch(items.into_iter().map(Proposal::from).collect()))
}

// The serde form of a batch and a proposal is one byte string holding the
// versioned encoding above, so every entry, on disk and inside openraft's
// messages, starts with its format version. Kept here, next to the codec,
// so that `command` does not import the codec that imports it.

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = encode_batch(self).map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Batch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a versioned batch of proposals")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Batch, E> {
                decode_batch(v).map_err(E::custom)
            }
        }
        d.deserialize_bytes(V)
    }
}

impl Serialize for Proposal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = encode_proposal(self).map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Proposal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Proposal;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a versioned proposal")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Proposal, E> {
                decode_proposal(v).map_err(E::custom)
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Generation, RequestDigest, RequestId, SealedBytes, UserId};

    fn sample() -> Proposal {
        Proposal {
            request: Some(RequestMeta {
                id: RequestId([7; 16]),
                digest: RequestDigest([9; 32]),
            }),
            at: Timestamp(1_700_000_000_000),
            command: Command::Register {
                user: UserId::new("alice").expect("id"),
                expected_generation: Generation(0),
                sealed_record: SealedBytes(vec![1, 2, 3]),
                max_attempts: 10,
            },
        }
    }

    #[test]
    fn proposals_round_trip_with_a_version_byte() {
        let p = sample();
        let bytes = encode_proposal(&p).expect("encode");
        assert_eq!(bytes[0], PROPOSAL_V1);
        assert_eq!(decode_proposal(&bytes), Ok(p.clone()));
        // Nested inside another serde structure it stays one byte string.
        let outer = postcard::to_allocvec(&(5u8, p.clone())).expect("outer");
        let (five, back): (u8, Proposal) = postcard::from_bytes(&outer).expect("outer back");
        assert_eq!((five, back), (5, p));
        let finish = Proposal {
            request: None,
            at: Timestamp(1),
            command: Command::FinishAttempt {
                user: UserId::new("bob").expect("id"),
                generation: Generation(2),
                success: false,
            },
        };
        assert_eq!(
            decode_proposal(&encode_proposal(&finish).expect("enc")),
            Ok(finish)
        );
    }

    #[test]
    fn batches_round_trip_and_refuse_other_versions() {
        let b = Batch(vec![sample(), sample()]);
        let bytes = encode_batch(&b).expect("encode");
        assert_eq!(bytes[0], BATCH_V2);
        assert_eq!(decode_batch(&bytes), Ok(b.clone()));
        // A single proposal's bytes are not a batch, nor the reverse.
        let one = encode_proposal(&sample()).expect("encode");
        assert!(matches!(
            decode_batch(&one),
            Err(CodecError::UnknownVersion { found: 1, .. })
        ));
        assert!(matches!(
            decode_proposal(&bytes),
            Err(CodecError::UnknownVersion { found: 2, .. })
        ));
        assert!(matches!(
            decode_batch(&encode_batch(&Batch(Vec::new())).expect("encode")),
            Err(CodecError::Malformed { .. })
        ));
        // Inside another serde structure it stays one byte string.
        let outer = postcard::to_allocvec(&(5u8, b.clone())).expect("outer");
        let (five, back): (u8, Batch) = postcard::from_bytes(&outer).expect("outer back");
        assert_eq!((five, back), (5, b));
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        let mut bytes = encode_proposal(&sample()).expect("encode");
        bytes[0] = 3;
        assert!(matches!(
            decode_proposal(&bytes),
            Err(CodecError::UnknownVersion { found: 3, .. })
        ));
        assert_eq!(decode_proposal(&[]), Err(CodecError::Empty));
        assert!(matches!(
            decode_proposal(&[1, 0xff]),
            Err(CodecError::Malformed { .. })
        ));
        // An invalid user id inside is refused at decode time.
        let mut raw = vec![PROPOSAL_V1];
        raw.extend(
            postcard::to_allocvec(&(None::<RequestMeta>, 1u64, 1u8, String::new())).expect("raw"),
        );
        assert!(decode_proposal(&raw).is_err());
    }
}
