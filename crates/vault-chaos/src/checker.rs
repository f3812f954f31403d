//! Checks a run's history against the vault's invariants.
//!
//! Every check is sound under concurrency: it only counts what the
//! real-time order of the history proves. A write commits somewhere inside
//! its call's interval; a success resets a counter somewhere inside its
//! RecoverFinish interval, and a RecoverFinish without an answer may have.

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

/// Intervals (ms) during which a counter reset may have committed.
fn resets(ops: &[&Op]) -> Vec<(f64, f64)> {
    let mut r: Vec<(f64, f64)> = ops
        .iter()
        .filter_map(|o| o.finish.as_ref())
        .filter(|f| f.outcome.is_ok() || f.outcome.is_unknown())
        .map(|f| (f.start_ms, f.end_ms))
        .collect();
    r.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Merge overlaps.
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for (s, e) in r {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// The gaps between reset intervals: within a gap no reset committed.
fn gaps(resets: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut from = f64::NEG_INFINITY;
    for (s, e) in resets {
        out.push((from, *s));
        from = *e;
    }
    out.push((from, f64::INFINITY));
    out
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

/// 1. Guess bound: between two possible resets, the KE2s received for a
///    user's generation are at most its `max_attempts`.
pub fn guess_bound(ops: &[Op], users: &[User]) -> Check {
    let mut c = Check::new("guess_bound");
    let max: BTreeMap<&str, u32> = users
        .iter()
        .map(|u| (u.id.as_str(), u.max_attempts))
        .collect();
    for ((user, generation), ops) in by_user(ops) {
        let Some(max) = max.get(user) else { continue };
        for (a, b) in gaps(&resets(&ops)) {
            let inside = ops
                .iter()
                .filter(|o| o.ke2_ms.is_some_and(|k| o.start_ms > a && k < b))
                .count();
            c.checked += 1;
            if inside > *max as usize {
                c.violations.push(format!(
                    "user {user} generation {generation}: {inside} KE2s received between \
                     {a:.0} ms and {b:.0} ms with no reset in between; max_attempts is {max}"
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
        let resets = resets(&ops);
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
                let last_certain_reset = mine
                    .iter()
                    .filter_map(|o| o.finish.as_ref())
                    .filter(|f| f.outcome.is_ok())
                    .map(|f| f.start_ms)
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
        reset[2].kind = OpKind::RecoverRight;
        reset[2].finish = Some(Finish {
            start_ms: 5.5,
            end_ms: 5.8,
            outcome: Outcome::Ok,
            k_matches: Some(true),
        });
        assert!(guess_bound(&reset, &[user("u", 3)]).violations.is_empty());
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
