//! Fleets in tests: real `vault-node` processes with real RocksDB, SoftHSM
//! tokens and mutual TLS, on loopback ports.
//!
//! - [`Template`]: provisions SoftHSM tokens (one KEK, copied to every node
//!   by the ceremony), PIN files and certificates once per test process;
//!   each [`TestFleet`] starts from a copy.
//! - [`TestFleet`]: writes a fleet file with free ports, starts, kills
//!   (SIGKILL), stops (SIGTERM) and restarts nodes, runs `vaultctl`, and
//!   kills every node it started when dropped, also when a test fails.
//! - [`proxy`]: a fault-injecting TCP proxy for the peer links of a
//!   proxied fleet (drop, blackhole, delay, one way).
//! - [`client`]: gRPC clients with a chosen identity, to drive and probe a
//!   fleet the way a peer or a frontend would.
//!
//! Binaries come from the target dir this test runs from; build them first
//! (`cargo build --workspace --bins`, which `scripts/test.sh` does). A
//! binary older than a source file is refused, so a test never runs stale
//! code.

pub mod client;
mod fleet;
mod process;
pub mod proxy;
mod spec;
mod template;
pub mod witness;

/// A fleet test: gets the shared template, fails with an error.
pub type FleetTest = fn(&Template) -> anyhow::Result<()>;

/// The `main` of a fleet test binary (`harness = false`): provisions a
/// template for `nodes` nodes once, then runs `tests` one at a time (each
/// starts several node processes) with libtest's command line and output.
pub fn run_fleet_tests(
    nodes: u64,
    tests: Vec<(&'static str, FleetTest)>,
) -> std::process::ExitCode {
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads = Some(1);
    let template = match Template::provision(nodes) {
        Ok(t) => std::sync::Arc::new(t),
        Err(e) => {
            eprintln!("provisioning the fleet template failed: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let t = template.clone();
            libtest_mimic::Trial::test(name, move || {
                f(&t).map_err(|e| libtest_mimic::Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

pub use fleet::{TestFleet, copy_tree, node_status};
pub use process::{Bins, free_ports};
pub use spec::{ELECTION_MS, FleetSpec, source_ip};
pub use template::Template;
