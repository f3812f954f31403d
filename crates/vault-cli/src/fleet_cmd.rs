//! `vaultctl fleet publish-keys | evidence` and `vaultctl audit`: the
//! operator's side of fleet-key transparency, and anyone's audit of it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use clap::{Args, Subcommand};
use vault_proto::convert::tree_head_from_pb as from_pb;
use vault_proto::v1::TreeHead as PbHead;
use vault_transparency::Hash;
use vault_transparency::head::TreeHead;

use crate::cluster_cmd::{FleetArgs, in_operator_token};

mod audit;
mod evidence;
mod provision;
mod publish;
mod witness;

pub use audit::run_audit;

/// `vaultctl fleet …`
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Publish the fleet's keys: build the next fleet-key bundle from the
    /// running fleet (its OPAQUE and HPKE public keys, every node's
    /// attestation key and datacenter), have the witness sign and log it,
    /// check the witness's answer, counter-sign it with the operator token,
    /// and commit it to the fleet state. Nodes then hand it out.
    PublishKeys(PublishArgs),
    /// Write deployment evidence: every node's statement about its HSM
    /// token, key attributes, binary and fleet file, signed by its
    /// attestation key inside its HSM, and the fleet's current bundle.
    Evidence(EvidenceArgs),
    /// Provision a fleet file's nodes before their first start: PIN files
    /// (mode 600, in the directory of each node's `hsm.pin_file`; the SO
    /// PIN beside it as `<token label>.so.pin`), one SoftHSM token per node
    /// (the fleet KEK made on the first node and copied to every other by
    /// the ceremony; each with its TLS key, which never leaves it), the
    /// operator's token (`tls.operator_token`), the TLS public keys
    /// exported from the tokens, and every certificate (`vaultctl pki
    /// init`), issued for those keys. Keeps whatever exists, so
    /// it is safe to run again, and after adding a node to the fleet file it
    /// provisions just that node.
    Provision(ProvisionArgs),
    /// Print the node ids of the fleet file, one per line (for scripts).
    Nodes {
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

/// Arguments of `fleet provision`.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// A frontend to issue a client certificate for (repeatable).
    #[arg(long = "frontend", default_value = "local")]
    frontends: Vec<String>,
}

/// Where the witness is.
#[derive(Debug, Args)]
pub struct WitnessArgs {
    /// The witness's address.
    #[arg(long, env = "BKV_WITNESS", default_value = "127.0.0.1:7400")]
    witness: String,
    /// The witness's CA certificate. Default: the local witness's,
    /// `<fleet dir>/witness/tls/ca.pem`.
    #[arg(long, env = "BKV_WITNESS_CA", value_name = "FILE")]
    witness_ca: Option<PathBuf>,
}

/// Arguments of `fleet publish-keys`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    witness: WitnessArgs,
    /// The pinned keys (JSON, see `vaultctl register --help`); the witness's
    /// answer is checked against its key. Default: `<fleet dir>/pins.json`.
    #[arg(long, value_name = "FILE")]
    pins: Option<PathBuf>,
    /// How long the bundle stays valid, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
    validity_days: u64,
    /// Do nothing when the fleet has a bundle already (first start).
    #[arg(long)]
    if_missing: bool,
}

/// Arguments of `fleet evidence`.
#[derive(Debug, Args)]
pub struct EvidenceArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Where to write the evidence document (JSON).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Arguments of `vaultctl audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    witness: WitnessArgs,
    /// The pinned keys (JSON: witness_key, operator_key). Default:
    /// `<fleet dir>/pins.json` (BKV_FLEET_DIR, else .fleet).
    #[arg(long, value_name = "FILE")]
    pins: Option<PathBuf>,
    /// A deployment evidence file (`vaultctl fleet evidence`) to verify
    /// against the log.
    #[arg(long, value_name = "FILE")]
    evidence: Option<PathBuf>,
    /// Tree heads learned elsewhere (from apps, other auditors, an earlier
    /// run's --save-head): a JSON array. Each must be consistent with the
    /// log, or the audit reports a fork or a rollback.
    #[arg(long, value_name = "FILE")]
    known_heads: Vec<PathBuf>,
    /// Add the verified latest head to this JSON array file (created if
    /// missing), for later runs or other auditors' --known-heads.
    #[arg(long, value_name = "FILE")]
    save_head: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn fleet_dir() -> PathBuf {
    std::env::var_os("BKV_FLEET_DIR").map_or_else(|| PathBuf::from(".fleet"), PathBuf::from)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn head_from_pb(h: Option<PbHead>) -> anyhow::Result<TreeHead> {
    let h = h.ok_or_else(|| anyhow!("the witness answered without a tree head"))?;
    from_pb(&h).map_err(anyhow::Error::msg)
}

fn hashes(v: Vec<Vec<u8>>) -> anyhow::Result<Vec<Hash>> {
    v.into_iter()
        .map(|h| {
            h.as_slice()
                .try_into()
                .map_err(|_| anyhow!("a proof hash is not 32 bytes"))
        })
        .collect()
}

#[expect(clippy::print_stdout, reason = "a command's result goes to stdout")]
fn say(text: &str) {
    println!("{text}");
}

/// Runs a `fleet` command.
pub fn run_fleet(cmd: FleetCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FleetCommand::Provision(a) => provision::provision(a),
        FleetCommand::Nodes { fleet } => {
            let ids: Vec<String> = fleet.load()?.nodes.keys().map(u64::to_string).collect();
            say(&ids.join("\n"));
            Ok(ExitCode::SUCCESS)
        }
        // The operator token (the fleet file's `tls.operator_token`: the
        // key that counter-signs bundles and the operator's TLS key) lives
        // in its own SoftHSM directory, which SoftHSM reads once per
        // process: these re-run themselves with it.
        FleetCommand::PublishKeys(a) => {
            if let Some(code) = in_operator_token(&a.fleet.load()?)? {
                return Ok(code);
            }
            runtime()?.block_on(publish::publish(a))
        }
        FleetCommand::Evidence(a) => {
            if let Some(code) = in_operator_token(&a.fleet.load()?)? {
                return Ok(code);
            }
            runtime()?.block_on(evidence::evidence(a))
        }
    }
}

/// A single-threaded runtime for one command, with the TLS provider set.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    vault_fleet::tls::install_crypto_provider();
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
