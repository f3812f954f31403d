//! The node's anti-rollback checkpoint in its HSM
//! ([`vault_hsm::CheckpointStore`]) and what the node does with it at
//! start.
//!
//! Storage advances it ([`vault_raft::checkpoint::Checkpointer`]) after
//! every fsync of log appends and every vote, before openraft hears of
//! them, and before any applied state reaches the disk: the checkpoint is
//! never behind anything this node acknowledged or stored. **At start the
//! checkpoint, not the disk, decides what the node is** ([`decide`]); the
//! disk is untrusted input that may claim to be behind, equal or ahead:
//!
//! - the vote is the checkpoint's, never the disk's (a higher vote on disk
//!   was never acknowledged), and never this node's own leadership, from
//!   which openraft would resume leading without an election;
//! - log entries after the checkpoint's last log id were never
//!   acknowledged: they are cut; a committed hint past it is dropped, and
//!   the hint becomes the checkpoint's applied id;
//! - applied state on disk beyond the checkpoint's (or at its id with
//!   another state commitment), or a log purged past it, is unverified:
//!   the data directory is moved aside and the node starts empty, behind;
//! - applied state short of the checkpoint's is re-applied from the log
//!   and checked against the checkpoint's commitment when it gets there;
//! - a log that ends short of the checkpoint is behind: the node neither
//!   votes, nor stands for election, nor serves until it has caught up
//!   from a leader. If a majority is behind, the fleet halts rather than
//!   serve old counters;
//! - no checkpoint at all on a token provisioned with one (every node
//!   token is, [`vault_hsm::checkpoint::BORN`]) was lost: the disk is moved
//!   aside, the node learns the fleet's term from a leader confirmed by a
//!   quorum before Raft starts, and catches up to that leader's commit
//!   index before it votes. Counted.
//!
//! The one way out of a halt is the operator's: `vault-node
//! --accept-rollback` lowers the checkpoint to the disk's state, counts the
//! reset in the checkpoint itself (never lowered), logs it, and reports the
//! count in metrics, status and deployment evidence.

use std::sync::Mutex;

use openraft::{LogId, Vote};
use vault_hsm::CheckpointStore;
use vault_raft::checkpoint::{Checkpointer, Mark, vote_to_restore};

/// What the checkpoint object holds: the mark, how many times it was reset
/// (an operator's `--accept-rollback`, or the checkpoint lost), and whether
/// the node is still catching up after a loss.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// How far the node's durable state had got.
    pub mark: Mark,
    /// Resets, ever: operator rollbacks and lost checkpoints.
    pub resets: u32,
    /// The checkpoint was lost and the node has not yet caught up with a
    /// leader since: it must not vote (kept across restarts).
    pub lost: bool,
}

const FORMAT_V1: u8 = 1;
/// The commitment of a checkpoint written by a build before LtHash16:
/// not compared.
pub const UNKNOWN_COMMITMENT: [u8; 32] = [0; 32];
const FORMAT: u8 = 2;

impl Recorded {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        out.extend_from_slice(&self.resets.to_be_bytes());
        out.push(u8::from(self.lost));
        out.extend(self.mark.encode());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Recorded, String> {
        if bytes == vault_hsm::checkpoint::BORN {
            return Ok(Recorded::default());
        }
        match bytes {
            [FORMAT_V1, r0, r1, r2, r3, mark @ ..] => {
                // The first format's state digest was another function
                // (a sum of SHA-256 hashes): its applied id still counts,
                // its commitment is unknown.
                let mut mark = Mark::decode(mark)?;
                mark.applied = mark.applied.map(|(l, _)| (l, UNKNOWN_COMMITMENT));
                Ok(Recorded {
                    resets: u32::from_be_bytes([*r0, *r1, *r2, *r3]),
                    lost: false,
                    mark,
                })
            }
            [FORMAT, r0, r1, r2, r3, lost @ (0 | 1), mark @ ..] => Ok(Recorded {
                resets: u32::from_be_bytes([*r0, *r1, *r2, *r3]),
                lost: *lost == 1,
                mark: Mark::decode(mark)?,
            }),
            _ => Err("the checkpoint has a format this build does not read".into()),
        }
    }
}

/// The checkpoint in the node's HSM, as storage advances it.
pub struct HsmCheckpoint {
    store: CheckpointStore,
    recorded: Mutex<Recorded>,
    writes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for HsmCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmCheckpoint").finish_non_exhaustive()
    }
}

/// Where the node stands against its checkpoint at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Nothing lost.
    Current,
    /// The disk lost what the checkpoint records: catch up first. The mark
    /// is the one to reach.
    Behind {
        /// Why, for logs and `/ready`.
        why: String,
        /// What the node must apply past.
        target: Mark,
    },
    /// The checkpoint itself was lost: learn the fleet's term and catch up
    /// with a leader first.
    Lost {
        /// Why, for logs and `/ready`.
        why: String,
    },
}

/// What the disk holds at start, after entries past the checkpoint's last
/// log id were cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disk {
    /// The vote.
    pub vote: Option<Vote<u64>>,
    /// The last log id: the last entry, or the last purged one.
    pub last_log: Option<LogId<u64>>,
    /// The last purged log id.
    pub purged: Option<LogId<u64>>,
    /// The last applied log id, with the state's commitment.
    pub applied: Option<(LogId<u64>, [u8; 32])>,
    /// The running hash of the log at `last_log`, recomputed from the
    /// entries on disk ([`vault_raft::checkpoint::chain`]).
    pub log_hash: Option<[u8; 32]>,
    /// Where that hash starts: entries up to it are not hashed.
    pub chain_base: Option<LogId<u64>>,
}

impl Disk {
    fn mark(&self) -> Mark {
        Mark {
            vote: self.vote,
            last_log: self.last_log,
            applied: self.applied,
            log_hash: self.log_hash,
        }
    }

    fn is_empty(&self) -> bool {
        *self == Disk::default()
    }
}

/// What the node does at start, decided from the checkpoint found on the
/// token and the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The checkpoint from now on.
    pub recorded: Recorded,
    /// Whether it must be written (it changed).
    pub write: bool,
    /// Where the node stands.
    pub standing: Standing,
    /// Move the data directory aside and start from an empty one: nothing
    /// on it can be believed.
    pub wipe: bool,
    /// The vote to put on disk before Raft starts, if not the disk's.
    pub vote: Option<Vote<u64>>,
    /// Cut every log entry whose id is above this one (a log behind the
    /// checkpoint keeps only what its state has applied: the entries after
    /// that cannot be checked against the checkpoint, and come again from
    /// the leader).
    pub cut_after: Option<Option<LogId<u64>>>,
    /// The committed hint to put on disk: the checkpoint's applied id
    /// (entries up to it are committed; the disk's hint is not believed).
    pub committed: Option<LogId<u64>>,
    /// Check the state against this commitment when it is applied there
    /// again ([`vault_storage::StateMachineStore::verify_at`]).
    pub verify: Option<(LogId<u64>, [u8; 32])>,
}

fn show(l: Option<LogId<u64>>) -> String {
    l.map_or_else(
        || "none".into(),
        |l| format!("{}-{}", l.leader_id.term, l.index),
    )
}

/// Why the disk's Raft state cannot be believed at all, if it cannot: it
/// claims what this node never made durable (so never acknowledged).
fn unverified(mark: &Mark, disk: &Disk) -> Option<String> {
    let index = |l: Option<LogId<u64>>| l.map(|l| l.index);
    let checkpoint_applied = mark.applied.map(|(l, _)| l);
    let disk_applied = disk.applied.map(|(l, _)| l);
    if mark.vote.is_none() && disk.vote.is_some() {
        return Some("the disk holds a vote this node's HSM checkpoint never recorded".into());
    }
    if disk.purged > mark.last_log {
        return Some(format!(
            "the log on disk is purged up to {} but this node's HSM checkpoint ends at {}",
            show(disk.purged),
            show(mark.last_log)
        ));
    }
    // openraft re-applies by index: compare indexes, and at one index
    // require the very log id.
    if index(disk_applied) > index(checkpoint_applied)
        || (index(disk_applied) == index(checkpoint_applied) && disk_applied != checkpoint_applied)
    {
        return Some(format!(
            "the state on disk claims entry {} applied but this node's HSM checkpoint recorded {}",
            show(disk_applied),
            show(checkpoint_applied)
        ));
    }
    if let (Some((at, mine)), Some((d, theirs))) = (mark.applied, disk.applied)
        && at == d
        && mine != UNKNOWN_COMMITMENT
        && mine != theirs
    {
        return Some(format!(
            "the state on disk after entry {} is not the state this node applied there (commitments differ)",
            show(Some(at))
        ));
    }
    if index(disk.purged) > index(disk_applied) {
        return Some(format!(
            "the log on disk is purged up to {} past its applied state at {}",
            show(disk.purged),
            show(disk_applied)
        ));
    }
    // Entries up to the chain's base are not hashed: none of them may be
    // applied from here on.
    if index(disk.chain_base) > index(disk.purged).max(index(disk_applied)) {
        return Some(format!(
            "the log's running hash on disk starts at {}, past what the state covers",
            show(disk.chain_base)
        ));
    }
    None
}

/// Refuses `--accept-rollback` onto a state whose live blobs (`in_state`,
/// counted by KEK version) name a version this token destroyed
/// (`destroyed`): every record sealed under it would be lost for good, and
/// a snapshot of that state would carry the loss to the other nodes.
pub fn refuse_rollback_past_destroyed_keks(
    in_state: &std::collections::BTreeMap<Option<u32>, u64>,
    destroyed: &std::collections::BTreeSet<u32>,
) -> anyhow::Result<()> {
    let lost: Vec<String> = in_state
        .iter()
        .filter_map(|(v, n)| {
            v.filter(|v| destroyed.contains(v))
                .map(|v| format!("{n} under KEK v{v}"))
        })
        .collect();
    if lost.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing --accept-rollback: this disk's state has live blobs sealed under a destroyed KEK version ({}); adopted, those records could never be opened again. Restore a copy made after the KEK rotation, or start without --accept-rollback to catch up from the fleet",
        lost.join(", ")
    )
}

/// The last log entry that nothing checks, to be dropped at start with
/// everything before it: on a node behind its checkpoint, its applied
/// state; otherwise the running hash's base or the purge marker, whichever
/// has the higher **index** (log ids order by term first, and the term
/// stored with either is the disk's word).
pub fn unchained_through(decision: &Decision, disk: &Disk) -> Option<LogId<u64>> {
    match decision.cut_after {
        Some(keep) => keep,
        None => [disk.chain_base, disk.purged]
            .into_iter()
            .flatten()
            .max_by_key(|l| l.index),
    }
}

/// The disk's mark as `--accept-rollback` adopts it with no checkpoint to
/// compare it with: its vote as it goes on disk ([`vote_to_restore`]:
/// never one at a term of 2^62 or more, nor this node's own committed one).
fn adopted(disk: &Disk, me: u64) -> Mark {
    Mark {
        vote: vote_to_restore(None, disk.vote, me, true).or(disk.vote),
        ..disk.mark()
    }
}

/// Decides what node `me` does at start (pure: the HSM and the disk are
/// read and written around it). `disk` is read after the log was cut back
/// to the checkpoint's last log id.
pub fn decide(
    found: Option<Recorded>,
    disk: &Disk,
    accept_rollback: bool,
    me: u64,
) -> anyhow::Result<Decision> {
    let Some(recorded) = found else {
        if accept_rollback && !disk.is_empty() {
            tracing::warn!(
                "ACCEPTING A ROLLBACK (--accept-rollback): this token had no anti-rollback checkpoint; the disk's state is adopted as it is. This reset is counted in the checkpoint and shows in metrics, status and deployment evidence"
            );
            return Ok(Decision {
                recorded: Recorded {
                    mark: adopted(disk, me),
                    resets: 1,
                    lost: false,
                },
                write: true,
                standing: Standing::Current,
                wipe: false,
                cut_after: None,
                vote: vote_to_restore(None, disk.vote, me, true),
                committed: disk.applied.map(|(l, _)| l),
                verify: None,
            });
        }
        return Ok(lost(
            "this node's token has no anti-rollback checkpoint, but it was provisioned with one: it was lost or removed".into(),
            Recorded::default(),
        ));
    };
    if recorded.lost && accept_rollback {
        tracing::warn!(
            "ACCEPTING A ROLLBACK (--accept-rollback): this node lost its anti-rollback checkpoint and had not caught up; the disk's state is adopted as it is. This reset is counted in the checkpoint and shows in metrics, status and deployment evidence"
        );
        return Ok(Decision {
            recorded: Recorded {
                mark: adopted(disk, me),
                resets: recorded.resets.saturating_add(1),
                lost: false,
            },
            write: true,
            standing: Standing::Current,
            wipe: false,
            cut_after: None,
            vote: vote_to_restore(None, disk.vote, me, true),
            committed: disk.applied.map(|(l, _)| l),
            verify: None,
        });
    }
    if recorded.lost {
        return Ok(lost(
            "this node lost its anti-rollback checkpoint and has not caught up since".into(),
            recorded,
        ));
    }
    let mark = &recorded.mark.clone();
    if accept_rollback
        && let Some(why) = unverified(mark, disk).or_else(|| {
            (disk.last_log < mark.last_log).then(|| "the log on disk is behind".to_owned())
        })
    {
        let resets = recorded.resets.saturating_add(1);
        tracing::warn!(
            resets,
            lost = %why,
            "ACCEPTING A ROLLBACK (--accept-rollback): the HSM checkpoint is lowered to this disk's state; attempts and records made since may come back. This reset is counted in the checkpoint and shows in metrics, status and deployment evidence"
        );
        let vote = vote_to_restore(mark.vote, disk.vote, me, true);
        return Ok(Decision {
            recorded: Recorded {
                mark: Mark {
                    vote: vote.or(disk.vote),
                    last_log: disk.last_log,
                    applied: disk.applied,
                    log_hash: disk.log_hash,
                },
                resets,
                lost: false,
            },
            write: true,
            standing: Standing::Current,
            wipe: false,
            cut_after: None,
            vote,
            committed: disk.applied.map(|(l, _)| l),
            verify: None,
        });
    }
    // The checkpoint's vote, never the disk's, and never a resumed lead.
    let vote = mark.vote.map(|v| step_down(v, me));
    let target = Mark {
        vote,
        ..mark.clone()
    };
    // A log behind the checkpoint cannot be checked against it (the
    // checkpoint describes a later log): it keeps only what its state has
    // applied, and the node catches up without voting. Its state is
    // checked when it applies the checkpoint's applied id again.
    if unverified(mark, disk).is_none()
        && let Some(why) = short(mark, disk)
    {
        let disk_applied = disk.applied.map(|(l, _)| l);
        return Ok(Decision {
            recorded,
            write: false,
            standing: Standing::Behind {
                why,
                target: target.clone(),
            },
            wipe: false,
            cut_after: Some(disk_applied),
            vote,
            committed: disk_applied,
            verify: mark.applied.filter(|(_, c)| *c != UNKNOWN_COMMITMENT),
        });
    }
    // A disk that claims what the checkpoint never saw, or whose log is
    // not the one the checkpoint recorded, is not believed at all.
    let not_believed = unverified(mark, disk).or_else(|| edited(mark, disk));
    if let Some(why) = not_believed {
        return Ok(Decision {
            recorded,
            write: false,
            standing: Standing::Behind {
                why: format!("{why}; the data directory was moved aside"),
                target: target.clone(),
            },
            wipe: true,
            cut_after: None,
            vote,
            committed: None,
            verify: mark.applied.filter(|(_, c)| *c != UNKNOWN_COMMITMENT),
        });
    }
    let applied = mark.applied.map(|(l, _)| l);
    let disk_applied = disk.applied.map(|(l, _)| l);
    let verify = (disk_applied.map(|l| l.index) < applied.map(|l| l.index))
        .then_some(mark.applied)
        .flatten()
        .filter(|(_, c)| *c != UNKNOWN_COMMITMENT);
    // Entries up to the checkpoint's applied id are committed (the log
    // reaches it: it reaches the checkpoint's last log id); the disk's own
    // hint is not believed.
    Ok(Decision {
        recorded,
        write: false,
        standing: Standing::Current,
        wipe: false,
        cut_after: None,
        vote: vote.filter(|v| Some(*v) != disk.vote),
        committed: applied,
        verify,
    })
}

/// Why the log on disk (cut back to the checkpoint's last log id) is
/// behind the checkpoint, if it is: it ends short of it.
fn short(mark: &Mark, disk: &Disk) -> Option<String> {
    (disk.last_log < mark.last_log).then(|| {
        format!(
            "the stored log ends at {} but this node had made {} durable (HSM checkpoint)",
            show(disk.last_log),
            show(mark.last_log)
        )
    })
}

/// Why a log that reaches the checkpoint's last log id is not the log the
/// checkpoint recorded, if it is not: its running hash there is another
/// (entries edited in place).
fn edited(mark: &Mark, disk: &Disk) -> Option<String> {
    if let Some(want) = mark.log_hash
        && disk.log_hash != Some(want)
    {
        return Some(format!(
            "the log on disk up to {} is not the log this node made durable (running hashes differ)",
            show(mark.last_log)
        ));
    }
    None
}

/// This node's own committed vote becomes a plain vote for itself in the
/// same term: openraft would otherwise resume leading at start, without an
/// election, from whatever log the disk holds.
fn step_down(v: Vote<u64>, me: u64) -> Vote<u64> {
    if v.is_committed() && v.leader_id().voted_for() == Some(me) {
        Vote::new(v.leader_id().term, me)
    } else {
        v
    }
}

/// The decision for a lost checkpoint: nothing on disk is believed, the
/// node learns the fleet's term before Raft starts and catches up before
/// it votes; counted (once per loss).
fn lost(why: String, was: Recorded) -> Decision {
    let counted = if was.lost {
        was.resets
    } else {
        was.resets.saturating_add(1)
    };
    Decision {
        recorded: Recorded {
            mark: Mark::default(),
            resets: counted,
            lost: true,
        },
        write: !was.lost,
        standing: Standing::Lost {
            why: format!("{why}; the data directory was moved aside"),
        },
        wipe: true,
        cut_after: None,
        vote: None,
        committed: None,
        verify: None,
    }
}

impl HsmCheckpoint {
    /// Reads the checkpoint on the token, if there is one.
    pub fn read(store: &CheckpointStore) -> anyhow::Result<Option<Recorded>> {
        store
            .read()
            .map_err(|e| anyhow::anyhow!("read the anti-rollback checkpoint: {e}"))?
            .map(|bytes| Recorded::decode(&bytes))
            .transpose()
            .map_err(anyhow::Error::msg)
    }

    /// The checkpoint from now on ([`Decision::recorded`]), written first
    /// if it changed.
    pub fn open(
        store: CheckpointStore,
        recorded: Recorded,
        write: bool,
    ) -> anyhow::Result<HsmCheckpoint> {
        if write {
            store
                .write(&recorded.encode())
                .map_err(|e| anyhow::anyhow!("write the anti-rollback checkpoint: {e}"))?;
        }
        Ok(HsmCheckpoint {
            store,
            recorded: Mutex::new(recorded),
            writes: std::sync::atomic::AtomicU64::new(u64::from(write)),
        })
    }

    /// After a lost checkpoint, once the node has caught up with a leader:
    /// it may vote again, after restarts too.
    pub fn caught_up_after_loss(&self) -> Result<(), String> {
        let mut recorded = self.lock();
        if !recorded.lost {
            return Ok(());
        }
        let next = Recorded {
            lost: false,
            ..recorded.clone()
        };
        self.store
            .write(&next.encode())
            .map_err(|e| e.to_string())?;
        *recorded = next;
        Ok(())
    }

    /// Operator resets, ever.
    pub fn resets(&self) -> u32 {
        self.lock().resets
    }

    /// Checkpoint writes since start.
    pub fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Checkpointer for HsmCheckpoint {
    fn advance(&self, mark: &Mark) -> Result<(), String> {
        let mut recorded = self.lock();
        let merged = recorded.mark.merge(mark);
        if merged == recorded.mark {
            return Ok(());
        }
        let next = Recorded {
            mark: merged,
            ..recorded.clone()
        };
        self.store
            .write(&next.encode())
            .map_err(|e| e.to_string())?;
        *recorded = next;
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
