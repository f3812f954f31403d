//! What a run reports: operation counts, faults and how long each took to
//! heal, latencies, the WAN ratio, the invariant checks; and the human
//! summary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::checker::Check;
use crate::history::{Op, OpKind, Outcome};

use super::RUNNER;

/// Counts of operations by outcome.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// Succeeded.
    pub ok: usize,
    /// Refused by the fleet (not found, locked…) or by the client's checks.
    pub refused: usize,
    /// No answer in time.
    pub unknown: usize,
}

/// A fault and how long until the next write a client saw.
#[derive(Clone, Debug, Serialize)]
pub struct FaultReport {
    /// When (ms since the run began).
    pub at_ms: f64,
    /// What.
    pub what: String,
    /// Time to the next successful write (none: none followed).
    pub next_write_ms: Option<f64>,
}

/// Commit latency on an emulated wide-area network.
#[derive(Clone, Debug, Serialize)]
pub struct WanReport {
    /// The leader when the load started.
    pub leader: u64,
    /// Whether the clients called only the leader.
    pub clients_call_leader: bool,
    /// The round trip after which that leader hears from a majority.
    pub nearest_quorum_rtt_ms: u64,
    /// p50 of RecoverStart (one committed BeginAttempt, an HSM unseal, the
    /// OPAQUE server step) as the clients saw it.
    pub recover_start_p50_ms: f64,
    /// `recover_start_p50_ms / nearest_quorum_rtt_ms`: 1.0 would be a commit
    /// that costs exactly one nearest-quorum round trip and nothing else.
    pub ratio: f64,
}

/// The result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// The seed.
    pub seed: u64,
    /// Fleet size.
    pub nodes: u64,
    /// How long the steps ran (s).
    pub duration_s: f64,
    /// The node binary run.
    pub node_binary: String,
    /// Faults injected, with recovery times.
    pub faults: Vec<FaultReport>,
    /// Recovery time percentiles over the faults (ms): p50, p90, max.
    pub recovery_ms: Option<[f64; 3]>,
    /// Operations by kind and outcome.
    pub ops: BTreeMap<String, Counts>,
    /// Latency percentiles (ms: p50, p90, p99) of successful operations:
    /// `register`, `recover_start` (until KE2), `recover_full` (until K).
    pub latency_ms: BTreeMap<String, [f64; 3]>,
    /// For a scenario with a `[network]`: commit latency against the
    /// network's floor.
    pub wan: Option<WanReport>,
    /// Proxy counters: connections, reset, bytes passed, bytes swallowed.
    pub proxy: [u64; 4],
    /// Every invariant checked.
    pub checks: Vec<Check>,
    /// Total violations.
    pub violations: usize,
    /// The command that replays this run.
    pub replay: String,
    /// Where the report, history and logs are.
    pub out_dir: PathBuf,
}

impl Report {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations == 0
    }

    /// A human summary.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== {} (seed {}, {} nodes, {:.0} s, {}) ==",
            self.scenario, self.seed, self.nodes, self.duration_s, self.node_binary
        );
        let _ = writeln!(s, "faults injected: {}", self.faults.len());
        for f in &self.faults {
            let _ = writeln!(
                s,
                "  {:>8.1} s  {:<44} next write {}",
                f.at_ms / 1000.0,
                f.what,
                f.next_write_ms
                    .map_or_else(|| "never".to_owned(), |t| format!("{t:.0} ms"))
            );
        }
        if let Some([p50, p90, max]) = self.recovery_ms {
            let _ = writeln!(
                s,
                "recovery after a fault: p50 {p50:.0} ms, p90 {p90:.0} ms, max {max:.0} ms"
            );
        }
        for (kind, c) in &self.ops {
            let _ = writeln!(
                s,
                "ops {kind:<14} ok {:>5}  refused {:>5}  unknown {:>4}",
                c.ok, c.refused, c.unknown
            );
        }
        for (kind, [p50, p90, p99]) in &self.latency_ms {
            let _ = writeln!(
                s,
                "latency {kind:<14} p50 {p50:>7.1} ms  p90 {p90:>7.1} ms  p99 {p99:>7.1} ms"
            );
        }
        if let Some(w) = &self.wan {
            let _ = writeln!(
                s,
                "wan: leader {} ({}); nearest-quorum round trip {} ms; RecoverStart p50 {:.1} ms = {:.2} × that",
                w.leader,
                if w.clients_call_leader {
                    "clients call it"
                } else {
                    "clients call any node"
                },
                w.nearest_quorum_rtt_ms,
                w.recover_start_p50_ms,
                w.ratio
            );
        }
        let _ = writeln!(
            s,
            "proxy: {} connections, {} reset, {} bytes passed, {} swallowed",
            self.proxy[0], self.proxy[1], self.proxy[2], self.proxy[3]
        );
        for c in &self.checks {
            let verdict = if c.violations.is_empty() {
                "ok".to_owned()
            } else {
                format!("VIOLATED ({})", c.violations.len())
            };
            let _ = writeln!(
                s,
                "check {:<20} {:>6} checked  {verdict}",
                c.name, c.checked
            );
            for v in c.violations.iter().take(5) {
                let _ = writeln!(s, "    {v}");
            }
        }
        let _ = writeln!(
            s,
            "{}: report in {}",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.out_dir.display()
        );
        if !self.passed() {
            let _ = writeln!(s, "replay: {}", self.replay);
        }
        s
    }
}
fn percentiles(mut v: Vec<f64>) -> Option<[f64; 3]> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some([
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
    ])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50, p90 and max of the time from each fault to the next write.
pub(super) fn recovery_ms(faults: &[FaultReport]) -> Option<[f64; 3]> {
    let mut times: Vec<f64> = faults.iter().filter_map(|f| f.next_write_ms).collect();
    times.sort_by(f64::total_cmp);
    (!times.is_empty()).then(|| {
        [
            percentile(&times, 0.5),
            percentile(&times, 0.9),
            times[times.len() - 1],
        ]
    })
}

/// Operations by kind and final outcome.
pub(super) fn op_counts(ops: &[Op]) -> BTreeMap<String, Counts> {
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for op in ops {
        let kind = match op.kind {
            OpKind::Register => "register",
            OpKind::RecoverRight => "recover_right",
            OpKind::RecoverWrong => "recover_wrong",
        };
        let c = counts.entry(kind.to_owned()).or_default();
        let outcome = match (&op.outcome, &op.finish) {
            (Outcome::Ok, Some(f)) => &f.outcome,
            (o, _) => o,
        };
        match outcome {
            Outcome::Ok => c.ok += 1,
            Outcome::Refused(_) => c.refused += 1,
            Outcome::Unknown(_) => c.unknown += 1,
        }
    }
    counts
}

/// Latency percentiles of the clients' successful operations by name
/// (`register`, `recover_start`, `recover_full`), and RecoverStart's p50.
pub(super) fn latencies(ops: &[Op]) -> (BTreeMap<String, [f64; 3]>, Option<f64>) {
    let mut latency_ms = BTreeMap::new();
    let register: Vec<f64> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Register && o.outcome.is_ok() && o.client != RUNNER)
        .map(|o| o.end_ms - o.start_ms)
        .collect();
    let start: Vec<f64> = ops
        .iter()
        .filter(|o| o.client != RUNNER)
        .filter_map(|o| Some(o.ke2_ms? - o.start_ms))
        .collect();
    let full: Vec<f64> = ops
        .iter()
        .filter(|o| o.client != RUNNER)
        .filter_map(|o| {
            let f = o.finish.as_ref()?;
            (f.outcome.is_ok()).then_some(f.end_ms - o.start_ms)
        })
        .collect();
    let recover_start_p50 = percentiles(start.clone()).map(|p| p[0]);
    for (name, v) in [
        ("register", register),
        ("recover_start", start),
        ("recover_full", full),
    ] {
        if let Some(p) = percentiles(v) {
            latency_ms.insert(name.to_owned(), p);
        }
    }
    (latency_ms, recover_start_p50)
}
