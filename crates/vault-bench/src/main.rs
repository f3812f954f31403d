//! `vault-bench`: drives a running fleet's frontend API with concurrent
//! clients and reports throughput, latency percentiles (HDR histogram),
//! errors by kind and the client's own CPU use.
//!
//! The clients use the fast Argon2id profile so that the client machine is
//! not what is measured; its CPU share is printed so that this can be
//! checked (on one machine, client and fleet share the cores).

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
use vault_raft::config::Fleet;
use vault_types::UserId;

/// Load generator for a Backup Key Vault fleet.
///
/// Start a fleet first (`./scripts/fleet.sh up`). Each worker owns one
/// user; `recover` workloads register those users before the clock starts.
/// Prints progress every second, then a summary; `--json` also writes it as
/// JSON. Exit codes: 0 done (even with errors, which are counted); 1 the
/// run could not start; 2 bad usage.
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
    /// First measure this machine's single-core OPAQUE server login rate
    /// (the protocol's CPU ceiling) and report the run against it.
    #[arg(long)]
    ceiling: bool,
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

/// The storage counters of every node, from their `/metrics`:
/// (synced writes, log entries appended, log appends) by node id.
fn storage_counters(fleet: &Fleet) -> BTreeMap<u64, [f64; 3]> {
    use std::io::{Read, Write};
    let mut out = BTreeMap::new();
    for n in fleet.nodes.values() {
        let Ok(mut s) =
            std::net::TcpStream::connect_timeout(&n.metrics_addr, Duration::from_secs(1))
        else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        out.insert(
            n.id,
            [
                value("bkv_storage_synced_writes{"),
                value("bkv_storage_log_entries_appended{"),
                value("bkv_storage_log_appends{"),
            ],
        );
    }
    out
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vault-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[expect(clippy::print_stdout, reason = "the summary is the program's output")]
fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let ceiling = if args.ceiling {
        eprintln!("measuring the single-core OPAQUE server ceiling (2 s)…");
        Some(opaque_ceiling()?)
    } else {
        None
    };
    vault_raft::tls::install_crypto_provider();
    let fleet = Fleet::load(&args.config, &args.fleet_dir)
        .context("no fleet: start one with ./scripts/fleet.sh up")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _entered = rt.enter();
    let client = Arc::new(Client::from_fleet(&fleet, &args.frontend, Ksf::Fast)?);
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
    if args.workload != Workload::Register {
        eprintln!("registering {} users…", users.len());
        rt.block_on(async {
            for u in &users {
                client.register(u, PASSWORD, cap).await?;
            }
            anyhow::Ok(())
        })?;
    }

    let totals = Arc::new(Mutex::new(Totals {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        errors: BTreeMap::new(),
    }));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let storage0 = storage_counters(&fleet);
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let limit = args.ops.unwrap_or(u64::MAX);

    let workers: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(w, user)| {
            let (client, totals, done, stop) =
                (client.clone(), totals.clone(), done.clone(), stop.clone());
            let workload = args.workload;
            rt.spawn(async move {
                let mut i = 0u64;
                let mut wrong_left = cap;
                while !stop.load(Ordering::Relaxed) {
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
            })
        })
        .collect();

    let mut last = 0;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(
            Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
        );
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
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let storage1 = storage_counters(&fleet);
    // Per node: fsyncs per appended log entry, and entries per log append
    // (how many entries share one fsync: the group-commit factor).
    let storage: BTreeMap<u64, serde_json::Value> = storage1
        .iter()
        .filter_map(|(id, after)| {
            let before = storage0.get(id)?;
            let d = |i: usize| after[i] - before[i];
            (d(1) > 0.0).then(|| {
                (
                    *id,
                    serde_json::json!({
                        "fsyncs_per_entry": d(0) / d(1),
                        "entries_per_log_append": d(1) / d(2).max(1.0),
                        "entries": d(1),
                    }),
                )
            })
        })
        .collect();
    let tot = rt.block_on(totals.lock());
    let ok = tot.latency.len();
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
        "ceiling_single_core_opaque_logins_per_s": ceiling,
        "fleet_nodes": fleet.nodes.len(),
        "storage_by_node": storage,
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
            "node {id}: {:.2} fsyncs per log entry, {:.2} entries per log append",
            st["fsyncs_per_entry"].as_f64().unwrap_or(0.0),
            st["entries_per_log_append"].as_f64().unwrap_or(0.0)
        );
    }
    if !tot.errors.is_empty() {
        println!("errors: {:?}", tot.errors);
    }
    if let Some(c) = ceiling {
        println!(
            "ceiling: {c:.0} OPAQUE server logins/s on one core ({:.0} on two); this run reached {:.1}% of the two-core figure",
            2.0 * c,
            100.0 * throughput / (2.0 * c)
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("summary written to {}", path.display());
    }
    Ok(())
}
