//! `vault-witness`: the witness service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vault_witness::keys::WitnessDir;
use vault_witness::log::WitnessLog;
use vault_witness::service::{WitnessService, serve};

/// The witness of Backup Key Vault: signs fleet-key bundles that the
/// operator submits and keeps a durable, append-only, publicly readable
/// Merkle log of them.
///
/// Exit codes: 0 done; 1 failed; 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "vault-witness", version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create the witness's signing key and TLS material in DIR (kept if
    /// they exist) and print the public key that apps and auditors pin.
    Init {
        /// The witness directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the witness's public key (hex).
    PublicKey {
        /// The witness directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Serve the witness API until SIGTERM or SIGINT (or, with
    /// BKV_EXIT_WITH_STDIN set, until stdin closes).
    Serve {
        /// The witness directory (made by `init`).
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: SocketAddr,
        /// The CA whose operator certificates may submit bundles (the
        /// fleet CA, e.g. .fleet/pki/fleet-ca.pem).
        #[arg(long)]
        operator_ca: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    vault_fleet::tls::install_crypto_provider();
    match run(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vault-witness: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[expect(
    clippy::print_stdout,
    reason = "the public key is the command's output"
)]
fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Init { dir } => {
            let public = WitnessDir(dir).init()?;
            println!("{public}");
            Ok(())
        }
        Cmd::PublicKey { dir } => {
            let key = WitnessDir(dir).signing_key()?;
            println!("{}", hex::encode(key.verifying_key().as_bytes()));
            Ok(())
        }
        Cmd::Serve {
            dir,
            listen,
            operator_ca,
        } => {
            let dir = WitnessDir(dir);
            let key = dir.signing_key()?;
            let public = key.verifying_key().as_bytes().to_vec();
            let (log, report) = WitnessLog::open(&dir.log(), key)?;
            if report.torn_bytes > 0 {
                tracing::warn!(
                    bytes = report.torn_bytes,
                    "the log ended in a torn, unacknowledged record; cut it off"
                );
            }
            tracing::info!(entries = report.entries, %listen, "witness serving");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("start the runtime")?;
            runtime.block_on(async {
                let (tx, mut rx) = tokio::sync::watch::channel(false);
                if std::env::var_os("BKV_EXIT_WITH_STDIN").is_some() {
                    let tx = tx.clone();
                    std::thread::spawn(move || {
                        use std::io::Read;
                        let mut buf = [0u8; 64];
                        let mut stdin = std::io::stdin();
                        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
                        let _ = tx.send(true);
                    });
                }
                tokio::spawn(async move {
                    use tokio::signal::unix::{SignalKind, signal};
                    if let (Ok(mut term), Ok(mut int)) = (
                        signal(SignalKind::terminate()),
                        signal(SignalKind::interrupt()),
                    ) {
                        tokio::select! {
                            _ = term.recv() => {}
                            _ = int.recv() => {}
                        }
                        let _ = tx.send(true);
                    }
                });
                let shutdown = async move {
                    let _ = rx.wait_for(|s| *s).await;
                    tracing::info!("stopping");
                };
                serve(
                    WitnessService::new(log, public),
                    listen,
                    &dir.server(),
                    &operator_ca,
                    shutdown,
                )
                .await
            })
        }
    }
}
