//! Snapshots, corruption, format markers and restarts of the RocksDB store.

mod common;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder};
use vault_core::VaultState;

use common::{entry, workload};

fn raw_db(dir: &std::path::Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    rocksdb::DB::open_cf(&opts, dir.join("db"), ["logs", "meta", "state"]).expect("open raw db")
}

async fn build_snapshot(
    sm: &mut vault_storage::StateMachineStore,
) -> openraft::Snapshot<vault_storage::TypeConfig> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build")
}

fn reference_digest(upto: u64) -> [u8; 32] {
    let mut state = VaultState::default();
    for i in 1..=upto {
        state.apply(vault_core::log_position(i, 0), &workload(i));
    }
    state.digest()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_built_while_applies_continue_restores_exactly_its_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = vault_storage::open(dir.path()).expect("open");
    for batch in 0..20u64 {
        sm.apply((batch * 10 + 1..=batch * 10 + 10).map(|i| entry(i, workload(i))))
            .await
            .expect("apply");
    }
    let mut builder = sm.get_snapshot_builder().await;
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    for batch in 20..60u64 {
        sm.apply((batch * 10 + 1..=batch * 10 + 10).map(|i| entry(i, workload(i))))
            .await
            .expect("apply");
    }
    let snap = build.await.expect("join").expect("build");
    let index = snap.meta.last_log_id.expect("non-empty snapshot").index;
    assert!((200..=600).contains(&index), "snapshot at {index}");
    assert_eq!(sm.reader().digest(), (Some(600), reference_digest(600)));

    let other = tempfile::tempdir().expect("tempdir");
    let (l2, mut sm2) = vault_storage::open(other.path()).expect("open");
    let meta = snap.meta.clone();
    sm2.install_snapshot(&meta, snap.snapshot)
        .await
        .expect("install");
    assert_eq!(
        sm2.reader().digest(),
        (Some(index), reference_digest(index))
    );
    let current = sm2
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("present");
    assert_eq!(current.meta, meta);
    // Both halves share the database; close it before reopening.
    drop((l2, sm2));

    // Reopened from disk: the installed state is still there.
    let (_l3, sm3) = vault_storage::open(other.path()).expect("reopen");
    assert_eq!(
        sm3.reader().digest(),
        (Some(index), reference_digest(index))
    );
}

/// A log entry carrying several proposals applies them in order, one reply
/// each, to the state a reference machine reaches applying them at the same
/// log positions; and the state a restart loads from disk is that state.
#[tokio::test]
async fn a_batch_entry_applies_its_proposals_in_order() {
    use openraft::EntryPayload;
    use vault_types::Batch;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut reference = VaultState::default();
    let mut entries = Vec::new();
    // Entries 1..=10, each with 3 consecutive proposals of the workload.
    for index in 1..=10u64 {
        let proposals: Vec<_> = (0..3).map(|p| workload((index - 1) * 3 + p + 1)).collect();
        for (place, p) in proposals.iter().enumerate() {
            reference.apply(vault_core::log_position(index, place), p);
        }
        let mut e = entry(index, workload(1));
        e.payload = EntryPayload::Normal(Batch(proposals));
        entries.push(e);
    }
    {
        let (_log, mut sm) = vault_storage::open(dir.path()).expect("open");
        let replies = sm.apply(entries).await.expect("apply");
        assert_eq!(replies.len(), 10);
        assert!(replies.iter().all(|r| r.len() == 3), "{replies:?}");
        assert_eq!(sm.reader().digest(), (Some(10), reference.digest()));
    }
    let (_log, sm) = vault_storage::open(dir.path()).expect("reopen");
    assert_eq!(sm.reader().digest(), (Some(10), reference.digest()));
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = vault_storage::open(dir.path()).expect("open");
    sm.apply((1..=30).map(|i| entry(i, workload(i))))
        .await
        .expect("apply");
    let snap = build_snapshot(&mut sm).await;
    let mut bytes = snap.snapshot.into_inner();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    let other = tempfile::tempdir().expect("tempdir");
    let (_l2, mut sm2) = vault_storage::open(other.path()).expect("open");
    let before = sm2.reader().digest();
    let err = sm2
        .install_snapshot(&snap.meta, Box::new(std::io::Cursor::new(bytes)))
        .await
        .expect_err("corrupt snapshot installed");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert_eq!(sm2.reader().digest(), before);
}

/// Issue 25: a snapshot that ends at the log id this node's HSM checkpoint
/// recorded a commitment for must be that state, checked before anything
/// is replaced. Before, the install ended the pending check unchecked: a
/// leader (a member identity) could hand a node behind its checkpoint any
/// state at that index.
#[tokio::test]
async fn a_snapshot_at_the_checkpoints_index_must_be_the_checkpoints_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = vault_storage::open(dir.path()).expect("open");
    sm.apply((1..=30).map(|i| entry(i, workload(i))))
        .await
        .expect("apply");
    let snap = build_snapshot(&mut sm).await;
    let at = snap.meta.last_log_id.expect("last log id");
    let right = sm.reader().commitment();
    let meta = snap.meta.clone();
    let bytes = snap.snapshot.into_inner();
    let install = |commitment: [u8; 32]| {
        let (meta, bytes) = (meta.clone(), bytes.clone());
        async move {
            let other = tempfile::tempdir().expect("tempdir");
            let (_l, mut sm2) = vault_storage::open(other.path()).expect("open");
            sm2.verify_at(at, commitment);
            let before = sm2.reader().digest();
            let r = sm2
                .install_snapshot(&meta, Box::new(std::io::Cursor::new(bytes)))
                .await;
            (r, before, sm2.reader().digest())
        }
    };
    let (r, before, after) = install([9; 32]).await;
    let err = r.expect_err("a snapshot of another state installed at the checkpoint's index");
    assert!(err.to_string().contains("HSM checkpoint recorded"), "{err}");
    assert_eq!(after, before, "something was replaced");
    let (r, _, after) = install(right).await;
    r.expect("the checkpoint's own state");
    assert_eq!(after, sm.reader().digest());
}

/// Applies are written by the database's writer thread and nobody waits
/// for them; a snapshot built right after one must still contain it (the
/// builder waits for the writer), or openraft would purge log entries the
/// snapshot does not cover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_built_right_after_an_apply_contains_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = vault_storage::open(dir.path()).expect("open");
    for i in 1..=40 {
        sm.apply([entry(i, workload(i))]).await.expect("apply");
        let snap = build_snapshot(&mut sm).await;
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(i));
    }
}

#[tokio::test]
async fn state_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = {
        let (mut log, mut sm) = vault_storage::open(dir.path()).expect("open");
        log.blocking_append((1..=50).map(|i| entry(i, workload(i))))
            .await
            .expect("append");
        sm.apply((1..=50).map(|i| entry(i, workload(i))))
            .await
            .expect("apply");
        // Handed to the background writer, written before the store closes.
        log.save_committed(Some(common::log_id(1, 50)))
            .await
            .expect("save committed");
        // Read before the restart, to compare with what is read after it.
        log.try_get_log_entries(1..=50).await.expect("read")
    };
    let (mut log, mut sm) = vault_storage::open(dir.path()).expect("reopen");
    assert_eq!(
        log.read_committed().await.expect("read committed"),
        Some(common::log_id(1, 50))
    );
    // From disk now: the same entries.
    assert_eq!(
        log.try_get_log_entries(1..=50).await.expect("read"),
        written
    );
    assert_eq!(sm.reader().digest(), (Some(50), reference_digest(50)));
    assert_eq!(
        sm.applied_state()
            .await
            .expect("applied")
            .0
            .map(|l| l.index),
        Some(50)
    );
    let entries = log.try_get_log_entries(1..=50).await.expect("read");
    assert_eq!(entries.len(), 50);
    assert_eq!(
        log.get_log_state()
            .await
            .expect("state")
            .last_log_id
            .map(|l| l.index),
        Some(50)
    );
}

#[tokio::test]
async fn a_flipped_byte_in_a_log_entry_is_reported_as_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _sm) = vault_storage::open(dir.path()).expect("open");
        log.blocking_append((1..=5).map(|i| entry(i, workload(i))))
            .await
            .expect("append");
    }
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle("logs").expect("cf");
        let key = 3u64.to_be_bytes();
        let mut value = db.get_cf(cf, key).expect("get").expect("entry 3");
        let mid = value.len() / 2;
        value[mid] ^= 0x10;
        db.put_cf(cf, key, value).expect("put");
    }
    let (mut log, _sm) = vault_storage::open(dir.path()).expect("reopen");
    let err = log
        .try_get_log_entries(1..=5)
        .await
        .expect_err("corrupt entry read");
    assert!(err.to_string().contains("corrupt log entry"), "{err}");
    // Entries before it still read.
    assert_eq!(log.try_get_log_entries(1..3).await.expect("read").len(), 2);
}

#[tokio::test]
async fn a_flipped_byte_in_a_state_value_is_reported_as_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (_log, mut sm) = vault_storage::open(dir.path()).expect("open");
        sm.apply((1..=10).map(|i| entry(i, workload(i))))
            .await
            .expect("apply");
    }
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle("state").expect("cf");
        let (key, mut value) = db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .next()
            .expect("a state value")
            .expect("read");
        let last = value.len() - 5;
        value[last] ^= 0x01;
        db.put_cf(cf, key, value).expect("put");
    }
    let err = vault_storage::open(dir.path()).expect_err("corrupt state opened");
    assert!(err.to_string().contains("corrupt state value"), "{err}");
}

#[test]
fn an_unknown_format_marker_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(vault_storage::open(dir.path()).expect("create"));
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle("meta").expect("cf");
        db.put_cf(cf, b"format", b"backup-key-vault storage v99")
            .expect("put");
    }
    let err = vault_storage::open(dir.path()).expect_err("unknown format opened");
    assert!(err.to_string().contains("storage v99"), "{err}");
    assert!(err.to_string().contains("this build reads"), "{err}");
}

/// Issue 25's review: entries at or below the log's running-hash base are
/// not covered by the hash the HSM checkpoint records. A disk editor who
/// puts forged ones back there and removes the purge marker would have the
/// node serve them to followers. At start the node drops them
/// (`drop_through`), and the hash over what stays is unchanged.
#[tokio::test]
async fn entries_below_the_hash_base_are_dropped_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let honest = {
        let (mut log, _sm) = vault_storage::open(dir.path()).expect("open");
        log.blocking_append((1..=10).map(|i| entry(i, workload(i))))
            .await
            .expect("append");
        log.purge(common::log_id(1, 5)).await.expect("purge");
        assert_eq!(
            log.chain_base().await.expect("base"),
            Some(common::log_id(1, 5))
        );
        log.recomputed_hash().await.expect("hash")
    };
    {
        // The edit: entries 2..=5 back, with other contents, and no purge
        // marker.
        let db = raw_db(dir.path());
        let logs = db.cf_handle("logs").expect("cf");
        let (_, sm_bytes) = {
            let key = 7u64.to_be_bytes();
            (key, db.get_cf(logs, key).expect("get").expect("entry 7"))
        };
        for i in 2..=5u64 {
            db.put_cf(logs, i.to_be_bytes(), &sm_bytes).expect("put");
        }
        let meta = db.cf_handle("meta").expect("cf");
        db.delete_cf(meta, b"last_purged").expect("delete");
    }
    let (mut log, _sm) = vault_storage::open(dir.path()).expect("reopen");
    // The hash from the base does not see the planted entries...
    assert_eq!(log.recomputed_hash().await.expect("hash"), honest);
    let base = log.chain_base().await.expect("base").expect("a base");
    let purged = log.last_purged().await.expect("purged");
    // ...so start-up drops everything at or below it.
    let dropped = log
        .drop_through(base.max(purged.unwrap_or(base)))
        .await
        .expect("drop");
    assert!(dropped >= 1, "nothing dropped");
    assert!(
        log.try_get_log_entries(0..=5)
            .await
            .expect("read")
            .is_empty(),
        "entries below the hash base are still served"
    );
    assert_eq!(
        log.get_log_state().await.expect("state").last_purged_log_id,
        Some(base)
    );
    assert_eq!(log.recomputed_hash().await.expect("hash"), honest);
    assert_eq!(
        log.try_get_log_entries(6..=10).await.expect("read").len(),
        5
    );
}
