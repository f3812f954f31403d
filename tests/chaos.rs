//! The chaos suite's fixed-seed short set, run by the gate: every scenario
//! in tests/chaos/scenarios/ for one pass of its steps, on a fresh proxied
//! fleet each; and the bite test, which shows that the checker catches a
//! node that answers KE2 before the attempt is committed.
//!
//! `scripts/chaos.sh --all` runs the same scenarios for their full
//! duration with any seed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, ensure};
use vault_chaos::{Options, Report, Scenario};
use vault_testkit::Template;

/// Seed of the gate's runs (a failure prints the command that replays it).
const SEED: u64 = 20261128;

fn scenario(name: &str) -> anyhow::Result<Scenario> {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    Scenario::load(&dir.join(format!("chaos/scenarios/{name}.toml")))
}

fn options(duration: f64, node_variant: Option<&str>) -> Options {
    Options {
        seed: SEED,
        duration: Some(duration),
        out: vault_chaos::runner::default_out(),
        node_variant: node_variant.map(str::to_owned),
        replay_with: "scripts/chaos.sh".into(),
    }
}

/// Runs `name` once through its steps; fails with the summary on any
/// violation, and removes the run's files when it passed.
fn once(template: &Template, name: &str) -> anyhow::Result<()> {
    let report = vault_chaos::run(template, &scenario(name)?, &options(1.0, None))?;
    eprintln!("{}", report.summary());
    ensure!(report.passed(), "{}", report.summary());
    ensure!(!report.faults.is_empty(), "the scenario injected no fault");
    let _ = std::fs::remove_dir_all(&report.out_dir);
    Ok(())
}

fn violations(report: &Report, check: &str) -> usize {
    report
        .checks
        .iter()
        .find(|c| c.name == check)
        .map_or(0, |c| c.violations.len())
}

/// The leader-kill scenario on a node built with `unsafe-ke2-before-commit`
/// must fail the guess bound: without this, a green chaos run proves
/// nothing.
fn the_checker_catches_ke2_before_commit(template: &Template) -> anyhow::Result<()> {
    let report = vault_chaos::run(
        template,
        &scenario("leader-kill-loop")?,
        &options(8.0, Some("vault-node-unsafe-ke2")),
    )?;
    eprintln!("{}", report.summary());
    ensure!(
        violations(&report, "guess_bound") > 0,
        "the checker did not catch KE2s released before their attempts were committed:\n{}",
        report.summary()
    );
    let _ = std::fs::remove_dir_all(&report.out_dir);
    Ok(())
}

macro_rules! scenarios {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(fn $name(t: &Template) -> anyhow::Result<()> { once(t, $file) })*
        fn all() -> Vec<(&'static str, vault_testkit::FleetTest)> {
            vec![$((stringify!($name), $name as vault_testkit::FleetTest)),*]
        }
    };
}

scenarios! {
    leader_kill_loop => "leader-kill-loop",
    follower_kill_loop => "follower-kill-loop",
    pause_leader => "pause-leader",
    rolling_restart => "rolling-restart",
    partition_leader => "partition-leader",
    split_brain_5 => "split-brain-5",
    flapping_links => "flapping-links",
    kill_during_recovery => "kill-during-recovery",
}

fn main() -> ExitCode {
    let mut tests = all();
    tests.push((
        "the_checker_catches_ke2_before_commit",
        the_checker_catches_ke2_before_commit,
    ));
    vault_testkit::run_fleet_tests(5, tests)
}
