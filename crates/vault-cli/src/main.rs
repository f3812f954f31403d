//! `vaultctl`: the command line of Backup Key Vault.
//!
//! It provisions HSM tokens and runs the KEK ceremony (`vaultctl hsm …`),
//! issues the fleet's certificates (`vaultctl pki …`) and operates a
//! running fleet (`vaultctl cluster …`), publishes its keys through the
//! witness and collects deployment evidence (`vaultctl fleet …`), audits
//! the witness log (`vaultctl audit`); and it does what an app does:
//! register a password-protected backup key, recover it, show a user's
//! status, delete (`vaultctl register | recover | status | delete`), and
//! encrypt backup files with the key (`vaultctl backup …`).
//!
//! Exit codes: 0 success, 1 the operation failed (the message says why),
//! 2 the command line was wrong; `recover` also 3 wrong password, 4 locked,
//! 5 unknown user.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cluster_cmd;
mod fleet_cmd;
mod hsm_cmd;
mod output;
mod pki_cmd;
mod user_cmd;

/// Backup Key Vault command line.
#[derive(Debug, Parser)]
#[command(name = "vaultctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Provision HSM tokens, inspect their keys, and copy the fleet KEK
    /// between HSMs.
    #[command(subcommand)]
    Hsm(hsm_cmd::HsmCommand),
    /// Issue the fleet's certificates (fleet CA, frontend CA, nodes,
    /// operator, frontends) with the CA keys on the operator token.
    #[command(subcommand)]
    Pki(pki_cmd::PkiCommand),
    /// Operate a running fleet: init, status, membership, snapshots.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCommand),
    /// Publish the fleet's keys through the witness, and collect
    /// deployment evidence.
    #[command(subcommand)]
    Fleet(fleet_cmd::FleetCommand),
    /// Audit the witness log: verify every signed tree head and their
    /// consistency, list every fleet-key epoch, and verify deployment
    /// evidence against it. Exit 0 only if everything checks out.
    Audit(fleet_cmd::AuditArgs),
    #[command(flatten)]
    User(user_cmd::UserCommand),
    /// Encrypt or decrypt a backup file with a backup key.
    #[command(subcommand)]
    Backup(user_cmd::BackupCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hsm(cmd) => hsm_cmd::run(cmd),
        Command::Pki(cmd) => pki_cmd::run_pki(cmd),
        Command::Cluster(cmd) => cluster_cmd::run_cluster(cmd),
        Command::Fleet(cmd) => fleet_cmd::run_fleet(cmd),
        Command::Audit(a) => fleet_cmd::run_audit(a),
        Command::User(cmd) => user_cmd::run(cmd),
        Command::Backup(cmd) => user_cmd::run_backup(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vaultctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
