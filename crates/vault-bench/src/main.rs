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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use vault_client::{Client, ClientError, Ksf};
use vault_hsm::softhsm::{self, SoftHsmDir};
use vault_raft::config::Fleet;
use vault_testkit::{FleetSpec, Template, TestFleet};
use vault_types::UserId;

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
    /// For `delete`: users registered per worker before the clock starts
    /// (a worker stops when its pool is used up). With `--ops`, enough
    /// for that many operations.
    #[arg(long, default_value_t = 200)]
    pool: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Workload {
    /// Register (a new generation for the worker's user each time).
    Register,
    /// Full recovery with the right password (RecoverStart + RecoverFinish).
    Recover,
    /// Recovery with a wrong password (RecoverStart; the attempt is spent).
    /// Users get the fleet's cap and are re-registered when it runs out.
    RecoverWrong,
    /// Status reads (linearizable).
    Status,
    /// Delete a user (each worker deletes its pool of users registered
    /// before the clock starts).
    Delete,
    /// 1 register : 8 recover : 1 wrong : 1 status.
    Mixed,
}

const PASSWORD: &[u8] = b"bench password";

struct Totals {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Unavailable(_) => "unavailable".into(),
        ClientError::WrongPassword { .. } => "wrong_password".into(),
        ClientError::Locked => "locked".into(),
        ClientError::NotFound => "not_found".into(),
        ClientError::SessionExpired => "session_expired".into(),
        ClientError::Conflict => "conflict".into(),
        other => format!("other: {other}"),
    }
}

/// CPU seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// Single-core OPAQUE server logins per second (login_start + finish),
/// measured in-process for about two seconds.
fn opaque_ceiling() -> anyhow::Result<f64> {
    use rand::rngs::OsRng;
    use vault_core::protocol::client::{Login, Registration, argon2id};
    use vault_core::protocol::{FleetSecrets, new_hpke_key};
    let fleet = vault_types::FleetId::new("ceiling")?;
    let secrets = FleetSecrets::new(
        fleet.clone(),
        &vault_core::opaque::new_server_setup([1; 32]),
        &new_hpke_key([2; 32]),
    )?;
    let user = UserId::new("ceiling")?;
    let ksf = argon2id(256, 1, 1)?;
    let (reg, req) = Registration::start(&mut OsRng, PASSWORD)?;
    let resp = secrets.register_start(&user, &req)?;
    let out = reg.finish(
        &mut OsRng,
        PASSWORD,
        &resp,
        &user,
        &fleet,
        secrets.hpke_public_key(),
        &ksf,
        &[0; 32],
    )?;
    let record = secrets.register_finish(&user, &out.sealed)?;
    // Client messages are prepared outside the timed loop.
    let mut inputs = Vec::new();
    for _ in 0..64 {
        let (login, ke1) = Login::start(&mut OsRng, PASSWORD)?;
        inputs.push((login, ke1));
    }
    let mut server_time = Duration::ZERO;
    let mut n = 0u64;
    let wall = Instant::now();
    while wall.elapsed() < Duration::from_secs(2) {
        let Some((login, ke1)) = inputs.pop() else {
            for _ in 0..64 {
                inputs.push(Login::start(&mut OsRng, PASSWORD)?);
            }
            continue;
        };
        let t = Instant::now();
        let (ke2, state) = secrets.login_start(&mut OsRng, &user, &record, &ke1)?;
        server_time += t.elapsed();
        let ok = login.finish(&mut OsRng, PASSWORD, &ke2, &user, &fleet, &ksf)?;
        let t = Instant::now();
        state.finish(&mut OsRng, &ok.ke3, &record.enc_k)?;
        server_time += t.elapsed();
        n += 1;
    }
    Ok(n as f64 / server_time.as_secs_f64())
}

/// Registers `per_worker` fresh users for each worker, concurrently (one
/// task per worker); their names extend the worker's user id.
async fn register_pools(
    client: &Arc<Client>,
    users: &[UserId],
    per_worker: usize,
    cap: u32,
) -> anyhow::Result<Vec<Vec<UserId>>> {
    let tasks: Vec<_> = users
        .iter()
        .map(|u| {
            let (client, base) = (client.clone(), u.as_str().to_owned());
            tokio::spawn(async move {
                let mut pool = Vec::with_capacity(per_worker);
                for j in 0..per_worker {
                    let user = UserId::new(format!("{base}-d{j}"))?;
                    client.register(&user, PASSWORD, cap).await?;
                    pool.push(user);
                }
                anyhow::Ok(pool)
            })
        })
        .collect();
    let mut pools = Vec::with_capacity(tasks.len());
    for t in tasks {
        pools.push(t.await??);
    }
    Ok(pools)
}

/// Longer than the nodes' metrics refresh (200 ms).
const GAUGE_REFRESH: Duration = Duration::from_millis(300);

/// A node's `/metrics` page, or `None` when it does not answer.
fn metrics_page(addr: &std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(addr, Duration::from_secs(1)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    Some(text)
}

/// What the run reads from the nodes' `/metrics` before and after.
struct Counters {
    /// By node id: (synced writes, log entries appended, log appends,
    /// batches applied, proposals applied).
    storage: BTreeMap<u64, [f64; 5]>,
    /// Calls served, by method (`Frontend/RecoverStart`,
    /// `Peer/AppendEntries`, ...), summed over the nodes and outcomes.
    rpcs: BTreeMap<String, f64>,
}

fn counters(fleet: &Fleet) -> Counters {
    let mut out = Counters {
        storage: BTreeMap::new(),
        rpcs: BTreeMap::new(),
    };
    for n in fleet.nodes.values() {
        let Some(text) = metrics_page(&n.metrics_addr) else {
            continue;
        };
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        out.storage.insert(
            n.id,
            [
                value("bkv_storage_synced_writes{"),
                value("bkv_storage_log_entries_appended{"),
                value("bkv_storage_log_appends{"),
                value("bkv_raft_batches_applied{"),
                value("bkv_raft_proposals_applied{"),
            ],
        );
        // bkv_rpc_total{code="OK",method="Peer/Forward",node="1"} 4900
        for line in text.lines().filter(|l| l.starts_with("bkv_rpc_total{")) {
            let method = line
                .split("method=\"")
                .nth(1)
                .and_then(|m| m.split('"').next());
            let count = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if let (Some(method), Some(count)) = (method, count) {
                *out.rpcs.entry(method.to_owned()).or_default() += count;
            }
        }
    }
    out
}

/// Single-core SoftHSM unseals per second (AES-256-GCM of a stored
/// record's size under a fresh KEK), measured for about two seconds in a
/// throwaway token in `dir`.
fn hsm_ceiling(dir: &SoftHsmDir) -> anyhow::Result<f64> {
    use std::os::unix::fs::PermissionsExt;
    use vault_hsm::provision::{InitRequest, init_token};
    use vault_hsm::{Hsm, HsmConfig, PinSource, Pkcs11Hsm, SecretBytes};
    let module = softhsm::find_module()?;
    let pin = |_| {
        let mut b = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        SecretBytes::new(hex::encode(b).into_bytes())
    };
    let (so_pin, user_pin) = (pin(()), pin(()));
    let label = "bench-ceiling";
    init_token(&InitRequest {
        module: &module,
        label,
        so_pin: &so_pin,
        user_pin: &user_pin,
        generate_kek: true,
    })?;
    let pin_file = dir.root().join("bench.pin");
    std::fs::write(&pin_file, user_pin.expose())?;
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))?;
    let hsm = Pkcs11Hsm::open(&HsmConfig {
        module,
        token_label: label.to_owned(),
        pin: PinSource::File(pin_file),
        sessions: 1,
    })?;
    let aad = b"vault-bench ceiling";
    let blob = hsm.seal(aad, &[0x5a; RECORD_PLAINTEXT_LEN])?;
    let mut n = 0u64;
    let wall = Instant::now();
    while wall.elapsed() < Duration::from_secs(2) {
        hsm.unseal(aad, &blob)?;
        n += 1;
    }
    Ok(n as f64 / wall.elapsed().as_secs_f64())
}

/// About the plaintext size of a stored user record (what RecoverStart
/// unseals).
const RECORD_PLAINTEXT_LEN: usize = 288;

/// This machine's single-core rates, measured before the run.
struct Ceiling {
    opaque_logins_per_s: f64,
    hsm_unseals_per_s: f64,
}

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

#[expect(clippy::print_stdout, reason = "the summary is the program's output")]
fn run(args: &Args, hsm_dir: Option<&SoftHsmDir>) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(args.pool >= 1, "--pool must be at least 1");
    let ceiling = match hsm_dir {
        Some(dir) => {
            eprintln!("measuring the single-core OPAQUE server ceiling (2 s)…");
            let opaque_logins_per_s = opaque_ceiling()?;
            eprintln!("measuring single-core SoftHSM unseals (2 s, a throwaway token)…");
            let hsm_unseals_per_s = hsm_ceiling(dir).context("HSM ceiling")?;
            Some(Ceiling {
                opaque_logins_per_s,
                hsm_unseals_per_s,
            })
        }
        None => None,
    };
    vault_raft::tls::install_crypto_provider();
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
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let users: Vec<UserId> = (0..args.concurrency)
        .map(|i| UserId::new(format!("bench-{run_id}-{i}")))
        .collect::<Result<_, _>>()?;

    eprintln!(
        "{} clients, workload {:?}, {} s against fleet {} ({} nodes)",
        args.concurrency,
        args.workload,
        args.duration,
        fleet.fleet_id.as_str(),
        fleet.nodes.len()
    );
    let per_worker = match args.ops {
        Some(ops) => ops.div_ceil(args.concurrency as u64) as usize,
        None => args.pool,
    };
    let pools: Vec<Vec<UserId>> = if args.workload == Workload::Delete {
        eprintln!(
            "registering {per_worker} users for each of {} workers…",
            users.len()
        );
        rt.block_on(register_pools(&client, &users, per_worker, cap))?
    } else {
        if args.workload != Workload::Register {
            eprintln!("registering {} users…", users.len());
            rt.block_on(async {
                for u in &users {
                    client.register(u, PASSWORD, cap).await?;
                }
                anyhow::Ok(())
            })?;
        }
        vec![Vec::new(); users.len()]
    };

    let totals = Arc::new(Mutex::new(Totals {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        errors: BTreeMap::new(),
    }));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Nodes refresh these gauges every 200 ms: let them catch up with the
    // registrations above, and below with the run's last operations.
    std::thread::sleep(GAUGE_REFRESH);
    let counters0 = counters(fleet);
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let limit = args.ops.unwrap_or(u64::MAX);

    let running = Arc::new(AtomicU64::new(users.len() as u64));
    // When the last worker finished (µs after start): the run's length,
    // also when the delete pools run out between two progress lines.
    let finished_at = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = users
        .into_iter()
        .zip(pools)
        .enumerate()
        .map(|(w, (user, mut pool))| {
            let (client, totals, done, stop, running, finished_at) = (
                client.clone(),
                totals.clone(),
                done.clone(),
                stop.clone(),
                running.clone(),
                finished_at.clone(),
            );
            let workload = args.workload;
            rt.spawn(async move {
                let mut i = 0u64;
                let mut wrong_left = cap;
                while !stop.load(Ordering::Relaxed) {
                    if workload == Workload::Delete && pool.is_empty() {
                        break;
                    }
                    let op = match workload {
                        Workload::Mixed => match (i + w as u64) % 11 {
                            0 => Workload::Register,
                            1 => Workload::RecoverWrong,
                            2 => Workload::Status,
                            _ => Workload::Recover,
                        },
                        other => other,
                    };
                    i += 1;
                    let t = Instant::now();
                    let result = match op {
                        Workload::Register => client.register(&user, PASSWORD, cap).await.map(drop),
                        Workload::Recover => client.recover(&user, PASSWORD).await.map(drop),
                        Workload::RecoverWrong => {
                            if wrong_left <= 1 {
                                // Keep the record alive: a success resets the count.
                                let _ = client.recover(&user, PASSWORD).await;
                                wrong_left = cap;
                            }
                            wrong_left -= 1;
                            match client.recover(&user, b"wrong").await {
                                Err(ClientError::WrongPassword { .. }) => Ok(()),
                                Ok(_) => {
                                    Err(ClientError::Other("a wrong password recovered".into()))
                                }
                                Err(e) => Err(e),
                            }
                        }
                        Workload::Status => client.status(&user).await.map(drop),
                        Workload::Delete => match pool.pop() {
                            Some(u) => client.delete(&u).await,
                            None => Ok(()),
                        },
                        Workload::Mixed => Ok(()),
                    };
                    let micros = t.elapsed().as_micros().max(1) as u64;
                    let mut tot = totals.lock().await;
                    match result {
                        Ok(()) => {
                            let _ = tot.latency.record(micros);
                        }
                        Err(e) => *tot.errors.entry(error_kind(&e)).or_default() += 1,
                    }
                    drop(tot);
                    if done.fetch_add(1, Ordering::Relaxed) + 1 >= limit {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                finished_at.fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                running.fetch_sub(1, Ordering::Relaxed);
            })
        })
        .collect();

    let mut last = 0;
    while Instant::now() < deadline
        && !stop.load(Ordering::Relaxed)
        && running.load(Ordering::Relaxed) > 0
    {
        // A progress line every second; checking every 50 ms whether the
        // workers are done (delete pools can run out within a second).
        let tick = Instant::now()
            + Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now()));
        while Instant::now() < tick && running.load(Ordering::Relaxed) > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let now = done.load(Ordering::Relaxed);
        eprintln!(
            "  {:>5.1} s  {:>8} ops  {:>7} ops/s",
            start.elapsed().as_secs_f64(),
            now,
            now - last
        );
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for w in workers {
            let _ = w.await;
        }
    });
    let wall = (finished_at.load(Ordering::Relaxed) as f64 / 1e6).max(1e-6);
    let cpu = cpu_seconds() - cpu0;
    if args.workload == Workload::Delete && wall + 0.5 < args.duration as f64 {
        eprintln!(
            "the delete pools ran out after {wall:.1} s (--pool {per_worker}); throughput is over that time"
        );
    }
    std::thread::sleep(GAUGE_REFRESH);
    let counters1 = counters(fleet);
    // Per node: fsyncs per appended log entry, and entries per log append
    // (how many entries share one fsync: the group-commit factor).
    let storage: BTreeMap<u64, serde_json::Value> = counters1
        .storage
        .iter()
        .filter_map(|(id, after)| {
            let before = counters0.storage.get(id)?;
            let d = |i: usize| after[i] - before[i];
            (d(1) > 0.0).then(|| {
                (
                    *id,
                    serde_json::json!({
                        "fsyncs_per_entry": d(0) / d(1),
                        "entries_per_log_append": d(1) / d(2).max(1.0),
                        "entries": d(1),
                        "proposals_per_entry": d(4) / d(3).max(1.0),
                    }),
                )
            })
        })
        .collect();
    let tot = rt.block_on(totals.lock());
    let ok = tot.latency.len();
    // Calls the nodes served per operation, by method: the client's own
    // calls and what the nodes say to each other (forwards, AppendEntries,
    // read indexes) for each operation.
    let rpcs_per_op: BTreeMap<String, f64> = counters1
        .rpcs
        .iter()
        .filter_map(|(method, after)| {
            let d = after - counters0.rpcs.get(method).copied().unwrap_or(0.0);
            (d > 0.0 && ok > 0).then(|| (method.clone(), d / ok as f64))
        })
        .collect();
    let errors: u64 = tot.errors.values().sum();
    let ms = |q: f64| tot.latency.value_at_quantile(q) as f64 / 1000.0;
    let throughput = ok as f64 / wall;
    let summary = serde_json::json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "concurrency": args.concurrency,
        "seconds": wall,
        "ok": ok,
        "errors": errors,
        "errors_by_kind": tot.errors,
        "throughput_per_s": throughput,
        "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99_9": ms(0.999), "max": tot.latency.max() as f64 / 1000.0 },
        "client_cpu_cores": cpu / wall,
        "ceiling_single_core_opaque_logins_per_s": ceiling.as_ref().map(|c| c.opaque_logins_per_s),
        "ceiling_single_core_hsm_unseals_per_s": ceiling.as_ref().map(|c| c.hsm_unseals_per_s),
        "fraction_of_two_core_opaque_ceiling": ceiling.as_ref().map(|c| throughput / (2.0 * c.opaque_logins_per_s)),
        "fleet_nodes": fleet.nodes.len(),
        "storage_by_node": storage,
        "rpcs_per_op": rpcs_per_op,
        "ksf": "fast (Argon2id 256 KiB, 1 pass)",
    });
    println!(
        "{:?}: {ok} ok, {errors} errors in {wall:.1} s = {throughput:.0}/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2}; client CPU {:.2} cores",
        args.workload,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        cpu / wall
    );
    for (id, st) in &storage {
        println!(
            "node {id}: {:.2} fsyncs per log entry, {:.2} entries per log append, {:.2} proposals per entry",
            st["fsyncs_per_entry"].as_f64().unwrap_or(0.0),
            st["entries_per_log_append"].as_f64().unwrap_or(0.0),
            st["proposals_per_entry"].as_f64().unwrap_or(0.0)
        );
    }
    if !rpcs_per_op.is_empty() {
        let each: Vec<String> = rpcs_per_op
            .iter()
            .map(|(m, n)| format!("{m} {n:.2}"))
            .collect();
        println!(
            "calls served per operation (all nodes): {}",
            each.join(", ")
        );
    }
    if !tot.errors.is_empty() {
        println!("errors: {:?}", tot.errors);
    }
    if let Some(c) = &ceiling {
        let o = c.opaque_logins_per_s;
        println!(
            "ceiling: {o:.0} OPAQUE server logins/s on one core ({:.0} on two), {:.0} SoftHSM unseals/s on one core; this run reached {:.1}% of the two-core OPAQUE figure",
            2.0 * o,
            c.hsm_unseals_per_s,
            100.0 * throughput / (2.0 * o)
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("summary written to {}", path.display());
    }
    Ok(())
}
