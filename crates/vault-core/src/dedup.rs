//! The table of applied request ids: bounded, evicting by log position.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vault_types::codec::{self, CodecError, VALUE_V1};
use vault_types::{CommandError, RequestDigest, RequestId, Response, Timestamp};

/// Format version of dedup entries that carry their time.
pub const DEDUP_V2: u8 = 2;

/// Request ids remembered by default. Every replica must use the same value:
/// eviction is part of the replicated state.
pub const DEFAULT_DEDUP_CAPACITY: usize = 100_000;

/// What is remembered of one applied request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    /// Where in the log it was applied (see [`crate::log_position`]):
    /// unique, and orders eviction.
    pub index: u64,
    /// The digest of the body it was applied with.
    pub digest: RequestDigest,
    /// Its reply, stripped of sealed material (see `strip`).
    pub reply: Result<Response, CommandError>,
    /// When it was applied (the proposing node's clock, from the command):
    /// a grant replayed later than a session lives has expired.
    pub at: Timestamp,
}

/// A dedup entry as the first format wrote it (no time).
#[derive(Deserialize)]
struct DedupEntryV1 {
    index: u64,
    digest: RequestDigest,
    reply: Result<Response, CommandError>,
}

impl DedupEntry {
    /// The persisted bytes (format 2).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(DEDUP_V2, self)
    }

    /// An entry from either format; the first is taken as applied at time
    /// 0, so a replay of its grant has expired.
    pub fn decode(bytes: &[u8]) -> Result<DedupEntry, CodecError> {
        if bytes.first() == Some(&VALUE_V1) {
            let v: DedupEntryV1 = codec::decode("dedup entry", VALUE_V1, bytes)?;
            return Ok(DedupEntry {
                index: v.index,
                digest: v.digest,
                reply: v.reply,
                at: Timestamp(0),
            });
        }
        codec::decode("dedup entry", DEDUP_V2, bytes)
    }
}

/// Applied request ids, oldest evicted first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DedupTable {
    capacity: usize,
    by_id: BTreeMap<RequestId, DedupEntry>,
    by_index: BTreeMap<u64, RequestId>,
}

impl DedupTable {
    pub(crate) fn new(capacity: usize) -> Self {
        DedupTable {
            capacity: capacity.max(1),
            by_id: BTreeMap::new(),
            by_index: BTreeMap::new(),
        }
    }

    pub(crate) fn get(&self, id: &RequestId) -> Option<&DedupEntry> {
        self.by_id.get(id)
    }

    /// Remembers `id`; returns the ids evicted to stay within capacity.
    pub(crate) fn insert(&mut self, id: RequestId, entry: DedupEntry) -> Vec<RequestId> {
        self.by_index.insert(entry.index, id);
        if let Some(old) = self.by_id.insert(id, entry) {
            self.by_index.remove(&old.index);
        }
        let mut evicted = Vec::new();
        while self.by_id.len() > self.capacity {
            let Some((_, oldest)) = self.by_index.pop_first() else {
                break;
            };
            self.by_id.remove(&oldest);
            evicted.push(oldest);
        }
        evicted
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&RequestId, &DedupEntry)> {
        self.by_id.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// A reply as the dedup table keeps it: a granted attempt without its sealed
/// record, so that erasing a record also erases every copy the table could
/// replay. The record is filled in again from the live state on a replay.
pub(crate) fn strip(reply: &Result<Response, CommandError>) -> Result<Response, CommandError> {
    match reply {
        Ok(Response::AttemptGranted {
            generation,
            attempts_left,
            attempt,
            ..
        }) => Ok(Response::AttemptGranted {
            generation: *generation,
            sealed_record: Default::default(),
            attempts_left: *attempts_left,
            attempt: *attempt,
        }),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64) -> DedupEntry {
        DedupEntry {
            index,
            digest: RequestDigest([0; 32]),
            reply: Ok(Response::Deleted),
            at: Timestamp(0),
        }
    }

    #[test]
    fn evicts_lowest_index_first() {
        let mut t = DedupTable::new(2);
        assert!(t.insert(RequestId([1; 16]), entry(10)).is_empty());
        assert!(t.insert(RequestId([2; 16]), entry(5)).is_empty());
        assert_eq!(
            t.insert(RequestId([3; 16]), entry(11)),
            vec![RequestId([2; 16])]
        );
        assert!(t.get(&RequestId([2; 16])).is_none());
        assert_eq!(t.len(), 2);
    }
}
