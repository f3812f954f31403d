//! The shape of a test fleet: how many nodes, which are voters, the
//! compaction settings, whether a fault proxy sits on the peer links, and
//! which Raft timers.

/// What a test fleet looks like.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// Nodes in the fleet file (ids 1..=nodes).
    pub nodes: u64,
    /// The first `bootstrap` of them are voters at init; the others join
    /// later with `vaultctl cluster add-node`.
    pub bootstrap: u64,
    /// Build a snapshot after this many entries (small values make tests of
    /// log purging and snapshot install quick).
    pub snapshot_after_logs: u64,
    /// Log entries kept behind a snapshot.
    pub keep_logs_after_snapshot: u64,
    /// Put a proxy's addresses in the membership: each node advertises a
    /// `peer_addr` that a [`crate::proxy::FaultProxy`] listens on, listens
    /// itself on another port, and connects to peers from its own loopback
    /// address [`source_ip`] so that the proxy can tell the links apart.
    pub proxied: bool,
    /// The `wan` timer profile (heartbeat 500 ms, election 1500–3000 ms)
    /// instead of the test's fast LAN timers. openraft uses the heartbeat
    /// interval as the AppendEntries deadline, so a follower farther than
    /// that from the leader never catches up on LAN timers.
    pub wan_timers: bool,
    /// Lines of the fleet file's `[limits]` table (`key = value`), e.g.
    /// `max_sessions = 3`; empty: the defaults.
    pub limits: Vec<String>,
}

/// The loopback address node `id`'s peer connections come from in a
/// proxied fleet.
pub fn source_ip(id: u64) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 1, id as u8)
}

impl FleetSpec {
    /// `n` nodes, all voters, default compaction.
    pub fn voters(n: u64) -> FleetSpec {
        FleetSpec {
            nodes: n,
            bootstrap: n,
            snapshot_after_logs: 10_000,
            keep_logs_after_snapshot: 1_000,
            proxied: false,
            wan_timers: false,
            limits: Vec::new(),
        }
    }
}

/// Ports a test fleet takes per node: frontend, peer, metrics, and the
/// peer port behind a proxy.
pub(crate) const PORTS_PER_NODE: usize = 4;

/// Election timeout bounds the test fleet file sets (ms).
pub const ELECTION_MS: (u64, u64) = (500, 1000);
