//! Unit tests of every transition and error, and property tests of the
//! invariants over random command sequences.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use vault_types::{
    Command, CommandError, FleetId, Generation, Proposal, RequestDigest, RequestId, RequestMeta,
    Response, SealedBytes, Timestamp, UserId, UserStatus,
};

use super::VaultState;
use crate::key::StateKey;
use crate::record::{RecordStatus, UserRecord};

const CAP: u32 = 10;

fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user id")
}

fn prop(command: Command) -> Proposal {
    Proposal {
        request: None,
        at: Timestamp(1000),
        command,
    }
}

fn with_request(command: Command, id: u8, digest: u8) -> Proposal {
    Proposal {
        request: Some(RequestMeta {
            id: RequestId([id; 16]),
            digest: RequestDigest([digest; 32]),
        }),
        at: Timestamp(2000),
        command,
    }
}

fn init() -> Command {
    Command::InitFleet {
        fleet_id: FleetId::new("test-fleet").expect("fleet id"),
        sealed_server_setup: SealedBytes(vec![0xee; 40]),
        sealed_hpke_key: SealedBytes(vec![0xdd; 40]),
        max_attempts_cap: CAP,
    }
}

/// The first registration of `name`.
fn register(name: &str, max_attempts: u32) -> Command {
    reregister(name, 0, max_attempts)
}

/// A registration of `name` by an app that saw generation `expected`.
fn reregister(name: &str, expected: u64, max_attempts: u32) -> Command {
    Command::Register {
        user: user(name),
        expected_generation: Generation(expected),
        sealed_record: SealedBytes(format!("sealed-{name}").into_bytes()),
        max_attempts,
    }
}

fn begin(name: &str) -> Command {
    Command::BeginAttempt { user: user(name) }
}

fn finish(name: &str, generation: u64, success: bool) -> Command {
    Command::FinishAttempt {
        user: user(name),
        generation: Generation(generation),
        success,
    }
}

fn finish_grant(name: &str, generation: u64, attempt: u32, success: bool) -> Command {
    Command::FinishGrant {
        user: user(name),
        generation: Generation(generation),
        attempt,
        success,
    }
}

fn left(log: &Log, name: &str) -> u32 {
    match log.state.status(&user(name)) {
        UserStatus::Active { attempts_left, .. } => attempts_left,
        other => panic!("{other:?}"),
    }
}

fn serial(r: Response) -> u32 {
    match r {
        Response::AttemptGranted { attempt, .. } => attempt,
        other => panic!("{other:?}"),
    }
}

/// Issue 26's attack, on the state machine: guesses granted while a
/// genuine login waits for its KE3 were forgiven by its success, and a
/// success landing after a newer one forgave what came in between.
#[test]
fn a_success_forgives_the_grants_up_to_its_own_and_none_after() {
    let mut log = Log::new();
    log.ok(prop(register("d", 5)));
    let a = serial(log.ok(prop(begin("d"))));
    log.ok(prop(begin("d")));
    log.ok(prop(begin("d")));
    assert_eq!(left(&log, "d"), 2);
    log.ok(prop(finish_grant("d", 1, a, true)));
    assert_eq!(left(&log, "d"), 3, "the two guesses after it stay counted");
    let d = serial(log.ok(prop(begin("d"))));
    let e = serial(log.ok(prop(begin("d"))));
    assert_eq!((a, d, e), (1, 4, 5), "serials are never reused");
    log.ok(prop(finish_grant("d", 1, e, true)));
    assert_eq!(left(&log, "d"), 5);
    log.ok(prop(begin("d")));
    // The older success lands late: it forgives nothing newer, and still
    // answers success (its KE3 verified).
    assert!(matches!(
        log.ok(prop(finish_grant("d", 1, d, true))),
        Response::AttemptFinished { success: true, .. }
    ));
    assert_eq!(left(&log, "d"), 4);
    // A serial this generation never granted finishes nothing.
    for bad in [0, 7] {
        assert_eq!(
            log.apply(prop(finish_grant("d", 1, bad, true))),
            Err(CommandError::NoAttemptInProgress)
        );
    }
    assert_eq!(left(&log, "d"), 4);
    // An older build's FinishAttempt still forgives every attempt.
    log.ok(prop(finish("d", 1, true)));
    assert_eq!(left(&log, "d"), 5);
}

/// Issue 26 review: an older build's entries (`BeginAttempt`,
/// `FinishAttempt`) applied by this build leave the bytes the older build
/// wrote (a success restarts the serials, as its records kept none), so
/// replicas that applied a log's tail under different builds agree.
#[test]
fn an_older_builds_entries_leave_the_older_builds_bytes() {
    let mut log = Log::new();
    log.ok(prop(register("o", 5)));
    log.ok(prop(begin("o")));
    log.ok(prop(begin("o")));
    log.ok(prop(finish("o", 1, true)));
    let record = log.state.user(&user("o")).expect("record").clone();
    assert!(matches!(
        record.status,
        RecordStatus::Active {
            attempts_used: 0,
            grants: 0,
            ..
        }
    ));
    assert_eq!(
        record.encode().expect("encode")[0],
        vault_types::codec::VALUE_V1
    );
}

/// Issue 26 review: a serial never repeats. At the last one a grant is
/// refused and the record locked, rather than a serial a success of an
/// older grant could reuse to forgive a newer one.
#[test]
fn the_last_serial_locks_rather_than_repeat() {
    let mut log = Log::new();
    log.ok(prop(register("m", 5)));
    if let Some(RecordStatus::Active { grants, .. }) =
        log.state.users.get_mut(&user("m")).map(|r| &mut r.status)
    {
        *grants = u32::MAX - 1;
    }
    assert_eq!(serial(log.ok(prop(begin("m")))), u32::MAX);
    assert_eq!(log.apply(prop(begin("m"))), Err(CommandError::Locked));
    assert!(matches!(
        log.state.status(&user("m")),
        UserStatus::Locked { .. }
    ));
}

/// A record whose serial equals its count is written in the first format,
/// byte for byte (so an older build's state keeps its commitment); one
/// that differs is written in format 2; both read back.
#[test]
fn user_records_keep_the_first_format_until_a_serial_differs() {
    let mut log = Log::new();
    log.ok(prop(register("d", 5)));
    log.ok(prop(begin("d")));
    let record = log.state.user(&user("d")).expect("record").clone();
    let bytes = record.encode().expect("encode");
    assert_eq!(bytes[0], vault_types::codec::VALUE_V1);
    assert_eq!(UserRecord::decode(&bytes).expect("v1"), record);
    let a = serial(log.ok(prop(begin("d"))));
    log.ok(prop(finish_grant("d", 1, a, true)));
    let record = log.state.user(&user("d")).expect("record").clone();
    let bytes = record.encode().expect("encode");
    assert_eq!(bytes[0], crate::record::USER_V2);
    assert_eq!(UserRecord::decode(&bytes).expect("v2"), record);
    // The replay of the forgiven grant has expired.
    let mut other = Log::new();
    other.ok(prop(register("r", 5)));
    let id = (9, 9);
    let first = other.ok(with_request(begin("r"), id.0, id.1));
    other.ok(prop(finish_grant("r", 1, serial(first), true)));
    assert_eq!(
        other.apply(with_request(begin("r"), id.0, id.1)),
        Err(CommandError::GrantExpired)
    );
}

/// A state with the fleet initialised, applying from index 1.
struct Log {
    state: VaultState,
    index: u64,
}

impl Log {
    fn new() -> Self {
        let mut log = Log {
            state: VaultState::default(),
            index: 0,
        };
        log.ok(prop(init()));
        log
    }

    fn apply(&mut self, p: Proposal) -> Result<Response, CommandError> {
        self.index += 1;
        self.state.apply(self.index, &p).reply
    }

    fn ok(&mut self, p: Proposal) -> Response {
        self.apply(p.clone())
            .unwrap_or_else(|e| panic!("{p:?} failed: {e}"))
    }
}

#[test]
fn init_fleet_happens_once_and_needs_a_cap() {
    let mut s = VaultState::default();
    assert_eq!(
        s.apply(1, &prop(register("a", 3))).reply,
        Err(CommandError::FleetNotInitialized)
    );
    assert_eq!(
        s.apply(1, &prop(begin("a"))).reply,
        Err(CommandError::FleetNotInitialized)
    );
    let zero = Command::InitFleet {
        fleet_id: FleetId::new("f").expect("id"),
        sealed_server_setup: SealedBytes(vec![]),
        sealed_hpke_key: SealedBytes(vec![0xdd; 40]),
        max_attempts_cap: 0,
    };
    assert!(matches!(
        s.apply(2, &prop(zero)).reply,
        Err(CommandError::MaxAttemptsOutOfRange { .. })
    ));
    assert!(matches!(
        s.apply(3, &prop(init())).reply,
        Ok(Response::FleetInitialized { .. })
    ));
    assert_eq!(
        s.apply(4, &prop(init())).reply,
        Err(CommandError::FleetAlreadyInitialized)
    );
    assert_eq!(s.fleet().map(|f| f.max_attempts_cap), Some(CAP));
}

#[test]
fn register_checks_the_budget_and_bumps_the_generation() {
    let mut log = Log::new();
    assert_eq!(
        log.apply(prop(register("a", 0))),
        Err(CommandError::MaxAttemptsOutOfRange {
            requested: 0,
            cap: CAP
        })
    );
    assert_eq!(
        log.apply(prop(register("a", CAP + 1))),
        Err(CommandError::MaxAttemptsOutOfRange {
            requested: CAP + 1,
            cap: CAP
        })
    );
    assert_eq!(
        log.ok(prop(register("a", 3))),
        Response::Registered {
            generation: Generation(1)
        }
    );
    log.ok(prop(begin("a")));
    assert_eq!(
        log.ok(prop(reregister("a", 1, CAP))),
        Response::Registered {
            generation: Generation(2)
        }
    );
    assert_eq!(
        log.state.status(&user("a")),
        UserStatus::Active {
            generation: Generation(2),
            attempts_left: CAP,
            max_attempts: CAP
        }
    );
}

#[test]
fn attempts_count_down_and_an_unfinished_budget_locks() {
    let mut log = Log::new();
    log.ok(prop(register("a", 3)));
    for (n, left) in [(1, 2), (2, 1), (3, 0)] {
        match log.ok(prop(begin("a"))) {
            Response::AttemptGranted {
                attempt,
                attempts_left,
                sealed_record,
                generation,
            } => {
                assert_eq!(
                    (attempt, attempts_left, generation),
                    (n, left, Generation(1))
                );
                assert_eq!(sealed_record.0, b"sealed-a");
            }
            other => panic!("{other:?}"),
        }
    }
    // The fourth attempt is never granted; the record is erased.
    assert_eq!(log.apply(prop(begin("a"))), Err(CommandError::Locked));
    assert_eq!(
        log.state.user(&user("a")).map(|r| &r.status),
        Some(&RecordStatus::Locked { of: Generation(1) })
    );
    // The tombstone is a generation of its own.
    assert_eq!(
        log.state.status(&user("a")),
        UserStatus::Locked {
            generation: Generation(2)
        }
    );
    assert_eq!(log.apply(prop(begin("a"))), Err(CommandError::Locked));
    assert_eq!(
        log.apply(prop(begin("nobody"))),
        Err(CommandError::NotFound)
    );
}

#[test]
fn finish_resets_on_success_and_locks_on_the_last_failure() {
    let mut log = Log::new();
    log.ok(prop(register("a", 2)));
    assert_eq!(
        log.apply(prop(finish("a", 1, true))),
        Err(CommandError::NoAttemptInProgress)
    );
    log.ok(prop(begin("a")));
    assert_eq!(
        log.ok(prop(finish("a", 1, false))),
        Response::AttemptFinished {
            generation: Generation(1),
            success: false,
            attempts_left: 1,
            locked: false
        }
    );
    log.ok(prop(begin("a")));
    assert_eq!(
        log.ok(prop(finish("a", 1, true))),
        Response::AttemptFinished {
            generation: Generation(1),
            success: true,
            attempts_left: 2,
            locked: false
        }
    );
    log.ok(prop(begin("a")));
    log.ok(prop(begin("a")));
    assert_eq!(
        log.apply(prop(finish("a", 2, true))),
        Err(CommandError::StaleGeneration {
            current: Generation(1),
            given: Generation(2)
        })
    );
    assert_eq!(
        log.ok(prop(finish("a", 1, false))),
        Response::AttemptFinished {
            generation: Generation(1),
            success: false,
            attempts_left: 0,
            locked: true
        }
    );
    assert_eq!(
        log.state.user(&user("a")).map(|r| &r.status),
        Some(&RecordStatus::Locked { of: Generation(1) })
    );
    assert_eq!(
        log.apply(prop(finish("a", 1, true))),
        Err(CommandError::Locked)
    );
    assert_eq!(
        log.apply(prop(finish("b", 1, true))),
        Err(CommandError::NotFound)
    );
    // A registration sealed over the active generation 1 cannot apply
    // after the lockout; one over the tombstone's generation 2 can.
    assert!(matches!(
        log.apply(prop(reregister("a", 1, 2))),
        Err(CommandError::StaleGeneration { .. })
    ));
    assert_eq!(
        log.ok(prop(reregister("a", 2, 2))),
        Response::Registered {
            generation: Generation(3)
        }
    );
}

#[test]
fn delete_leaves_a_tombstone_that_keeps_the_generation() {
    let mut log = Log::new();
    assert_eq!(
        log.apply(prop(Command::Delete { user: user("a") })),
        Err(CommandError::NotFound)
    );
    log.ok(prop(register("a", 3)));
    assert_eq!(
        log.ok(prop(Command::Delete { user: user("a") })),
        Response::Deleted
    );
    assert_eq!(
        log.ok(prop(Command::Delete { user: user("a") })),
        Response::Deleted
    );
    assert_eq!(log.apply(prop(begin("a"))), Err(CommandError::NotFound));
    assert_eq!(
        log.apply(prop(finish("a", 1, true))),
        Err(CommandError::NotFound)
    );
    // The tombstone is generation 2, and a second delete changes nothing.
    assert_eq!(
        log.state.status(&user("a")),
        UserStatus::Deleted {
            generation: Generation(2)
        }
    );
    // Registrations sealed before the delete (over generation 0 or over
    // the deleted generation 1) are refused.
    for stale in [0, 1] {
        assert_eq!(
            log.apply(prop(reregister("a", stale, 3))),
            Err(CommandError::StaleGeneration {
                current: Generation(2),
                given: Generation(stale)
            })
        );
    }
    assert_eq!(
        log.ok(prop(reregister("a", 2, 3))),
        Response::Registered {
            generation: Generation(3)
        }
    );
}

#[test]
fn bundle_epochs_follow_one_another() {
    let mut log = Log::new();
    let set = |epoch| {
        prop(Command::SetBundle {
            bundle: vec![epoch as u8],
            epoch,
        })
    };
    assert_eq!(
        log.apply(set(0)),
        Err(CommandError::EpochNotNext {
            current: 0,
            given: 0
        })
    );
    assert_eq!(log.ok(set(1)), Response::BundleSet { epoch: 1 });
    for given in [1, 3, 5, u64::MAX] {
        // A replay, a gap, and the epoch that would end the chain.
        assert_eq!(
            log.apply(set(given)),
            Err(CommandError::EpochNotNext { current: 1, given })
        );
    }
    assert_eq!(log.ok(set(2)), Response::BundleSet { epoch: 2 });
    assert_eq!(
        log.state.fleet().and_then(|f| f.bundle.clone()),
        Some((2, vec![2]))
    );
}

/// A sealed blob's bytes as far as the state can tell: format 1, KEK
/// `version`, then `tag`.
fn blob(version: u32, tag: &str) -> SealedBytes {
    let mut b = vec![1];
    b.extend_from_slice(&version.to_be_bytes());
    b.extend_from_slice(tag.as_bytes());
    SealedBytes(b)
}

fn reseal(version: u32, fleet: bool, records: Vec<(&str, u64, SealedBytes)>) -> Proposal {
    prop(Command::Reseal {
        kek_version: version,
        fleet: fleet.then(|| (blob(version, "setup"), blob(version, "hpke"))),
        records: records
            .into_iter()
            .map(|(u, g, b)| (user(u), Generation(g), b))
            .collect(),
    })
}

#[test]
fn reseal_moves_the_fleet_first_and_never_touches_a_budget() {
    let mut log = Log {
        state: VaultState::default(),
        index: 0,
    };
    log.ok(prop(Command::InitFleet {
        fleet_id: FleetId::new("test-fleet").expect("fleet id"),
        sealed_server_setup: blob(1, "setup"),
        sealed_hpke_key: blob(1, "hpke"),
        max_attempts_cap: CAP,
    }));
    let reg = |name: &str, version| {
        prop(Command::Register {
            user: user(name),
            expected_generation: Generation(0),
            sealed_record: blob(version, name),
            max_attempts: 3,
        })
    };
    log.ok(reg("a", 1));
    log.ok(reg("b", 1));
    log.ok(prop(begin("a")));
    assert_eq!(log.state.fleet_kek_version(), Some(1));
    // Records cannot move before the fleet's secrets do.
    assert!(matches!(
        log.apply(reseal(2, false, vec![("a", 1, blob(2, "a"))])),
        Err(CommandError::Reseal(_))
    ));
    // A blob not under the version the entry names is refused.
    assert!(matches!(
        log.apply(prop(Command::Reseal {
            kek_version: 2,
            fleet: Some((blob(1, "setup"), blob(2, "hpke"))),
            records: vec![],
        })),
        Err(CommandError::Reseal(_))
    ));
    log.ok(reseal(2, true, vec![]));
    assert_eq!(log.state.fleet_kek_version(), Some(2));
    // A node that had not applied the move sealed under v1: refused.
    assert!(matches!(
        log.apply(reg("c", 1)),
        Err(CommandError::OldKek {
            fleet: 2,
            sealed: 1
        })
    ));
    // Nor a version from nowhere.
    assert!(matches!(
        log.apply(reg("c", 9)),
        Err(CommandError::OldKek { sealed: 9, .. })
    ));
    // Refused, not remembered: the same request id succeeds once sealed
    // under v2.
    let sealed_under = |version| Command::Register {
        user: user("d"),
        expected_generation: Generation(0),
        sealed_record: blob(version, "d"),
        max_attempts: 3,
    };
    assert!(matches!(
        log.apply(with_request(sealed_under(1), 9, 9)),
        Err(CommandError::OldKek { .. })
    ));
    assert!(matches!(
        log.apply(with_request(sealed_under(2), 9, 9)),
        Ok(Response::Registered { .. })
    ));
    log.ok(reg("c", 2));
    assert_eq!(log.state.records_not_under(2, None, 10).len(), 2);
    // From a cursor, in user order.
    assert_eq!(
        log.state.records_not_under(2, Some(&user("a")), 10).len(),
        1
    );
    // "b" locks out between being read and re-sealed: left alone.
    log.ok(prop(Command::Delete { user: user("b") }));
    assert_eq!(
        log.ok(reseal(
            2,
            false,
            vec![("a", 1, blob(2, "a")), ("b", 1, blob(2, "b"))]
        )),
        Response::Resealed {
            records: 1,
            skipped: 1,
            fleet: false
        }
    );
    match log.state.user(&user("a")).map(|r| &r.status) {
        Some(RecordStatus::Active {
            sealed_record,
            attempts_used,
            max_attempts,
            ..
        }) => {
            assert_eq!(sealed_record, &blob(2, "a"));
            assert_eq!((*attempts_used, *max_attempts), (1, 3), "the budget moved");
        }
        other => panic!("{other:?}"),
    }
    assert!(log.state.records_not_under(2, None, 10).is_empty());
    let counts = log.state.blobs_by_kek_version();
    assert_eq!(counts.get(&Some(1)), None);
    assert_eq!(counts.get(&Some(2)), Some(&5));
    // The fleet never goes back to an older version.
    assert!(matches!(
        log.apply(reseal(1, true, vec![])),
        Err(CommandError::Reseal(_))
    ));
}

#[test]
fn preload_adds_synthetic_users_once_and_deterministically() {
    let mut log = Log::new();
    let preload = |first, count| prop(Command::Preload { first, count });
    assert_eq!(log.ok(preload(0, 3)), Response::Preloaded { added: 3 });
    assert_eq!(log.ok(preload(2, 3)), Response::Preloaded { added: 2 });
    let u = UserId::new("preload-0000000004").expect("id");
    match log.state.user(&u).map(|r| &r.status) {
        Some(RecordStatus::Active {
            sealed_record,
            attempts_used: 0,
            ..
        }) => {
            assert_eq!(sealed_record.0.len(), vault_types::PRELOAD_RECORD_LEN);
            assert_eq!(vault_types::sealed_kek_version(&sealed_record.0), None);
        }
        other => panic!("{other:?}"),
    }
    for count in [0, vault_types::MAX_PRELOAD_PER_ENTRY + 1] {
        assert!(matches!(
            log.apply(preload(10, count)),
            Err(CommandError::PreloadCount { .. })
        ));
    }
    // Another replica applying the same entries holds the same state.
    let mut other = Log::new();
    other.ok(preload(0, 3));
    other.ok(preload(2, 3));
    assert_eq!(other.state.digest(), log.state.digest());
}

#[test]
fn a_repeated_request_is_answered_from_the_table_and_costs_nothing() {
    let mut log = Log::new();
    log.ok(prop(register("a", 3)));
    let first = log.apply(with_request(begin("a"), 1, 1));
    let again = log.apply(with_request(begin("a"), 1, 1));
    assert_eq!(first, again);
    assert_eq!(
        log.state.status(&user("a")),
        UserStatus::Active {
            generation: Generation(1),
            attempts_left: 2,
            max_attempts: 3
        }
    );
    // The same id with another body (another KE1) gets nothing.
    assert_eq!(
        log.apply(with_request(begin("a"), 1, 2)),
        Err(CommandError::RequestIdReused)
    );
    assert_eq!(
        log.state.status(&user("a")),
        UserStatus::Active {
            generation: Generation(1),
            attempts_left: 2,
            max_attempts: 3
        }
    );
}

#[test]
fn a_replay_after_erasure_hands_out_no_material() {
    let mut log = Log::new();
    log.ok(prop(register("a", 1)));
    assert!(matches!(
        log.apply(with_request(begin("a"), 7, 7)),
        Ok(Response::AttemptGranted { .. })
    ));
    log.ok(prop(finish("a", 1, false)));
    assert_eq!(
        log.apply(with_request(begin("a"), 7, 7)),
        Err(CommandError::LockedAfterGrant)
    );
    // Nothing persisted for the dedup entry holds the sealed record either.
    let dedup = log
        .state
        .value(&StateKey::Dedup(RequestId([7; 16])))
        .expect("entry");
    assert!(!dedup.windows(8).any(|w| w == b"sealed-a"));
    // After re-registration the old request is stale, not a grant.
    log.ok(prop(reregister("a", 2, 1)));
    assert!(matches!(
        log.apply(with_request(begin("a"), 7, 7)),
        Err(CommandError::StaleGeneration { .. })
    ));
}

#[test]
fn the_dedup_table_is_bounded_and_evicts_by_index() {
    let mut s = VaultState::with_dedup_capacity(3);
    s.apply(1, &prop(init()));
    s.apply(2, &prop(register("a", CAP)));
    for id in 1..=5u8 {
        let applied = s.apply(10 + u64::from(id), &with_request(begin("a"), id, id));
        if id > 3 {
            assert_eq!(
                applied.changed.last().map(|(k, _)| k),
                Some(&StateKey::Dedup(RequestId([id - 3; 16])))
            );
        }
    }
    assert_eq!(s.dedup_len(), 3);
    assert!(!s.remembers(&RequestId([2; 16])));
    assert!(s.remembers(&RequestId([3; 16])));
}

#[test]
fn persisted_items_rebuild_the_same_state() {
    let mut log = Log::new();
    log.ok(prop(register("a", 3)));
    log.ok(with_request(begin("a"), 1, 1));
    log.ok(prop(register("b", 2)));
    log.ok(prop(Command::Delete { user: user("b") }));
    let items: Vec<_> = log.state.items().map(|(k, v)| (k.encode(), v)).collect();
    let back = VaultState::from_items(crate::DEFAULT_DEDUP_CAPACITY, items).expect("load");
    assert_eq!(back, log.state);
    assert_eq!(back.digest(), log.state.digest());
    assert!(VaultState::from_items(3, [(b"zz".to_vec(), vec![1])]).is_err());
    assert!(VaultState::from_items(3, [(b"ua".to_vec(), vec![9, 9])]).is_err());
}

#[test]
fn debug_output_shows_no_sealed_bytes() {
    let mut log = Log::new();
    log.ok(prop(register("a", 3)));
    let shown = format!("{:?}", log.state);
    assert!(!shown.contains("115, 101, 97, 108"), "{shown}"); // "seal" as numbers
    assert!(shown.contains("SealedBytes(<8 bytes>)"), "{shown}");
}

// ---- property tests ----

#[derive(Debug, Clone)]
enum Op {
    Register {
        user: u8,
        max: u32,
    },
    Begin {
        user: u8,
        req: Option<(u8, u8)>,
    },
    Finish {
        user: u8,
        generation_back: u8,
        /// `None`: an older build's `FinishAttempt`; `Some(k)`: a
        /// `FinishGrant` of the grant `k` serials before the newest.
        grant_back: Option<u8>,
        success: bool,
    },
    Delete {
        user: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..3u8, 1..5u32).prop_map(|(user, max)| Op::Register { user, max }),
        5 => (0..3u8, proptest::option::of((0..6u8, 0..2u8)))
            .prop_map(|(user, req)| Op::Begin { user, req }),
        3 => (0..3u8, 0..2u8, proptest::option::weighted(0.8, 0..4u8), any::<bool>())
            .prop_map(|(user, generation_back, grant_back, success)| Op::Finish { user, generation_back, grant_back, success }),
        1 => (0..3u8).prop_map(|user| Op::Delete { user }),
    ]
}

fn to_proposal(state: &VaultState, op: &Op) -> Proposal {
    let name = |u: &u8| user(&format!("user-{u}"));
    match op {
        Op::Register { user: u, max } => prop(Command::Register {
            user: name(u),
            expected_generation: state.user(&name(u)).map_or(Generation(0), |r| r.generation),
            sealed_record: SealedBytes(vec![*u; 16]),
            max_attempts: *max,
        }),
        Op::Begin { user: u, req: None } => prop(Command::BeginAttempt { user: name(u) }),
        Op::Begin {
            user: u,
            req: Some((id, digest)),
        } => with_request(Command::BeginAttempt { user: name(u) }, *id, *digest),
        Op::Finish {
            user: u,
            generation_back,
            grant_back,
            success,
        } => {
            let record = state.user(&name(u));
            let current = record.map_or(1, |r| r.generation.0);
            let generation = Generation(current.saturating_sub(u64::from(*generation_back)).max(1));
            match grant_back {
                None => prop(Command::FinishAttempt {
                    user: name(u),
                    generation,
                    success: *success,
                }),
                Some(k) => {
                    let newest = match record.map(|r| &r.status) {
                        Some(RecordStatus::Active { grants, .. }) => *grants,
                        _ => 1,
                    };
                    prop(Command::FinishGrant {
                        user: name(u),
                        generation,
                        attempt: newest.saturating_sub(u32::from(*k)),
                        success: *success,
                    })
                }
            }
        }
        Op::Delete { user: u } => prop(Command::Delete { user: name(u) }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_logs(ops in proptest::collection::vec(op(), 1..120)) {
        let mut a = VaultState::with_dedup_capacity(4);
        let mut log = vec![prop(init())];
        a.apply(1, &log[0]);
        // The serials of the grants still counted, per (user, generation).
        let mut granted: BTreeMap<(UserId, Generation), Vec<u32>> = BTreeMap::new();
        let mut disk: BTreeMap<Vec<u8>, Vec<u8>> = a.items().map(|(k, v)| (k.encode(), v)).collect();
        for (i, op) in ops.iter().enumerate() {
            let p = to_proposal(&a, op);
            let target = match &p.command {
                Command::BeginAttempt { user }
                | Command::FinishAttempt { user, .. }
                | Command::FinishGrant { user, .. } => Some(user.clone()),
                _ => None,
            };
            let before = target.as_ref().and_then(|u| a.user(u).cloned());
            let applied = a.apply(i as u64 + 2, &p);
            log.push(p.clone());
            // The kept digest is the digest of what is there.
            prop_assert_eq!(a.digest(), a.digest_from_scratch());

            // (c) a tombstone never returns material, fresh or replayed.
            if let (Ok(Response::AttemptGranted { generation, sealed_record, .. }), Some(u)) = (&applied.reply, &target) {
                let before = before.as_ref();
                prop_assert!(
                    matches!(before.map(|r| &r.status), Some(RecordStatus::Active { .. })),
                    "granted from a tombstone: {:?}", before
                );
                match a.user(u).map(|r| (&r.status, r.generation)) {
                    Some((RecordStatus::Active { sealed_record: live, .. }, g)) => {
                        prop_assert_eq!(g, *generation);
                        prop_assert_eq!(live, sealed_record);
                    }
                    other => prop_assert!(false, "granted but record is {:?}", other),
                }
            }

            // (a) the guess bound: count fresh grants (the record changed).
            if let (Ok(Response::AttemptGranted { generation, attempt, .. }), Some(u)) = (&applied.reply, &target)
                && applied.changed.iter().any(|(k, _)| *k == StateKey::User(u.clone()))
            {
                let counted = granted.entry((u.clone(), *generation)).or_default();
                prop_assert!(counted.iter().all(|s| s < attempt), "serial {} reused", attempt);
                counted.push(*attempt);
                let max = match before.as_ref().map(|r| &r.status) {
                    Some(RecordStatus::Active { max_attempts, .. }) => *max_attempts,
                    _ => 0,
                };
                prop_assert!(counted.len() as u32 <= max, "{} grants for {:?} with max {}", counted.len(), u, max);
            }
            // A success forgives the grants up to its own serial (every
            // one, for an older build's FinishAttempt), none after it.
            if let (Ok(Response::AttemptFinished { success: true, generation, .. }), Some(u)) = (&applied.reply, &target) {
                let through = match &p.command {
                    Command::FinishGrant { attempt, .. } => *attempt,
                    _ => u32::MAX,
                };
                if let Some(counted) = granted.get_mut(&(u.clone(), *generation)) {
                    counted.retain(|s| *s > through);
                }
            }
            // The model's count is the record's.
            if let Some(u) = &target
                && let Some(UserRecord { generation, status: RecordStatus::Active { attempts_used, .. }, .. }) = a.user(u)
            {
                let model = granted.get(&(u.clone(), *generation)).map_or(0, |c| c.len() as u32);
                prop_assert_eq!(*attempts_used, model, "attempts used of {:?}", u);
            }

            // Persisting only the changed keys keeps the disk equal to the state.
            for (k, v) in &applied.changed {
                match v {
                    Some(v) => { disk.insert(k.encode(), v.clone()); }
                    None => { disk.remove(&k.encode()); }
                }
            }
            let full: BTreeMap<Vec<u8>, Vec<u8>> = a.items().map(|(k, v)| (k.encode(), v)).collect();
            prop_assert_eq!(&disk, &full);
        }

        // (b) another replica applying the same log reaches the same digest,
        // and so does one rebuilt from the persisted items.
        let mut b = VaultState::with_dedup_capacity(4);
        for (i, p) in log.iter().enumerate() {
            b.apply(i as u64 + 1, p);
        }
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(&a, &b);
        let rebuilt = VaultState::from_items(4, disk).expect("rebuild");
        prop_assert_eq!(rebuilt.digest(), a.digest());
        let seen: HashSet<_> = log.iter().filter_map(|p| p.request.map(|r| r.id)).collect();
        prop_assert_eq!(a.dedup_len(), seen.len().min(4));
    }
}

#[test]
fn register_is_a_compare_and_set_on_the_generation() {
    let mut log = Log::new();
    let seen = |g: u64| reregister("gen", g, 3);
    // A user never seen is at generation 0.
    assert_eq!(
        log.apply(prop(seen(1))),
        Err(CommandError::StaleGeneration {
            current: Generation(0),
            given: Generation(1)
        })
    );
    assert_eq!(
        log.ok(prop(seen(0))),
        Response::Registered {
            generation: Generation(1)
        }
    );
    // The same registration again (a replay with any request id), or a
    // racing one that also saw 0, loses.
    assert_eq!(
        log.apply(prop(seen(0))),
        Err(CommandError::StaleGeneration {
            current: Generation(1),
            given: Generation(0)
        })
    );
    // After a lockout, a registration that saw the tombstone's generation
    // wins; one sealed before it, even over the active generation 1 that
    // then locked (a password change a frontend withheld), does not.
    log.ok(prop(begin("gen")));
    log.ok(prop(finish("gen", 1, false)));
    log.ok(prop(begin("gen")));
    log.ok(prop(finish("gen", 1, false)));
    log.ok(prop(begin("gen")));
    assert_eq!(
        log.apply(prop(finish("gen", 1, false))),
        Ok(Response::AttemptFinished {
            generation: Generation(1),
            success: false,
            attempts_left: 0,
            locked: true
        })
    );
    for stale in [0, 1] {
        assert_eq!(
            log.apply(prop(seen(stale))),
            Err(CommandError::StaleGeneration {
                current: Generation(2),
                given: Generation(stale)
            })
        );
    }
    assert_eq!(
        log.ok(prop(seen(2))),
        Response::Registered {
            generation: Generation(3)
        }
    );
}

#[path = "replay_tests.rs"]
mod replay;
