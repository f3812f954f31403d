//! What the clients did and saw: one [`Op`] per logical operation, with
//! its retries folded in (they reuse the request id and KE1, so the fleet
//! counts them once).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// The kind of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// RegisterStart + RegisterFinish of a new user.
    Register,
    /// RecoverStart + RecoverFinish with the right password.
    RecoverRight,
    /// RecoverStart with a wrong password (no KE3 is sent).
    RecoverWrong,
}

/// How an operation (or its finish) ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// It succeeded.
    Ok,
    /// The fleet answered with an error: it did not take effect (for a
    /// RecoverStart: no attempt was granted).
    Refused(String),
    /// No answer in time: it may or may not have taken effect.
    Unknown(String),
}

impl Outcome {
    /// Whether it succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// Whether the outcome is unknown.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Outcome::Unknown(_))
    }
}

/// RecoverFinish of a recovery.
#[derive(Clone, Debug, Serialize)]
pub struct Finish {
    /// Sent at (ms since the run began).
    pub start_ms: f64,
    /// Answered or given up at.
    pub end_ms: f64,
    /// What happened: `Ok` means K came back.
    pub outcome: Outcome,
    /// Whether the K that came back is the registered one.
    pub k_matches: Option<bool>,
}

/// One logical operation.
#[derive(Clone, Debug, Serialize)]
pub struct Op {
    /// Client number (`u32::MAX`: the runner itself).
    pub client: u32,
    /// What.
    pub kind: OpKind,
    /// The user.
    pub user: String,
    /// Request id (hex) of RegisterFinish or RecoverStart.
    pub request_id: String,
    /// Nodes tried, in order.
    pub nodes: Vec<u64>,
    /// Started at (ms since the run began).
    pub start_ms: f64,
    /// Ended at.
    pub end_ms: f64,
    /// When KE2 arrived (recoveries that got one).
    pub ke2_ms: Option<f64>,
    /// Attempts left as the fleet reported them with KE2 or an error.
    pub attempts_left: Option<u32>,
    /// The generation concerned, when the fleet said.
    pub generation: Option<u64>,
    /// Outcome of the first half (RegisterFinish, or RecoverStart).
    pub outcome: Outcome,
    /// RecoverFinish, for right-password recoveries that got that far.
    pub finish: Option<Finish>,
}

impl Op {
    /// An operation starting now, under a fresh random request id (also
    /// returned, to send); its outcome is `Ok` until something says else.
    pub fn start(history: &History, client: u32, kind: OpKind, user: &str) -> (Op, [u8; 16]) {
        use rand::RngCore;
        let mut request_id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut request_id);
        let start_ms = history.now_ms();
        let op = Op {
            client,
            kind,
            user: user.to_owned(),
            request_id: hex::encode(request_id),
            nodes: Vec::new(),
            start_ms,
            end_ms: start_ms,
            ke2_ms: None,
            attempts_left: None,
            generation: None,
            outcome: Outcome::Ok,
            finish: None,
        };
        (op, request_id)
    }

    /// Whether this op committed a write the client saw: an acknowledged
    /// registration, or a granted attempt (KE2 received).
    pub fn write_seen_at(&self) -> Option<f64> {
        match self.kind {
            OpKind::Register if self.outcome.is_ok() => Some(self.end_ms),
            _ => self.ke2_ms,
        }
    }
}

/// A registered user as its client knows it.
#[derive(Clone, Debug)]
pub struct User {
    /// Id.
    pub id: String,
    /// Right password.
    pub password: Vec<u8>,
    /// The registered K.
    pub k: [u8; 32],
    /// Attempt budget.
    pub max_attempts: u32,
    /// Generation of the acknowledged registration.
    pub generation: u64,
}

/// The shared record of a run.
#[derive(Clone)]
pub struct History {
    epoch: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
    users: Arc<Mutex<Vec<User>>>,
    faults: Arc<Mutex<Vec<Fault>>>,
}

/// A fault the runner injected.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    /// When (ms since the run began).
    pub at_ms: f64,
    /// What, in words.
    pub what: String,
}

impl History {
    /// An empty history starting now.
    pub fn new() -> History {
        History {
            epoch: Instant::now(),
            ops: Arc::default(),
            users: Arc::default(),
            faults: Arc::default(),
        }
    }

    /// Milliseconds since the run began.
    pub fn now_ms(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1000.0
    }

    /// Records an operation.
    pub fn push(&self, op: Op) {
        lock(&self.ops).push(op);
    }

    /// Records an acknowledged registration.
    pub fn add_user(&self, user: User) {
        lock(&self.users).push(user);
    }

    /// Records a fault.
    pub fn fault(&self, what: String) {
        let at_ms = self.now_ms();
        lock(&self.faults).push(Fault { at_ms, what });
    }

    /// The operations so far.
    pub fn ops(&self) -> Vec<Op> {
        lock(&self.ops).clone()
    }

    /// The acknowledged users so far.
    pub fn users(&self) -> Vec<User> {
        lock(&self.users).clone()
    }

    /// The faults so far.
    pub fn faults(&self) -> Vec<Fault> {
        lock(&self.faults).clone()
    }

    /// A random acknowledged user (by `pick` in `0..len`).
    pub fn some_user(&self, pick: impl FnOnce(usize) -> usize) -> Option<User> {
        let users = lock(&self.users);
        if users.is_empty() {
            return None;
        }
        Some(users[pick(users.len())].clone())
    }

    /// Whether a successful write ended after `at_ms`.
    pub fn write_after(&self, at_ms: f64) -> bool {
        lock(&self.ops)
            .iter()
            .any(|o| o.write_seen_at().is_some_and(|t| t > at_ms))
    }
}

impl Default for History {
    fn default() -> History {
        History::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
