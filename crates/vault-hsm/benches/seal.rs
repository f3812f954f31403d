//! Seal and unseal throughput and latency on SoftHSM2.
//!
//! ```text
//! cargo bench -p vault-hsm --bench seal                  # default: 3 s per case
//! cargo bench -p vault-hsm --bench seal -- --seconds 10  # longer runs
//! ```
//!
//! Provisions a private SoftHSM token (removed afterwards), then for each
//! operation, plaintext size and thread count runs closed-loop callers for a
//! fixed time and prints ops/s and latency percentiles as a Markdown table.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use vault_hsm::provision::{self, InitRequest};
use vault_hsm::softhsm::{self, SoftHsmDir};
use vault_hsm::{Hsm, HsmConfig, PinSource, Pkcs11Hsm, SecretBytes};

const AAD: &[u8] = b"kind=record;fleet=bench;user=u;generation=1";

fn main() -> ExitCode {
    softhsm::run_with_private_softhsm(run)
}

fn seconds_arg() -> Result<u64, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().position(|a| a == "--seconds") {
        None => Ok(3),
        Some(i) => args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .filter(|s| *s > 0)
            .ok_or_else(|| "--seconds takes a whole number above 0".to_owned()),
    }
}

fn run(dir: &SoftHsmDir) -> ExitCode {
    match bench(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seal bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(dir: &SoftHsmDir) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let seconds = seconds_arg()?;
    let module = softhsm::find_module().map_err(|e| e.to_string())?;
    let pin = "bench-user-pin";
    let pin_file = dir.root().join("user.pin");
    std::fs::write(&pin_file, pin).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    provision::init_token(&InitRequest {
        module: &module,
        label: "bench",
        so_pin: &SecretBytes::new(b"bench-so-pin".to_vec()),
        user_pin: &SecretBytes::new(pin.as_bytes().to_vec()),
        generate_kek: true,
    })
    .map_err(|e| e.to_string())?;
    let hsm = Arc::new(
        Pkcs11Hsm::open(&HsmConfig {
            module: module.clone(),
            token_label: "bench".into(),
            pin: PinSource::File(pin_file),
            sessions: 4,
        })
        .map_err(|e| e.to_string())?,
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "module {}, {cpus} CPUs, {seconds} s per case",
        module.display()
    );
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    writeln!(
        out,
        "| op | bytes | threads | ops/s | p50 µs | p90 µs | p99 µs | p99.9 µs |"
    )
    .map_err(|e| e.to_string())?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|").map_err(|e| e.to_string())?;
    for op in [Op::Seal, Op::Unseal] {
        for size in [32usize, 1024, 16 * 1024] {
            for threads in [1usize, 2] {
                let r = measure(&hsm, op, size, threads, Duration::from_secs(seconds))?;
                writeln!(
                    out,
                    "| {} | {size} | {threads} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    op.name(),
                    r.ops_per_sec,
                    r.p(50.0),
                    r.p(90.0),
                    r.p(99.0),
                    r.p(99.9)
                )
                .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Op {
    Seal,
    Unseal,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Seal => "seal",
            Op::Unseal => "unseal",
        }
    }
}

struct Measured {
    ops_per_sec: f64,
    hist: Histogram<u64>,
}

impl Measured {
    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q / 100.0) as f64 / 1000.0
    }
}

fn measure(
    hsm: &Arc<Pkcs11Hsm>,
    op: Op,
    size: usize,
    threads: usize,
    duration: Duration,
) -> Result<Measured, String> {
    let plain = vec![0x5a; size];
    let blob = hsm.seal(AAD, &plain).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (hsm, plain, blob) = (Arc::clone(hsm), plain.clone(), blob.clone());
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>), String> {
                let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
                let mut ops = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match op {
                        Op::Seal => hsm.seal(AAD, &plain).map(drop),
                        Op::Unseal => hsm.unseal(AAD, &blob).map(drop),
                    }
                    .map_err(|e| e.to_string())?;
                    hist.record(t.elapsed().as_nanos() as u64)
                        .map_err(|e| e.to_string())?;
                    ops += 1;
                }
                Ok((ops, hist))
            })
        })
        .collect();
    let mut total = 0;
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for w in workers {
        let (ops, h) = w.join().map_err(|_| "bench thread panicked".to_owned())??;
        total += ops;
        hist.add(h).map_err(|e| e.to_string())?;
    }
    Ok(Measured {
        ops_per_sec: total as f64 / started.elapsed().as_secs_f64(),
        hist,
    })
}
