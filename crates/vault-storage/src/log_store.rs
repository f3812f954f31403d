//! The Raft log and Raft metadata (vote, committed, last purged).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::chain;
use crate::db::{
    CF_LOGS, CF_META, Db, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, StoreError, blocking,
    decode_framed, encode_framed, io_err,
};
use crate::writer::{Done, Writer};
use crate::{Entry, TypeConfig};
use vault_raft::checkpoint::Mark;
use vault_raft::checkpoint::chain as link;

/// The Raft log of one node. Clones share the database; openraft uses one
/// as the writer and clones as readers for replication.
///
/// An append hands its batch to the database's [`Writer`] thread and
/// returns; the thread writes it, fsyncs the write-ahead log once for
/// everything written since its last fsync, and only then tells openraft
/// the entries are persisted (group commit: under load, many appends share
/// an fsync). Reads first wait until every queued write is in, so an entry
/// is readable as soon as its append returns. RocksDB's write-ahead log is
/// one ordered file for every column family, so an fsync makes every
/// earlier write durable, not only the log's.
///
/// The committed log id that openraft reports after each commit (a hint for
/// restarts, not synced) goes to the same thread: openraft's core waits for
/// `save_committed`, so it only hands the value over and goes on.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Db>,
    writer: Arc<Writer>,
    /// The newest committed log id saved by this process (`None` before
    /// the first): what `read_committed` answers, whether or not the
    /// thread has written it yet.
    committed: Arc<Mutex<Option<Option<LogId<u64>>>>>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>, writer: Arc<Writer>) -> Self {
        LogStore {
            db,
            writer,
            committed: Arc::default(),
        }
    }

    fn read_range(db: &Db, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        let from = index_key(start);
        for item in db.rocks.iterator_cf(
            db.cf(CF_LOGS),
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (key, value) = item.map_err(StoreError::rocks("read log entries"))?;
            let index = u64::from_be_bytes(
                key.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::corrupt("log key", &key, "not 8 bytes"))?,
            );
            if end.is_some_and(|end| index >= end) {
                break;
            }
            let entry: Entry = decode_framed("log entry", &key, &value)?;
            if entry.get_log_id().index != index {
                return Err(StoreError::corrupt(
                    "log entry",
                    &key,
                    "stored under another index",
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn last_entry_id(db: &Db) -> Result<Option<LogId<u64>>, StoreError> {
        match db
            .rocks
            .iterator_cf(db.cf(CF_LOGS), IteratorMode::End)
            .next()
        {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(StoreError::rocks("read last log entry"))?;
                let entry: Entry = decode_framed("log entry", &key, &value)?;
                Ok(Some(*entry.get_log_id()))
            }
        }
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static [u8],
        value: &T,
        sync: bool,
    ) -> Result<(), StoreError> {
        let framed = encode_framed(value);
        self.writer
            .after_writes(move |db| {
                let mut batch = WriteBatch::default();
                batch.put_cf(db.cf(CF_META), key, framed);
                db.write(batch, sync)
            })
            .await
    }

    /// The log's running hash at its last entry (or its base), recomputed
    /// from the entries on disk: what the HSM checkpoint's hash is compared
    /// with at start. An error if the log has a gap.
    pub async fn recomputed_hash(&self) -> Result<[u8; 32], StoreError> {
        self.writer
            .after_writes(|db| Ok(chain::walk(db, None)?.1))
            .await
    }

    /// Where the log's running hash starts (entries up to it are not
    /// hashed, so they must be covered by the applied state or purged).
    pub async fn chain_base(&self) -> Result<Option<LogId<u64>>, StoreError> {
        self.writer.after_writes(|db| Ok(chain::base(db)?.0)).await
    }

    /// The last purged log id on disk.
    pub async fn last_purged(&self) -> Result<Option<LogId<u64>>, StoreError> {
        self.get_meta("last purged log id", KEY_LAST_PURGED).await
    }

    /// At start, before Raft runs: deletes every entry whose log id is
    /// above `keep` (the last log id this node's HSM checkpoint recorded:
    /// nothing after it was ever acknowledged, so nothing after it is
    /// believed) and drops a committed hint above it. Log ids only grow
    /// along the log, so what stays is a prefix. Returns how many entries
    /// went.
    pub async fn cut_back_to(&self, keep: Option<LogId<u64>>) -> Result<u64, StoreError> {
        let writer = self.writer.clone();
        self.writer
            .after_writes(move |db| {
                let mut batch = WriteBatch::default();
                let mut cut = 0u64;
                for item in db.rocks.iterator_cf(db.cf(CF_LOGS), IteratorMode::End) {
                    let (key, value) = item.map_err(StoreError::rocks("read log entries"))?;
                    let entry: Entry = decode_framed("log entry", &key, &value)?;
                    if Some(*entry.get_log_id()) <= keep {
                        break;
                    }
                    batch.delete_cf(db.cf(CF_LOGS), key);
                    cut += 1;
                }
                let committed: Option<Option<LogId<u64>>> =
                    db.get(CF_META, "committed log id", KEY_COMMITTED)?;
                if committed.flatten() > keep {
                    batch.delete_cf(db.cf(CF_META), KEY_COMMITTED);
                }
                db.write(batch, true)?;
                *writer.tail.lock().unwrap_or_else(|p| p.into_inner()) = chain::walk(db, None)?;
                Ok(cut)
            })
            .await
    }

    /// At start, before Raft runs: deletes every entry at or below `upto`
    /// (those the log's running hash does not cover, at or below its base;
    /// or, on a node behind its checkpoint, every entry its state applied:
    /// nothing checks them). The applied state covers them, and none of
    /// them may ever be sent to another node. The purge marker goes up to
    /// `upto` (never down) and the hash's base with it. Returns how many
    /// entries went.
    pub async fn drop_through(&self, upto: LogId<u64>) -> Result<u64, StoreError> {
        let writer = self.writer.clone();
        self.writer
            .after_writes(move |db| {
                let mut batch = WriteBatch::default();
                let (base, _) = chain::base(db)?;
                if base.is_none_or(|b| b.index < upto.index) {
                    // The hash there, from the entries (a gap: restarted
                    // at zero; what follows chains from it all the same).
                    let point = match chain::walk(db, Some(upto.index)) {
                        Ok(p) if p.0 == Some(upto) => p,
                        _ => (Some(upto), [0; 32]),
                    };
                    chain::put_base(db, &mut batch, &point);
                }
                let purged: Option<LogId<u64>> =
                    db.get(CF_META, "last purged log id", KEY_LAST_PURGED)?;
                if purged.is_none_or(|p| p.index < upto.index) {
                    batch.put_cf(db.cf(CF_META), KEY_LAST_PURGED, encode_framed(&upto));
                }
                // By key, not by what the value claims: a planted value
                // may name any log id.
                let mut dropped = 0u64;
                let end = index_key(upto.index.saturating_add(1));
                for item in db.rocks.iterator_cf(db.cf(CF_LOGS), IteratorMode::Start) {
                    let (key, _) = item.map_err(StoreError::rocks("read log entries"))?;
                    if *key >= end[..] {
                        break;
                    }
                    batch.delete_cf(db.cf(CF_LOGS), key);
                    dropped += 1;
                }
                db.write(batch, true)?;
                *writer.tail.lock().unwrap_or_else(|p| p.into_inner()) = chain::walk(db, None)?;
                Ok(dropped)
            })
            .await
    }

    async fn get_meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        what: &'static str,
        key: &'static [u8],
    ) -> Result<Option<T>, StoreError> {
        let db = self.db.clone();
        blocking(move || db.get(CF_META, what, key)).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(e.saturating_add(1)),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        self.writer
            .after_writes(move |db| Self::read_range(db, start, end))
            .await
            .map_err(io_err(StorageIOError::read_logs))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        self.writer
            .after_writes(|db| {
                let last_purged: Option<LogId<u64>> =
                    db.get(CF_META, "last purged log id", KEY_LAST_PURGED)?;
                let last = Self::last_entry_id(db)?.or(last_purged);
                Ok(LogState {
                    last_purged_log_id: last_purged,
                    last_log_id: last,
                })
            })
            .await
            .map_err(io_err(StorageIOError::read_logs))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        // A vote must be on disk before it is acted on: sync; and in the
        // HSM checkpoint before it is, or a restored disk could vote twice
        // in one term.
        self.put_meta(KEY_VOTE, vote, true)
            .await
            .map_err(io_err(StorageIOError::write_vote))?;
        let writer = self.writer.clone();
        let mark = Mark {
            vote: Some(*vote),
            ..Mark::default()
        };
        blocking(move || writer.checkpoint(&mark))
            .await
            .map_err(io_err(StorageIOError::write_vote))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.get_meta("vote", KEY_VOTE)
            .await
            .map_err(io_err(StorageIOError::read_vote))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Only a hint for faster restarts: written in the background.
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(committed);
        self.writer
            .committed(encode_framed(&committed))
            .map_err(io_err(StorageIOError::write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        let saved = *self.committed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(committed) = saved {
            return Ok(committed);
        }
        Ok(self
            .get_meta::<Option<LogId<u64>>>("committed log id", KEY_COMMITTED)
            .await
            .map_err(io_err(StorageIOError::read))?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let mut count = 0;
        let mut last = None;
        // The log's running hash goes with the entries to the checkpoint.
        // openraft appends (and truncates) one call at a time, so the tail
        // is this call's to extend.
        let mut tail = self.writer.tail.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            let index = entry.get_log_id().index;
            let value = encode_framed(&entry);
            tail.1 = link(&tail.1, &value);
            tail.0 = Some(*entry.get_log_id());
            last = Some((*entry.get_log_id(), tail.1));
            batch.put_cf(self.db.cf(CF_LOGS), index_key(index), value);
            count += 1;
        }
        drop(tail);
        use std::sync::atomic::Ordering::Relaxed;
        self.db.stats.log_entries_appended.fetch_add(count, Relaxed);
        self.db.stats.log_appends.fetch_add(1, Relaxed);
        // Written by the writer thread, on disk at its next fsync, and
        // readable before that: reads wait for the writer to catch up.
        let done: Done = Box::new(move |r| callback.log_io_completed(r));
        self.writer
            .append(batch, last, done)
            .map_err(io_err(StorageIOError::write_logs))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        // After every append queued before it.
        let writer = self.writer.clone();
        self.writer
            .after_writes(move |db| {
                let mut batch = WriteBatch::default();
                batch.delete_range_cf(db.cf(CF_LOGS), index_key(log_id.index), index_key(u64::MAX));
                batch.delete_cf(db.cf(CF_LOGS), index_key(u64::MAX));
                db.write(batch, true)?;
                *writer.tail.lock().unwrap_or_else(|p| p.into_inner()) = chain::walk(db, None)?;
                Ok(())
            })
            .await
            .map_err(io_err(StorageIOError::write_logs))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let marker = encode_framed(&log_id);
        // Held applies go to disk first: the log is never purged past an
        // apply that is not written.
        let writer = self.writer.clone();
        blocking(move || writer.flush_applies())
            .await
            .map_err(io_err(StorageIOError::write_logs))?;
        self.writer
            .after_writes(move |db| {
                let mut batch = WriteBatch::default();
                // The chain's base moves to the purged entry (unless it is
                // there already: a purge up to an installed snapshot).
                let (base, _) = chain::base(db)?;
                if base.is_none_or(|b| b.index < log_id.index) {
                    let point = chain::walk(db, Some(log_id.index))?;
                    if point.0 == Some(log_id) {
                        chain::put_base(db, &mut batch, &point);
                    }
                }
                // The purge marker and the deletion go together, so the log
                // state never claims entries that are gone or hides ones
                // that are still there.
                batch.put_cf(db.cf(CF_META), KEY_LAST_PURGED, marker);
                batch.delete_range_cf(
                    db.cf(CF_LOGS),
                    index_key(0),
                    index_key(log_id.index.saturating_add(1)),
                );
                db.write(batch, true)
            })
            .await
            .map_err(io_err(StorageIOError::write_logs))
    }
}
