//! The fleet file's `[limits]` table: what one node holds at most for its
//! callers (login states, connections, handshakes).

use std::time::Duration;

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsFile {
    session_ttl_s: Option<u64>,
    max_sessions: Option<usize>,
    sessions_per_user: Option<usize>,
    max_connections: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    handshakes_per_second: Option<u32>,
}

/// What one node holds at most for its callers (`[limits]`; every field
/// is optional).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long a login state waits for `RecoverFinish` (`session_ttl_s`,
    /// default 60, 1..=600).
    pub session_ttl: Duration,
    /// Login states a node holds at most (`max_sessions`, default 10 000).
    pub max_sessions: usize,
    /// Login states of one user a node holds at most (`sessions_per_user`,
    /// default 4).
    pub sessions_per_user: usize,
    /// Open connections per TLS port (`max_connections`, default 1024); a
    /// connection past the cap is closed at once.
    pub max_connections: usize,
    /// How long a connection may take to complete its TLS handshake
    /// (`handshake_timeout_ms`, default 5000, 100..=60 000); a TCP
    /// connection that never starts TLS is closed then.
    pub handshake_timeout: Duration,
    /// TLS handshakes one source address may start per second on a port
    /// (`handshakes_per_second`, default 50, 1..=100 000), with a burst of
    /// as many: each costs the node an HSM signature before the caller has
    /// shown any certificate. A connection over it is closed at once.
    pub handshakes_per_second: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            session_ttl: Duration::from_secs(60),
            max_sessions: 10_000,
            sessions_per_user: 4,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(5),
            handshakes_per_second: 50,
        }
    }
}

pub(super) fn limits(l: &LimitsFile) -> Result<Limits, String> {
    let d = Limits::default();
    let ttl = l.session_ttl_s.unwrap_or(d.session_ttl.as_secs());
    if !(1..=600).contains(&ttl) {
        return Err("limits: session_ttl_s must be 1..=600".into());
    }
    let max_sessions = l.max_sessions.unwrap_or(d.max_sessions);
    if !(1..=1_000_000).contains(&max_sessions) {
        return Err("limits: max_sessions must be 1..=1000000".into());
    }
    let per_user = l.sessions_per_user.unwrap_or(d.sessions_per_user);
    if !(1..=100).contains(&per_user) || per_user > max_sessions {
        return Err("limits: sessions_per_user must be 1..=100 and at most max_sessions".into());
    }
    let max_connections = l.max_connections.unwrap_or(d.max_connections);
    if !(4..=100_000).contains(&max_connections) {
        return Err("limits: max_connections must be 4..=100000".into());
    }
    let handshake = l
        .handshake_timeout_ms
        .unwrap_or(d.handshake_timeout.as_millis() as u64);
    if !(100..=60_000).contains(&handshake) {
        return Err("limits: handshake_timeout_ms must be 100..=60000".into());
    }
    let rate = l.handshakes_per_second.unwrap_or(d.handshakes_per_second);
    if !(1..=100_000).contains(&rate) {
        return Err("limits: handshakes_per_second must be 1..=100000".into());
    }
    Ok(Limits {
        session_ttl: Duration::from_secs(ttl),
        max_sessions,
        sessions_per_user: per_user,
        max_connections,
        handshake_timeout: Duration::from_millis(handshake),
        handshakes_per_second: rate,
    })
}
