//! Runs one scenario: a proxied fleet of real node processes, the client
//! load, the steps, healing, the final checks and the report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use vault_testkit::proxy::{FaultProxy, LinkMode};
use vault_testkit::{FleetSpec, Template, TestFleet};

use crate::checker::{self, Check, Final};
use crate::history::{History, Op, OpKind, Outcome};
use crate::scenario::{Contact, Scenario, Step, Target};
use crate::workload::{Frontends, Load};

/// The runner's own operations carry this client number.
pub const RUNNER: u32 = u32::MAX;

/// How to run a scenario.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seed of every random choice (nodes, operations, jitter).
    pub seed: u64,
    /// Overrides the scenario's duration (seconds).
    pub duration: Option<f64>,
    /// Where the report, the history and the node logs go (a directory
    /// per run is made inside).
    pub out: PathBuf,
    /// Run this `vault-node` variant (a file next to `vault-node`, e.g.
    /// `vault-node-unsafe-ke2`) instead of `vault-node`.
    pub node_variant: Option<String>,
    /// The script that replays a run, for the report.
    pub replay_with: String,
}

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

struct Run<'a> {
    scenario: &'a Scenario,
    fleet: TestFleet,
    proxy: FaultProxy,
    rt: &'a tokio::runtime::Runtime,
    history: History,
    frontends: Frontends,
    rng: StdRng,
    killed: BTreeSet<u64>,
    paused: BTreeSet<u64>,
    cut: BTreeSet<u64>,
    failures: Vec<String>,
    extra_users: Vec<crate::history::User>,
    next_user: u64,
    leader_at_start: u64,
}

/// Delays every link between two datacenters of the scenario's network by
/// half its round trip each way (nothing without a network).
fn apply_network(proxy: &FaultProxy, scenario: &Scenario) {
    let Some(net) = &scenario.network else {
        return;
    };
    for a in 1..=scenario.nodes {
        for b in 1..=scenario.nodes {
            let rtt = net.rtt(a, b);
            if a != b && rtt > 0 {
                proxy.set(
                    a,
                    b,
                    LinkMode::Delay {
                        delay: Duration::from_micros(rtt * 500),
                        jitter: Duration::from_millis(net.jitter_ms),
                    },
                );
            }
        }
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

/// Runs `scenario` on a fleet made from `template`.
pub fn run(template: &Template, scenario: &Scenario, opts: &Options) -> anyhow::Result<Report> {
    vault_raft::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let spec = FleetSpec {
        proxied: true,
        wan_timers: scenario.timers == crate::scenario::Timers::Wan,
        ..FleetSpec::voters(scenario.nodes)
    };
    let mut fleet = TestFleet::create(template, &spec)?;
    let node_binary = match &opts.node_variant {
        Some(v) => {
            fleet.set_bins(template.bins().with_node_variant(v)?);
            v.clone()
        }
        None => "vault-node".to_owned(),
    };
    let (routes, sources) = FaultProxy::routes_of(fleet.fleet())?;
    let proxy = rt.block_on(FaultProxy::start(&routes, sources, opts.seed))?;
    let ids: Vec<u64> = (1..=scenario.nodes).collect();
    fleet.start_all(ids.iter().copied())?;
    let started = fleet
        .init()
        .and_then(|()| fleet.wait_converged(Duration::from_secs(60)).map(drop));
    fleet.with_logs(started)?;
    let mut frontends = {
        let _enter = rt.enter();
        Frontends::new(fleet.fleet(), fleet.dir(), &scenario.workload)?
    };
    apply_network(&proxy, scenario);
    let leader_at_start = fleet.wait_leader(&ids, Duration::from_secs(15))?;
    if scenario.workload.contact == Contact::Leader {
        frontends = frontends.only(leader_at_start);
    }
    let mut run = Run {
        scenario,
        fleet,
        proxy,
        rt: &rt,
        history: History::new(),
        frontends,
        rng: StdRng::seed_from_u64(opts.seed),
        killed: BTreeSet::new(),
        paused: BTreeSet::new(),
        cut: BTreeSet::new(),
        failures: Vec::new(),
        extra_users: Vec::new(),
        next_user: 0,
        leader_at_start,
    };
    let result = run.execute(opts, &node_binary);
    // Nodes die with the fleet; the logs are copied first.
    let out_dir = run_dir(opts, scenario)?;
    for id in &ids {
        let _ = std::fs::copy(
            run.fleet.log_path(*id),
            out_dir.join(format!("node-{id}.log")),
        );
    }
    let mut report = result?;
    report.out_dir = out_dir.clone();
    let mut history = String::new();
    for op in run.history.ops() {
        history.push_str(&serde_json::to_string(&op)?);
        history.push('\n');
    }
    std::fs::write(out_dir.join("history.jsonl"), history)?;
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    drop(run);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(report)
}

fn run_dir(opts: &Options, scenario: &Scenario) -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = opts
        .out
        .join(format!("{}-seed{}-{stamp}", scenario.name, opts.seed));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Run<'_> {
    fn execute(&mut self, opts: &Options, node_binary: &str) -> anyhow::Result<Report> {
        let w = self.scenario.workload.clone();
        let load = {
            let _enter = self.rt.enter();
            Load::start(&self.frontends, &self.history, &w, opts.seed)
        };
        // Let some users exist before the first fault.
        let warm = Instant::now();
        while self.history.users().len() < w.clients as usize
            && warm.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let duration = opts.duration.unwrap_or(self.scenario.duration_s);
        let began = Instant::now();
        let steps = self.scenario.steps.clone();
        'run: loop {
            for (i, step) in steps.iter().enumerate() {
                eprintln!(
                    "[{:>6.1} s] step {}: {step:?}",
                    began.elapsed().as_secs_f64(),
                    i + 1
                );
                if let Err(e) = self.step(step) {
                    self.failures
                        .push(format!("step {} ({step:?}): {e:#}", i + 1));
                }
                if began.elapsed().as_secs_f64() >= duration && i + 1 == steps.len() {
                    break 'run;
                }
            }
            if began.elapsed().as_secs_f64() >= duration {
                break;
            }
        }
        let ran = began.elapsed().as_secs_f64();
        self.rt.block_on(load.stop());
        eprintln!("[{ran:>6.1} s] healing: links, paused and killed nodes");
        self.heal_all()?;
        let converged = self.fleet.wait_converged(Duration::from_secs(60));
        let mut convergence = Check {
            name: "convergence",
            checked: 1,
            violations: Vec::new(),
        };
        if let Err(e) = converged {
            convergence.violations.push(format!("after healing: {e:#}"));
        }
        eprintln!("final recoveries of every acknowledged user");
        let finals = self.final_recoveries();
        // The final recoveries wrote too: the nodes must agree again.
        convergence.checked += 1;
        if let Err(e) = self.fleet.wait_converged(Duration::from_secs(60)) {
            convergence
                .violations
                .push(format!("after the final recoveries: {e:#}"));
        }
        let ops = self.history.ops();
        let mut users = self.history.users();
        users.extend(self.extra_users.iter().cloned());
        let steps = Check {
            name: "step_expectations",
            checked: ops.len().min(1),
            violations: std::mem::take(&mut self.failures),
        };
        let checks = vec![
            checker::guess_bound(&ops, &users),
            checker::durability(&ops, &users, &finals),
            checker::monotonic_counters(&ops),
            checker::right_keys(&ops),
            convergence,
            steps,
        ];
        let faults: Vec<FaultReport> = checker::availability(&ops, &self.history.faults())
            .into_iter()
            .map(|(f, next)| FaultReport {
                at_ms: f.at_ms,
                what: f.what,
                next_write_ms: next,
            })
            .collect();
        let mut times: Vec<f64> = faults.iter().filter_map(|f| f.next_write_ms).collect();
        times.sort_by(f64::total_cmp);
        let recovery_ms = (!times.is_empty()).then(|| {
            [
                percentile(&times, 0.5),
                percentile(&times, 0.9),
                times[times.len() - 1],
            ]
        });
        let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
        for op in &ops {
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
        let wan = self.scenario.network.as_ref().and_then(|net| {
            let rtt = net.nearest_quorum_rtt(self.leader_at_start, self.scenario.nodes);
            let p50 = recover_start_p50?;
            Some(WanReport {
                leader: self.leader_at_start,
                clients_call_leader: w.contact == Contact::Leader,
                nearest_quorum_rtt_ms: rtt,
                recover_start_p50_ms: p50,
                ratio: if rtt == 0 { 0.0 } else { p50 / rtt as f64 },
            })
        });
        let p = self.proxy.stats();
        let violations = checks.iter().map(|c| c.violations.len()).sum();
        let mut replay = format!(
            "{} {} --seed {} --duration {}",
            opts.replay_with, self.scenario.name, opts.seed, duration
        );
        if let Some(v) = &opts.node_variant {
            replay.push_str(&format!(" --node-variant {v}"));
        }
        Ok(Report {
            scenario: self.scenario.name.clone(),
            description: self.scenario.description.clone(),
            seed: opts.seed,
            nodes: self.scenario.nodes,
            duration_s: ran,
            node_binary: node_binary.to_owned(),
            faults,
            recovery_ms,
            ops: counts,
            latency_ms,
            wan,
            proxy: [p.connections, p.reset, p.bytes_passed, p.bytes_swallowed],
            checks,
            violations,
            replay,
            out_dir: PathBuf::new(),
        })
    }

    fn heal_all(&mut self) -> anyhow::Result<()> {
        self.proxy.heal();
        apply_network(&self.proxy, self.scenario);
        self.cut.clear();
        for id in std::mem::take(&mut self.paused) {
            self.fleet.resume(id)?;
        }
        for id in std::mem::take(&mut self.killed) {
            self.fleet.start(id)?;
        }
        Ok(())
    }

    /// Recovers every acknowledged user once with the right password.
    fn final_recoveries(&mut self) -> BTreeMap<String, Final> {
        let mut users = self.history.users();
        users.extend(self.extra_users.iter().cloned());
        let (f, h) = (self.frontends.clone(), self.history.clone());
        let n = f.len();
        self.rt.block_on(async move {
            let mut finals = BTreeMap::new();
            // A few at a time.
            for chunk in users.chunks(8) {
                let calls = chunk.iter().enumerate().map(|(i, u)| {
                    let (f, h) = (f.clone(), h.clone());
                    async move {
                        let mut last = None;
                        for attempt in 0..3 {
                            let op = f.recover(&h, RUNNER, u, true, (i + attempt) % n).await;
                            h.push(op.clone());
                            let outcome = final_of(&op);
                            let retry =
                                matches!(outcome, Final::Failed(ref m) if m.starts_with("unknown"));
                            last = Some(outcome);
                            if !retry {
                                break;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        (
                            u.id.clone(),
                            last.unwrap_or(Final::Failed("not tried".into())),
                        )
                    }
                });
                for (id, outcome) in futures::future::join_all(calls).await {
                    finals.insert(id, outcome);
                }
            }
            finals
        })
    }

    fn running(&self) -> Vec<u64> {
        self.fleet
            .running()
            .into_iter()
            .filter(|id| !self.paused.contains(id))
            .collect()
    }

    /// The nodes that can form a majority: running, not paused, not cut.
    fn majority_side(&self) -> Vec<u64> {
        self.running()
            .into_iter()
            .filter(|id| !self.cut.contains(id))
            .collect()
    }

    fn leader(&self) -> anyhow::Result<u64> {
        self.fleet
            .wait_leader(&self.majority_side(), Duration::from_secs(15))
    }

    fn resolve(&mut self, t: &Target) -> anyhow::Result<Vec<u64>> {
        let running = self.running();
        anyhow::ensure!(!running.is_empty(), "no node is running");
        Ok(match t {
            Target::Leader => vec![self.leader()?],
            Target::Follower => {
                let leader = self.leader()?;
                let followers: Vec<u64> = running.into_iter().filter(|n| *n != leader).collect();
                vec![
                    *followers
                        .choose(&mut self.rng)
                        .context("no follower is running")?,
                ]
            }
            Target::Random => vec![*running.choose(&mut self.rng).context("no node")?],
            Target::Minority => {
                let k = ((self.scenario.nodes - 1) / 2) as usize;
                let mut r = running;
                r.shuffle(&mut self.rng);
                r.truncate(k);
                r
            }
            Target::Node(id) => vec![*id],
        })
    }

    fn describe(&self, what: &str, ids: &[u64]) -> String {
        format!("{what} {ids:?}")
    }

    fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        match step {
            Step::Kill { node } => {
                let ids = self.resolve(node)?;
                self.history
                    .fault(self.describe(&format!("kill ({node:?})"), &ids));
                for id in ids {
                    self.fleet.kill(id)?;
                    self.killed.insert(id);
                }
            }
            Step::Pause { node } => {
                let ids = self.resolve(node)?;
                self.history
                    .fault(self.describe(&format!("pause ({node:?})"), &ids));
                for id in ids {
                    self.fleet.pause(id)?;
                    self.paused.insert(id);
                }
            }
            Step::Resume => {
                for id in std::mem::take(&mut self.paused) {
                    self.fleet.resume(id)?;
                }
            }
            Step::Restart => {
                for id in std::mem::take(&mut self.killed) {
                    self.fleet.start(id)?;
                }
            }
            Step::RollingRestart { within_s } => {
                for id in 1..=self.scenario.nodes {
                    if self.killed.contains(&id) || self.paused.contains(&id) {
                        continue;
                    }
                    self.history.fault(format!("rolling restart of node {id}"));
                    self.fleet.terminate(id, Duration::from_secs(20))?;
                    self.fleet.start(id)?;
                    self.fleet
                        .wait_converged(Duration::from_secs_f64(*within_s))
                        .with_context(|| format!("after restarting node {id}"))?;
                }
            }
            Step::Partition { side } => {
                let mut ids = BTreeSet::new();
                for t in side {
                    for id in self.resolve(t)? {
                        ids.insert(id);
                    }
                }
                let side: Vec<u64> = ids.iter().copied().collect();
                let all: Vec<u64> = (1..=self.scenario.nodes).collect();
                self.history.fault(self.describe("partition off", &side));
                self.proxy.partition(&side, &all);
                self.cut = ids;
            }
            Step::OneWay { from, to } => {
                let (a, b) = (self.resolve(from)?[0], self.resolve(to)?[0]);
                if a != b {
                    self.history.fault(format!("one-way blackhole {a} -> {b}"));
                    self.proxy.set(a, b, LinkMode::Blackhole);
                }
            }
            Step::Drop { a, b } => {
                let (a, b) = (self.resolve(a)?[0], self.resolve(b)?[0]);
                if a != b {
                    self.history.fault(format!("drop link {a} <-> {b}"));
                    self.proxy.set_both(a, b, LinkMode::Drop);
                }
            }
            Step::Delay { ms, jitter_ms } => {
                self.history
                    .fault(format!("delay every link {ms} ms + up to {jitter_ms} ms"));
                let mode = LinkMode::Delay {
                    delay: Duration::from_millis(*ms),
                    jitter: Duration::from_millis(*jitter_ms),
                };
                for a in 1..=self.scenario.nodes {
                    for b in 1..=self.scenario.nodes {
                        if a != b {
                            self.proxy.set(a, b, mode);
                        }
                    }
                }
            }
            Step::Heal => {
                self.proxy.heal();
                apply_network(&self.proxy, self.scenario);
                self.cut.clear();
            }
            Step::DelayLink {
                a,
                b,
                ms,
                jitter_ms,
            } => {
                let (a, b) = (self.resolve(a)?[0], self.resolve(b)?[0]);
                if a != b {
                    self.history.fault(format!(
                        "delay link {a} <-> {b} {ms} ms + up to {jitter_ms} ms"
                    ));
                    self.proxy.set_both(
                        a,
                        b,
                        LinkMode::Delay {
                            delay: Duration::from_millis(*ms),
                            jitter: Duration::from_millis(*jitter_ms),
                        },
                    );
                }
            }
            Step::Wait { s } => std::thread::sleep(Duration::from_secs_f64(*s)),
            Step::ExpectLeader { within_s } => {
                self.fleet
                    .wait_leader(&self.majority_side(), Duration::from_secs_f64(*within_s))?;
            }
            Step::ExpectWrite { within_s } => {
                let since = self.history.now_ms();
                let give_up = Instant::now() + Duration::from_secs_f64(*within_s);
                while !self.history.write_after(since) {
                    anyhow::ensure!(
                        Instant::now() < give_up,
                        "no write succeeded within {within_s} s"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Step::ExpectConverged { within_s } => {
                self.fleet
                    .wait_converged(Duration::from_secs_f64(*within_s))?;
            }
            Step::KillMidRecovery => self.kill_mid_recovery()?,
        }
        Ok(())
    }

    /// Registers a private user, starts its recovery on a node, SIGKILLs
    /// that node before RecoverFinish, restarts it, and checks that the
    /// attempt stayed spent and the key still comes back.
    fn kill_mid_recovery(&mut self) -> anyhow::Result<()> {
        let side = self.majority_side();
        let first = *side.choose(&mut self.rng).context("no node")?;
        let first = self.frontends.index_of(first).context("node index")?;
        self.next_user += 1;
        let id = format!("chaos-kill-mid-{}", self.next_user);
        let (f, h) = (self.frontends.clone(), self.history.clone());
        let user = self
            .rt
            .block_on(f.register(&h, RUNNER, id.clone(), 5, first, false))
            .with_context(|| format!("registering {id} failed"))?;
        self.extra_users.push(user.clone());
        let pending = match self.rt.block_on(f.begin(&h, RUNNER, &user, true, first)) {
            Ok(p) => p,
            Err(op) => {
                let outcome = op.outcome.clone();
                h.push(op);
                anyhow::bail!("RecoverStart for {id} failed: {outcome:?}");
            }
        };
        let before = pending
            .op
            .attempts_left
            .context("no attempts left in KE2")?;
        let victim = self.fleet_id_of(pending.node);
        self.history.fault(format!(
            "kill node {victim} between RecoverStart and RecoverFinish"
        ));
        self.fleet.kill(victim)?;
        let op = self.rt.block_on(f.complete(&h, pending));
        let finished = op.finish.as_ref().is_some_and(|f| f.outcome.is_ok());
        h.push(op);
        anyhow::ensure!(
            !finished,
            "RecoverFinish succeeded on node {victim} after it was killed"
        );
        self.fleet.start(victim)?;
        let again = self
            .rt
            .block_on(f.recover(&h, RUNNER, &user, true, (first + 1) % f.len()));
        h.push(again.clone());
        anyhow::ensure!(
            again.attempts_left == Some(before.saturating_sub(1)),
            "after the interrupted recovery ({before} left), the next KE2 said {:?} left: \
             the interrupted attempt must stay spent",
            again.attempts_left
        );
        anyhow::ensure!(
            again
                .finish
                .as_ref()
                .is_some_and(|f| f.k_matches == Some(true)),
            "the key did not come back after the interrupted recovery: {:?} / {:?}",
            again.outcome,
            again.finish
        );
        Ok(())
    }

    fn fleet_id_of(&self, index: usize) -> u64 {
        self.fleet
            .fleet()
            .nodes
            .keys()
            .nth(index)
            .copied()
            .unwrap_or(1)
    }
}

fn final_of(op: &Op) -> Final {
    match (&op.outcome, &op.finish) {
        (Outcome::Refused(k), _) if k.contains("LOCKED") => Final::Locked,
        (Outcome::Ok, Some(f)) => match (&f.outcome, f.k_matches) {
            (Outcome::Ok, Some(true)) => Final::Recovered,
            (Outcome::Ok, _) => Final::WrongKey,
            (Outcome::Unknown(m), _) => Final::Failed(format!("unknown: RecoverFinish: {m}")),
            (Outcome::Refused(m), _) => Final::Failed(format!("RecoverFinish refused: {m}")),
        },
        (Outcome::Unknown(m), _) => Final::Failed(format!("unknown: RecoverStart: {m}")),
        (o, _) => Final::Failed(format!("{o:?}")),
    }
}

/// The default output directory: `chaos/` in the cargo target dir.
pub fn default_out() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("target").to_owned())
        .join("chaos")
}

/// A seed from the clock, for runs without `--seed`.
pub fn random_seed() -> u64 {
    rand::thread_rng().r#gen::<u32>().into()
}
