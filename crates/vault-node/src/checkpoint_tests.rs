//! The start-up decision against disks that claim to be behind, equal or
//! ahead of the HSM checkpoint (issue 25).

use super::*;

fn log(term: u64, index: u64) -> Option<LogId<u64>> {
    Some(LogId::new(openraft::CommittedLeaderId::new(term, 0), index))
}

fn committed(term: u64, node: u64) -> Vote<u64> {
    let mut v = Vote::new(term, node);
    v.commit();
    v
}

/// Node 1's checkpoint: node 3 leads term 5; log to 5-100, applied 5-90.
fn hsm() -> Recorded {
    Recorded {
        mark: Mark {
            vote: Some(committed(5, 3)),
            last_log: log(5, 100),
            applied: log(5, 90).map(|l| (l, [7; 32])),
            log_hash: Some([5; 32]),
        },
        resets: 0,
        lost: false,
    }
}

fn disk_like(r: &Recorded) -> Disk {
    Disk {
        vote: r.mark.vote,
        last_log: r.mark.last_log,
        purged: log(5, 40),
        applied: r.mark.applied,
        log_hash: r.mark.log_hash,
        chain_base: log(5, 40),
    }
}

/// The critical finding: an old copy of node 1's disk edited to say term
/// 6, voted for itself and committed, purged and applied at 6-10000 with
/// no entries. On 9722beb the start-up check called this current and kept
/// the disk's vote: node 1 led term 6 at once and sent its old state to
/// the others as a snapshot.
#[test]
fn a_forged_disk_ahead_of_the_checkpoint_is_not_believed() {
    let forged = Disk {
        vote: Some(committed(6, 1)),
        last_log: log(6, 10_000),
        purged: log(6, 10_000),
        applied: log(6, 10_000).map(|l| (l, [9; 32])),
        log_hash: Some([5; 32]),
        chain_base: log(6, 10_000),
    };
    let d = decide(Some(hsm()), &forged, false, 1).expect("decided");
    assert!(d.wipe, "the forged disk must be moved aside: {d:?}");
    assert_eq!(
        d.vote,
        Some(committed(5, 3)),
        "the HSM's vote, not the disk's"
    );
    assert!(matches!(d.standing, Standing::Behind { .. }), "{d:?}");
    // Each claim alone is enough.
    let mut purged_only = disk_like(&hsm());
    purged_only.purged = log(6, 10_000);
    purged_only.last_log = log(6, 10_000);
    assert!(decide(Some(hsm()), &purged_only, false, 1).unwrap().wipe);
    let mut applied_only = disk_like(&hsm());
    applied_only.applied = log(5, 95).map(|l| (l, [9; 32]));
    assert!(decide(Some(hsm()), &applied_only, false, 1).unwrap().wipe);
    let mut other_state = disk_like(&hsm());
    other_state.applied = hsm().mark.applied.map(|(l, _)| (l, [8; 32]));
    assert!(decide(Some(hsm()), &other_state, false, 1).unwrap().wipe);
}

/// A vote ahead on an otherwise current disk: the checkpoint's goes back,
/// and this node's own leadership is never resumed from disk.
#[test]
fn the_vote_is_always_the_checkpoints_and_never_a_resumed_lead() {
    let mut ahead = disk_like(&hsm());
    ahead.vote = Some(committed(6, 1));
    let d = decide(Some(hsm()), &ahead, false, 1).unwrap();
    assert_eq!(d.vote, Some(committed(5, 3)));
    assert_eq!(d.standing, Standing::Current);
    assert!(!d.wipe);
    let mut led = hsm();
    led.mark.vote = Some(committed(5, 1));
    let d = decide(Some(led.clone()), &disk_like(&led), false, 1).unwrap();
    assert_eq!(d.vote, Some(Vote::new(5, 1)));
    assert_eq!(d.standing, Standing::Current);
    // Nothing to write when the disk already holds it.
    let d = decide(Some(hsm()), &disk_like(&hsm()), false, 1).unwrap();
    assert_eq!((d.vote, d.wipe, d.write), (None, false, false));
    assert_eq!(
        d.committed,
        log(5, 90),
        "the hint is the checkpoint's applied id"
    );
}

/// The high finding: the checkpoint object deleted and the disk wiped. On
/// 9722beb this started as a new node that voted at once.
#[test]
fn a_missing_checkpoint_is_a_loss_not_a_new_node() {
    let d = decide(None, &Disk::default(), false, 1).unwrap();
    assert!(matches!(d.standing, Standing::Lost { .. }), "{d:?}");
    assert!(d.wipe && d.write);
    assert_eq!(d.recorded.resets, 1);
    assert!(d.recorded.lost);
    // Still lost after a restart mid-way, counted once.
    let again = decide(Some(d.recorded.clone()), &Disk::default(), false, 1).unwrap();
    assert!(matches!(again.standing, Standing::Lost { .. }));
    assert_eq!(again.recorded.resets, 1);
    assert!(!again.write);
    // The same with an old disk.
    let old = disk_like(&hsm());
    assert!(matches!(
        decide(None, &old, false, 1).unwrap().standing,
        Standing::Lost { .. }
    ));
}

/// A token born at provisioning and an empty disk: a new node. A born
/// token with a disk that claims anything: that disk was never this
/// node's.
#[test]
fn a_born_checkpoint_is_a_new_node_only_with_an_empty_disk() {
    let born = Recorded::decode(vault_hsm::checkpoint::BORN).expect("born");
    let d = decide(Some(born.clone()), &Disk::default(), false, 1).unwrap();
    assert_eq!(d.standing, Standing::Current);
    assert!(!d.wipe);
    let d = decide(Some(born), &disk_like(&hsm()), false, 1).unwrap();
    assert!(d.wipe, "{d:?}");
}

/// Less applied than the checkpoint (the normal crash: applies are held
/// until a checkpoint write): re-applied from the log and checked there.
#[test]
fn a_disk_that_applied_less_re_applies_and_is_checked() {
    let mut short = disk_like(&hsm());
    short.applied = log(5, 60).map(|l| (l, [1; 32]));
    let d = decide(Some(hsm()), &short, false, 1).unwrap();
    assert_eq!(d.standing, Standing::Current);
    assert_eq!(d.committed, log(5, 90));
    assert_eq!(d.verify, hsm().mark.applied);
    // A log purged past the state on disk cannot take it anywhere.
    short.purged = log(5, 70);
    assert!(decide(Some(hsm()), &short, false, 1).unwrap().wipe);
}

/// A log that ends short of the checkpoint (a restored backup, a lost
/// disk) cannot be checked against it: it keeps only what its state has
/// applied, and the node catches up, behind, with the checkpoint's vote;
/// its state is checked when it applies the checkpoint's applied id.
#[test]
fn a_short_log_is_behind_and_keeps_only_what_its_state_applied() {
    let mut restored = disk_like(&hsm());
    restored.last_log = log(5, 95);
    let d = decide(Some(hsm()), &restored, false, 1).unwrap();
    assert!(matches!(d.standing, Standing::Behind { .. }));
    assert!(!d.wipe);
    assert_eq!(d.cut_after, Some(log(5, 90)));
    let old = Disk {
        vote: Some(committed(4, 2)),
        last_log: log(4, 50),
        purged: log(4, 10),
        applied: log(4, 45).map(|l| (l, [2; 32])),
        log_hash: Some([4; 32]),
        chain_base: log(4, 10),
    };
    let d = decide(Some(hsm()), &old, false, 1).unwrap();
    assert!(matches!(d.standing, Standing::Behind { .. }));
    assert!(!d.wipe);
    assert_eq!(d.cut_after, Some(log(4, 45)));
    assert_eq!(d.committed, log(4, 45));
    assert_eq!(d.verify, hsm().mark.applied);
    assert_eq!(d.vote, Some(committed(5, 3)));
}

/// Entries edited in place (same log ids, other contents): the running
/// hash the checkpoint recorded at its last log id is not reached.
#[test]
fn a_log_edited_in_place_is_not_believed() {
    let mut edited = disk_like(&hsm());
    edited.log_hash = Some([6; 32]);
    let d = decide(Some(hsm()), &edited, false, 1).unwrap();
    assert!(d.wipe, "{d:?}");
    // A checkpoint from before the chain has no hash to compare.
    let mut legacy = hsm();
    legacy.mark.log_hash = None;
    assert!(!decide(Some(legacy), &edited, false, 1).unwrap().wipe);
}

#[test]
fn an_accepted_rollback_keeps_the_highest_term_and_counts() {
    let mut h = hsm();
    h.resets = 2;
    let old = Disk {
        vote: Some(committed(4, 2)),
        last_log: log(4, 10),
        purged: None,
        applied: log(4, 10).map(|l| (l, [1; 32])),
        log_hash: None,
        chain_base: None,
    };
    let d = decide(Some(h), &old, true, 1).unwrap();
    assert_eq!(d.recorded.resets, 3);
    assert_eq!(d.standing, Standing::Current);
    assert_eq!(d.vote, Some(committed(5, 3)));
    assert_eq!(d.recorded.mark.last_log, old.last_log);
    assert!(d.write && !d.wipe);
}

#[test]
fn the_record_round_trips_and_reads_the_first_format() {
    let r = Recorded {
        mark: hsm().mark,
        resets: 3,
        lost: true,
    };
    assert_eq!(Recorded::decode(&r.encode()), Ok(r.clone()));
    let mut v1 = vec![1u8];
    v1.extend_from_slice(&3u32.to_be_bytes());
    v1.extend(r.mark.encode());
    let old = Recorded::decode(&v1).expect("first format");
    assert!(!old.lost);
    assert_eq!(old.mark.last_log, r.mark.last_log);
    // Its digest was another function: kept as unknown, not compared.
    assert_eq!(
        old.mark.applied,
        r.mark.applied.map(|(l, _)| (l, UNKNOWN_COMMITMENT))
    );
    let d = decide(Some(old), &disk_like(&hsm()), false, 1).unwrap();
    assert!(!d.wipe && d.verify.is_none());
    assert!(Recorded::decode(&[3, 0, 0, 0, 0, 1]).is_err());
    assert!(Recorded::decode(&[2, 0, 0, 0, 0, 7]).is_err());
}

/// Found in review: each of these let an edited disk start as current.
#[test]
fn review_edits_are_not_believed() {
    // The chain's base moved past the purge marker and the applied state:
    // entries between would be applied without being hashed.
    let mut base_ahead = disk_like(&hsm());
    base_ahead.chain_base = log(5, 95);
    assert!(decide(Some(hsm()), &base_ahead, false, 1).unwrap().wipe);
    // An applied log id that sorts lower at the checkpoint's index (the
    // re-apply by index would check nothing).
    let mut other_leader = disk_like(&hsm());
    other_leader.applied = Some((
        LogId::new(openraft::CommittedLeaderId::new(5, 7), 90),
        [7; 32],
    ));
    assert!(decide(Some(hsm()), &other_leader, false, 1).unwrap().wipe);
    // A vote on a disk whose token was born with an empty checkpoint (a
    // term planted before the node's first start).
    let born = Recorded::default();
    let planted = Disk {
        vote: Some(committed(u64::MAX, 1)),
        ..Disk::default()
    };
    assert!(decide(Some(born), &planted, false, 1).unwrap().wipe);
}

/// A lost checkpoint has the operator's way out too (counted).
#[test]
fn accept_rollback_ends_a_loss() {
    let lost_one = decide(None, &Disk::default(), false, 1).unwrap().recorded;
    let d = decide(Some(lost_one), &disk_like(&hsm()), true, 1).unwrap();
    assert_eq!(d.standing, Standing::Current);
    assert!(!d.recorded.lost && !d.wipe);
    assert_eq!(d.recorded.resets, 2);
}

#[test]
fn a_rollback_onto_records_under_a_destroyed_kek_is_refused() {
    use crate::checkpoint::refuse_rollback_past_destroyed_keks as refuse;
    use std::collections::{BTreeMap, BTreeSet};
    let state = BTreeMap::from([(Some(1), 7), (Some(2), 3), (None, 2)]);
    let err = refuse(&state, &BTreeSet::from([1]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("7 under KEK v1"), "{err}");
    assert!(refuse(&state, &BTreeSet::new()).is_ok());
    assert!(refuse(&state, &BTreeSet::from([3])).is_ok());
}

/// Issue 25's second review: `--accept-rollback` with no checkpoint (or a
/// lost one) recorded the disk's vote as it was, an unbounded one
/// included, and the next start put it back on disk.
#[test]
fn an_adopted_disk_never_records_an_unbounded_vote() {
    let mut disk = disk_like(&hsm());
    disk.vote = Some(committed(u64::MAX, 2));
    let d = decide(None, &disk, true, 1).unwrap();
    assert_eq!(d.recorded.mark.vote, Some(Vote::new(0, 1)));
    assert_eq!(d.vote, Some(Vote::new(0, 1)));
    let lost_one = decide(None, &Disk::default(), false, 1).unwrap().recorded;
    let d = decide(Some(lost_one), &disk, true, 1).unwrap();
    assert_eq!(d.recorded.mark.vote, Some(Vote::new(0, 1)));
}

/// Issue 25's second review: the base was compared with the purge marker
/// as log ids, which order by term first, so a base written with term 0
/// at index 80 lost to a purge marker at (5, 10), and entries 11..=80,
/// which the hash does not cover, stayed.
#[test]
fn the_unchecked_entries_are_found_by_index() {
    let r = hsm();
    let mut disk = disk_like(&r);
    disk.chain_base = log(0, 80);
    disk.purged = log(5, 10);
    let d = decide(Some(r), &disk, false, 1).unwrap();
    assert_eq!(d.standing, Standing::Current);
    assert!(!d.wipe);
    assert_eq!(unchained_through(&d, &disk).map(|l| l.index), Some(80));
}
