//! The login states one node holds between `RecoverStart` and
//! `RecoverFinish`, keyed by session id and by the request that opened
//! them.
//!
//! A `RecoverStart` first *reserves* a place (checking the table's and the
//! user's capacity) and only then proposes `BeginAttempt`: a full table
//! refuses before any attempt is committed, never after. A replay of a
//! request this node answered (same id, same user and KE1) gets the same
//! answer (the same KE2 and session id) and opens nothing; a replay while
//! the first is in flight is told to retry; a replay after the session
//! finished is told so. A node holds at most `max` login states in all and
//! `per_user` for one user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::RngCore;
use rand::rngs::OsRng;
use vault_protocol::ServerLoginState;
use vault_types::{Generation, RequestDigest, RequestId, UserId};
use zeroize::Zeroizing;

/// What `RecoverStart` answered: kept so a replay gets the same.
#[derive(Clone, Debug)]
pub struct Answer {
    /// KE2.
    pub ke2: Vec<u8>,
    /// The session id.
    pub session_id: [u8; 16],
    /// Attempts left after the granted one.
    pub attempts_left: u32,
    /// The record's generation.
    pub generation: Generation,
}

/// The attempt a committed `BeginAttempt` granted.
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    /// The record's generation.
    pub generation: Generation,
    /// Attempts left after this one (0: it was the last).
    pub attempts_left: u32,
    /// The grant's serial, which `FinishGrant` names.
    pub attempt: u32,
}

/// One login between `RecoverStart` and `RecoverFinish`.
pub struct Session {
    /// The user.
    pub user: UserId,
    /// The generation the attempt was granted under.
    pub generation: Generation,
    /// The OPAQUE server state.
    pub state: ServerLoginState,
    /// The user's `enc_K`, sent (sealed under the session key) on success.
    pub enc_k: Zeroizing<Vec<u8>>,
    /// Attempts left after this one when it was granted (0: it was the
    /// last).
    pub attempts_left: u32,
    /// The grant's serial.
    pub attempt: u32,
    request: RequestId,
    expires: Instant,
}

/// Where a request stands on this node.
enum Entry {
    /// Reserved; `BeginAttempt` is being committed.
    Pending {
        user: UserId,
        digest: RequestDigest,
        expires: Instant,
    },
    /// Answered; its session is open.
    Open {
        user: UserId,
        digest: RequestDigest,
        answer: Answer,
        expires: Instant,
    },
    /// Its session finished (or expired); remembered until `expires` so
    /// that a replay is told rather than served a new session.
    Finished {
        digest: RequestDigest,
        expires: Instant,
    },
}

impl Entry {
    fn expires(&self) -> Instant {
        match self {
            Entry::Pending { expires, .. }
            | Entry::Open { expires, .. }
            | Entry::Finished { expires, .. } => *expires,
        }
    }

    fn digest(&self) -> &RequestDigest {
        match self {
            Entry::Pending { digest, .. }
            | Entry::Open { digest, .. }
            | Entry::Finished { digest, .. } => digest,
        }
    }

    /// The user whose capacity this entry takes (pending or open).
    fn holds(&self) -> Option<&UserId> {
        match self {
            Entry::Pending { user, .. } | Entry::Open { user, .. } => Some(user),
            Entry::Finished { .. } => None,
        }
    }
}

#[derive(Default)]
struct Table {
    sessions: HashMap<[u8; 16], Session>,
    requests: HashMap<RequestId, Entry>,
    per_user: HashMap<UserId, usize>,
    held: usize,
    last_purge: Option<Instant>,
}

impl Table {
    fn release_user(&mut self, user: &UserId) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
        self.held -= 1;
    }

    /// [`Table::purge`], at most every [`PURGE_EVERY`]: a purge scans the
    /// whole table, and calls come by the thousand.
    fn purge_now_and_then(&mut self, now: Instant) {
        if self
            .last_purge
            .is_none_or(|last| now.duration_since(last) >= PURGE_EVERY)
        {
            self.purge(now);
        }
    }

    /// Drops expired sessions (their requests become finished) and
    /// forgets finished requests past their time.
    fn purge(&mut self, now: Instant) {
        self.last_purge = Some(now);
        let expired: Vec<[u8; 16]> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(s) = self.sessions.remove(&id) {
                self.finish_request(&s.request, now);
            }
        }
        // Pending entries are never purged: their reservation resolves
        // them (opened or dropped), which keeps the counts exact.
        self.requests
            .retain(|_, e| !(matches!(e, Entry::Finished { .. }) && e.expires() <= now));
    }

    /// Marks `request` finished (its capacity is released).
    fn finish_request(&mut self, request: &RequestId, now: Instant) {
        if let Some(e) = self.requests.remove(request) {
            let digest = *e.digest();
            if let Some(user) = e.holds() {
                let user = user.clone();
                self.release_user(&user);
            }
            self.requests.insert(
                *request,
                Entry::Finished {
                    digest,
                    expires: now + FINISHED_MEMORY,
                },
            );
        }
    }
}

/// How long a finished request is remembered (replays in that time are
/// told the recovery finished).
const FINISHED_MEMORY: Duration = Duration::from_secs(60);

/// How often the table is scanned for expired entries at most (an expired
/// session may hold its place this much longer).
const PURGE_EVERY: Duration = Duration::from_millis(250);

/// Why a `RecoverStart` gets no reservation.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// This node holds `max` login states.
    Full,
    /// This node holds `per_user` login states of this user.
    UserFull,
    /// The same request is being committed right now: retry.
    InFlight,
    /// The request finished on this node: start a new recovery.
    Finished,
    /// The request id was used for another user or KE1.
    Reused,
}

/// What [`Sessions::begin`] decided.
pub enum Begin {
    /// A place is reserved: commit `BeginAttempt`, then
    /// [`Reservation::open`] (dropping the reservation releases it).
    Reserved(Reservation),
    /// This node answered this request before: the same answer, nothing new.
    Replay(Answer),
    /// Refused before anything was committed.
    Refused(Refusal),
}

/// The login states of one node.
#[derive(Clone)]
pub struct Sessions {
    table: Arc<Mutex<Table>>,
    ttl: Duration,
    max: usize,
    per_user: usize,
}

/// A reserved place for one request's session.
pub struct Reservation {
    table: Arc<Mutex<Table>>,
    request: RequestId,
    ttl: Duration,
    done: bool,
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sessions {
    /// A table of at most `max` sessions, `per_user` of one user, each
    /// living `ttl`.
    pub fn new(ttl: Duration, max: usize, per_user: usize) -> Sessions {
        Sessions {
            table: Arc::new(Mutex::new(Table::default())),
            ttl,
            max,
            per_user,
        }
    }

    /// How long a session lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Login states held (open and pending).
    pub fn held(&self) -> usize {
        lock(&self.table).held
    }

    /// Drops what expired every second in a background task (so that
    /// login states of an idle node, with their ephemeral keys and
    /// `enc_K`, do not outlive their time in memory); the task ends when
    /// the table is dropped. Call inside a tokio runtime.
    pub fn spawn_purger(&self) {
        let weak = Arc::downgrade(&self.table);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(table) => lock(&table).purge(Instant::now()),
                    None => return,
                }
            }
        });
    }

    /// Decides what a `RecoverStart` of `user` with `request` (whose body
    /// has `digest`) gets, before anything is committed.
    pub fn begin(&self, user: &UserId, request: RequestId, digest: RequestDigest) -> Begin {
        let now = Instant::now();
        let mut t = lock(&self.table);
        t.purge_now_and_then(now);
        if let Some(e) = t.requests.get(&request) {
            if e.digest() != &digest {
                return Begin::Refused(Refusal::Reused);
            }
            return match e {
                Entry::Pending { .. } => Begin::Refused(Refusal::InFlight),
                Entry::Open { answer, .. } => Begin::Replay(answer.clone()),
                Entry::Finished { .. } => Begin::Refused(Refusal::Finished),
            };
        }
        if t.held >= self.max {
            return Begin::Refused(Refusal::Full);
        }
        if t.per_user.get(user).copied().unwrap_or(0) >= self.per_user {
            return Begin::Refused(Refusal::UserFull);
        }
        t.held += 1;
        *t.per_user.entry(user.clone()).or_default() += 1;
        t.requests.insert(
            request,
            Entry::Pending {
                user: user.clone(),
                digest,
                expires: now + self.ttl,
            },
        );
        Begin::Reserved(Reservation {
            table: self.table.clone(),
            request,
            ttl: self.ttl,
            done: false,
        })
    }

    /// Takes session `id` for `RecoverFinish` (once); its request is then
    /// finished. `None` if there is no such live session.
    pub fn take(&self, id: &[u8; 16]) -> Option<Session> {
        let now = Instant::now();
        let mut t = lock(&self.table);
        t.purge_now_and_then(now);
        let s = t.sessions.remove(id)?;
        t.finish_request(&s.request, now);
        // Expired but not yet purged: gone all the same.
        (s.expires > now).then_some(s)
    }
}

impl Reservation {
    /// Stores the session of this request and returns its answer (also
    /// kept for replays).
    pub fn open(
        mut self,
        user: UserId,
        grant: Grant,
        state: ServerLoginState,
        enc_k: Zeroizing<Vec<u8>>,
        ke2: Vec<u8>,
    ) -> Answer {
        let Grant {
            generation,
            attempts_left,
            attempt,
        } = grant;
        let mut session_id = [0u8; 16];
        OsRng.fill_bytes(&mut session_id);
        let now = Instant::now();
        let expires = now + self.ttl;
        let answer = Answer {
            ke2,
            session_id,
            attempts_left,
            generation,
        };
        let mut t = lock(&self.table);
        let digest = match t.requests.get(&self.request) {
            Some(e) => *e.digest(),
            None => RequestDigest([0; 32]),
        };
        t.requests.insert(
            self.request,
            Entry::Open {
                user: user.clone(),
                digest,
                answer: answer.clone(),
                expires,
            },
        );
        t.sessions.insert(
            session_id,
            Session {
                user,
                generation,
                state,
                enc_k,
                attempts_left,
                attempt,
                request: self.request,
                expires,
            },
        );
        self.done = true;
        answer
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Not opened (refused, failed, or the call was dropped): give the
        // place back and forget the request, so that a retry (same id)
        // goes to the fleet again, whose dedup table answers it.
        let mut t = lock(&self.table);
        if let Some(e) = t.requests.remove(&self.request)
            && let Some(user) = e.holds()
        {
            let user = user.clone();
            t.release_user(&user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn state() -> ServerLoginState {
        crate::frontend::tests::login_state()
    }

    fn open(r: Reservation, u: &str) -> Answer {
        let grant = Grant {
            generation: Generation(1),
            attempts_left: 4,
            attempt: 1,
        };
        r.open(
            user(u),
            grant,
            state(),
            Zeroizing::new(vec![1; 60]),
            vec![2; 320],
        )
    }

    fn reserve(s: &Sessions, u: &str, id: u8, digest: u8) -> Result<Reservation, String> {
        match s.begin(&user(u), RequestId([id; 16]), RequestDigest([digest; 32])) {
            Begin::Reserved(r) => Ok(r),
            Begin::Replay(_) => Err("replay".into()),
            Begin::Refused(r) => Err(format!("{r:?}")),
        }
    }

    #[test]
    fn a_replay_gets_the_same_answer_and_holds_nothing_more() {
        let s = Sessions::new(Duration::from_secs(60), 10, 4);
        let a = open(reserve(&s, "alice", 1, 9).unwrap(), "alice");
        for _ in 0..100 {
            match s.begin(&user("alice"), RequestId([1; 16]), RequestDigest([9; 32])) {
                Begin::Replay(b) => {
                    assert_eq!(b.session_id, a.session_id);
                    assert_eq!(b.ke2, a.ke2);
                }
                _ => panic!("not a replay"),
            }
        }
        assert_eq!(s.held(), 1);
        // The same id with another KE1 is refused.
        assert_eq!(reserve(&s, "alice", 1, 8).err().as_deref(), Some("Reused"));
        // Once finished, a replay is told so and opens nothing.
        assert!(s.take(&a.session_id).is_some());
        assert!(s.take(&a.session_id).is_none());
        assert_eq!(s.held(), 0);
        assert_eq!(
            reserve(&s, "alice", 1, 9).err().as_deref(),
            Some("Finished")
        );
    }

    #[test]
    fn capacity_is_checked_before_and_released_by_an_unopened_reservation() {
        let s = Sessions::new(Duration::from_secs(60), 3, 2);
        let r1 = reserve(&s, "a", 1, 1).unwrap();
        // In flight: a replay is told to retry.
        assert_eq!(reserve(&s, "a", 1, 1).err().as_deref(), Some("InFlight"));
        let _r2 = reserve(&s, "a", 2, 1).unwrap();
        assert_eq!(reserve(&s, "a", 3, 1).err().as_deref(), Some("UserFull"));
        let _r3 = reserve(&s, "b", 4, 1).unwrap();
        assert_eq!(reserve(&s, "c", 5, 1).err().as_deref(), Some("Full"));
        // A reservation dropped without a session gives its place back,
        // and its request may be tried again.
        drop(r1);
        assert_eq!(s.held(), 2);
        let again = reserve(&s, "a", 1, 1).unwrap();
        open(again, "a");
        assert_eq!(s.held(), 3);
    }

    #[test]
    fn expired_sessions_free_their_place() {
        let s = Sessions::new(Duration::from_millis(20), 1, 1);
        let a = open(reserve(&s, "a", 1, 1).unwrap(), "a");
        assert_eq!(reserve(&s, "b", 2, 1).err().as_deref(), Some("Full"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(s.take(&a.session_id).is_none(), "an expired session");
        assert!(reserve(&s, "b", 2, 1).is_ok());
    }
}
