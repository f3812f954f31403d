//! The scenario's steps: resolving targets, and each fault or check a step
//! performs on the running fleet.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::seq::SliceRandom;

use super::{RUNNER, Run, apply_network};
use std::collections::BTreeSet;

use vault_testkit::proxy::LinkMode;

use crate::scenario::{Step, Target};

impl Run<'_> {
    pub(super) fn running(&self) -> Vec<u64> {
        self.fleet
            .running()
            .into_iter()
            .filter(|id| !self.paused.contains(id))
            .collect()
    }

    /// The nodes that can form a majority: running, not paused, not cut.
    pub(super) fn majority_side(&self) -> Vec<u64> {
        self.running()
            .into_iter()
            .filter(|id| !self.cut.contains(id))
            .collect()
    }

    pub(super) fn leader(&self) -> anyhow::Result<u64> {
        self.fleet
            .wait_leader(&self.majority_side(), Duration::from_secs(15))
    }

    pub(super) fn resolve(&mut self, t: &Target) -> anyhow::Result<Vec<u64>> {
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

    pub(super) fn describe(&self, what: &str, ids: &[u64]) -> String {
        format!("{what} {ids:?}")
    }

    pub(super) fn step(&mut self, step: &Step) -> anyhow::Result<()> {
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
    pub(super) fn kill_mid_recovery(&mut self) -> anyhow::Result<()> {
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

    pub(super) fn fleet_id_of(&self, index: usize) -> u64 {
        self.fleet
            .fleet()
            .nodes
            .keys()
            .nth(index)
            .copied()
            .unwrap_or(1)
    }
}
