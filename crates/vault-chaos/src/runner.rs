//! Runs one scenario: a proxied fleet of real node processes, the client
//! load, the steps, healing, the final checks and the report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vault_testkit::proxy::{FaultProxy, LinkMode};
use vault_testkit::{FleetSpec, Template, TestFleet};

use crate::checker::{self, Check, Final};
use crate::history::{History, Op, Outcome};
use crate::scenario::{Contact, Scenario};
use crate::workload::{Frontends, Load};

mod report;
mod steps;

pub use report::{Counts, FaultReport, Report, WanReport};

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
/// Runs `scenario` on a fleet made from `template`.
pub fn run(template: &Template, scenario: &Scenario, opts: &Options) -> anyhow::Result<Report> {
    vault_fleet::tls::install_crypto_provider();
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
        let recovery_ms = report::recovery_ms(&faults);
        let counts = report::op_counts(&ops);
        let (latency_ms, recover_start_p50) = report::latencies(&ops);
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
    /// Busy answers are retried for up to `BUSY_RETRIES` × 2 s, past the
    /// nodes' 60 s session lifetime.
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
                        let (mut attempt, mut busy) = (0, 0);
                        while attempt < 3 {
                            let op = f.recover(&h, RUNNER, u, true, (i + attempt) % n).await;
                            h.push(op.clone());
                            let outcome = final_of(&op);
                            // A node that still holds the user's login
                            // states from calls whose clients gave up (the
                            // per-user cap) answers "busy", which commits
                            // nothing: wait them out (a session lives 60 s)
                            // rather than call the user lost.
                            let is_busy = matches!(
                                outcome,
                                Final::Failed(ref m) if m.contains("ResourceExhausted")
                            );
                            let retry =
                                matches!(outcome, Final::Failed(ref m) if m.starts_with("unknown"));
                            last = Some(outcome);
                            if !retry {
                                break;
                            }
                            if is_busy && busy < BUSY_RETRIES {
                                busy += 1;
                            } else {
                                attempt += 1;
                            }
                            tokio::time::sleep(Duration::from_secs(if is_busy { 2 } else { 1 }))
                                .await;
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
}

/// How many "busy" answers a final recovery waits out (2 s apart).
const BUSY_RETRIES: usize = 35;

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
