//! Scenario files: a fleet size, a workload and a timed list of steps.
//!
//! ```toml
//! description = "SIGKILL the leader, again and again, under load"
//! nodes = 3
//! duration_s = 30          # the steps repeat until this much time passed
//!
//! [workload]
//! clients = 4
//! register = 1             # relative weights of the operations
//! recover_right = 2
//! recover_wrong = 2
//! max_attempts = 3
//!
//! [[step]]
//! action = "kill"
//! node = "leader"
//!
//! [[step]]
//! action = "expect_leader"
//! within_s = 10
//! ```
//!
//! Node selectors: `leader`, `follower`, `random`, `minority` (⌊(n−1)/2⌋
//! random running nodes), or a node id.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

/// A parsed, validated scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name (the file stem when not given).
    #[serde(default)]
    pub name: String,
    /// What it does, for the report.
    #[serde(default)]
    pub description: String,
    /// Fleet size (3 or 5 here).
    pub nodes: u64,
    /// The steps repeat until this many seconds have passed (at least
    /// once). `--duration` overrides it.
    pub duration_s: f64,
    /// Client load during the steps.
    #[serde(default)]
    pub workload: Workload,
    /// A wide-area network to emulate on the peer links for the whole run.
    pub network: Option<Network>,
    /// Raft timers: `lan` (heartbeat 100 ms, election 500–1000 ms, the
    /// default) or `wan` (500 ms, 1500–3000 ms; needed once a round trip
    /// nears 100 ms, see README).
    #[serde(default)]
    pub timers: Timers,
    /// The steps, in order.
    #[serde(rename = "step")]
    pub steps: Vec<Step>,
}

/// The load the clients put on the fleet.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Concurrent clients.
    pub clients: u32,
    /// Weight of registrations of new users.
    pub register: u32,
    /// Weight of recoveries with the right password.
    pub recover_right: u32,
    /// Weight of recoveries with a wrong password.
    pub recover_wrong: u32,
    /// Attempt budget of every registered user.
    pub max_attempts: u32,
    /// How long one operation may take, retries included, before its
    /// outcome is recorded as unknown.
    pub op_deadline_ms: u64,
    /// Timeout of one call.
    pub call_timeout_ms: u64,
    /// Which nodes the clients call: `any` (all, in turn) or `leader` (the
    /// node leading when the load starts, like frontends next to it).
    pub contact: Contact,
}

/// Raft timer profile of the test fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timers {
    /// Fast LAN timers.
    #[default]
    Lan,
    /// The `wan` profile.
    Wan,
}

/// Which nodes the clients call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contact {
    /// Every node, starting at a random one.
    #[default]
    Any,
    /// The leader at the start of the load.
    Leader,
}

/// Datacenters and the round trips between them. Every peer link between
/// two datacenters is delayed by half the round trip each way.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The nodes of each datacenter.
    pub datacenters: Vec<Vec<u64>>,
    /// Round trip (ms) between datacenter i and j; symmetric, zero on the
    /// diagonal.
    pub rtt_ms: Vec<Vec<u64>>,
    /// Random extra delay per direction, up to this (ms).
    #[serde(default)]
    pub jitter_ms: u64,
}

impl Network {
    /// The datacenter index of `node`.
    pub fn dc_of(&self, node: u64) -> Option<usize> {
        self.datacenters.iter().position(|d| d.contains(&node))
    }

    /// Round trip between two nodes (0 within a datacenter).
    pub fn rtt(&self, a: u64, b: u64) -> u64 {
        match (self.dc_of(a), self.dc_of(b)) {
            (Some(x), Some(y)) => self.rtt_ms[x][y],
            _ => 0,
        }
    }

    /// The round trip after which `leader` has heard from a majority of
    /// `nodes` (itself included): the fastest possible commit's network
    /// part.
    pub fn nearest_quorum_rtt(&self, leader: u64, nodes: u64) -> u64 {
        let mut rtts: Vec<u64> = (1..=nodes)
            .filter(|n| *n != leader)
            .map(|n| self.rtt(leader, n))
            .collect();
        rtts.sort_unstable();
        let acks_needed = (nodes / 2) as usize; // plus the leader itself
        rtts.get(acks_needed.saturating_sub(1))
            .copied()
            .unwrap_or(0)
    }
}

impl Default for Workload {
    fn default() -> Workload {
        Workload {
            clients: 4,
            register: 1,
            recover_right: 2,
            recover_wrong: 2,
            max_attempts: 3,
            op_deadline_ms: 6_000,
            call_timeout_ms: 2_000,
            contact: Contact::Any,
        }
    }
}

/// Which node(s) a step acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The leader the running nodes agree on.
    Leader,
    /// A random running node that is not the leader.
    Follower,
    /// A random running node.
    Random,
    /// ⌊(n−1)/2⌋ random running nodes: the most that may fail.
    Minority,
    /// This node.
    Node(u64),
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Id(u64),
            Name(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Id(id) => Target::Node(id),
            Raw::Name(s) => match s.as_str() {
                "leader" => Target::Leader,
                "follower" => Target::Follower,
                "random" => Target::Random,
                "minority" => Target::Minority,
                other => other.parse().map(Target::Node).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "unknown node selector {other:?} (leader, follower, random, minority or an id)"
                    ))
                })?,
            },
        })
    }
}

/// One step.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// SIGKILL.
    Kill {
        /// Which.
        node: Target,
    },
    /// SIGSTOP (the node keeps its sockets and wakes up later believing
    /// whatever it believed).
    Pause {
        /// Which.
        node: Target,
    },
    /// SIGCONT every paused node.
    Resume,
    /// Start every killed node again.
    Restart,
    /// SIGTERM, restart and wait for convergence, one node at a time.
    RollingRestart {
        /// Convergence wait per node.
        #[serde(default = "thirty")]
        within_s: f64,
    },
    /// Cut `side` from the other nodes (both ways, blackhole).
    Partition {
        /// The nodes on one side.
        side: Vec<Target>,
    },
    /// Swallow the bytes from `from` to `to` only.
    OneWay {
        /// Sender.
        from: Target,
        /// Receiver.
        to: Target,
    },
    /// Reset the connections between `a` and `b` and refuse new ones.
    Drop {
        /// One end.
        a: Target,
        /// The other.
        b: Target,
    },
    /// Delay the links between `a` and `b` (both ways) by `ms` plus up to
    /// `jitter_ms` per direction.
    DelayLink {
        /// One end.
        a: Target,
        /// The other.
        b: Target,
        /// Fixed part, per direction.
        ms: u64,
        /// Random part.
        #[serde(default)]
        jitter_ms: u64,
    },
    /// Delay every peer link by `ms` plus up to `jitter_ms`.
    Delay {
        /// Fixed part.
        ms: u64,
        /// Random part.
        #[serde(default)]
        jitter_ms: u64,
    },
    /// Every link back to pass.
    Heal,
    /// Sleep.
    Wait {
        /// Seconds.
        s: f64,
    },
    /// Fail unless the running, reachable nodes agree on one leader in time.
    ExpectLeader {
        /// Deadline.
        #[serde(default = "fifteen")]
        within_s: f64,
    },
    /// Fail unless some write succeeds in time.
    ExpectWrite {
        /// Deadline.
        #[serde(default = "fifteen")]
        within_s: f64,
    },
    /// Fail unless every member reports the same applied index and digest
    /// in time.
    ExpectConverged {
        /// Deadline.
        #[serde(default = "thirty")]
        within_s: f64,
    },
    /// Start a recovery on a node, SIGKILL that node between RecoverStart
    /// and RecoverFinish, restart it, and check the attempt stayed spent
    /// and the key still recovers.
    KillMidRecovery,
}

fn fifteen() -> f64 {
    15.0
}

fn thirty() -> f64 {
    30.0
}

impl Step {
    /// Whether this step injects a fault (for availability reporting).
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Step::Kill { .. }
                | Step::Pause { .. }
                | Step::RollingRestart { .. }
                | Step::Partition { .. }
                | Step::OneWay { .. }
                | Step::Drop { .. }
                | Step::Delay { .. }
                | Step::DelayLink { .. }
                | Step::KillMidRecovery
        )
    }
}

impl Scenario {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let mut s: Scenario =
            toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        if s.name.is_empty() {
            s.name = path
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        s.validate()
            .with_context(|| format!("invalid scenario {}", path.display()))?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (3..=7).contains(&self.nodes),
            "nodes must be 3..=7, not {}",
            self.nodes
        );
        ensure!(
            self.duration_s > 0.0 && self.duration_s <= 3600.0,
            "duration_s must be in (0, 3600]"
        );
        ensure!(!self.steps.is_empty(), "no steps");
        let w = &self.workload;
        ensure!(
            (1..=64).contains(&w.clients),
            "workload.clients must be 1..=64"
        );
        ensure!(
            w.register + w.recover_right + w.recover_wrong > 0,
            "the workload weights are all zero"
        );
        ensure!(
            w.register > 0,
            "workload.register must be > 0 (recoveries need users)"
        );
        ensure!(
            (1..=10).contains(&w.max_attempts),
            "workload.max_attempts must be 1..=10 (the test fleet's cap)"
        );
        ensure!(
            w.call_timeout_ms >= 100 && w.op_deadline_ms >= w.call_timeout_ms,
            "need call_timeout_ms >= 100 and op_deadline_ms >= call_timeout_ms"
        );
        let check = |t: &Target| -> anyhow::Result<()> {
            if let Target::Node(id) = t
                && !(1..=self.nodes).contains(id)
            {
                bail!("node {id} is not in a {}-node fleet", self.nodes);
            }
            Ok(())
        };
        if let Some(net) = &self.network {
            let mut seen: Vec<u64> = net.datacenters.iter().flatten().copied().collect();
            seen.sort_unstable();
            ensure!(
                seen == (1..=self.nodes).collect::<Vec<_>>(),
                "network.datacenters must hold every node 1..={} exactly once",
                self.nodes
            );
            let d = net.datacenters.len();
            ensure!(
                net.rtt_ms.len() == d && net.rtt_ms.iter().all(|r| r.len() == d),
                "network.rtt_ms must be a {d}×{d} matrix"
            );
            for i in 0..d {
                ensure!(
                    net.rtt_ms[i][i] == 0,
                    "network.rtt_ms: a datacenter's own round trip is 0"
                );
                for j in 0..d {
                    ensure!(
                        net.rtt_ms[i][j] == net.rtt_ms[j][i] && net.rtt_ms[i][j] <= 10_000,
                        "network.rtt_ms must be symmetric and at most 10 000 ms"
                    );
                }
            }
        }
        for step in &self.steps {
            match step {
                Step::Kill { node } | Step::Pause { node } => check(node)?,
                Step::Partition { side } => {
                    ensure!(!side.is_empty(), "partition: empty side");
                    side.iter().try_for_each(check)?;
                }
                Step::OneWay { from: a, to: b }
                | Step::Drop { a, b }
                | Step::DelayLink { a, b, .. } => {
                    check(a)?;
                    check(b)?;
                }
                Step::Wait { s } => ensure!(*s >= 0.0 && *s <= 600.0, "wait: s out of range"),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_file_loads() {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        let dir = Path::new(&manifest).join("../../tests/chaos/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
                assert!(
                    !s.description.is_empty(),
                    "{}: no description",
                    path.display()
                );
                n += 1;
            }
        }
        assert!(n >= 8, "only {n} scenarios in {}", dir.display());
    }

    fn parse(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    const BASE: &str =
        "nodes = 5\nduration_s = 10\n[[step]]\naction = \"kill\"\nnode = \"leader\"\n";

    #[test]
    fn bad_scenarios_are_refused() {
        assert!(parse(BASE).is_ok());
        for (bad, why) in [
            (BASE.replace("nodes = 5", "nodes = 2"), "nodes"),
            (BASE.replace("\"leader\"", "\"chief\""), "selector"),
            (BASE.replace("\"leader\"", "9"), "not in a 5-node fleet"),
            (BASE.replace("kill", "explode"), "variant"),
            (
                format!("{BASE}[workload]\nmax_attempts = 0\n"),
                "max_attempts",
            ),
            (format!("{BASE}[workload]\nregister = 0\n"), "register"),
            (format!("{BASE}colour = 1\n"), "unknown field"),
            (
                format!(
                    "{BASE}[network]\ndatacenters = [[1, 2], [3]]\nrtt_ms = [[0, 1], [1, 0]]\n"
                ),
                "exactly once",
            ),
            (
                format!(
                    "{BASE}[network]\ndatacenters = [[1, 2], [3, 4, 5]]\nrtt_ms = [[0, 1], [2, 0]]\n"
                ),
                "symmetric",
            ),
        ] {
            let err = format!("{:#}", parse(&bad).expect_err(&bad));
            assert!(err.contains(why), "{bad}\n→ {err}");
        }
    }

    #[test]
    fn nearest_quorum_round_trip() {
        let net = Network {
            datacenters: vec![vec![1, 2], vec![3, 4], vec![5]],
            rtt_ms: vec![vec![0, 50, 100], vec![50, 0, 150], vec![100, 150, 0]],
            jitter_ms: 0,
        };
        // A leader in A needs one more ack after its neighbour: B, 50 ms.
        assert_eq!(net.nearest_quorum_rtt(1, 5), 50);
        assert_eq!(net.nearest_quorum_rtt(3, 5), 50);
        // The lone node of C needs two acks: both from A, 100 ms.
        assert_eq!(net.nearest_quorum_rtt(5, 5), 100);
        assert_eq!(net.rtt(2, 1), 0);
    }
}
