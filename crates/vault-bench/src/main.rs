//! `vault-bench`: drives a running fleet's frontend API with concurrent
//! clients and reports throughput, latency percentiles (HDR histogram),
//! errors by kind and the client's own CPU use.
//!
//! The clients use the fast Argon2id profile so that the client machine is
//! not what is measured; its CPU share is printed so that this can be
//! checked (on one machine, client and fleet share the cores).
//!
//! `--spawn local-3` starts a fleet of its own (real SoftHSM tokens, a
//! temporary directory, free loopback ports) and stops it at the end;
//! `--ceiling` measures this machine's single-core OPAQUE and HSM rates
//! first, in a private SoftHSM token directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use vault_client::{Client, Ksf};
use vault_fleet::config::Fleet;
use vault_hsm::softhsm::{self, SoftHsmDir};
use vault_testkit::{FleetSpec, Template, TestFleet};
use vault_types::UserId;

mod ceiling;
mod counters;
mod summary;
mod workers;

use counters::{GAUGE_REFRESH, counters, cpu_seconds};

/// Load generator for a Backup Key Vault fleet.
///
/// Drives a running fleet (`./scripts/fleet.sh up`), or one it starts
/// itself with `--spawn local-3` and stops at the end. Each worker owns one
/// user; `recover` workloads register those users before the clock starts,
/// `delete` registers a pool of users per worker first. Prints progress
/// every second, then a summary; `--json` also writes it as JSON. Exit
/// codes: 0 done (even with errors, which are counted); 1 the run could
/// not start; 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "vault-bench", version)]
struct Args {
    /// What each operation is.
    #[arg(long, value_enum, default_value = "recover")]
    workload: Workload,
    /// Concurrent clients.
    #[arg(long, default_value_t = 5)]
    concurrency: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Stop after this many operations instead (whichever comes first).
    #[arg(long)]
    ops: Option<u64>,
    /// The fleet file.
    #[arg(
        long,
        env = "BKV_FLEET_CONFIG",
        default_value = "cluster-configs/local-3.toml"
    )]
    config: PathBuf,
    /// The fleet directory.
    #[arg(long, env = "BKV_FLEET_DIR", default_value = ".fleet")]
    fleet_dir: PathBuf,
    /// The frontend certificate to use.
    #[arg(long, default_value = "local")]
    frontend: String,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// First measure, on one core of this machine, OPAQUE server logins per
    /// second (the protocol's CPU ceiling) and SoftHSM unseals per second
    /// (in a throwaway token), and report the run against them.
    #[arg(long)]
    ceiling: bool,
    /// Start a fleet instead of using a running one: `local-N` is N voters
    /// on loopback like `cluster-configs/local-3.toml` (real SoftHSM
    /// tokens, mutual TLS, fsync on) in a temporary directory on free
    /// ports, stopped and removed when the run ends. Needs the binaries
    /// built (`cargo build --workspace --all-targets`).
    #[arg(long, value_name = "local-N")]
    spawn: Option<String>,
    /// For `delete` and `recover-wrong`: users registered per worker
    /// before the clock starts (a worker stops when its pool is used up).
    /// With `--ops`, enough for that many operations.
    #[arg(long, default_value_t = 200)]
    pool: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Workload {
    /// Register (a new generation for the worker's user each time).
    Register,
    /// Full recovery with the right password (RecoverStart + RecoverFinish).
    Recover,
    /// Recovery with a wrong password (RecoverStart; the attempt is spent),
    /// each guess on a user of its own from the worker's pool (registered
    /// before the clock, like `delete`'s): it measures the fleet, not the
    /// per-user cap on logins in progress.
    RecoverWrong,
    /// Wrong guesses all on the worker's one user (re-registered when its
    /// budget runs out): shows the per-user cap on logins in progress
    /// (`sessions_per_user` on each node, each held for `session_ttl_s`
    /// since the client stops at KE2) holding.
    RecoverWrongOneUser,
    /// Status reads (linearizable).
    Status,
    /// Delete a user (each worker deletes its pool of users registered
    /// before the clock starts).
    Delete,
    /// 1 register : 8 recover : 1 wrong : 1 status.
    Mixed,
    /// Register a new user each time (`<worker's user>-<n>`) and leave it
    /// registered: fills a fleet with real sealed records (for a KEK
    /// rotation's rate, say).
    RegisterNew,
}

impl Workload {
    /// Whether workers get a pool of registered users (`mixed`: for its
    /// wrong guesses, which fall back to the worker's own user once it
    /// runs out).
    fn uses_pools(self) -> bool {
        matches!(
            self,
            Workload::Delete | Workload::RecoverWrong | Workload::Mixed
        )
    }

    /// Whether a worker stops when its pool is used up.
    fn ends_with_pool(self) -> bool {
        matches!(self, Workload::Delete | Workload::RecoverWrong)
    }
}

const PASSWORD: &[u8] = b"bench password";

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let finish = |result: anyhow::Result<()>| match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vault-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    if args.ceiling {
        // SoftHSM reads its config once per process: the HSM ceiling runs
        // in a re-run of this program with a private token directory,
        // removed afterwards.
        softhsm::run_with_private_softhsm(|dir| finish(run(&args, Some(dir))))
    } else {
        finish(run(&args, None))
    }
}

/// A fleet this run started (`--spawn`); dropping it stops the nodes and
/// removes its directory.
struct Spawned {
    fleet: TestFleet,
    _template: Template,
}

fn spawn(what: &str) -> anyhow::Result<Spawned> {
    let n: u64 = what
        .strip_prefix("local-")
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=7).contains(n))
        .with_context(|| format!("--spawn {what}: expected local-N with N from 1 to 7"))?;
    eprintln!("spawning a {n}-node loopback fleet (SoftHSM tokens, certificates)…");
    let template = Template::provision(n)?;
    let mut fleet = TestFleet::create(&template, &FleetSpec::voters(n))?;
    fleet.start_all(1..=n)?;
    let ready = fleet
        .init()
        .and_then(|()| fleet.wait_converged(Duration::from_secs(60)).map(drop));
    fleet.with_logs(ready)?;
    eprintln!("fleet up in {}", fleet.dir().display());
    Ok(Spawned {
        fleet,
        _template: template,
    })
}

/// Measures the ceilings if asked, finds or spawns the fleet, prepares the
/// users, drives the workers and reports.
fn run(args: &Args, hsm_dir: Option<&SoftHsmDir>) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(args.pool >= 1, "--pool must be at least 1");
    let ceiling = hsm_dir.map(ceiling::measure).transpose()?;
    vault_fleet::tls::install_crypto_provider();
    let spawned = args.spawn.as_deref().map(spawn).transpose()?;
    let loaded;
    let (fleet, frontend) = match &spawned {
        Some(s) => (s.fleet.fleet(), "test"),
        None => {
            loaded = Fleet::load(&args.config, &args.fleet_dir).context(
                "no fleet: start one with ./scripts/fleet.sh up, or pass --spawn local-3",
            )?;
            (&loaded, args.frontend.as_str())
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _entered = rt.enter();
    let client = Arc::new(Client::from_fleet(fleet, frontend, Ksf::Fast)?);
    let cap = fleet.max_attempts_cap;
    eprintln!(
        "{} clients, workload {:?}, {} s against fleet {} ({} nodes)",
        args.concurrency,
        args.workload,
        args.duration,
        fleet.fleet_id.as_str(),
        fleet.nodes.len()
    );
    let (users, pools, per_worker) = prepare(args, &rt, &client, cap)?;
    // Nodes refresh these gauges every 200 ms: let them catch up with the
    // registrations above, and below with the run's last operations.
    std::thread::sleep(GAUGE_REFRESH);
    let counters0 = counters(fleet);
    let cpu0 = cpu_seconds();
    let driven = workers::drive(
        &rt,
        client,
        args.workload,
        users,
        pools,
        (
            Duration::from_secs(args.duration),
            args.ops.unwrap_or(u64::MAX),
            cap,
        ),
    )?;
    let cpu = cpu_seconds() - cpu0;
    if args.workload.ends_with_pool() && driven.wall + 0.5 < args.duration as f64 {
        eprintln!(
            "the pools ran out after {:.1} s (--pool {per_worker}); throughput is over that time",
            driven.wall
        );
    }
    std::thread::sleep(GAUGE_REFRESH);
    let counters1 = counters(fleet);
    let ok = driven.totals.latency.len();
    let summary = summary::Summary {
        args,
        totals: &driven.totals,
        wall: driven.wall,
        cpu,
        ceiling: ceiling.as_ref(),
        nodes: fleet.nodes.len(),
        storage: counters1.storage_since(&counters0),
        rpcs_per_op: counters1.rpcs_per_op_since(&counters0, ok),
    };
    summary.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary.json())? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("summary written to {}", path.display());
    }
    Ok(())
}

/// One user per worker (registered first, except for `register`), and for
/// `delete` and `recover-wrong` a pool of registered users per worker; and
/// the pool size.
fn prepare(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    client: &Arc<Client>,
    cap: u32,
) -> anyhow::Result<(Vec<UserId>, Vec<Vec<UserId>>, usize)> {
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let users: Vec<UserId> = (0..args.concurrency)
        .map(|i| UserId::new(format!("bench-{run_id}-{i}")))
        .collect::<Result<_, _>>()?;
    let per_worker = match args.ops {
        Some(ops) => ops.div_ceil(args.concurrency as u64) as usize,
        None => args.pool,
    };
    // One operation in 11 of `mixed` is a wrong guess.
    let per_worker = match args.workload {
        Workload::Mixed => per_worker.div_ceil(4),
        _ => per_worker,
    };
    let pools: Vec<Vec<UserId>> = if args.workload.uses_pools() {
        eprintln!(
            "registering {per_worker} users for each of {} workers…",
            users.len()
        );
        rt.block_on(workers::register_pools(client, &users, per_worker, cap))?
    } else {
        vec![Vec::new(); users.len()]
    };
    // The workers' own users: every workload but those that register them
    // or use only their pools.
    if !matches!(
        args.workload,
        Workload::Register | Workload::RegisterNew | Workload::Delete | Workload::RecoverWrong
    ) {
        eprintln!("registering {} users…", users.len());
        rt.block_on(async {
            for u in &users {
                client.register(u, PASSWORD, cap).await?;
            }
            anyhow::Ok(())
        })?;
    }
    Ok((users, pools, per_worker))
}
