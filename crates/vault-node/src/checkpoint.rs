//! The node's anti-rollback checkpoint in its HSM
//! ([`vault_hsm::CheckpointStore`]) and what the node does with it at
//! start.
//!
//! Storage advances it ([`vault_raft::checkpoint::Checkpointer`]) after
//! every fsync of log appends and every vote, before openraft hears of
//! them: the checkpoint is never behind anything this node acknowledged.
//! At start the node compares it with what its disk holds
//! ([`Mark::behind`]):
//!
//! - not behind: serve as usual;
//! - behind (a restored or lost disk): the node neither votes nor stands
//!   for election nor serves frontends; it takes entries and snapshots
//!   from a leader and, once it has applied past the checkpoint, goes back
//!   to normal. If a majority is behind, no leader can be elected: the
//!   fleet halts rather than serve old counters;
//! - forked (the state at an index is not the one this node applied
//!   there): the node refuses to start.
//!
//! The one way out of a halt is the operator's: `vault-node
//! --accept-rollback` lowers the checkpoint to the disk's state, counts the
//! reset in the checkpoint itself (never lowered), logs it, and reports the
//! count in metrics, status and deployment evidence.

use std::sync::Mutex;

use vault_hsm::CheckpointStore;
use vault_raft::checkpoint::{Behind, Checkpointer, Mark, vote_to_restore};

/// What the checkpoint object holds: the mark, and how many times an
/// operator lowered it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// How far the node's durable state had got.
    pub mark: Mark,
    /// Operator resets (`--accept-rollback`), ever.
    pub resets: u32,
}

const FORMAT: u8 = 1;

impl Recorded {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        out.extend_from_slice(&self.resets.to_be_bytes());
        out.extend(self.mark.encode());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Recorded, String> {
        match bytes {
            [FORMAT, r0, r1, r2, r3, mark @ ..] => Ok(Recorded {
                resets: u32::from_be_bytes([*r0, *r1, *r2, *r3]),
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
    /// Nothing lost (or this token had no checkpoint yet, now made).
    Current,
    /// The disk lost what the checkpoint records: catch up first. The mark
    /// is the one to reach.
    Behind {
        /// Why, for logs and `/ready`.
        why: String,
        /// What the node must apply past.
        target: Mark,
    },
}

/// What the node does at start, decided from the checkpoint found on the
/// token (`found`) and the disk's mark (`stored`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The checkpoint from now on.
    pub recorded: Recorded,
    /// Whether it must be written (it changed).
    pub write: bool,
    /// Where the node stands.
    pub standing: Standing,
    /// The vote to put on disk before Raft starts, if not the disk's
    /// ([`vault_raft::checkpoint::vote_to_restore`]).
    pub vote: Option<openraft::Vote<u64>>,
}

/// Decides what node `me` does at start (pure: the HSM and the disk are
/// read and written around it).
///
/// - No checkpoint and an empty disk: a new node; record the disk.
/// - No checkpoint and a disk with Raft state: refused unless
///   `accept_rollback`, then counted as a reset. Whoever can remove the
///   object (a PIN holder; on SoftHSM, anyone who can delete a file in the
///   token directory) must not get a fresh start for free; a node upgraded
///   from a build without checkpoints takes this path once, on purpose.
/// - Behind: catch up first (`Standing::Behind`), with the HSM's vote put
///   back on disk; with `accept_rollback`, lower the checkpoint to the disk
///   but keep the vote (the highest term this node knew: no term is
///   reused, so no log id names two entries), count the reset.
/// - Forked: refused, unless `accept_rollback`.
pub fn decide(
    found: Option<Recorded>,
    stored: &Mark,
    accept_rollback: bool,
    me: u64,
) -> anyhow::Result<Decision> {
    let empty = *stored == Mark::default();
    let Some(recorded) = found else {
        if empty {
            tracing::info!(
                "no anti-rollback checkpoint on this token yet and an empty disk: a new node"
            );
            return Ok(Decision {
                recorded: Recorded {
                    mark: Mark::default(),
                    resets: 0,
                },
                write: true,
                standing: Standing::Current,
                vote: None,
            });
        }
        if !accept_rollback {
            anyhow::bail!(
                "this node's token has no anti-rollback checkpoint, but its data directory holds Raft state: the checkpoint object was removed, or this node last ran a build without checkpoints. Starting would trust whatever the disk holds. If this is the upgrade, start once with --accept-rollback (counted as a reset); docs/OPERATIONS.md, \"A node behind its checkpoint\""
            );
        }
        tracing::warn!(
            "ACCEPTING A ROLLBACK (--accept-rollback): this token had no anti-rollback checkpoint; the disk's state is adopted as it is. This reset is counted in the checkpoint and shows in metrics, status and deployment evidence"
        );
        return Ok(Decision {
            recorded: Recorded {
                mark: stored.clone(),
                resets: 1,
            },
            write: true,
            standing: Standing::Current,
            vote: vote_to_restore(None, stored.vote, me, true),
        });
    };
    match recorded.mark.behind(stored) {
        None => {
            let vote = vote_to_restore(recorded.mark.vote, stored.vote, me, false);
            Ok(Decision {
                recorded,
                write: false,
                standing: Standing::Current,
                vote,
            })
        }
        Some(lost) if accept_rollback => {
            let resets = recorded.resets.saturating_add(1);
            tracing::warn!(
                resets,
                lost = %lost,
                "ACCEPTING A ROLLBACK (--accept-rollback): the HSM checkpoint is lowered to this disk's state; attempts and records made since may come back. This reset is counted in the checkpoint and shows in metrics, status and deployment evidence"
            );
            let vote = vote_to_restore(recorded.mark.vote, stored.vote, me, true);
            let mark = Mark {
                vote: vote.or(stored.vote),
                last_log: stored.last_log,
                applied: stored.applied,
            };
            Ok(Decision {
                recorded: Recorded { mark, resets },
                write: true,
                standing: Standing::Current,
                vote,
            })
        }
        Some(Behind::Forked(why)) => anyhow::bail!(
            "this node's stored state is not what it applied: {why}. Move the data directory aside and start with an empty one (the node catches up by snapshot); docs/OPERATIONS.md, \"A node behind its checkpoint\""
        ),
        Some(Behind::Behind(why)) => {
            let vote = vote_to_restore(recorded.mark.vote, stored.vote, me, true);
            let mut target = recorded.mark.clone();
            if vote.is_some() {
                // The vote written (this node's own leadership stepped
                // down) is the one to reach.
                target.vote = vote;
            }
            Ok(Decision {
                recorded,
                write: false,
                standing: Standing::Behind { why, target },
                vote,
            })
        }
    }
}

impl HsmCheckpoint {
    /// Reads the checkpoint, decides with [`decide`] and writes what
    /// changed. Returns the checkpoint, where the node stands, and the vote
    /// to put on disk before Raft starts.
    pub fn open(
        store: CheckpointStore,
        stored: &Mark,
        accept_rollback: bool,
        me: u64,
    ) -> anyhow::Result<(HsmCheckpoint, Standing, Option<openraft::Vote<u64>>)> {
        let found = store
            .read()
            .map_err(|e| anyhow::anyhow!("read the anti-rollback checkpoint: {e}"))?
            .map(|bytes| Recorded::decode(&bytes))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let Decision {
            recorded,
            write,
            standing,
            vote,
        } = decide(found, stored, accept_rollback, me)?;
        if write {
            store
                .write(&recorded.encode())
                .map_err(|e| anyhow::anyhow!("write the anti-rollback checkpoint: {e}"))?;
        }
        Ok((
            HsmCheckpoint {
                store,
                recorded: Mutex::new(recorded),
                writes: std::sync::atomic::AtomicU64::new(u64::from(write)),
            },
            standing,
            vote,
        ))
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
            resets: recorded.resets,
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
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_and_refuses_other_formats() {
        let r = Recorded {
            mark: Mark::default(),
            resets: 3,
        };
        assert_eq!(Recorded::decode(&r.encode()), Ok(r));
        assert!(Recorded::decode(&[2, 0, 0, 0, 0, 1]).is_err());
        assert!(Recorded::decode(&[1, 0]).is_err());
    }

    fn log(term: u64, index: u64) -> Option<openraft::LogId<u64>> {
        Some(openraft::LogId::new(
            openraft::CommittedLeaderId::new(term, 0),
            index,
        ))
    }

    fn committed(term: u64, node: u64) -> openraft::Vote<u64> {
        let mut v = openraft::Vote::new(term, node);
        v.commit();
        v
    }

    fn mark(vote: openraft::Vote<u64>, term: u64, index: u64) -> Mark {
        Mark {
            vote: Some(vote),
            last_log: log(term, index),
            applied: log(term, index).map(|l| (l, [7; 32])),
        }
    }

    #[test]
    fn a_missing_checkpoint_is_a_new_node_only_on_an_empty_disk() {
        let d = decide(None, &Mark::default(), false, 1).expect("new node");
        assert_eq!(d.standing, Standing::Current);
        assert!(d.write);
        assert_eq!(d.recorded.resets, 0);
        // The object removed, an old disk put back: refused...
        let old = mark(committed(2, 3), 2, 10);
        let e = decide(None, &old, false, 1).expect_err("no checkpoint, old disk");
        assert!(e.to_string().contains("no anti-rollback checkpoint"), "{e}");
        // ...unless the operator accepts it, counted.
        let d = decide(None, &old, true, 1).expect("accepted");
        assert_eq!(d.recorded.resets, 1);
        assert_eq!(d.standing, Standing::Current);
    }

    #[test]
    fn a_behind_disk_gets_the_hsm_vote_back_and_never_resumes_leading() {
        // The HSM saw term 5 (node 3 leading); the restored disk is at
        // term 4 under node 2: the node must not accept node 2's term-4
        // entries again, so term 5 goes back on disk.
        let hsm = Recorded {
            mark: mark(committed(5, 3), 5, 20),
            resets: 0,
        };
        let disk = mark(committed(4, 2), 4, 10);
        let d = decide(Some(hsm.clone()), &disk, false, 1).expect("behind");
        assert_eq!(d.vote, Some(committed(5, 3)));
        assert!(matches!(d.standing, Standing::Behind { .. }));
        assert!(!d.write);
        // A node that led (its own committed vote): the vote, not the lead.
        let led = Recorded {
            mark: mark(committed(5, 1), 5, 20),
            resets: 0,
        };
        let d = decide(Some(led), &disk, false, 1).expect("behind");
        assert_eq!(d.vote, Some(openraft::Vote::new(5, 1)));
        match d.standing {
            Standing::Behind { target, .. } => assert_eq!(target.vote, d.vote),
            other => panic!("{other:?}"),
        }
        // The disk as current as the HSM: nothing written, nothing behind.
        let d = decide(Some(hsm.clone()), &hsm.mark, false, 1).expect("current");
        assert_eq!(
            (d.standing, d.vote, d.write),
            (Standing::Current, None, false)
        );
    }

    #[test]
    fn an_accepted_rollback_keeps_the_highest_term_and_counts() {
        let hsm = Recorded {
            mark: mark(committed(9, 3), 9, 50),
            resets: 2,
        };
        let disk = mark(committed(4, 2), 4, 10);
        let d = decide(Some(hsm), &disk, true, 1).expect("accepted");
        assert_eq!(d.recorded.resets, 3);
        assert_eq!(d.standing, Standing::Current);
        // The log goes back; the term does not, so no new entry can take
        // a log id an old one had.
        assert_eq!(d.vote, Some(committed(9, 3)));
        assert_eq!(d.recorded.mark.vote, Some(committed(9, 3)));
        assert_eq!(d.recorded.mark.last_log, disk.last_log);
        assert!(d.write);
    }

    #[test]
    fn a_forked_disk_is_refused() {
        let hsm = Recorded {
            mark: mark(committed(5, 3), 5, 20),
            resets: 0,
        };
        let mut forked = hsm.mark.clone();
        forked.applied = forked.applied.map(|(l, _)| (l, [8; 32]));
        let e = decide(Some(hsm), &forked, false, 1).expect_err("forked");
        assert!(e.to_string().contains("not what it applied"), "{e}");
    }
}
