//! Raw edits of a stopped node's data directory: what anyone who has the
//! RocksDB format (this crate's source is public) and write access to a
//! disk can do, without a PIN or an HSM. Nothing in the vault calls it;
//! the attack tests (`tests/forgery.rs`) do, to show that a node does not
//! believe such a disk.

use std::path::Path;

use openraft::{LogId, Vote};
use rocksdb::WriteBatch;

use crate::db::{
    CF_LOGS, CF_META, Db, KEY_COMMITTED, KEY_LAST_APPLIED, KEY_LAST_PURGED, KEY_VOTE, StoreError,
    encode_framed,
};

/// Rewrites the Raft state of the data directory `dir` to claim that this
/// node holds `vote`, and has purged, applied and committed everything up
/// to `at`, with no log entries left: issue 25's forged-ahead disk. The
/// state itself is left as it is (an old copy's, say).
pub fn forge_ahead(dir: &Path, vote: Vote<u64>, at: LogId<u64>) -> Result<(), StoreError> {
    let db = Db::open(dir)?;
    let mut batch = WriteBatch::default();
    batch.put_cf(db.cf(CF_META), KEY_VOTE, encode_framed(&vote));
    batch.put_cf(db.cf(CF_META), KEY_LAST_PURGED, encode_framed(&at));
    batch.put_cf(db.cf(CF_META), KEY_LAST_APPLIED, encode_framed(&at));
    batch.put_cf(db.cf(CF_META), KEY_COMMITTED, encode_framed(&Some(at)));
    batch.delete_range_cf(db.cf(CF_LOGS), 0u64.to_be_bytes(), u64::MAX.to_be_bytes());
    batch.delete_cf(db.cf(CF_LOGS), u64::MAX.to_be_bytes());
    db.write(batch, true)
}
