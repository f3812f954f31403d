//! How openraft messages travel inside the protobuf `bytes` of the peer API:
//! one format byte, then the postcard encoding of openraft's serde types.
//!
//! openraft owns these types; wrapping their serde form keeps the peer API
//! in step with them without a hand-written protobuf mirror. The format
//! byte lets a later version change the encoding without ambiguity.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The only format this version writes and reads.
pub const FORMAT_V1: u8 = 1;

/// A peer message that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The message was empty.
    #[error("empty peer message")]
    Empty,
    /// The message has a format this version does not know.
    #[error("peer message format {0} is not supported (this node speaks format {FORMAT_V1})")]
    UnknownFormat(u8),
    /// The bytes after the format byte do not decode.
    #[error("peer message does not decode: {0}")]
    Malformed(postcard::Error),
}

/// Encodes `value` in format 1.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![FORMAT_V1];
    // Serializing openraft's types into a Vec cannot fail: they have no
    // maps with non-string keys that postcard refuses, and Vec grows.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => panic!("postcard encoding of a peer message failed: {e}"),
    }
}

/// Decodes a message written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    match bytes.split_first() {
        None => Err(WireError::Empty),
        Some((&FORMAT_V1, rest)) => postcard::from_bytes(rest).map_err(WireError::Malformed),
        Some((&other, _)) => Err(WireError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
    use openraft::{BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership, Vote};
    use vault_types::{Batch, Command, Proposal, Timestamp};

    use super::*;
    use crate::{Entry, TypeConfig};

    fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    #[test]
    fn every_peer_message_round_trips() {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([
                (1, BasicNode::new("127.0.0.1:1")),
                (2, BasicNode::new("127.0.0.1:2")),
                (3, BasicNode::new("127.0.0.1:3")),
                (4, BasicNode::new("127.0.0.1:4")),
            ]),
        );
        let proposal = Proposal {
            request: None,
            at: Timestamp(7),
            command: Command::Delete {
                user: vault_types::UserId::new("alice").unwrap(),
            },
        };
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(2, 1, 10)),
            entries: vec![
                Entry {
                    log_id: log_id(3, 1, 11),
                    payload: EntryPayload::Membership(membership),
                },
                Entry {
                    log_id: log_id(3, 1, 12),
                    payload: EntryPayload::Normal(Batch(vec![proposal.clone(), proposal])),
                },
                Entry {
                    log_id: log_id(3, 1, 13),
                    payload: EntryPayload::Blank,
                },
            ],
            leader_commit: Some(log_id(3, 1, 11)),
        };
        let back: AppendEntriesRequest<TypeConfig> = decode(&encode(&req)).unwrap();
        assert_eq!(format!("{req:?}"), format!("{back:?}"));

        for resp in [
            AppendEntriesResponse::<u64>::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(3, 1, 12))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(4, 2)),
        ] {
            let back: AppendEntriesResponse<u64> = decode(&encode(&resp)).unwrap();
            assert_eq!(resp, back);
        }
        let vote = VoteRequest::new(Vote::new(5, 2), Some(log_id(3, 1, 12)));
        let back: VoteRequest<u64> = decode(&encode(&vote)).unwrap();
        assert_eq!(vote, back);
        let vr = VoteResponse::new(Vote::new(5, 2), None, true);
        let back: VoteResponse<u64> = decode(&encode(&vr)).unwrap();
        assert_eq!(vr, back);
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        assert!(matches!(
            decode::<VoteRequest<u64>>(&[]),
            Err(WireError::Empty)
        ));
        assert!(matches!(
            decode::<VoteRequest<u64>>(&[9, 1, 2]),
            Err(WireError::UnknownFormat(9))
        ));
        assert!(matches!(
            decode::<VoteRequest<u64>>(&[FORMAT_V1, 0xff]),
            Err(WireError::Malformed(_))
        ));
    }
}
