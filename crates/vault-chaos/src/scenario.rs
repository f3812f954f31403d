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
        for step in &self.steps {
            match step {
                Step::Kill { node } | Step::Pause { node } => check(node)?,
                Step::Partition { side } => {
                    ensure!(!side.is_empty(), "partition: empty side");
                    side.iter().try_for_each(check)?;
                }
                Step::OneWay { from: a, to: b } | Step::Drop { a, b } => {
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
