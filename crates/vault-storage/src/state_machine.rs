//! The vault state machine on RocksDB, and its snapshots.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rocksdb::WriteBatch;
use vault_core::{VaultState, log_position};
use vault_types::{Batch, Reply, UserId, UserStatus};

use crate::db::{
    CF_META, CF_STATE, Db, KEY_LAST_APPLIED, KEY_MEMBERSHIP, StoreError, blocking, decode_framed,
    encode_framed, frame, io_err, unframe,
};
use crate::snapshot;
use crate::writer::Writer;
use crate::{Entry, TypeConfig};
use vault_raft::checkpoint::{Mark, chain_base};

/// The in-memory copy of what the state column family holds.
#[derive(Debug)]
struct Applied {
    state: VaultState,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

/// The state machine of one node. The state lives in memory and in RocksDB;
/// every apply hands what changed, with the applied log id, as one batch to
/// the writer thread, not synced: the entries it came from are durable in
/// the log, and a crash that loses the tail of the applies makes openraft
/// apply them again.
#[derive(Debug)]
pub struct StateMachineStore {
    db: Arc<Db>,
    writer: Arc<Writer>,
    snapshot_dir: PathBuf,
    dedup_capacity: usize,
    applied: Arc<RwLock<Applied>>,
    /// Serialises writes of the snapshot file, so that an older snapshot
    /// never replaces a newer one.
    snapshot_file: Arc<Mutex<()>>,
    /// The state commitment this node's HSM checkpoint recorded at a log
    /// id it had applied ([`StateMachineStore::verify_at`]): checked when
    /// the state gets there again.
    verify: Arc<Mutex<Option<Applied32>>>,
}

/// A log id with the state commitment after it.
type Applied32 = (LogId<u64>, [u8; 32]);

/// A read-only view of a state machine that outlives openraft's ownership of
/// it: status reads and digests for the node's API and for tests.
#[derive(Debug, Clone)]
pub struct StateReader {
    applied: Arc<RwLock<Applied>>,
    verify: Arc<Mutex<Option<Applied32>>>,
}

/// What the HSM checkpoint records of an applied state: the vault state's
/// commitment (LtHash16) and the membership stored with it, hashed
/// together. openraft takes the voters from that membership at start, so a
/// disk edited to name other voters must not match either.
pub fn applied_commitment(
    state: &VaultState,
    membership: &StoredMembership<u64, BasicNode>,
) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"bkv-applied-v1");
    h.update(state.digest());
    h.update(encode_framed(membership));
    h.finalize().into()
}

impl StateReader {
    fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self.applied.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.read(|a| a.last_applied)
    }

    /// The state digest and the index it was taken at, read together.
    pub fn digest(&self) -> (Option<u64>, [u8; 32]) {
        self.read(|a| (a.last_applied.map(|l| l.index), a.state.digest()))
    }

    /// What the HSM checkpoint records of the applied state
    /// ([`applied_commitment`]).
    pub fn commitment(&self) -> [u8; 32] {
        self.read(|a| applied_commitment(&a.state, &a.membership))
    }

    /// A check of the state against the checkpoint that has not been
    /// reached yet ([`StateMachineStore::verify_at`]).
    pub fn pending_verify(&self) -> Option<LogId<u64>> {
        self.verify
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(at, _)| at)
    }

    /// A user's status.
    pub fn status(&self, user: &UserId) -> UserStatus {
        self.read(|a| a.state.status(user))
    }

    /// Runs `f` on the state.
    pub fn with_state<T>(&self, f: impl FnOnce(&VaultState) -> T) -> T {
        self.read(|a| f(&a.state))
    }
}

fn load_state(db: &Db, dedup_capacity: usize) -> Result<VaultState, StoreError> {
    let mut items = Vec::new();
    for item in db
        .rocks
        .iterator_cf(db.cf(CF_STATE), rocksdb::IteratorMode::Start)
    {
        let (key, value) = item.map_err(StoreError::rocks("read state"))?;
        let payload = unframe("state value", &key, &value)?;
        items.push((key.to_vec(), payload.to_vec()));
    }
    VaultState::from_items(dedup_capacity, items).map_err(|e| StoreError::corrupt("state", b"", e))
}

impl StateMachineStore {
    pub(crate) fn open(
        db: Arc<Db>,
        writer: Arc<Writer>,
        snapshot_dir: PathBuf,
        dedup_capacity: usize,
    ) -> Result<Self, StoreError> {
        let last_applied = db.get(CF_META, "last applied log id", KEY_LAST_APPLIED)?;
        let membership = db
            .get(CF_META, "membership", KEY_MEMBERSHIP)?
            .unwrap_or_default();
        let state = load_state(&db, dedup_capacity)?;
        Ok(StateMachineStore {
            db,
            writer,
            snapshot_dir,
            dedup_capacity,
            applied: Arc::new(RwLock::new(Applied {
                state,
                last_applied,
                membership,
            })),
            snapshot_file: Arc::new(Mutex::new(())),
            verify: Arc::default(),
        })
    }

    /// At start, before Raft runs: a snapshot file on disk is as
    /// untrusted as the rest of the disk, and a leader sends it to
    /// followers that are far behind (they install it and record it in
    /// their own HSM checkpoints). So it is replaced by one built from the
    /// state, which the HSM checkpoint vouches for (or re-applying the log
    /// checks). Returns whether there was one.
    pub async fn rebuild_snapshot_file(&mut self) -> Result<bool, StoreError> {
        let path = snapshot::current_path(&self.snapshot_dir);
        if !path.exists() {
            return Ok(false);
        }
        std::fs::remove_file(&path).map_err(|e| StoreError::Snapshot {
            op: "remove the snapshot file",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut builder = self.get_snapshot_builder().await;
        builder
            .build_snapshot()
            .await
            .map_err(|e| StoreError::Task(format!("rebuild the snapshot: {e}")))?;
        Ok(true)
    }

    /// Checks the state against `commitment` once it has applied `at`
    /// (again): a node that re-applies its log, or catches up entry by
    /// entry, past the point its HSM checkpoint recorded must reach the
    /// state it recorded there, or its disk (the state it started from, or
    /// its log) is not what it applied, and the apply fails: openraft then
    /// stops rather than serve or replicate that state. A snapshot that
    /// ends at `at`'s index is checked against it before it is installed;
    /// one that jumps past `at` (from the leader) ends the check unchecked.
    pub fn verify_at(&self, at: LogId<u64>, commitment: [u8; 32]) {
        *self.verify.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, commitment));
    }

    /// The database's write counters (shared with the log store).
    pub fn stats(&self) -> Arc<crate::db::StorageStats> {
        self.db.stats.clone()
    }

    /// A read-only view that stays valid after openraft takes this store.
    pub fn reader(&self) -> StateReader {
        StateReader {
            applied: self.applied.clone(),
            verify: self.verify.clone(),
        }
    }

    fn write_guard(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Builds snapshots from one consistent RocksDB view.
#[derive(Debug)]
pub struct SnapshotBuilder {
    writer: Arc<Writer>,
    snapshot_dir: PathBuf,
    snapshot_file: Arc<Mutex<()>>,
}

/// Writes `bytes` as the current snapshot unless the current one is newer.
fn save_if_newer(
    dir: &std::path::Path,
    lock: &Mutex<()>,
    meta: &SnapshotMeta<u64, BasicNode>,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let _one_writer = lock.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(existing) = snapshot::read_current(dir)?
        && let Ok(existing) = snapshot::decode(&existing)
        && existing.meta.last_log_id > meta.last_log_id
    {
        return Ok(());
    }
    snapshot::write_current(dir, bytes)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (dir, lock) = (self.snapshot_dir.clone(), self.snapshot_file.clone());
        // Every apply queued before this build is in the view (held
        // applies go to disk first).
        let w = self.writer.clone();
        blocking(move || w.flush_applies())
            .await
            .map_err(io_err(|e| StorageIOError::write_snapshot(None, e)))?;
        self.writer
            .after_writes(move |db| {
                let started = std::time::Instant::now();
                // One RocksDB snapshot: the state and the applied id it claims
                // are read at the same sequence number.
                let view = db.rocks.snapshot();
                let read_meta = |key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
                    view.get_cf(db.cf(CF_META), key)
                        .map_err(StoreError::rocks("read snapshot meta"))
                };
                let last_log_id: Option<LogId<u64>> = match read_meta(KEY_LAST_APPLIED)? {
                    Some(raw) => Some(decode_framed(
                        "last applied log id",
                        KEY_LAST_APPLIED,
                        &raw,
                    )?),
                    None => None,
                };
                let last_membership: StoredMembership<u64, BasicNode> =
                    match read_meta(KEY_MEMBERSHIP)? {
                        Some(raw) => decode_framed("membership", KEY_MEMBERSHIP, &raw)?,
                        None => StoredMembership::default(),
                    };
                let mut items = Vec::new();
                for item in view.iterator_cf(db.cf(CF_STATE), rocksdb::IteratorMode::Start) {
                    let (key, value) =
                        item.map_err(StoreError::rocks("read state for snapshot"))?;
                    // Check each value as it goes out, so corruption is caught
                    // here rather than on the follower.
                    unframe("state value", &key, &value)?;
                    items.push((key.to_vec(), value.to_vec()));
                }
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                let meta = SnapshotMeta {
                    snapshot_id: match last_log_id {
                        Some(l) => format!("{}-{}-{nanos}", l.leader_id.term, l.index),
                        None => format!("empty-{nanos}"),
                    },
                    last_log_id,
                    last_membership,
                };
                let count = items.len();
                let bytes = snapshot::encode(meta.clone(), items);
                save_if_newer(&dir, &lock, &meta, &bytes)?;
                tracing::info!(
                    id = %meta.snapshot_id,
                    items = count,
                    bytes = bytes.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot built"
                );
                Ok(Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(bytes)),
                })
            })
            .await
            .map_err(io_err(|e| StorageIOError::write_snapshot(None, e)))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let a = self.applied.read().unwrap_or_else(|p| p.into_inner());
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Reply>>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let mut replies = Vec::new();
        let applied;
        {
            let mut guard = self.write_guard();
            let a = &mut *guard;
            let mut verify = self.verify.lock().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                let log_id = entry.log_id;
                a.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => replies.push(vec![Reply::Raft]),
                    EntryPayload::Normal(Batch(proposals)) => {
                        use std::sync::atomic::Ordering::Relaxed;
                        self.db.stats.batches_applied.fetch_add(1, Relaxed);
                        let n = proposals.len() as u64;
                        self.db.stats.proposals_applied.fetch_add(n, Relaxed);
                        let mut entry_replies = Vec::with_capacity(proposals.len());
                        for (place, proposal) in proposals.iter().enumerate() {
                            let position = log_position(entry.log_id.index, place);
                            let applied = a.state.apply(position, proposal);
                            // In order: a later proposal's write to a key
                            // overrides an earlier one's in the batch.
                            for (key, value) in applied.changed {
                                let k = key.encode();
                                match value {
                                    Some(v) => batch.put_cf(self.db.cf(CF_STATE), k, frame(v)),
                                    None => batch.delete_cf(self.db.cf(CF_STATE), k),
                                }
                            }
                            entry_replies.push(Reply::Vault(applied.reply));
                        }
                        replies.push(entry_replies);
                    }
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m);
                        replies.push(vec![Reply::Raft]);
                    }
                }
                if let Some((at, commitment)) = *verify
                    && log_id.index >= at.index
                {
                    *verify = None;
                    if log_id != at || applied_commitment(&a.state, &a.membership) != commitment {
                        tracing::error!(
                            at = %format!("{}-{}", at.leader_id.term, at.index),
                            "FORKED: the state after re-applying this node's log is not the state its HSM checkpoint recorded there; the disk was edited. Stopping (docs/OPERATIONS.md, \"A node behind its checkpoint\")"
                        );
                        return Err(StorageError::from(StorageIOError::write_state_machine(
                            &std::io::Error::other(
                                "the state does not match the HSM checkpoint's commitment",
                            ),
                        )));
                    }
                    tracing::info!("the re-applied state matches the HSM checkpoint's commitment");
                }
            }
            drop(verify);
            let Some(last) = a.last_applied else {
                return Ok(replies);
            };
            applied = Some((last, applied_commitment(&a.state, &a.membership)));
            batch.put_cf(self.db.cf(CF_META), KEY_LAST_APPLIED, encode_framed(&last));
            batch.put_cf(
                self.db.cf(CF_META),
                KEY_MEMBERSHIP,
                encode_framed(&a.membership),
            );
        }
        // The state, last_applied and membership land together or not at all,
        // written by the database's writer thread; nobody waits for it (the
        // answers come from memory). No fsync of its own: the entries
        // applied are committed, so durable in the log; after a crash the
        // lost tail of applies is applied again from the log. The writer
        // keeps order and stops at its first failure, and the write-ahead
        // log is ordered, so this write is on disk before any later synced
        // write (the next log fsync, a purge of the log, which also waits
        // for the writer, a snapshot install): the log is never purged past
        // an apply that could be lost.
        self.writer
            .apply(batch, applied)
            .map_err(io_err(StorageIOError::write_state_machine))?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            writer: self.writer.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            snapshot_file: self.snapshot_file.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let (dir, lock, cap) = (
            self.snapshot_dir.clone(),
            self.snapshot_file.clone(),
            self.dedup_capacity,
        );
        let meta = meta.clone();
        // No held apply may land on top of the installed state.
        let w = self.writer.clone();
        blocking(move || w.flush_applies())
            .await
            .map_err(io_err(|e| StorageIOError::write_snapshot(None, e)))?;
        // The commitment this node's HSM checkpoint recorded at this very
        // index, if it has not reached it again: a snapshot there must be
        // that state, checked before it replaces anything (issue 25). One
        // that ends elsewhere has nothing of this node's to be checked
        // against (Raft trusts its leader).
        let expected = self
            .verify
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .filter(|(at, _)| meta.last_log_id.is_some_and(|l| l.index == at.index));
        let marks = self.writer.clone();
        let (state, meta) = self
            .writer
            .after_writes(move |db| {
                let started = std::time::Instant::now();
                let decoded = snapshot::decode(&bytes)?;
                if decoded.meta.last_log_id != meta.last_log_id
                    || decoded.meta.last_membership != meta.last_membership
                {
                    return Err(StoreError::Snapshot {
                        op: "install snapshot",
                        path: meta.snapshot_id.clone(),
                        reason: "its contents claim another log id or membership than its metadata"
                            .into(),
                    });
                }
                let mut unframed = Vec::with_capacity(decoded.items.len());
                for (k, v) in &decoded.items {
                    unframed.push((k.clone(), unframe("snapshot state value", k, v)?.to_vec()));
                }
                let state = VaultState::from_items(cap, unframed)
                    .map_err(|e| StoreError::corrupt("snapshot state", b"", e))?;
                // Replace the whole state, with its applied id and membership, in
                // one atomic batch.
                let mut batch = WriteBatch::default();
                batch.delete_range_cf(db.cf(CF_STATE), [0x00u8].as_slice(), [0xffu8].as_slice());
                for (k, v) in decoded.items {
                    batch.put_cf(db.cf(CF_STATE), k, v);
                }
                match &meta.last_log_id {
                    Some(last) => {
                        batch.put_cf(db.cf(CF_META), KEY_LAST_APPLIED, encode_framed(last))
                    }
                    None => batch.delete_cf(db.cf(CF_META), KEY_LAST_APPLIED),
                }
                batch.put_cf(
                    db.cf(CF_META),
                    KEY_MEMBERSHIP,
                    encode_framed(&meta.last_membership),
                );
                let installed = applied_commitment(&state, &meta.last_membership);
                if let Some((at, commitment)) = expected
                    && (meta.last_log_id != Some(at) || installed != commitment)
                {
                    return Err(StoreError::Snapshot {
                        op: "install snapshot",
                        path: meta.snapshot_id.clone(),
                        reason:
                            "it is not the state this node's HSM checkpoint recorded at its log id"
                                .into(),
                    });
                }
                // The log's running hash restarts at the snapshot (it is
                // this node's own; the entries before are not kept).
                let base = meta
                    .last_log_id
                    .map(|at| (Some(at), chain_base(at, &installed)));
                let tail = match base {
                    Some(b) => {
                        crate::chain::put_base(db, &mut batch, &b);
                        Some(crate::chain::walk_from(db, b, None)?)
                    }
                    None => None,
                };
                // The HSM checkpoint records the installed state before the
                // disk holds it: the disk never claims applied state the
                // checkpoint has not seen.
                if let (Some(at), Some((last, hash))) = (meta.last_log_id, tail) {
                    marks.checkpoint(&Mark {
                        vote: None,
                        last_log: last,
                        applied: Some((at, installed)),
                        log_hash: Some(hash),
                    })?;
                }
                db.write(batch, true)?;
                if let Some(t) = tail {
                    *marks.tail.lock().unwrap_or_else(|p| p.into_inner()) = t;
                }
                save_if_newer(&dir, &lock, &meta, &bytes)?;
                tracing::info!(
                    id = %meta.snapshot_id,
                    bytes = bytes.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot installed"
                );
                Ok((state, meta))
            })
            .await
            .map_err(io_err(|e| StorageIOError::write_snapshot(None, e)))?;
        {
            let mut verify = self.verify.lock().unwrap_or_else(|p| p.into_inner());
            if verify.is_some_and(|(at, _)| meta.last_log_id.is_some_and(|l| l.index >= at.index)) {
                *verify = None;
            }
        }
        let mut a = self.write_guard();
        a.state = state;
        a.last_applied = meta.last_log_id;
        a.membership = meta.last_membership;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let dir = self.snapshot_dir.clone();
        blocking(move || {
            let Some(bytes) = snapshot::read_current(&dir)? else {
                return Ok(None);
            };
            let meta = snapshot::decode(&bytes)?.meta;
            Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            }))
        })
        .await
        .map_err(io_err(|e| StorageIOError::read_snapshot(None, e)))
    }
}
