//! `vault-chaos`: runs chaos scenarios against a local proxied fleet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vault_chaos::{Options, Scenario, runner};

/// Runs chaos scenarios (TOML files, see tests/chaos/scenarios/) against a
/// fresh local fleet each: real node processes, RocksDB, SoftHSM and mutual
/// TLS on loopback, peer links through a fault-injecting proxy. Prints a
/// summary per scenario, writes report.json, history.jsonl and the node
/// logs to a directory per run, and exits 1 if any invariant was violated
/// (with the command that replays the run). Build first with
/// `cargo build --workspace --bins`; `scripts/chaos.sh` does.
#[derive(Parser)]
#[command(name = "vault-chaos", version)]
struct Args {
    /// Scenario files to run, in order.
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Seed of every random choice; random (and printed) when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Run each scenario's steps for this many seconds instead of its
    /// `duration_s`.
    #[arg(long)]
    duration: Option<f64>,
    /// Where run directories go.
    #[arg(long, default_value_os_t = runner::default_out())]
    out: PathBuf,
    /// Run this vault-node variant from the target dir instead of
    /// vault-node (e.g. vault-node-unsafe-ke2, for showing the checker
    /// bites).
    #[arg(long)]
    node_variant: Option<String>,
    /// How the replay command in reports starts.
    #[arg(long, default_value = "scripts/chaos.sh")]
    replay_with: String,
}

#[expect(clippy::print_stdout, reason = "the summary is the output")]
fn main() -> ExitCode {
    let args = Args::parse();
    let mut scenarios = Vec::new();
    for path in &args.scenarios {
        match Scenario::load(path) {
            Ok(s) => scenarios.push(s),
            Err(e) => {
                eprintln!("vault-chaos: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    let seed = args.seed.unwrap_or_else(runner::random_seed);
    let nodes = scenarios.iter().map(|s| s.nodes).max().unwrap_or(3);
    eprintln!("provisioning SoftHSM tokens and certificates for {nodes} nodes");
    let template = match vault_testkit::Template::provision(nodes) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vault-chaos: provisioning failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let opts = Options {
        seed,
        duration: args.duration,
        out: args.out.clone(),
        node_variant: args.node_variant.clone(),
        replay_with: args.replay_with.clone(),
    };
    let mut failed = Vec::new();
    for s in &scenarios {
        eprintln!("running {} (seed {seed}): {}", s.name, s.description);
        match vault_chaos::run(&template, s, &opts) {
            Ok(report) => {
                println!("{}", report.summary());
                if !report.passed() {
                    failed.push(report.replay.clone());
                }
            }
            Err(e) => {
                println!("== {} (seed {seed}) could not run: {e:#}", s.name);
                failed.push(format!("{} {} --seed {seed}", args.replay_with, s.name));
            }
        }
    }
    if failed.is_empty() {
        println!("all {} scenario(s) passed", scenarios.len());
        ExitCode::SUCCESS
    } else {
        println!("{} scenario(s) failed; replay with:", failed.len());
        for f in failed {
            println!("  {f}");
        }
        ExitCode::FAILURE
    }
}
