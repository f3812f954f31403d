//! The Raft log and Raft metadata (vote, committed, last purged).

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
        Ok(LogStore { db, commit })
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
        let cf_entries: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.get_log_id().index, encode_framed(&e)))
            .collect();
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
