//! Start-up: the HSM checkpoint, not the disk, decides what this node is
//! (docs/ARCHITECTURE.md, "The anti-rollback checkpoint"). Reads the
//! checkpoint and the disk, cuts, moves aside or checks the disk as
//! [`decide`] says, learns the fleet's term after a lost checkpoint, and
//! writes the checkpoint's vote and committed id back to disk, all before
//! Raft starts.

use std::sync::Arc;

use anyhow::Context;
use openraft::storage::RaftLogStorage;
use tokio::sync::watch;
use vault_fleet::config::{Fleet, NodeConfig};
use vault_hsm::Pkcs11Hsm;
use vault_raft::checkpoint::{BehindFlag, Mark};
use vault_raft::network::PeerChannels;
use vault_storage::{LogStore, StateMachineStore, StateReader};

use crate::checkpoint::{Disk, HsmCheckpoint, Standing, decide};
use crate::node::Options;

/// What Raft starts on.
pub(crate) struct Reconciled {
    pub log: LogStore,
    pub sm: StateMachineStore,
    pub reader: StateReader,
    pub storage_stats: Arc<vault_storage::StorageStats>,
    pub checkpoint: Arc<HsmCheckpoint>,
    pub standing: Standing,
    pub behind: BehindFlag,
    pub committed_at_start: u64,
}

/// Opens node `node_id`'s storage and reconciles it with its HSM
/// checkpoint (`checkpoint_store`, on the token `hsm` opened).
#[expect(
    clippy::too_many_arguments,
    reason = "the pieces of a node made before it, each used once here"
)]
pub(crate) async fn reconcile(
    me: &NodeConfig,
    node_id: u64,
    options: &Options,
    raw_hsm: Arc<Pkcs11Hsm>,
    checkpoint_store: vault_hsm::CheckpointStore,
    fleet: &Fleet,
    channels: &PeerChannels,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Reconciled> {
    // Storage advances the checkpoint once Raft runs; it is read (and the
    // disk judged against it) in between.
    let deferred = Arc::new(DeferredCheckpoint::default());
    let (mut log, mut sm) = open_storage(&me.data_dir, deferred.clone()).await?;
    let (checkpoint_store, found) = tokio::task::spawn_blocking(move || {
        let found = HsmCheckpoint::read(&checkpoint_store);
        (checkpoint_store, found)
    })
    .await?;
    let found = found?;
    // Nothing after the checkpoint's last log id was ever acknowledged.
    if let Some(r) = found
        .as_ref()
        .filter(|r| !r.lost && !options.accept_rollback)
    {
        let cut = log
            .cut_back_to(r.mark.last_log)
            .await
            .context("cut the log back to the HSM checkpoint")?;
        if cut > 0 {
            tracing::warn!(
                entries = cut,
                "cut log entries the HSM checkpoint never recorded (never acknowledged)"
            );
        }
    }
    let reader = sm.reader();
    let applied = reader.last_applied();
    let disk = Disk {
        vote: log.read_vote().await?,
        // A state applied past the log (a snapshot installed, its purge
        // not yet done) covers the log up to it, as openraft takes it.
        last_log: log.get_log_state().await?.last_log_id.max(applied),
        purged: log.last_purged().await?,
        applied: applied.map(|l| (l, reader.commitment())),
        chain_base: log.chain_base().await?,
        log_hash: match log.recomputed_hash().await {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("recompute the log's running hash: {e}");
                None
            }
        },
    };
    let decision = decide(found, &disk, options.accept_rollback, node_id)?;
    if options.accept_rollback && !decision.wipe {
        let destroyed =
            tokio::task::spawn_blocking(move || raw_hsm.destroyed_kek_versions()).await??;
        let in_state = reader.with_state(|s| s.blobs_by_kek_version());
        crate::checkpoint::refuse_rollback_past_destroyed_keks(&in_state, &destroyed)?;
    }
    if decision.wipe {
        drop((log, sm));
        let aside = move_aside(&me.data_dir)?;
        tracing::warn!(
            moved_to = %aside.display(),
            "the data directory holds Raft state the HSM checkpoint never recorded: moved aside; starting empty and catching up"
        );
        (log, sm) = open_storage(&me.data_dir, deferred.clone()).await?;
    }
    if let Some(keep) = decision.cut_after {
        let cut = log
            .cut_back_to(keep)
            .await
            .context("cut a log behind the HSM checkpoint back to its applied state")?;
        tracing::warn!(
            entries = cut,
            "the log is behind the HSM checkpoint: kept only what the state has applied; the rest comes from the leader"
        );
    }
    // Entries the checkpoint's log hash does not cover (at or below its
    // base), and on a node behind its checkpoint every entry its state
    // applied, are unchecked: an edited disk could keep forged ones there
    // for this node to send to others. The applied state covers them.
    if !decision.wipe {
        let upto = crate::checkpoint::unchained_through(&decision, &disk);
        if let Some(upto) = upto {
            let dropped = log
                .drop_through(upto)
                .await
                .context("drop log entries the HSM checkpoint does not cover")?;
            if dropped > 0 {
                tracing::warn!(
                    entries = dropped,
                    through = upto.index,
                    "dropped log entries the HSM checkpoint's log hash does not cover"
                );
            }
        }
    }
    let checkpoint = {
        let (recorded, write) = (decision.recorded.clone(), decision.write);
        tokio::task::spawn_blocking(move || HsmCheckpoint::open(checkpoint_store, recorded, write))
            .await??
    };
    let checkpoint = Arc::new(checkpoint);
    deferred.set(checkpoint.clone());
    let reader = sm.reader();
    let storage_stats = sm.stats();
    if let Some((at, commitment)) = decision.verify {
        sm.verify_at(at, commitment);
    }
    // The snapshot file is untrusted too: rebuilt from the state.
    if !decision.wipe && sm.rebuild_snapshot_file().await? {
        tracing::info!("rebuilt the snapshot file from the state");
    }
    let mut vote = decision.vote;
    let mut standing = decision.standing.clone();
    if let Standing::Lost { why } = &standing {
        tracing::warn!(
            "LOST ANTI-ROLLBACK CHECKPOINT: {why}. This node learns the fleet's term from a leader before it runs Raft, then neither votes, nor stands for election, nor serves until it has caught up (docs/OPERATIONS.md, \"A node behind its checkpoint\")"
        );
        let learned = crate::lost::learn_term(fleet, node_id, channels, stop.clone()).await?;
        tracing::info!(
            leader = learned.leader,
            term = learned.term,
            read_index = learned.read_index,
            "learned the fleet's term"
        );
        let mut v = openraft::Vote::new(learned.term, learned.leader);
        v.commit();
        vote = Some(v);
        standing = Standing::Lost {
            why: format!(
                "{why}; catching up to entry {} of leader {}",
                learned.read_index, learned.leader
            ),
        };
    }
    let behind = vault_raft::checkpoint::BehindFlag::default();
    match &standing {
        Standing::Behind { why, .. } => {
            tracing::warn!(
                "BEHIND THE HSM CHECKPOINT: {why}. This node neither votes, nor stands for election, nor serves until it has caught up from a peer that is ahead; if a majority is behind the fleet halts (docs/OPERATIONS.md, \"A node behind its checkpoint\")"
            );
            behind.set(Some(format!("behind its HSM checkpoint: {why}")));
        }
        Standing::Lost { why } => behind.set(Some(format!("lost its HSM checkpoint: {why}"))),
        Standing::Current => {}
    }
    // The checkpoint's vote, never the disk's: a higher vote on disk was
    // never acknowledged, and this node's own leadership is never resumed
    // from disk (openraft would lead at once, without an election).
    if let Some(vote) = vote {
        log.save_vote(&vote)
            .await
            .context("put the HSM checkpoint's vote on disk")?;
        tracing::info!(
            term = vote.leader_id.term,
            voted_for = ?vote.leader_id.voted_for(),
            committed = vote.committed,
            "wrote the HSM checkpoint's vote on disk"
        );
    }
    // The committed hint is the checkpoint's applied id: entries up to it
    // are committed; a larger hint on disk is not believed (re-applying
    // uncommitted entries would fork this node from the fleet).
    log.save_committed(decision.committed)
        .await
        .context("write the committed hint")?;
    let committed_at_start = decision.committed.map_or(0, |l| l.index);
    tracing::info!(
        committed_at_start,
        checkpoint_resets = checkpoint.resets(),
        "storage open"
    );
    Ok(Reconciled {
        log,
        sm,
        reader,
        storage_stats,
        checkpoint,
        standing,
        behind,
        committed_at_start,
    })
}

type Storage = (vault_storage::LogStore, vault_storage::StateMachineStore);

async fn open_storage(
    dir: &std::path::Path,
    checkpointer: Arc<DeferredCheckpoint>,
) -> anyhow::Result<Storage> {
    std::fs::create_dir_all(dir).with_context(|| format!("create data dir {}", dir.display()))?;
    let d = dir.to_owned();
    let c: Arc<dyn vault_raft::checkpoint::Checkpointer> = checkpointer;
    tokio::task::spawn_blocking(move || {
        vault_storage::open_checkpointed(&d, vault_core::DEFAULT_DEDUP_CAPACITY, Some(c))
    })
    .await?
    .with_context(|| format!("open the database in {}", dir.display()))
}

/// Renames the data directory to `<dir>.unverified-<unix seconds>` (kept
/// for whoever investigates; never read again) and returns the new name.
fn move_aside(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut name = dir.as_os_str().to_owned();
    name.push(format!(".unverified-{secs}"));
    let aside = std::path::PathBuf::from(name);
    std::fs::rename(dir, &aside)
        .with_context(|| format!("move {} aside to {}", dir.display(), aside.display()))?;
    Ok(aside)
}

/// A checkpointer to hand storage before the checkpoint is open (it is
/// compared with what storage holds first); storage writes nothing before
/// Raft starts, by which time it is set.
#[derive(Default)]
struct DeferredCheckpoint(std::sync::OnceLock<Arc<HsmCheckpoint>>);

impl DeferredCheckpoint {
    fn set(&self, c: Arc<HsmCheckpoint>) {
        let _ = self.0.set(c);
    }
}

impl vault_raft::checkpoint::Checkpointer for DeferredCheckpoint {
    fn advance(&self, mark: &Mark) -> Result<(), String> {
        match self.0.get() {
            Some(c) => c.advance(mark),
            None => Err("the HSM checkpoint is not open yet".into()),
        }
    }
}
