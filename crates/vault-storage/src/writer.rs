//! The database's writer thread: log appends with group commit, the state
//! machine's applies, and the committed-index hint, written in the order
//! they were handed over.
//!
//! Why a thread of its own rather than tokio's blocking pool: every hop to
//! the pool and back is a thread wake-up on each side, and on the path of a
//! commit there were three of them (the leader's append, a follower's
//! append, the leader's apply) besides the fsyncs. Measured on the 2-core
//! loopback fleet (docs/BENCHMARKS.md, alternating builds with
//! `scripts/compare.sh`), handing the writes to this thread took a
//! committed delete at one client from 3.2–4.1 ms to 3.0–3.5 ms at p50, and
//! a full recovery at one client from 8.1–8.9 ms to 6.8–7.8 ms.
//!
//! What it guarantees:
//! - Jobs are written in the order they were queued; after a write or an
//!   fsync fails, nothing more is written (every later job fails), so the
//!   database always holds a prefix of what was queued: the applied state
//!   can never be ahead of a lost write.
//! - An append's completion runs only after an fsync of the write-ahead log
//!   that followed its write (one fsync for everything written since the
//!   last, so appends queued while one fsync runs share the next).
//! - [`Writer::caught_up`] returns once everything queued before the call is
//!   written (not necessarily synced): readers call it first, so they see
//!   every append that has returned and every apply that has been queued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use openraft::LogId;
use rocksdb::WriteBatch;
use vault_raft::checkpoint::{Checkpointer, Mark};

use crate::db::{CF_META, Db, KEY_COMMITTED, StoreError, blocking};

/// What to run once an append is on disk (or failed).
pub(crate) type Done = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

/// How long a reader waits for the writer before giving up with an error.
const CATCH_UP: Duration = Duration::from_secs(30);

enum Job {
    /// Write a log append's batch, whose last entry is `last`; run `done`
    /// after the fsync that follows (and the checkpoint after it).
    Append {
        batch: WriteBatch,
        last: Option<LogId<u64>>,
        done: Done,
    },
    /// Write an apply's batch, which leaves the state at `applied`. Not
    /// synced and not awaited: the entries it applies are durable in the
    /// log, and a lost tail is applied again from the log after a restart.
    Apply {
        batch: WriteBatch,
        applied: Option<(LogId<u64>, [u8; 32])>,
    },
    /// Write this committed log id (framed) as the restart hint; of several
    /// queued, only the newest is written.
    Committed(Vec<u8>),
}

/// How far the thread has got.
#[derive(Debug, Default)]
struct Progress {
    /// Append and apply jobs handed over so far.
    queued: AtomicU64,
    written: Mutex<Written>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Written {
    /// Append and apply jobs the thread has processed (written or failed).
    jobs: u64,
    /// The first failure; once set, nothing more is written.
    failed: Option<String>,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    fn advance(&self, jobs: u64, failed: Option<String>) {
        let mut w = self.lock();
        w.jobs += jobs;
        if w.failed.is_none() {
            w.failed = failed;
        }
        drop(w);
        self.changed.notify_all();
    }

    /// Blocks until `target` jobs are processed, the writer failed, or
    /// `limit` passed.
    fn wait_for(&self, target: u64, limit: Duration) -> Result<(), StoreError> {
        let give_up = Instant::now() + limit;
        let mut w = self.lock();
        while w.jobs < target && w.failed.is_none() {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Task(format!(
                    "the database writer did not catch up in {} s",
                    limit.as_secs()
                )));
            }
            w = self
                .changed
                .wait_timeout(w, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match &w.failed {
            Some(why) => Err(StoreError::Task(why.clone())),
            None => Ok(()),
        }
    }
}

/// The writer thread of one database, shared by its log store and state
/// machine. Dropping the last handle lets the thread finish what is queued
/// and joins it, so the database can be reopened at once.
pub(crate) struct Writer {
    db: Arc<Db>,
    checkpointer: Option<Arc<dyn Checkpointer>>,
    queue: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Writer {
    pub(crate) fn start(
        db: Arc<Db>,
        checkpointer: Option<Arc<dyn Checkpointer>>,
    ) -> Result<Writer, StoreError> {
        let (queue, jobs) = std::sync::mpsc::channel::<Job>();
        let progress = Arc::new(Progress::default());
        let seen = progress.clone();
        let written = db.clone();
        let marks = checkpointer.clone();
        let thread = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || run(&written, &jobs, &seen, marks.as_deref()))
            .map_err(|e| StoreError::Task(format!("start the database writer: {e}")))?;
        Ok(Writer {
            db,
            checkpointer,
            queue: Some(queue),
            thread: Some(thread),
            progress,
        })
    }

    /// Queues a log append's batch; `done` runs once it is synced (or with
    /// the error that stopped it). Returns as soon as it is queued.
    pub(crate) fn append(
        &self,
        batch: WriteBatch,
        last: Option<LogId<u64>>,
        done: Done,
    ) -> Result<(), StoreError> {
        self.progress.queued.fetch_add(1, Ordering::SeqCst);
        self.send(Job::Append { batch, last, done }).map_err(|job| {
            if let Job::Append { done, .. } = job {
                done(Err(std::io::Error::other("the database writer is gone")));
            }
            self.gone()
        })
    }

    /// Queues an apply's batch. Fails if an earlier write failed.
    pub(crate) fn apply(
        &self,
        batch: WriteBatch,
        applied: Option<(LogId<u64>, [u8; 32])>,
    ) -> Result<(), StoreError> {
        if let Some(why) = self.progress.failed() {
            return Err(StoreError::Task(why));
        }
        self.progress.queued.fetch_add(1, Ordering::SeqCst);
        self.send(Job::Apply { batch, applied })
            .map_err(|_| self.gone())
    }

    /// Records `mark` as durable in the checkpoint (if this database has
    /// one). Blocking: for writes that were synced outside the thread (a
    /// vote, an installed snapshot). An error means it is not recorded,
    /// and the write must not be acknowledged.
    pub(crate) fn checkpoint(&self, mark: &Mark) -> Result<(), StoreError> {
        match &self.checkpointer {
            Some(c) => c
                .advance(mark)
                .map_err(|e| StoreError::Task(format!("advance the HSM checkpoint: {e}"))),
            None => Ok(()),
        }
    }

    /// Queues the committed-index hint (framed).
    pub(crate) fn committed(&self, framed: Vec<u8>) -> Result<(), StoreError> {
        self.send(Job::Committed(framed)).map_err(|_| self.gone())
    }

    /// Blocks until everything queued before the call is written; an error
    /// if the writer failed (or is stuck). Call it from the blocking pool.
    pub(crate) fn caught_up(&self) -> Result<(), StoreError> {
        let target = self.progress.queued.load(Ordering::SeqCst);
        self.progress.wait_for(target, CATCH_UP)
    }

    /// Runs `f` on tokio's blocking pool once everything queued before it
    /// is written ([`Writer::caught_up`]): how reads, and writes that must
    /// not overtake a queued one, reach the database.
    pub(crate) async fn after_writes<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        let writer = self.clone();
        blocking(move || {
            writer.caught_up()?;
            f(&writer.db)
        })
        .await
    }

    fn send(&self, job: Job) -> Result<(), Job> {
        match &self.queue {
            Some(q) => q.send(job).map_err(|unsent| unsent.0),
            None => Err(job),
        }
    }

    /// Marks the writer failed (a job counted as queued never arrives, so
    /// readers must not wait for it) and says so.
    fn gone(&self) -> StoreError {
        let why = "the database writer is gone".to_owned();
        self.progress.advance(0, Some(why.clone()));
        StoreError::Task(why)
    }
}

/// The thread: takes everything queued, writes it in order, lets readers
/// on, then fsyncs once if an append waits and completes the appends.
fn run(
    db: &Db,
    jobs: &std::sync::mpsc::Receiver<Job>,
    progress: &Progress,
    checkpointer: Option<&dyn Checkpointer>,
) {
    // The newest append and apply written (not yet necessarily synced).
    let mut appended: Option<LogId<u64>> = None;
    let mut applied: Option<(LogId<u64>, [u8; 32])> = None;
    // Ends when the last sender (the last handle) is dropped.
    while let Ok(first) = jobs.recv() {
        let mut failed = progress.failed();
        let mut processed = 0u64;
        let mut waiting = Vec::new();
        let mut hint = None;
        for job in std::iter::once(first).chain(jobs.try_iter()) {
            let (batch, what) = match job {
                Job::Append { batch, last, done } => {
                    waiting.push(done);
                    if failed.is_none() && last.is_some() {
                        appended = last;
                    }
                    (batch, "write log entries")
                }
                Job::Apply {
                    batch,
                    applied: now,
                } => {
                    if failed.is_none() && now.is_some() {
                        applied = now;
                    }
                    (batch, "write the applied state")
                }
                Job::Committed(framed) => {
                    hint = Some(framed);
                    continue;
                }
            };
            processed += 1;
            if failed.is_none()
                && let Err(e) = db.write(batch, false)
            {
                tracing::error!("{what}: {e}; the database takes no more writes");
                failed = Some(format!("{what}: {e}"));
            }
        }
        if let (None, Some(framed)) = (&failed, hint) {
            let mut write = WriteBatch::default();
            write.put_cf(db.cf(CF_META), KEY_COMMITTED, framed);
            // Only a hint for faster restarts: losing it is safe.
            if let Err(e) = db.write(write, false) {
                tracing::warn!("save the committed log id: {e}");
            }
        }
        // Readers may go on now: the writes are visible, if not yet synced.
        progress.advance(processed, failed.clone());
        if waiting.is_empty() {
            continue;
        }
        let synced = match failed {
            Some(why) => Err(why),
            None => {
                let r = db
                    .rocks
                    .flush_wal(true)
                    .map_err(|e| format!("fsync the log: {e}"));
                db.stats.synced_writes.fetch_add(1, Ordering::Relaxed);
                // The appends (and every apply written before them) are on
                // disk: the HSM records that before anyone hears of it, so
                // no acknowledged entry is ever missing from the mark.
                let r = r.and_then(|()| match checkpointer {
                    Some(c) => c
                        .advance(&Mark {
                            vote: None,
                            last_log: appended,
                            applied,
                        })
                        .map_err(|e| format!("advance the HSM checkpoint: {e}")),
                    None => Ok(()),
                });
                if let Err(why) = &r {
                    tracing::error!("{why}; the database takes no more writes");
                    progress.advance(0, Some(why.clone()));
                }
                r
            }
        };
        for done in waiting {
            done(synced.clone().map_err(std::io::Error::other));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_wait_for_every_job_queued_before_them() {
        let p = Arc::new(Progress::default());
        p.queued.fetch_add(2, Ordering::SeqCst);
        let target = p.queued.load(Ordering::SeqCst);
        assert!(p.wait_for(target, Duration::from_millis(50)).is_err());
        p.advance(1, None);
        assert!(p.wait_for(target, Duration::from_millis(50)).is_err());
        let late = p.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            late.advance(1, None);
        });
        p.wait_for(target, Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }

    /// The thread's side of a failure: once the writer has failed, an
    /// append queued after it is not written and its completion reports
    /// the error, an apply is refused, and readers get the error instead of
    /// waiting. (A real RocksDB write or fsync failure takes this same path:
    /// the thread records it in `progress`.)
    #[test]
    fn after_a_failure_nothing_more_is_written() {
        use crate::db::CF_LOGS;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(dir.path()).expect("open"));
        let writer = Writer::start(db.clone(), None).expect("start");
        let append = |key: &'static [u8]| {
            let (tx, rx) = std::sync::mpsc::channel();
            let mut batch = WriteBatch::default();
            batch.put_cf(db.cf(CF_LOGS), key, b"entry");
            writer
                .append(batch, None, Box::new(move |r| tx.send(r).expect("send")))
                .expect("queue");
            rx.recv_timeout(Duration::from_secs(10)).expect("completed")
        };
        append(b"before").expect("synced");
        writer.caught_up().expect("caught up");

        writer
            .progress
            .advance(0, Some("write log entries: injected".into()));
        let e = append(b"after").expect_err("an append after the failure");
        assert!(e.to_string().contains("injected"), "{e}");
        assert!(writer.apply(WriteBatch::default(), None).is_err());
        assert!(writer.caught_up().is_err());

        drop(writer);
        let get = |key: &[u8]| db.rocks.get_cf(db.cf(CF_LOGS), key).expect("read");
        assert!(get(b"before").is_some());
        assert!(get(b"after").is_none(), "written after the failure");
    }

    #[test]
    fn a_failure_is_kept_and_ends_every_wait() {
        let p = Progress::default();
        p.queued.fetch_add(5, Ordering::SeqCst);
        p.advance(1, Some("write log entries: disk full".into()));
        // A later success does not clear it.
        p.advance(1, None);
        let e = p.wait_for(5, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(p.failed().as_deref(), Some("write log entries: disk full"));
    }
}
