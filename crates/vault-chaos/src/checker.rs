//! Checks a run's history against the vault's invariants.
//!
//! Every check is sound under concurrency: it only counts what the
//! real-time order of the history proves. A write commits somewhere inside
//! its call's interval. A success resets a counter after its RecoverFinish
//! starts: before its answer if it was the last attempt, else at any time
//! after (in the background, or never); a RecoverFinish without an answer
//! may have, at any time after it started. A reset forgives the attempts
//! granted up to the success's own, never one granted after it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{Fault, Op, OpKind, Outcome, User};

/// One invariant's result.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Its name.
    pub name: &'static str,
    /// How many things it looked at.
    pub checked: usize,
    /// What broke it (empty: it holds).
    pub violations: Vec<String>,
}

impl Check {
    fn new(name: &'static str) -> Check {
        Check {
            name,
            checked: 0,
            violations: Vec::new(),
        }
    }
}

/// When each possible counter reset may have committed: from its
/// RecoverFinish's start until its answer when the node committed the reset
/// before answering (a success of the last attempt: `attempts_left` 0 at
/// KE2), else with no end: any other success answers first and commits its
/// reset in a later batch, and a RecoverFinish without an answer may still
/// commit.
fn reset_windows(ops: &[&Op]) -> Vec<(f64, f64)> {
    ops.iter()
        .filter_map(|o| {
            let f = o.finish.as_ref()?;
            let end = if f.outcome.is_ok() && o.attempts_left == Some(0) {
                f.end_ms
            } else if f.outcome.is_ok() || f.outcome.is_unknown() {
                f64::INFINITY
            } else {
                return None;
            };
            Some((f.start_ms, end))
        })
        .collect()
}

fn by_user(ops: &[Op]) -> BTreeMap<(&str, u64), Vec<&Op>> {
    let mut m: BTreeMap<(&str, u64), Vec<&Op>> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.kind != OpKind::Register) {
        if let Some(g) = o.generation {
            m.entry((o.user.as_str(), g)).or_default().push(o);
        }
    }
    m
}

/// 1. Guess bound: the KE2s the history proves were counted at one time
///    are at most the user's `max_attempts`.
///
///    A success forgives the attempts granted up to its own, never one
///    granted after it (`FinishGrant`), and its reset commits no earlier
///    than its RecoverFinish starts (possibly much later). So the KE2s of
///    recoveries started at or after a time `a` can be forgiven only by a
///    success whose own KE2 came after `a`, and not before the earliest
///    such success began to finish (`b`): every KE2 among them that arrived
///    before `b` was counted at once, just before the last of them arrived.
pub fn guess_bound(ops: &[Op], users: &[User]) -> Check {
    let mut c = Check::new("guess_bound");
    let max: BTreeMap<&str, u32> = users
        .iter()
        .map(|u| (u.id.as_str(), u.max_attempts))
        .collect();
    for ((user, generation), ops) in by_user(ops) {
        let Some(max) = max.get(user) else { continue };
        // (KE2 of a possible success, when its RecoverFinish started).
        let successes: Vec<(f64, f64)> = ops
            .iter()
            .filter_map(|o| {
                let f = o.finish.as_ref()?;
                (f.outcome.is_ok() || f.outcome.is_unknown()).then_some((o.ke2_ms?, f.start_ms))
            })
            .collect();
        let granted: Vec<(f64, f64)> = ops
            .iter()
            .filter_map(|o| Some((o.start_ms, o.ke2_ms?)))
            .collect();
        for &(a, _) in &granted {
            let b = successes
                .iter()
                .filter(|(ke2, _)| *ke2 > a)
                .map(|(_, finishing)| *finishing)
                .fold(f64::INFINITY, f64::min);
            let inside = granted.iter().filter(|(s, k)| *s >= a && *k < b).count();
            c.checked += 1;
            if inside > *max as usize {
                c.violations.push(format!(
                    "user {user} generation {generation}: {inside} KE2s of recoveries started \
                     from {a:.0} ms received before {b:.0} ms, with no success that could \
                     forgive one of them in between; max_attempts is {max}"
                ));
            }
        }
    }
    c
}

/// 3. Monotonic counters: if A's KE2 came before B started, with no
///    possible reset between A's start and B's KE2, B saw fewer attempts
///    left than A.
pub fn monotonic_counters(ops: &[Op]) -> Check {
    let mut c = Check::new("monotonic_counters");
    for ((user, generation), ops) in by_user(ops) {
        let resets = reset_windows(&ops);
        let seen: Vec<(&Op, f64, u32)> = ops
            .iter()
            .filter_map(|o| Some((*o, o.ke2_ms?, o.attempts_left?)))
            .collect();
        for (a, a_end, a_left) in &seen {
            for (b, b_end, b_left) in &seen {
                if *a_end >= b.start_ms {
                    continue;
                }
                let reset_between = resets.iter().any(|(s, e)| *e > a.start_ms && *s < *b_end);
                if reset_between {
                    continue;
                }
                c.checked += 1;
                if b_left >= a_left {
                    c.violations.push(format!(
                        "user {user} generation {generation}: attempts left {a_left} (request {}) \
                         then {b_left} (request {}) with no reset in between",
                        a.request_id, b.request_id
                    ));
                }
            }
        }
    }
    c
}

/// Every K that came back during the run is the registered one.
pub fn right_keys(ops: &[Op]) -> Check {
    let mut c = Check::new("right_keys");
    for o in ops {
        if let Some(f) = &o.finish
            && let Some(m) = f.k_matches
        {
            c.checked += 1;
            if !m {
                c.violations.push(format!(
                    "user {}: a recovery (request {}) returned a K that is not the registered one",
                    o.user, o.request_id
                ));
            }
        }
        if let Outcome::Refused(why) = &o.outcome
            && why.starts_with(crate::workload::CLIENT_CHECK)
        {
            c.violations
                .push(format!("user {} (request {}): {why}", o.user, o.request_id));
        }
    }
    c
}

/// What the final recovery of a user found.
#[derive(Clone, Debug)]
pub enum Final {
    /// K came back and is the registered one.
    Recovered,
    /// K came back and is not the registered one.
    WrongKey,
    /// The user is locked.
    Locked,
    /// Anything else (not found, unavailable…).
    Failed(String),
}

/// 2. Durability: every acknowledged registration still recovers with the
///    right password, unless the attempts the history may have spent since
///    the last certain reset explain a lock.
pub fn durability(ops: &[Op], users: &[User], finals: &BTreeMap<String, Final>) -> Check {
    let mut c = Check::new("durability");
    for u in users {
        c.checked += 1;
        let Some(f) = finals.get(&u.id) else {
            c.violations
                .push(format!("user {}: not checked at the end", u.id));
            continue;
        };
        match f {
            Final::Recovered => {}
            Final::WrongKey => c.violations.push(format!(
                "user {}: recovered a K that is not the registered one",
                u.id
            )),
            Final::Failed(why) => c.violations.push(format!(
                "user {}: acknowledged registration no longer recovers: {why}",
                u.id
            )),
            Final::Locked => {
                let mine: Vec<&Op> = ops
                    .iter()
                    .filter(|o| o.user == u.id && o.kind != OpKind::Register)
                    .collect();
                // A success of the last attempt committed its reset
                // before it answered; any other may have lost its reset. A
                // reset forgives the attempts granted up to its own, so
                // what counts after it are grants after its RecoverStart
                // began.
                let last_certain_reset = mine
                    .iter()
                    .filter(|o| o.attempts_left == Some(0))
                    .filter(|o| o.finish.as_ref().is_some_and(|f| f.outcome.is_ok()))
                    .map(|o| o.start_ms)
                    .fold(f64::NEG_INFINITY, f64::max);
                // Attempts that may have been spent after it: every start
                // that was not refused outright.
                let spent = mine
                    .iter()
                    .filter(|o| o.end_ms > last_certain_reset)
                    .filter(|o| o.ke2_ms.is_some() || o.outcome.is_unknown())
                    .count();
                if spent < u.max_attempts as usize {
                    c.violations.push(format!(
                        "user {}: locked, but at most {spent} attempts can have been spent \
                         since its last success (max_attempts {})",
                        u.id, u.max_attempts
                    ));
                }
            }
        }
    }
    c
}

/// 5. Availability: for each fault, the time to the next write a client saw.
pub fn availability(ops: &[Op], faults: &[Fault]) -> Vec<(Fault, Option<f64>)> {
    faults
        .iter()
        .map(|f| {
            let next = ops
                .iter()
                .filter(|o| o.start_ms >= f.at_ms)
                .filter_map(Op::write_seen_at)
                .map(|t| t - f.at_ms)
                .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))));
            (f.clone(), next)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Finish;

    fn op(user: &str, start: f64, ke2: Option<f64>, left: u32) -> Op {
        Op {
            client: 0,
            kind: OpKind::RecoverWrong,
            user: user.into(),
            request_id: format!("{start}"),
            nodes: vec![1],
            start_ms: start,
            end_ms: ke2.unwrap_or(start + 1.0),
            ke2_ms: ke2,
            attempts_left: Some(left),
            generation: Some(1),
            outcome: Outcome::Ok,
            finish: None,
        }
    }

    fn user(id: &str, max: u32) -> User {
        User {
            id: id.into(),
            password: vec![],
            k: [0; 32],
            max_attempts: max,
            generation: 1,
        }
    }

    #[test]
    fn guess_bound_counts_ke2s_between_resets() {
        let ops = vec![
            op("u", 0.0, Some(1.0), 2),
            op("u", 2.0, Some(3.0), 1),
            op("u", 4.0, Some(5.0), 0),
        ];
        assert!(guess_bound(&ops, &[user("u", 3)]).violations.is_empty());
        let mut more = ops.clone();
        more.push(op("u", 6.0, Some(7.0), 0));
        assert_eq!(guess_bound(&more, &[user("u", 3)]).violations.len(), 1);
        // A successful recovery in between resets the count.
        let mut reset = more.clone();
        reset[2] = success(reset[2].clone(), (5.5, 5.8));
        assert!(guess_bound(&reset, &[user("u", 3)]).violations.is_empty());
    }

    fn success(mut o: Op, finish: (f64, f64)) -> Op {
        o.kind = OpKind::RecoverRight;
        o.finish = Some(Finish {
            start_ms: finish.0,
            end_ms: finish.1,
            outcome: Outcome::Ok,
            k_matches: Some(true),
        });
        o
    }

    /// The reset forgives the grants up to the success's own: guesses
    /// started after its KE2 stay counted, whenever the reset lands. The
    /// old model (a success resets everything) missed this history.
    #[test]
    fn guess_bound_counts_guesses_granted_after_a_success() {
        let ops = vec![
            success(op("u", 0.0, Some(1.0), 1), (5.0, 6.0)),
            op("u", 2.0, Some(3.0), 0),
            op("u", 7.0, Some(8.0), 0),
            op("u", 9.0, Some(10.0), 0),
        ];
        let c = guess_bound(&ops, &[user("u", 2)]);
        assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
        // With the success granted after the first guess, its reset may
        // forgive that guess: two counted at once at most.
        let ops = vec![
            op("u", 0.0, Some(1.0), 1),
            success(op("u", 2.0, Some(3.0), 0), (5.0, 6.0)),
            op("u", 7.0, Some(8.0), 0),
        ];
        assert!(guess_bound(&ops, &[user("u", 2)]).violations.is_empty());
    }

    /// A success that was not the last attempt answers before its reset
    /// commits: a counter may rise after its answer, and that is no
    /// violation. A success of the last attempt committed before answering.
    #[test]
    fn a_background_reset_may_land_after_the_answer() {
        let ops = vec![
            success(op("u", 0.0, Some(1.0), 2), (2.0, 3.0)),
            op("u", 4.0, Some(5.0), 1),
            op("u", 6.0, Some(7.0), 1),
        ];
        assert!(monotonic_counters(&ops).violations.is_empty());
        let sync = vec![
            success(op("u", 0.0, Some(1.0), 0), (2.0, 3.0)),
            op("u", 4.0, Some(5.0), 1),
            op("u", 6.0, Some(7.0), 1),
        ];
        assert_eq!(monotonic_counters(&sync).violations.len(), 1);
    }

    #[test]
    fn counters_must_fall_between_resets() {
        let ok = vec![op("u", 0.0, Some(1.0), 2), op("u", 2.0, Some(3.0), 1)];
        assert!(monotonic_counters(&ok).violations.is_empty());
        let bad = vec![op("u", 0.0, Some(1.0), 1), op("u", 2.0, Some(3.0), 1)];
        assert_eq!(monotonic_counters(&bad).violations.len(), 1);
        // Overlapping calls prove no order: nothing to check.
        let overlap = vec![op("u", 0.0, Some(3.0), 1), op("u", 2.0, Some(4.0), 2)];
        assert_eq!(monotonic_counters(&overlap).checked, 0);
    }

    #[test]
    fn a_lock_needs_enough_spent_attempts() {
        let ops = vec![op("u", 0.0, Some(1.0), 1)];
        let finals = BTreeMap::from([("u".to_owned(), Final::Locked)]);
        assert_eq!(
            durability(&ops, &[user("u", 2)], &finals).violations.len(),
            1
        );
        let ops = vec![op("u", 0.0, Some(1.0), 1), op("u", 2.0, Some(3.0), 0)];
        assert!(
            durability(&ops, &[user("u", 2)], &finals)
                .violations
                .is_empty()
        );
        let lost = BTreeMap::from([("u".to_owned(), Final::Failed("NOT_FOUND".into()))]);
        assert_eq!(durability(&ops, &[user("u", 2)], &lost).violations.len(), 1);
    }
}
