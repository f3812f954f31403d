//! The Raft log and Raft metadata (vote, committed, last purged).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::db::{
    CF_LOGS, CF_META, Db, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, StoreError, blocking,
    decode_framed, encode_framed, io_err,
};
use crate::{Entry, TypeConfig};

/// The Raft log of one node. Clones share the database; openraft uses one
/// as the writer and clones as readers for replication.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Db>,
    commit: Arc<GroupCommit>,
    recent: Arc<Mutex<RecentEntries>>,
}

/// Entries kept in memory at most (and [`RECENT_BYTES`] of them encoded).
const RECENT_ENTRIES: usize = 4096;
/// Encoded bytes of the entries kept in memory at most.
const RECENT_BYTES: usize = 32 << 20;

/// The newest log entries, kept in memory so that a leader's replication
/// does not read back from RocksDB (a blocking-pool round trip and a decode
/// per entry) what it has just written. Always a contiguous suffix of the
/// log: appends add at its end, a truncation removes a suffix of both,
/// purging and eviction remove a prefix. So a range that starts inside it
/// is answered from it alone, exactly as RocksDB would; any other range
/// goes to RocksDB. Empty after a restart.
#[derive(Debug, Default)]
struct RecentEntries {
    /// Entries in index order, each with its encoded size.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl RecentEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.get_log_id().index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.get_log_id().index)
    }

    /// Entries just written at the end of the log. Anything else (a gap,
    /// an overwrite without truncation) empties the cache, which is always
    /// safe: readers then go to RocksDB.
    fn push(&mut self, entry: Entry, size: usize) {
        let index = entry.get_log_id().index;
        if self
            .last_index()
            .is_some_and(|last| last.checked_add(1) != Some(index))
        {
            self.entries.clear();
            self.bytes = 0;
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            let Some((_, size)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size;
        }
    }

    /// Drops entries from `index` on (a truncation).
    fn truncate(&mut self, index: u64) {
        while self.last_index().is_some_and(|last| last >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Drops entries up to and including `index` (a purge).
    fn purge(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// Entries `start..end` (to the end of the log when `end` is `None`),
    /// if the cache holds all of them.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        if start < first {
            return None;
        }
        let stop = end.map_or(last.saturating_add(1), |e| e.min(last.saturating_add(1)));
        if start >= stop {
            return Some(Vec::new());
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(stop - first).ok()?;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

/// What to run once an append is on disk.
type Done = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

/// Work for the log's background thread.
enum Job {
    /// Fsync the write-ahead log, then run this.
    Flush(Done),
    /// Write this committed log id (framed) as the restart hint.
    Committed(Vec<u8>),
}

/// Group commit of the Raft log. An append writes its entries to RocksDB
/// without waiting for the disk and queues its completion here; one thread
/// fsyncs the write-ahead log for everything queued since its last fsync,
/// then completes them all. While one fsync runs, the appends that arrive
/// meanwhile (client writes on a leader) wait together for the next one, so
/// under load many entries share an fsync. openraft treats an entry as
/// persisted only when its completion reports success.
///
/// RocksDB's write-ahead log is one ordered file for every column family, so
/// an fsync makes every earlier write durable, not only the log's.
///
/// The same thread writes the committed log id that openraft reports after
/// each commit (a hint for restarts, not synced): openraft's core waits for
/// `save_committed`, so it only hands the value over and goes on, and of
/// several queued values only the newest is written.
struct GroupCommit {
    queue: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The newest committed log id saved by this process (`None` before
    /// the first): what `read_committed` answers, whether or not the
    /// thread has written it yet.
    committed: Mutex<Option<Option<LogId<u64>>>>,
}

impl Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl Drop for GroupCommit {
    /// Closes the queue and waits for the thread to finish what is queued
    /// and let go of the database, so that the directory can be opened
    /// again as soon as the last store is dropped.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl GroupCommit {
    fn start(db: Arc<Db>) -> Result<GroupCommit, StoreError> {
        let (queue, waiting) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || {
                // Ends when the last LogStore clone (the last sender) drops.
                while let Ok(first) = waiting.recv() {
                    let mut batch = Vec::new();
                    let mut hint = None;
                    for job in std::iter::once(first).chain(waiting.try_iter()) {
                        match job {
                            Job::Flush(done) => batch.push(done),
                            Job::Committed(framed) => hint = Some(framed),
                        }
                    }
                    if let Some(framed) = hint {
                        let mut write = WriteBatch::default();
                        write.put_cf(db.cf(CF_META), KEY_COMMITTED, framed);
                        // Only a hint for faster restarts: losing it is safe.
                        if let Err(e) = db.write(write, false) {
                            tracing::warn!("save the committed log id: {e}");
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let synced = db.rocks.flush_wal(true);
                    db.stats
                        .synced_writes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    for done in batch {
                        done(match &synced {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::other(format!("fsync the log: {e}"))),
                        });
                    }
                }
            })
            .map_err(|e| StoreError::Task(format!("start the log fsync thread: {e}")))?;
        Ok(GroupCommit {
            queue: Some(queue),
            thread: Some(thread),
            committed: Mutex::new(None),
        })
    }

    /// Queues `job`; gives it back when the thread is gone.
    fn send(&self, job: Job) -> Result<(), Job> {
        match &self.queue {
            Some(q) => q.send(job).map_err(|unsent| unsent.0),
            None => Err(job),
        }
    }
}

fn gone() -> StoreError {
    StoreError::Task("the log fsync thread is gone".into())
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>) -> Result<Self, StoreError> {
        let commit = Arc::new(GroupCommit::start(db.clone())?);
        Ok(LogStore {
            db,
            commit,
            recent: Arc::default(),
        })
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
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
        let db = self.db.clone();
        let framed = encode_framed(value);
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(db.cf(CF_META), key, framed);
            db.write(batch, sync)
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
        if let Some(entries) = self.recent().get(start, end) {
            return Ok(entries);
        }
        let db = self.db.clone();
        blocking(move || Self::read_range(&db, start, end))
            .await
            .map_err(io_err(StorageIOError::read_logs))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged: Option<LogId<u64>> =
                db.get(CF_META, "last purged log id", KEY_LAST_PURGED)?;
            let last = Self::last_entry_id(&db)?.or(last_purged);
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
        // A vote must be on disk before it is acted on: sync.
        self.put_meta(KEY_VOTE, vote, true)
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
        *self
            .commit
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(committed);
        self.commit
            .send(Job::Committed(encode_framed(&committed)))
            .map_err(|_| io_err(StorageIOError::write)(gone()))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        let saved = *self
            .commit
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
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
        let cf_entries: Vec<(u64, Vec<u8>)> = {
            let mut recent = self.recent();
            entries
                .into_iter()
                .map(|e| {
                    let framed = encode_framed(&e);
                    let index = e.get_log_id().index;
                    recent.push(e, framed.len());
                    (index, framed)
                })
                .collect()
        };
        let db = self.db.clone();
        let count = cf_entries.len() as u64;
        let result = blocking(move || {
            db.stats
                .log_entries_appended
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
            db.stats
                .log_appends
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for (index, value) in cf_entries {
                batch.put_cf(db.cf(CF_LOGS), index_key(index), value);
            }
            // Written now, on disk at the group commit's next fsync.
            db.write(batch, false)
        })
        .await;
        match result {
            Ok(()) => {
                let done: Done = Box::new(move |r| callback.log_io_completed(r));
                if let Err(unsent) = self.commit.send(Job::Flush(done)) {
                    if let Job::Flush(done) = unsent {
                        done(Err(std::io::Error::other("the log fsync thread is gone")));
                    }
                    return Err(io_err(StorageIOError::write_logs)(gone()));
                }
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_err(StorageIOError::write_logs)(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.recent().truncate(log_id.index);
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(db.cf(CF_LOGS), index_key(log_id.index), index_key(u64::MAX));
            batch.delete_cf(db.cf(CF_LOGS), index_key(u64::MAX));
            db.write(batch, true)
        })
        .await
        .map_err(io_err(StorageIOError::write_logs))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.recent().purge(log_id.index);
        let db = self.db.clone();
        let marker = encode_framed(&log_id);
        blocking(move || {
            let mut batch = WriteBatch::default();
            // The purge marker and the deletion go together, so the log
            // state never claims entries that are gone or hides ones that
            // are still there.
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};
    use proptest::prelude::*;

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.get_log_id().index).collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u64),
        Truncate(u64),
        Purge(u64),
        Read(u64, Option<u64>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..5).prop_map(Op::Append),
            (0u64..40).prop_map(Op::Truncate),
            (0u64..40).prop_map(Op::Purge),
            (0u64..40, proptest::option::of(0u64..45)).prop_map(|(s, e)| Op::Read(s, e)),
        ]
    }

    proptest! {
        /// Against a model of the whole log (on disk: entries 1..=5 before
        /// the cache saw any), every answer the cache gives is the log's
        /// own, and every range that starts inside it is answered.
        #[test]
        fn answers_exactly_what_the_log_holds(ops in proptest::collection::vec(op(), 1..80)) {
            let mut log: Vec<u64> = (1..=5).collect();
            let mut cache = RecentEntries::default();
            for op in ops {
                match op {
                    Op::Append(n) => {
                        for _ in 0..n {
                            let next = log.last().map_or(1, |l| l + 1);
                            log.push(next);
                            cache.push(entry(next), 1);
                        }
                    }
                    Op::Truncate(i) => {
                        log.retain(|&x| x < i);
                        cache.truncate(i);
                    }
                    Op::Purge(i) => {
                        log.retain(|&x| x > i);
                        cache.purge(i);
                    }
                    Op::Read(start, end) => {
                        let want: Vec<u64> = log
                            .iter()
                            .copied()
                            .filter(|&x| x >= start && end.is_none_or(|e| x < e))
                            .collect();
                        match cache.get(start, end) {
                            Some(got) => prop_assert_eq!(indexes(&got), want),
                            None => prop_assert!(
                                cache.first_index().is_none_or(|f| start < f),
                                "a range from {} was not answered from {:?}",
                                start,
                                cache.first_index()
                            ),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn stays_within_its_bounds() {
        let mut cache = RecentEntries::default();
        let n = RECENT_ENTRIES as u64 + 100;
        for i in 1..=n {
            cache.push(entry(i), 10);
        }
        assert_eq!(cache.entries.len(), RECENT_ENTRIES);
        assert_eq!(cache.first_index(), Some(101));
        assert_eq!(cache.bytes, RECENT_ENTRIES * 10);
        assert!(
            cache.get(100, None).is_none(),
            "evicted entries come from disk"
        );
        assert_eq!(cache.get(n, None).map(|v| indexes(&v)), Some(vec![n]));
        // Two entries that together pass the byte bound: the older goes.
        cache.push(entry(n + 1), RECENT_BYTES / 2 + 1);
        cache.push(entry(n + 2), RECENT_BYTES / 2 + 1);
        assert_eq!(cache.first_index(), Some(n + 2));
        assert_eq!(cache.bytes, RECENT_BYTES / 2 + 1);
        // A gap empties it rather than leave a hole.
        cache.push(entry(n + 5), 1);
        assert_eq!(cache.first_index(), Some(n + 5));
        assert_eq!(cache.entries.len(), 1);
    }
}
