//! The anti-rollback mark: how far a node's durable Raft state has got.
//!
//! A node's disk can be put back to an older copy (a restored backup, a
//! snapshot of a VM): older counters, records that were locked out or
//! deleted alive again. The node's HSM keeps a [`Mark`] that the disk
//! cannot roll back (vault-node's checkpoint, an authenticated token
//! object), and storage advances it through a [`Checkpointer`] in the same
//! step that makes a log append or a vote durable, **before openraft hears
//! that it is**: no entry is ever acknowledged to a leader, so never counts
//! toward a commit, before this node's HSM records it. A committed entry is
//! therefore in the marks of a majority; a disk that lost it is behind its
//! mark ([`Mark::behind`]), and such a node neither votes, nor leads, nor
//! serves until it has caught up from a node that has it.
//!
//! A mark only grows ([`Mark::merge`]): a leader truncating this node's
//! uncommitted tail does not lower it (the entries that replace the tail
//! carry a higher term, so the log passes the mark again at once).

use openraft::{LogId, Vote};
use serde::{Deserialize, Serialize};

/// How far a node's durable state has got: its vote, the last log entry on
/// disk, and the last applied entry with the state digest after it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The vote on disk.
    pub vote: Option<Vote<u64>>,
    /// The last log entry on disk (after a purge: the last purged one).
    pub last_log: Option<LogId<u64>>,
    /// The last applied entry on disk, with the state digest it left.
    pub applied: Option<(LogId<u64>, [u8; 32])>,
    /// The running hash of the log at `last_log` ([`chain`]): each entry's
    /// bytes chained to the hash before it, so a disk whose entries were
    /// edited in place (same log ids, other contents) does not reach it.
    /// `None` from a checkpoint written before the chain existed.
    pub log_hash: Option<[u8; 32]>,
}

/// The mark's first format, without the log hash.
#[derive(Deserialize)]
struct MarkV1 {
    vote: Option<Vote<u64>>,
    last_log: Option<LogId<u64>>,
    applied: Option<(LogId<u64>, [u8; 32])>,
}

/// The running hash of a node's log: `chain(prev, entry)` is the hash at an
/// entry whose stored bytes are `entry`, after the hash `prev` at the entry
/// before it. It is local to one node (it restarts at every snapshot that
/// node installs, [`chain_base`]); only that node's checkpoint records it.
pub fn chain(prev: &[u8; 32], entry: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"bkv-log-chain");
    h.update(prev);
    h.update((entry.len() as u64).to_be_bytes());
    h.update(entry);
    h.finalize().into()
}

/// Where the chain restarts: at a snapshot installed at `at` with this
/// state commitment (the empty log's hash is all zeros).
pub fn chain_base(at: LogId<u64>, commitment: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"bkv-log-chain-snapshot");
    h.update(at.leader_id.term.to_be_bytes());
    h.update(at.leader_id.node_id.to_be_bytes());
    h.update(at.index.to_be_bytes());
    h.update(commitment);
    h.finalize().into()
}

/// Something that records marks where a disk copy cannot reach (the HSM).
pub trait Checkpointer: Send + Sync + 'static {
    /// Records that the state in `mark` is durable. Each field that is
    /// `None` says nothing; the recorded mark is the [`Mark::merge`] of
    /// every mark given. Blocking (called on the storage writer thread or
    /// the blocking pool); an error stops the write it was for from being
    /// acknowledged.
    fn advance(&self, mark: &Mark) -> Result<(), String>;
}

/// Why this node must not vote (nor serve) right now, if it must not:
/// shared between the node, which sets it while the node is behind its
/// checkpoint, and the peer service, which then refuses votes.
#[derive(Debug, Clone, Default)]
pub struct BehindFlag(std::sync::Arc<std::sync::RwLock<Option<String>>>);

impl BehindFlag {
    /// Sets (or with `None` clears) the reason.
    pub fn set(&self, why: Option<String>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// The reason, while there is one.
    pub fn why(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why a node's stored state cannot be trusted to vote, lead or serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behind {
    /// The stored state is older than what this node had made durable:
    /// a restored or lost disk. It may catch up from peers that are ahead.
    Behind(String),
    /// The stored state at an index differs from what this node applied
    /// there: it will never agree with the fleet by catching up. Start with
    /// an empty data directory (it catches up by snapshot).
    Forked(String),
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Behind::Behind(why) | Behind::Forked(why) => f.write_str(why),
        }
    }
}

fn show_log(l: &Option<LogId<u64>>) -> String {
    l.map_or_else(
        || "none".to_owned(),
        |l| format!("{}-{}", l.leader_id.term, l.index),
    )
}

fn show_vote(v: &Option<Vote<u64>>) -> String {
    v.map_or_else(
        || "none".to_owned(),
        |v| format!("term {}", v.leader_id().term),
    )
}

/// Whether vote `a` is at least `b`, in openraft 0.9's order (its default
/// leader ids, `(term, node_id)`): the term, then the node voted for, then
/// committed over not. It is total, so the checkpoint records every vote
/// openraft moves to: in one term openraft grants a candidate with a higher
/// node id after a lower one (a split vote) and may follow it, and a
/// checkpoint that kept the first vote would, after a crash, put back a
/// vote openraft had left (issue 26 review: the node could then accept the
/// lower candidate's leadership of a term it had given to the higher one).
/// Whether two votes are two leaders of one term is [`votes_conflict`].
pub fn vote_at_least(a: &Vote<u64>, b: &Vote<u64>) -> bool {
    let key = |v: &Vote<u64>| (v.leader_id().term, v.leader_id().node_id, v.is_committed());
    key(a) >= key(b)
}

/// Whether `a` and `b` are committed votes for two different nodes in one
/// term: two leaders of one term, which a peer message must never bring in
/// (openraft would follow the one with the higher node id).
pub fn votes_conflict(a: &Vote<u64>, b: &Vote<u64>) -> bool {
    a.is_committed()
        && b.is_committed()
        && a.leader_id().term == b.leader_id().term
        && a.leader_id().node_id != b.leader_id().node_id
}

/// The vote a node must put on its disk before Raft starts, when it is
/// not the one there (`stored`): the greater of the disk's and the HSM's
/// (`recorded`), so that a restored disk cannot make the node accept a
/// leader of a term it had already left, nor vote again in one; and with
/// `step_down` (the disk is behind, or was just accepted), never this
/// node's own committed vote, from which openraft would resume leading at
/// start without an election, with a log shorter than its followers'.
/// A disk vote at a term of [`crate::peer::MAX_TERM`] or more (an edited
/// disk adopted with `--accept-rollback`) is never taken: the node's next
/// election would overflow the term.
pub fn vote_to_restore(
    recorded: Option<Vote<u64>>,
    stored: Option<Vote<u64>>,
    me: u64,
    step_down: bool,
) -> Option<Vote<u64>> {
    let bounded = stored.filter(|s| s.leader_id().term < crate::peer::MAX_TERM);
    let best = match (recorded, bounded) {
        (Some(r), Some(s)) if vote_at_least(&s, &r) => s,
        (Some(r), _) => r,
        (None, Some(s)) => s,
        // Only an unbounded vote on disk: replaced by a fresh one.
        (None, None) if stored.is_some() => Vote::new(0, me),
        (None, None) => return None,
    };
    let best = if step_down && best.is_committed() && best.leader_id().voted_for() == Some(me) {
        Vote::new(best.leader_id().term, me)
    } else {
        best
    };
    (Some(best) != stored).then_some(best)
}

impl Mark {
    /// The mark recording both `self` and `newer`: each part the greater.
    pub fn merge(&self, newer: &Mark) -> Mark {
        let applied = match (self.applied, newer.applied) {
            (Some(o), Some(n)) if n.0 > o.0 => Some(n),
            (Some(o), _) => Some(o),
            (None, n) => n,
        };
        let vote = match (self.vote, newer.vote) {
            (Some(o), Some(n)) if vote_at_least(&n, &o) => Some(n),
            (Some(o), _) => Some(o),
            (None, n) => n,
        };
        // The hash goes with the log id it was taken at.
        let (last_log, log_hash) = match (self.last_log, newer.last_log) {
            (Some(o), Some(n)) if n > o => (Some(n), newer.log_hash),
            (Some(o), Some(n)) if n == o => (Some(o), newer.log_hash.or(self.log_hash)),
            (Some(o), _) => (Some(o), self.log_hash),
            (None, Some(n)) => (Some(n), newer.log_hash),
            (None, None) => (None, self.log_hash.or(newer.log_hash)),
        };
        Mark {
            vote,
            last_log,
            applied,
            log_hash,
        }
    }

    /// Whether the state `stored` (what is on disk now) has lost something
    /// this mark (`self`, the HSM's) recorded as durable.
    pub fn behind(&self, stored: &Mark) -> Option<Behind> {
        if let Some(mine) = self.vote {
            let ok = stored.vote.is_some_and(|s| vote_at_least(&s, &mine));
            if !ok {
                return Some(Behind::Behind(format!(
                    "the stored vote ({}) is older than the HSM checkpoint's ({})",
                    show_vote(&stored.vote),
                    show_vote(&self.vote)
                )));
            }
        }
        if self.last_log.is_some() && stored.last_log < self.last_log {
            return Some(Behind::Behind(format!(
                "the stored log ends at {} but this node had made {} durable (HSM checkpoint)",
                show_log(&stored.last_log),
                show_log(&self.last_log)
            )));
        }
        // Applies are written before the fsync that advances the mark, and
        // that fsync covers them: a disk that applied less than the mark
        // says lost something too (or was edited).
        if let Some((at, _)) = self.applied
            && stored.applied.map(|(l, _)| l) < Some(at)
        {
            return Some(Behind::Behind(format!(
                "the stored state was applied up to {} but this node had applied {} (HSM checkpoint)",
                show_log(&stored.applied.map(|(l, _)| l)),
                show_log(&Some(at))
            )));
        }
        if let (Some((at, digest)), Some((stored_at, stored_digest))) =
            (self.applied, stored.applied)
            && at == stored_at
            && digest != stored_digest
        {
            return Some(Behind::Forked(format!(
                "the stored state after entry {}-{} is not the state this node applied there (state digests differ)",
                at.leader_id.term, at.index
            )));
        }
        None
    }

    /// Whether a node that was behind this mark has caught up: its log and
    /// applied state (`now`) reached everything the mark records.
    pub fn reached_by(&self, now: &Mark) -> bool {
        let vote = match (self.vote, now.vote) {
            (Some(mine), Some(n)) => vote_at_least(&n, &mine),
            (Some(_), None) => false,
            (None, _) => true,
        };
        let applied_to = now.applied.map(|(l, _)| l);
        vote && applied_to >= self.last_log && applied_to >= self.applied.map(|(l, _)| l)
    }

    /// The bytes of this mark (version 2, postcard).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![2u8];
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// A mark from [`Mark::encode`]'s bytes (or the first format's).
    pub fn decode(bytes: &[u8]) -> Result<Mark, String> {
        match bytes.split_first() {
            Some((2, rest)) => postcard::from_bytes(rest).map_err(|e| format!("checkpoint: {e}")),
            Some((1, rest)) => postcard::from_bytes::<MarkV1>(rest)
                .map(|m| Mark {
                    vote: m.vote,
                    last_log: m.last_log,
                    applied: m.applied,
                    log_hash: None,
                })
                .map_err(|e| format!("checkpoint: {e}")),
            Some((v, _)) => Err(format!("checkpoint format {v} is not one this build reads")),
            None => Err("empty checkpoint".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 0), index))
    }

    fn vote(term: u64, node: u64) -> Option<Vote<u64>> {
        Some(Vote::new(term, node))
    }

    fn mark(v: u64, t: u64, i: u64, applied: u64, digest: u8) -> Mark {
        Mark {
            vote: vote(v, 1),
            last_log: log(t, i),
            applied: log(t, applied).map(|l| (l, [digest; 32])),
            log_hash: Some([digest; 32]),
        }
    }

    #[test]
    fn a_mark_only_grows() {
        let m = mark(3, 3, 100, 90, 1);
        // An older or truncated position does not lower it.
        assert_eq!(m.merge(&mark(2, 2, 50, 40, 2)), m);
        let later = mark(4, 4, 96, 95, 3);
        let merged = m.merge(&later);
        assert_eq!(merged.vote, vote(4, 1));
        // (4, 96) is after (3, 100): the term comes first.
        assert_eq!(merged.last_log, log(4, 96));
        assert_eq!(merged.applied, later.applied);
        // The log hash goes with the log id it was taken at.
        assert_eq!(merged.log_hash, later.log_hash);
        assert_eq!(m.merge(&mark(2, 2, 50, 40, 2)).log_hash, m.log_hash);
        // Parts left out say nothing.
        assert_eq!(m.merge(&Mark::default()), m);
        // Another node's vote in the same term counts as openraft orders
        // it: a higher node id is greater (openraft grants it, a split
        // vote), a lower one is not.
        let other = Mark {
            vote: vote(3, 2),
            ..Mark::default()
        };
        assert_eq!(m.merge(&other).vote, vote(3, 2));
        assert_eq!(other.merge(&m).vote, vote(3, 2));
        // The leader of that term, once granted, is.
        let mut granted = Vote::new(3, 2);
        granted.commit();
        let leader = Mark {
            vote: Some(granted),
            ..Mark::default()
        };
        assert_eq!(m.merge(&leader).vote, Some(granted));
    }

    #[test]
    fn an_older_disk_is_behind_and_a_different_one_is_forked() {
        let hsm = mark(5, 5, 200, 180, 7);
        assert_eq!(hsm.behind(&hsm), None);
        assert_eq!(hsm.behind(&mark(6, 6, 210, 205, 9)), None);
        let restored = mark(3, 3, 120, 120, 4);
        assert!(matches!(hsm.behind(&restored), Some(Behind::Behind(_))));
        let empty = Mark::default();
        assert!(matches!(hsm.behind(&empty), Some(Behind::Behind(_))));
        // The log intact but the vote rolled back: a double vote waiting.
        let mut vote_lost = hsm.clone();
        vote_lost.vote = vote(4, 1);
        assert!(matches!(hsm.behind(&vote_lost), Some(Behind::Behind(_))));
        // The log intact but the state applied less (an edited disk).
        let mut applied_less = hsm.clone();
        applied_less.applied = log(5, 170).map(|l| (l, [7; 32]));
        assert!(matches!(hsm.behind(&applied_less), Some(Behind::Behind(_))));
        let mut forked = hsm.clone();
        forked.applied = forked.applied.map(|(l, _)| (l, [8; 32]));
        assert!(matches!(hsm.behind(&forked), Some(Behind::Forked(_))));
        // No checkpoint yet: nothing to be behind.
        assert_eq!(Mark::default().behind(&restored), None);
    }

    #[test]
    fn the_vote_restored_is_the_greater_and_never_a_resumed_leadership() {
        let committed = |t, n| {
            let mut c = Vote::new(t, n);
            c.commit();
            c
        };
        // The disk's vote is older: the HSM's goes back on disk.
        assert_eq!(
            vote_to_restore(Some(committed(5, 3)), Some(committed(4, 1)), 2, true),
            Some(committed(5, 3))
        );
        // The disk is current: nothing to write.
        assert_eq!(
            vote_to_restore(Some(committed(5, 3)), Some(committed(5, 3)), 2, false),
            None
        );
        assert_eq!(vote_to_restore(None, None, 2, true), None);
        // This node led: it keeps the vote, not the leadership.
        assert_eq!(
            vote_to_restore(Some(committed(4, 2)), Some(committed(4, 2)), 2, true),
            Some(Vote::new(4, 2))
        );
        assert_eq!(
            vote_to_restore(Some(committed(4, 2)), Some(Vote::new(3, 2)), 2, false),
            Some(committed(4, 2))
        );
        // A disk ahead of the HSM (it never is, but) wins.
        assert_eq!(
            vote_to_restore(Some(Vote::new(3, 1)), Some(committed(4, 1)), 2, false),
            None
        );
        // But never with a term past the bound (an edited disk adopted
        // with --accept-rollback): the next election would overflow.
        let huge = committed(u64::MAX, 1);
        assert_eq!(
            vote_to_restore(Some(committed(4, 1)), Some(huge), 2, true),
            Some(committed(4, 1))
        );
        assert_eq!(
            vote_to_restore(None, Some(huge), 2, true),
            Some(Vote::new(0, 2))
        );
    }

    #[test]
    fn votes_compare_as_raft_orders_them_and_never_panic() {
        let v = |t, n| Vote::new(t, n);
        let committed = |t, n| {
            let mut c = Vote::new(t, n);
            c.commit();
            c
        };
        assert!(vote_at_least(&v(4, 1), &v(3, 2)));
        assert!(!vote_at_least(&v(3, 1), &v(4, 1)));
        assert!(vote_at_least(&v(3, 1), &v(3, 1)));
        assert!(!vote_at_least(&v(3, 1), &v(3, 2)));
        assert!(vote_at_least(&committed(3, 2), &v(3, 1)));
        assert!(!vote_at_least(&v(3, 1), &committed(3, 2)));
        // openraft's order in one term: the node id first, then committed.
        assert!(vote_at_least(&v(3, 2), &committed(3, 1)));
        assert!(vote_at_least(&committed(3, 2), &committed(3, 1)));
        assert!(!vote_at_least(&committed(3, 1), &committed(3, 2)));
        for (a, b) in [
            (v(3, 1), v(3, 2)),
            (committed(3, 1), v(3, 2)),
            (v(4, 1), committed(3, 2)),
        ] {
            assert_eq!(vote_at_least(&b, &a), b >= a, "{a} {b}");
            assert_eq!(vote_at_least(&a, &b), a >= b, "{a} {b}");
        }
        // Two leaders of one term conflict; a leader and a candidate do not.
        assert!(votes_conflict(&committed(3, 1), &committed(3, 2)));
        assert!(!votes_conflict(&committed(3, 1), &v(3, 2)));
        assert!(!votes_conflict(&committed(3, 1), &committed(4, 2)));
        assert!(!votes_conflict(&committed(3, 1), &committed(3, 1)));
    }

    /// Issue 26 review: a follower that granted candidate 2 and then, in
    /// the same term, candidate 3 (openraft's split-vote order) must record
    /// the second grant: the checkpoint kept the first, and a crash put it
    /// back, so the node could help candidate 2 lead a term it had given 3.
    #[test]
    fn a_second_grant_in_one_term_is_recorded_and_restored() {
        let first = Mark {
            vote: Some(Vote::new(5, 2)),
            last_log: None,
            applied: None,
            log_hash: None,
        };
        let second = Mark {
            vote: Some(Vote::new(5, 3)),
            ..first.clone()
        };
        let merged = first.merge(&second);
        assert_eq!(merged.vote, Some(Vote::new(5, 3)));
        assert_eq!(
            vote_to_restore(merged.vote, Some(Vote::new(5, 2)), 1, true),
            Some(Vote::new(5, 3))
        );
        // The same after following leader 2 of that term.
        let mut led = Vote::new(5, 2);
        led.commit();
        let followed = Mark {
            vote: Some(led),
            ..first.clone()
        };
        assert_eq!(followed.merge(&second).vote, Some(Vote::new(5, 3)));
    }

    #[test]
    fn caught_up_means_applied_past_the_mark() {
        let hsm = mark(5, 5, 200, 180, 7);
        assert!(!hsm.reached_by(&mark(5, 5, 200, 150, 1)));
        assert!(hsm.reached_by(&mark(5, 5, 200, 200, 1)));
        assert!(hsm.reached_by(&mark(6, 6, 120, 120, 1)));
        assert!(!hsm.reached_by(&mark(4, 5, 200, 200, 1)));
        assert!(Mark::default().reached_by(&Mark::default()));
    }

    #[test]
    fn the_chain_binds_every_entry_and_its_order() {
        let a = chain(&[0; 32], b"one");
        let b = chain(&a, b"two");
        assert_ne!(b, chain(&chain(&[0; 32], b"tw0"), b"two"));
        assert_ne!(b, chain(&chain(&[0; 32], b"two"), b"one"));
        assert_ne!(chain(&[0; 32], b"ab"), chain(&chain(&[0; 32], b"a"), b"b"));
        let at = LogId::new(CommittedLeaderId::new(3, 1), 9);
        assert_ne!(chain_base(at, &[1; 32]), chain_base(at, &[2; 32]));
    }

    #[test]
    fn marks_of_the_first_format_decode_without_a_log_hash() {
        #[derive(Serialize)]
        struct V1 {
            vote: Option<Vote<u64>>,
            last_log: Option<LogId<u64>>,
            applied: Option<(LogId<u64>, [u8; 32])>,
        }
        let m = mark(5, 5, 200, 180, 7);
        let mut old = vec![1u8];
        old.extend(
            postcard::to_allocvec(&V1 {
                vote: m.vote,
                last_log: m.last_log,
                applied: m.applied,
            })
            .expect("encode"),
        );
        let decoded = Mark::decode(&old).expect("decode");
        assert_eq!(decoded.last_log, m.last_log);
        assert_eq!(decoded.log_hash, None);
    }

    #[test]
    fn marks_round_trip_and_unknown_formats_are_refused() {
        let m = mark(5, 5, 200, 180, 7);
        assert_eq!(Mark::decode(&m.encode()), Ok(m));
        assert!(Mark::decode(&[3, 0]).is_err());
        assert!(Mark::decode(&[2, 0xff, 0xff]).is_err());
        assert!(Mark::decode(&[]).is_err());
        assert!(Mark::decode(&[1, 0xff, 0xff]).is_err());
    }
}
