//! Replays of old request ids by a frontend (issue 25, item 4).

use super::*;

fn at(mut p: Proposal, ms: u64) -> Proposal {
    p.at = Timestamp(ms);
    p
}

/// The 120 s replay blockade. A finished login's request id, replayed by a
/// frontend after the node forgot the session, proposed `BeginAttempt`
/// again and the dedup table answered with the old grant (no attempt
/// spent): each such replay opened a login state on a node and held one
/// of the victim's places for the session TTL, for as long as the
/// frontend kept replaying. On 9722beb the replay 120 s later was a grant.
#[test]
fn a_replayed_grant_expires_with_its_session() {
    let mut log = Log::new();
    log.ok(prop(register("a", 5)));
    let grant = at(with_request(begin("a"), 7, 7), 10_000);
    assert!(matches!(
        log.apply(grant.clone()),
        Ok(Response::AttemptGranted { attempt: 1, .. })
    ));
    // A retry whose answer was lost, within the session's life: the same
    // grant, no second attempt.
    assert!(matches!(
        log.apply(at(grant.clone(), 10_000 + 30_000)),
        Ok(Response::AttemptGranted { attempt: 1, .. })
    ));
    // Two minutes on: expired, and nothing to open a session with.
    assert_eq!(
        log.apply(at(grant.clone(), 10_000 + 120_000)),
        Err(CommandError::GrantExpired)
    );
    // Still one attempt spent.
    assert!(matches!(
        log.state.status(&user("a")),
        UserStatus::Active {
            attempts_left: 4,
            ..
        }
    ));
}

/// The window is the fleet's session TTL, carried in the command: with a
/// TTL of 10 s, a replay 30 s after its grant opened a session that lived
/// 10 s more (the fixed 60 s window; issue 25's last open replay finding).
#[test]
fn a_replayed_grant_expires_with_the_fleets_session_ttl() {
    let mut log = Log::new();
    log.ok(prop(register("a", 5)));
    let ttl = |ms| Command::BeginAttemptTtl {
        user: user("a"),
        session_ttl_ms: ms,
    };
    let grant = at(with_request(ttl(10_000), 9, 9), 10_000);
    assert!(matches!(
        log.apply(grant.clone()),
        Ok(Response::AttemptGranted { attempt: 1, .. })
    ));
    assert!(matches!(
        log.apply(at(grant.clone(), 10_000 + 9_000)),
        Ok(Response::AttemptGranted { attempt: 1, .. })
    ));
    assert_eq!(
        log.apply(at(grant.clone(), 10_000 + 30_000)),
        Err(CommandError::GrantExpired)
    );
    // A TTL above the old window holds the grant as long as the session.
    let long = at(with_request(ttl(300_000), 10, 10), 50_000);
    assert!(matches!(
        log.apply(long.clone()),
        Ok(Response::AttemptGranted { attempt: 2, .. })
    ));
    assert!(matches!(
        log.apply(at(long.clone(), 50_000 + 120_000)),
        Ok(Response::AttemptGranted { attempt: 2, .. })
    ));
    assert_eq!(
        log.apply(at(long, 50_000 + 301_000)),
        Err(CommandError::GrantExpired)
    );
    // A TTL past the fleet file's bound (a member's own command) counts as
    // the bound: replays never live forever.
    let huge = at(with_request(ttl(u64::MAX), 11, 11), 400_000);
    log.ok(huge.clone());
    assert_eq!(
        log.apply(at(huge, 400_000 + 601_000)),
        Err(CommandError::GrantExpired)
    );
}

/// After a success reset the counter, a replay of a grant made before it
/// is refused at once, whatever the time: its session can only be gone.
#[test]
fn a_replayed_grant_after_a_reset_is_refused() {
    let mut log = Log::new();
    log.ok(prop(register("a", 5)));
    let grant = at(with_request(begin("a"), 8, 8), 10_000);
    assert!(matches!(
        log.apply(grant.clone()),
        Ok(Response::AttemptGranted { .. })
    ));
    log.ok(at(prop(finish("a", 1, true)), 10_500));
    assert_eq!(
        log.apply(at(grant, 11_000)),
        Err(CommandError::GrantExpired)
    );
}

/// Dedup entries written before grants carried their time still decode
/// (as granted at time 0, so any replay of them has expired).
#[test]
fn dedup_entries_of_the_first_format_decode() {
    use crate::dedup::DedupEntry;
    #[derive(serde::Serialize)]
    struct V1 {
        index: u64,
        digest: RequestDigest,
        reply: Result<Response, CommandError>,
    }
    let old = vault_types::codec::encode(
        vault_types::codec::VALUE_V1,
        &V1 {
            index: 9,
            digest: RequestDigest([1; 32]),
            reply: Ok(Response::Deleted),
        },
    )
    .expect("encode");
    let e = DedupEntry::decode(&old).expect("decode");
    assert_eq!((e.index, e.at), (9, Timestamp(0)));
    assert_eq!(DedupEntry::decode(&e.encode().expect("encode")), Ok(e));
}
