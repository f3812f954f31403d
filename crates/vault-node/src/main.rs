//! `vault-node`: runs one node of a vault fleet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vault_fleet::config::Fleet;

/// Runs one node of a Backup Key Vault fleet.
///
/// Every node of a fleet reads the same fleet file; `--node-id` says which
/// node this process is. Relative paths in the fleet file are resolved
/// against `--fleet-dir`. The node serves until SIGTERM or SIGINT, then
/// stops accepting calls, finishes those in flight, and closes its
/// database. A new fleet is initialized once with `vaultctl cluster init`.
///
/// Logs go to stderr (`RUST_LOG` filters them; default `info`).
/// Exit codes: 0 stopped cleanly; 1 failed; 2 bad usage or config.
#[derive(Parser, Debug)]
#[command(name = "vault-node", version)]
struct Args {
    /// The fleet file (e.g. cluster-configs/local-3.toml).
    #[arg(long, env = "BKV_FLEET_CONFIG")]
    config: PathBuf,
    /// The directory that relative paths in the fleet file are relative to.
    #[arg(long, env = "BKV_FLEET_DIR", default_value = ".fleet")]
    fleet_dir: PathBuf,
    /// Which node of the fleet file this process is.
    #[arg(long)]
    node_id: u64,
    /// Start although this node's disk is behind its HSM checkpoint (a
    /// restored backup, a lost disk): lower the checkpoint to the disk's
    /// state. Attempts and records made since the disk's copy may come
    /// back. The reset is counted in the checkpoint and reported in the
    /// log, metrics, status and deployment evidence. Only for a fleet that
    /// halted because a majority is behind, after deciding that serving
    /// the old state is right (docs/OPERATIONS.md).
    #[arg(long)]
    accept_rollback: bool,
}

fn main() -> ExitCode {
    // A panic means a broken invariant: abort rather than limp on with
    // half-updated state. (Raft and storage recover from a crash.)
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let args = Args::parse();
    let fleet = match Fleet::load(&args.config, &args.fleet_dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vault-node: {e}");
            return ExitCode::from(2);
        }
    };
    let me = match fleet.node(args.node_id) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("vault-node: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    // SoftHSM reads SOFTHSM2_CONF once per process: become this node's own
    // SoftHSM process (same pid, so signals still reach the node).
    if let Some(dir) = &me.hsm.softhsm_dir {
        let dir = vault_hsm::softhsm::SoftHsmDir::at(dir);
        if !dir.is_active() {
            let e = dir.exec_self();
            eprintln!(
                "vault-node: re-run with {}: {e}",
                vault_hsm::softhsm::CONF_ENV
            );
            return ExitCode::FAILURE;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    vault_fleet::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vault-node: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node_id = args.node_id;
    let span = tracing::info_span!("node", id = node_id);
    let result = runtime.block_on(tracing::Instrument::instrument(
        vault_node::node::run(
            fleet,
            node_id,
            vault_node::node::Options {
                accept_rollback: args.accept_rollback,
            },
        ),
        span,
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("vault-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}
