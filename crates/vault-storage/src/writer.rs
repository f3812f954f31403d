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
//! - [`Writer::caught_up`] returns once every append queued before the call
//!   is written (not necessarily synced): readers call it first, so they
//!   see every append that has returned.
//! - **The disk never holds applied state the HSM checkpoint has not
//!   recorded.** An apply's batch is held until the next checkpoint write
//!   (the one after the next log fsync, or one of its own after [`HOLD`]),
//!   and written after it. So at start a disk that claims applied state
//!   beyond its checkpoint was edited, and is not believed (vault-node's
//!   `checkpoint`); one that applied less re-applies from its log and is
//!   checked against the checkpoint's state commitment when it gets there.
//!   [`Writer::flush_applies`] puts held applies on disk at once.

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
        last: Option<(LogId<u64>, [u8; 32])>,
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
    /// Put every apply queued before it on disk (checkpoint first), then
    /// run the callback: for writes that must not pass a held apply (a
    /// purge of the log, a snapshot install).
    Flush(Done),
}

/// How long applies wait for a log fsync to ride on before they get a
/// checkpoint write of their own (an idle fleet's last applies).
const HOLD: Duration = Duration::from_millis(100);

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
    /// The running hash of the log at its last entry
    /// ([`crate::chain`]), kept by the log store's appends and
    /// truncations and by snapshot installs.
    pub(crate) tail: Mutex<crate::chain::ChainPoint>,
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
        // A log that does not read (corruption) is reported where it is
        // read; its running hash is then unknown, and the start-up check
        // against the HSM checkpoint does not pass.
        let tail = Mutex::new(crate::chain::walk(&db, None).unwrap_or_else(|e| {
            tracing::warn!("recompute the log's running hash: {e}");
            (None, [0; 32])
        }));
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
            tail,
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
        last: Option<(LogId<u64>, [u8; 32])>,
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

    /// Blocks until every apply queued before the call is on disk (after
    /// the checkpoint write that covers it). Call it from the blocking pool.
    pub(crate) fn flush_applies(&self) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let done: Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.send(Job::Flush(done)).map_err(|_| self.gone())?;
        match rx.recv_timeout(CATCH_UP) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Task(e.to_string())),
            Err(_) => Err(StoreError::Task(
                "the database writer did not put the applies on disk in time".into(),
            )),
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

/// The thread: takes everything queued, writes appends in order, lets
/// readers on, then fsyncs once if an append waits, advances the HSM
/// checkpoint over the appends and every held apply, writes the held
/// applies, and completes the appends.
fn run(
    db: &Db,
    jobs: &std::sync::mpsc::Receiver<Job>,
    progress: &Progress,
    checkpointer: Option<&dyn Checkpointer>,
) {
    use std::sync::mpsc::RecvTimeoutError;

    // Applies not yet on disk, and the state they leave.
    let mut held: Vec<WriteBatch> = Vec::new();
    let mut held_mark: Option<(LogId<u64>, [u8; 32])> = None;
    let mut held_since = Instant::now();
    loop {
        let first = if held.is_empty() {
            match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            }
        } else {
            match jobs.recv_timeout(HOLD) {
                Ok(job) => Some(job),
                // Nothing to ride on: the held applies get a checkpoint
                // write of their own (and on shutdown, a last one).
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    // A failure is logged and recorded by `release`.
                    let _ = release(db, progress, checkpointer, None, &mut held, held_mark);
                    break;
                }
            }
        };
        let timed_out = first.is_none();
        // The newest append of this group, with the log's running hash
        // there (only this group's: an older one could carry a hash from
        // before a snapshot install restarted the chain).
        let mut appended: Option<(LogId<u64>, [u8; 32])> = None;
        let mut failed = progress.failed();
        let mut processed = 0u64;
        let mut waiting = Vec::new();
        let mut appends = 0usize;
        let mut hint = None;
        for job in first.into_iter().chain(jobs.try_iter()) {
            match job {
                Job::Append { batch, last, done } => {
                    waiting.push(done);
                    appends += 1;
                    processed += 1;
                    if failed.is_some() {
                        continue;
                    }
                    if last.is_some() {
                        appended = last;
                    }
                    if let Err(e) = db.write(batch, false) {
                        tracing::error!(
                            "write log entries: {e}; the database takes no more writes"
                        );
                        failed = Some(format!("write log entries: {e}"));
                    }
                }
                Job::Apply {
                    batch,
                    applied: now,
                } => {
                    processed += 1;
                    if failed.is_none() {
                        if held.is_empty() {
                            held_since = Instant::now();
                        }
                        held.push(batch);
                        if now.is_some() {
                            held_mark = now;
                        }
                    }
                }
                Job::Committed(framed) => hint = Some(framed),
                Job::Flush(done) => waiting.push(done),
            }
        }
        if let (None, Some(framed)) = (&failed, hint) {
            let mut write = WriteBatch::default();
            write.put_cf(db.cf(CF_META), KEY_COMMITTED, framed);
            // Only a hint for faster restarts: losing it is safe (and at
            // start the checkpoint caps it).
            if let Err(e) = db.write(write, false) {
                tracing::warn!("save the committed log id: {e}");
            }
        }
        // Readers may go on now: the appends are visible, if not synced.
        progress.advance(processed, failed.clone());
        // Applies alone wait (up to HOLD) for an fsync to ride on.
        let held_long = !held.is_empty() && (timed_out || held_since.elapsed() >= HOLD);
        if waiting.is_empty() && !held_long {
            continue;
        }
        let result = match failed {
            Some(why) => Err(why),
            None => {
                let synced = if appends > 0 {
                    db.stats.synced_writes.fetch_add(1, Ordering::Relaxed);
                    db.rocks
                        .flush_wal(true)
                        .map_err(|e| format!("fsync the log: {e}"))
                } else {
                    Ok(())
                };
                match synced {
                    Ok(()) => release(db, progress, checkpointer, appended, &mut held, held_mark),
                    Err(why) => {
                        tracing::error!("{why}; the database takes no more writes");
                        progress.advance(0, Some(why.clone()));
                        Err(why)
                    }
                }
            }
        };
        for done in waiting {
            done(result.clone().map_err(std::io::Error::other));
        }
    }
}

/// With the appends synced: records them (`appended`) and the held applies
/// (`held_mark`) in the HSM checkpoint, so no acknowledged entry and no
/// applied state on disk is ever missing from it, then writes the held
/// applies (not synced: they are re-applied from the log if lost).
fn release(
    db: &Db,
    progress: &Progress,
    checkpointer: Option<&dyn Checkpointer>,
    appended: Option<(LogId<u64>, [u8; 32])>,
    held: &mut Vec<WriteBatch>,
    held_mark: Option<(LogId<u64>, [u8; 32])>,
) -> Result<(), String> {
    let r = match checkpointer {
        Some(c) => c
            .advance(&Mark {
                vote: None,
                last_log: appended.map(|(l, _)| l),
                applied: held_mark,
                log_hash: appended.map(|(_, h)| h),
            })
            .map_err(|e| format!("advance the HSM checkpoint: {e}")),
        None => Ok(()),
    };
    let r = r.and_then(|()| {
        for batch in held.drain(..) {
            db.write(batch, false)
                .map_err(|e| format!("write the applied state: {e}"))?;
        }
        Ok(())
    });
    if let Err(why) = &r {
        held.clear();
        tracing::error!("{why}; the database takes no more writes");
        progress.advance(0, Some(why.clone()));
    }
    r
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
