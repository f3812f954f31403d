//! The RocksDB database: column families, value framing, format marker.

use std::path::Path;

use openraft::{AnyError, StorageError, StorageIOError};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};

/// Raft log entries, keyed by index (8 bytes, big-endian).
pub(crate) const CF_LOGS: &str = "logs";
/// Raft metadata and the state machine's applied state.
pub(crate) const CF_META: &str = "meta";
/// The vault state, keyed by `vault_core::StateKey::encode`.
pub(crate) const CF_STATE: &str = "state";

/// Written on creation and checked on every open.
pub const FORMAT_MARKER: &[u8] = b"backup-key-vault storage v1";

pub(crate) const KEY_FORMAT: &[u8] = b"format";
pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";
pub(crate) const KEY_LAST_APPLIED: &[u8] = b"sm_last_applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"sm_membership";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB reported an error.
    #[error("{op}: {source}")]
    Rocks {
        /// What we were doing.
        op: &'static str,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// A stored value failed its checksum or does not decode.
    #[error("corrupt {what} at key {key:02x?}: {reason}")]
    Corrupt {
        /// What the value is.
        what: &'static str,
        /// Its key.
        key: Vec<u8>,
        /// What is wrong.
        reason: String,
    },
    /// The database was written by another format.
    #[error("database at {dir} has format {found:?}; this build reads {FORMAT_MARKER:?}", found = String::from_utf8_lossy(found))]
    UnknownFormat {
        /// The directory.
        dir: String,
        /// The marker found.
        found: Vec<u8>,
    },
    /// The database holds data but no format marker.
    #[error("database at {0} holds data but no format marker; refusing to guess its format")]
    MissingFormat(String),
    /// A snapshot file failed.
    #[error("{op} {path}: {reason}")]
    Snapshot {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A blocking task died.
    #[error("storage task failed: {0}")]
    Task(String),
}

impl StoreError {
    pub(crate) fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError {
        move |source| StoreError::Rocks { op, source }
    }

    pub(crate) fn corrupt(what: &'static str, key: &[u8], reason: impl ToString) -> StoreError {
        StoreError::Corrupt {
            what,
            key: key.to_vec(),
            reason: reason.to_string(),
        }
    }
}

/// openraft's error, tagged as a read or a write of the logs, the vote, the
/// state machine or a snapshot.
pub(crate) fn io_err(
    make: fn(AnyError) -> StorageIOError<u64>,
) -> impl FnOnce(StoreError) -> StorageError<u64> {
    move |e| StorageError::IO {
        source: make(AnyError::new(&e)),
    }
}

/// A value as stored: the payload, then its CRC-32 (little-endian).
pub(crate) fn frame(payload: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&payload);
    let mut out = payload;
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The payload of a framed value, after checking its CRC.
pub(crate) fn unframe<'a>(
    what: &'static str,
    key: &[u8],
    value: &'a [u8],
) -> Result<&'a [u8], StoreError> {
    if value.len() < 4 {
        return Err(StoreError::corrupt(what, key, "shorter than its checksum"));
    }
    let (payload, crc) = value.split_at(value.len() - 4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(payload) != want {
        return Err(StoreError::corrupt(what, key, "checksum mismatch"));
    }
    Ok(payload)
}

/// The node's RocksDB.
pub(crate) struct Db {
    pub(crate) rocks: DB,
    pub(crate) stats: std::sync::Arc<StorageStats>,
}

/// Counters of a node's storage, for metrics: how many synced writes
/// (fsyncs) the database made and how many log entries they carried, so
/// that fsyncs per committed entry can be watched under load.
#[derive(Debug, Default)]
pub struct StorageStats {
    /// Write batches synced to disk (log appends, votes, applies, …).
    pub synced_writes: std::sync::atomic::AtomicU64,
    /// Log entries appended.
    pub log_entries_appended: std::sync::atomic::AtomicU64,
    /// Log appends (each one write batch, one fsync).
    pub log_appends: std::sync::atomic::AtomicU64,
    /// Log entries of client proposals applied (each one batch).
    pub batches_applied: std::sync::atomic::AtomicU64,
    /// Proposals those batches carried (over `batches_applied`: the
    /// leader's batching factor).
    pub proposals_applied: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.rocks.path())
            .finish()
    }
}

impl Db {
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Flush the WAL per write ourselves (WriteOptions::sync); keep the
        // default paranoid checks that turn on-disk corruption into errors.
        opts.set_paranoid_checks(true);
        let cfs = [CF_LOGS, CF_META, CF_STATE]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let rocks = DB::open_cf_descriptors(&opts, dir.join("db"), cfs)
            .map_err(StoreError::rocks("open database"))?;
        let db = Db {
            rocks,
            stats: std::sync::Arc::default(),
        };
        db.check_format(dir)?;
        Ok(db)
    }

    fn check_format(&self, dir: &Path) -> Result<(), StoreError> {
        let meta = self.cf(CF_META);
        match self
            .rocks
            .get_cf(meta, KEY_FORMAT)
            .map_err(StoreError::rocks("read format marker"))?
        {
            Some(found) if found == FORMAT_MARKER => Ok(()),
            Some(found) => Err(StoreError::UnknownFormat {
                dir: dir.display().to_string(),
                found,
            }),
            None => {
                let empty = [CF_LOGS, CF_META, CF_STATE].into_iter().all(|cf| {
                    self.rocks
                        .iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start)
                        .next()
                        .is_none()
                });
                if !empty {
                    return Err(StoreError::MissingFormat(dir.display().to_string()));
                }
                let mut batch = WriteBatch::default();
                batch.put_cf(meta, KEY_FORMAT, FORMAT_MARKER);
                self.write(batch, true)
            }
        }
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // The three families are created on open; a missing one is a bug.
        self.rocks
            .cf_handle(name)
            .unwrap_or_else(|| unreachable!("column family {name} is created on open"))
    }

    /// Writes `batch` atomically; with `sync`, returns only once it is on disk.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.rocks
            .write_opt(batch, &opts)
            .map_err(StoreError::rocks("write batch"))?;
        if sync {
            self.stats
                .synced_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// A framed, versioned value of `cf` at `key`, decoded.
    pub(crate) fn get<T: serde::de::DeserializeOwned>(
        &self,
        cf: &str,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let Some(raw) = self
            .rocks
            .get_cf(self.cf(cf), key)
            .map_err(StoreError::rocks("read value"))?
        else {
            return Ok(None);
        };
        decode_framed(what, key, &raw).map(Some)
    }
}

/// Format version of the values this crate frames itself (log entries,
/// votes, log ids, membership).
pub(crate) const VALUE_V1: u8 = 1;

/// Encodes a value: version byte, postcard, CRC.
pub(crate) fn encode_framed<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialising in-memory openraft and vault types into a Vec cannot fail.
    let payload = vault_types::codec::encode(VALUE_V1, value).unwrap_or_default();
    frame(payload)
}

/// Decodes what [`encode_framed`] wrote.
pub(crate) fn decode_framed<T: serde::de::DeserializeOwned>(
    what: &'static str,
    key: &[u8],
    raw: &[u8],
) -> Result<T, StoreError> {
    let payload = unframe(what, key, raw)?;
    vault_types::codec::decode(what, VALUE_V1, payload)
        .map_err(|e| StoreError::corrupt(what, key, e))
}

/// Runs a RocksDB call on the blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_detect_any_flipped_byte() {
        let framed = encode_framed(&(7u64, "payload".to_owned()));
        let back: (u64, String) = decode_framed("test", b"k", &framed).expect("decode");
        assert_eq!(back, (7, "payload".to_owned()));
        for i in 0..framed.len() {
            let mut bad = framed.clone();
            bad[i] ^= 0x01;
            let err = decode_framed::<(u64, String)>("test", b"k", &bad).expect_err("flip");
            assert!(err.to_string().contains("corrupt test"), "{err}");
        }
    }
}
