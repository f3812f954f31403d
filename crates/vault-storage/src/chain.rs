//! The running hash of the log ([`vault_raft::checkpoint::chain`]), which
//! the HSM checkpoint records at the last log id it covers.
//!
//! Only its base is stored: `KEY_CHAIN_BASE` in the meta family holds the
//! log id where the chain starts and its hash there (nothing and zeros for
//! a log that was never purged; the last purged id after a purge; the
//! snapshot's id after an install). Everything after it is recomputed
//! from the entries' stored bytes: at start (what the checkpoint's hash is
//! compared with), after a truncation, and for a purge. The log kept on
//! disk is bounded by the snapshot policy, so that is a few megabytes of
//! SHA-256 at most. The stored base is as untrusted as the rest of the
//! disk, and needs no more: to reach the checkpoint's hash from another
//! base or other entries is a second preimage of SHA-256.

use openraft::{LogId, RaftLogId};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use vault_raft::checkpoint::chain;

use crate::Entry;
use crate::db::{CF_LOGS, CF_META, Db, StoreError, decode_framed, encode_framed};

/// Where the chain starts: a log id (or the empty log) and its hash.
pub(crate) type ChainPoint = (Option<LogId<u64>>, [u8; 32]);

pub(crate) const KEY_CHAIN_BASE: &[u8] = b"log_chain_base";

/// The stored base; without one (a log never purged, or one purged by a
/// build before the chain), the last purged id with the empty log's hash.
pub(crate) fn base(db: &Db) -> Result<ChainPoint, StoreError> {
    if let Some(b) = db.get(CF_META, "log chain base", KEY_CHAIN_BASE)? {
        return Ok(b);
    }
    let purged: Option<LogId<u64>> =
        db.get(CF_META, "last purged log id", crate::db::KEY_LAST_PURGED)?;
    Ok((purged, [0; 32]))
}

/// Puts `point` as the base into `batch`.
pub(crate) fn put_base(db: &Db, batch: &mut WriteBatch, point: &ChainPoint) {
    batch.put_cf(db.cf(CF_META), KEY_CHAIN_BASE, encode_framed(point));
}

/// The chain from the base over every stored entry after it, up to and
/// including index `upto` (all of them with `None`): the last log id
/// reached and its hash. Entries must follow one another.
pub(crate) fn walk(db: &Db, upto: Option<u64>) -> Result<ChainPoint, StoreError> {
    walk_from(db, base(db)?, upto)
}

/// [`walk`] from another base than the stored one (a snapshot about to be
/// installed).
pub(crate) fn walk_from(
    db: &Db,
    from_base: ChainPoint,
    upto: Option<u64>,
) -> Result<ChainPoint, StoreError> {
    let (mut at, mut hash) = from_base;
    let from = at.map_or(0, |l| l.index.saturating_add(1));
    for item in db.rocks.iterator_cf(
        db.cf(CF_LOGS),
        IteratorMode::From(&from.to_be_bytes(), Direction::Forward),
    ) {
        let (key, value) = item.map_err(StoreError::rocks("read log entries"))?;
        let entry: Entry = decode_framed("log entry", &key, &value)?;
        let id = *entry.get_log_id();
        if upto.is_some_and(|u| id.index > u) {
            break;
        }
        if at.is_some_and(|a| id.index != a.index + 1) {
            return Err(StoreError::corrupt(
                "log entry",
                &key,
                "the log has a gap: it does not follow the entry before it",
            ));
        }
        hash = chain(&hash, &value);
        at = Some(id);
    }
    Ok((at, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_follows_the_stored_bytes_from_the_base() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        assert_eq!(walk(&db, None).expect("walk"), (None, [0; 32]));
        let entry = |i: u64| {
            let e = Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), i),
                payload: openraft::EntryPayload::Blank,
            };
            (i.to_be_bytes(), encode_framed(&e), e.log_id)
        };
        let mut batch = WriteBatch::default();
        let mut want = [0u8; 32];
        for i in 1..=3 {
            let (k, v, _) = entry(i);
            want = chain(&want, &v);
            batch.put_cf(db.cf(CF_LOGS), k, v);
        }
        db.write(batch, true).expect("write");
        assert_eq!(walk(&db, None).expect("walk"), (Some(entry(3).2), want));
        let (at2, _) = walk(&db, Some(2)).expect("walk");
        assert_eq!(at2, Some(entry(2).2));
        // Another entry's bytes under the same id: another hash.
        let mut edit = WriteBatch::default();
        let mut other = entry(2).1;
        other[0] ^= 1;
        edit.put_cf(db.cf(CF_LOGS), 2u64.to_be_bytes(), other);
        db.write(edit, true).expect("write");
        assert!(walk(&db, None).map(|(_, h)| h != want).unwrap_or(true));
    }
}
