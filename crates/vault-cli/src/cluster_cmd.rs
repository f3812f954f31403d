//! `vaultctl cluster …`: the admin API of a running fleet.
//!
//! Endpoints and the operator's certificate come from the fleet file
//! (`--config`) and the fleet directory (`--fleet-dir`), the same two
//! things every node reads.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use vault_fleet::config::Fleet;
use vault_fleet::identity::node_dns_name;
use vault_fleet::tls::{KeySource, TlsConnector, TlsIdentity, rustls_client_config};
use vault_proto::v1::admin_client::AdminClient;
use vault_proto::v1::{
    AddLearnerRequest, InitRequest, MembershipReply, PromoteRequest, RemoveNodeRequest, Role,
    SnapshotRequest, StatusReply, StatusRequest,
};

/// Where the fleet is described.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The fleet file.
    #[arg(
        long,
        env = "BKV_FLEET_CONFIG",
        default_value = "cluster-configs/local-3.toml"
    )]
    config: PathBuf,
    /// The directory that relative paths in the fleet file are relative to.
    #[arg(long, env = "BKV_FLEET_DIR", default_value = ".fleet")]
    fleet_dir: PathBuf,
}

impl FleetArgs {
    /// The same two arguments for a child `vaultctl`.
    pub(crate) fn to_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--config".into(),
            self.config.clone().into(),
            "--fleet-dir".into(),
            self.fleet_dir.clone().into(),
        ]
    }

    pub(crate) fn load(&self) -> anyhow::Result<Fleet> {
        Ok(Fleet::load(&self.config, &self.fleet_dir)?)
    }

    /// The fleet directory.
    pub(crate) fn fleet_dir(&self) -> PathBuf {
        self.fleet_dir.clone()
    }
}

/// `vaultctl cluster …`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Bootstrap a new fleet: the `bootstrap` nodes of the fleet file
    /// become its voters, and the fleet's OPAQUE server setup is generated
    /// by one node's HSM and committed. Safe to repeat.
    Init {
        #[command(flatten)]
        fleet: FleetArgs,
        /// The node to run it on (default: the first bootstrap node).
        #[arg(long)]
        node: Option<u64>,
        /// Keep retrying while nodes start, up to this many seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Show every node's view: role, term, leader, indexes, state digest.
    Status {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Print JSON for machines instead of a table.
        #[arg(long)]
        json: bool,
        /// Wait up to this many seconds for one leader that every member
        /// follows, all ready, with equal applied indexes and digests; exit 1
        /// if it does not come.
        #[arg(long)]
        wait_converged: Option<u64>,
    },
    /// Add a node of the fleet file: as a learner first (it catches up
    /// with the log), then as a voter.
    AddNode {
        #[command(flatten)]
        fleet: FleetArgs,
        /// The node id (must be in the fleet file, with certificate and HSM).
        node_id: u64,
        /// Stop after adding it as a learner.
        #[arg(long)]
        learner_only: bool,
    },
    /// Promote a learner to voter.
    Promote {
        #[command(flatten)]
        fleet: FleetArgs,
        /// The node id.
        node_id: u64,
    },
    /// Remove a node from the fleet (its id must never be used again).
    RemoveNode {
        #[command(flatten)]
        fleet: FleetArgs,
        /// The node id.
        node_id: u64,
    },
    /// Benchmarks' bulk path: add USERS synthetic users (`preload-<n>`,
    /// synthetic sealed records of a real record's size, not recoverable)
    /// through the log, BATCH per entry, to size a fleet like a real one.
    /// Existing users are left alone, so it can be resumed.
    Preload {
        #[command(flatten)]
        fleet: FleetArgs,
        /// How many users.
        #[arg(long)]
        users: u64,
        /// The first number (users preload-FIRST …).
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// Users per log entry (1..=10000).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch: u32,
    },
    /// KEK rotation, step 3 (after `vaultctl hsm new-kek` on the founding
    /// token and the ceremony to every other node): re-seal the fleet's
    /// secrets and then every live record under KEK version TO, through
    /// the log, BATCH records per entry, printing progress. Checks first
    /// that every node's HSM holds TO. Survives a leader change (it follows
    /// the new leader) and can be run again: it resumes from what the
    /// replicated state says is left.
    RotateKek {
        #[command(flatten)]
        fleet: FleetArgs,
        /// The KEK version to move to.
        #[arg(long)]
        to: u32,
        /// Records per log entry (1..=250).
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=250))]
        batch: u32,
        /// Stop after this many steps (entries), for a rotation spread over
        /// time; run the command again to go on.
        #[arg(long)]
        steps: Option<u64>,
        /// How long to keep retrying while no leader answers (seconds).
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// KEK rotation, step 4: destroy KEK version VERSION in every node's
    /// HSM. Each node first checks that its applied state has nothing live
    /// under that version and that the fleet has moved on; a node that
    /// refuses is named, and the command fails. Irreversible: every blob
    /// sealed under it, in old log segments, snapshots, backups and disk
    /// copies, becomes unreadable.
    DestroyKek {
        #[command(flatten)]
        fleet: FleetArgs,
        /// The KEK version to destroy.
        #[arg(long)]
        version: u32,
    },
    /// Build a snapshot on a node and purge the log it covers.
    Snapshot {
        #[command(flatten)]
        fleet: FleetArgs,
        /// The node (default: the leader).
        #[arg(long)]
        node: Option<u64>,
    },
}

impl ClusterCommand {
    fn fleet_args(&self) -> &FleetArgs {
        match self {
            ClusterCommand::Init { fleet, .. }
            | ClusterCommand::Status { fleet, .. }
            | ClusterCommand::AddNode { fleet, .. }
            | ClusterCommand::Promote { fleet, .. }
            | ClusterCommand::RemoveNode { fleet, .. }
            | ClusterCommand::Preload { fleet, .. }
            | ClusterCommand::RotateKek { fleet, .. }
            | ClusterCommand::DestroyKek { fleet, .. }
            | ClusterCommand::Snapshot { fleet, .. } => fleet,
        }
    }
}

/// When the operator's token is a SoftHSM directory that this process does
/// not use yet, re-runs this very command with it (SoftHSM reads its
/// configuration once per process) and returns the child's exit code.
pub(crate) fn in_operator_token(fleet: &Fleet) -> anyhow::Result<Option<ExitCode>> {
    let token = &fleet.tls.operator.token;
    let (vault_fleet::config::HsmModule::SoftHsm, Some(dir)) = (&token.module, &token.softhsm_dir)
    else {
        return Ok(None);
    };
    let dir = vault_hsm::softhsm::SoftHsmDir::at(dir);
    if !dir.conf().is_file() {
        bail!(
            "no operator token directory at {} (make one with `vaultctl fleet provision`)",
            dir.root().display()
        );
    }
    Ok((!dir.is_active()).then(|| dir.rerun_self()))
}

/// Runs a `cluster` command.
pub fn run_cluster(cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    if let Some(code) = in_operator_token(&cmd.fleet_args().load()?)? {
        return Ok(code);
    }
    vault_fleet::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(cluster(cmd))
}

/// The operator's client of the fleet: its certificate, and its key in the
/// operator token (`bkv-tls`), signing every handshake there.
pub(crate) struct Admin {
    pub(crate) fleet: Fleet,
    pub(crate) identity: TlsIdentity,
    tls: std::sync::Arc<rustls::ClientConfig>,
}

/// How long `cluster status` waits for one node.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

impl Admin {
    /// Opens the operator token (this process must use its SoftHSM
    /// directory: [`in_operator_token`]) and the fleet's TLS settings.
    pub(crate) fn open(fleet: Fleet) -> anyhow::Result<Admin> {
        let key = crate::pki_cmd::operator_key(&fleet, vault_hsm::KeyRole::Tls, false)?;
        let identity = TlsIdentity {
            cert: fleet.tls.operator.cert.clone(),
            key: KeySource::Signer(std::sync::Arc::new(key).rustls()),
        };
        let tls = rustls_client_config(Some(&identity), &fleet.tls.fleet_ca)?;
        Ok(Admin {
            fleet,
            identity,
            tls,
        })
    }

    pub(crate) fn client(&self, node: u64) -> anyhow::Result<AdminClient<Channel>> {
        let n = self.fleet.node(node).map_err(anyhow::Error::msg)?;
        let channel = TlsConnector::new(self.tls.clone(), &node_dns_name(node), None)
            .map_err(anyhow::Error::msg)?
            .channel(&n.peer_addr.to_string(), |e: Endpoint| {
                e.connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(120))
            })?;
        Ok(AdminClient::new(channel))
    }

    async fn status(&self, node: u64) -> Result<StatusReply, String> {
        let mut c = self.client(node).map_err(|e| format!("{e:#}"))?;
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(STATUS_TIMEOUT);
        // The header only bounds a server that runs; a stopped (SIGSTOP) or
        // wedged node accepts the connection and never answers.
        match tokio::time::timeout(STATUS_TIMEOUT, c.status(req)).await {
            Ok(r) => r
                .map(tonic::Response::into_inner)
                .map_err(|s| format!("{}: {}", code_name(s.code()), s.message())),
            Err(_) => Err(format!("no answer within {} s", STATUS_TIMEOUT.as_secs())),
        }
    }

    async fn all_status(&self) -> Vec<(u64, Result<StatusReply, String>)> {
        let calls = self
            .fleet
            .nodes
            .keys()
            .map(|&id| async move { (id, self.status(id).await) });
        futures::future::join_all(calls).await
    }

    /// The leader that the reachable nodes name most, if any.
    async fn leader(&self) -> anyhow::Result<u64> {
        let all = self.all_status().await;
        let mut votes = std::collections::BTreeMap::<u64, usize>::new();
        for s in all.iter().filter_map(|(_, s)| s.as_ref().ok()) {
            if s.leader_id != 0 {
                *votes.entry(s.leader_id).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(id, _)| id)
            .ok_or_else(|| anyhow!("no reachable node knows a leader"))
    }

    /// Runs `call` on the leader, following a leader change a few times.
    pub(crate) async fn on_leader<F, Fut, T>(&self, call: F) -> anyhow::Result<T>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = None;
        for _ in 0..5 {
            let leader = match self.leader().await {
                Ok(l) => l,
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            match call(self.client(leader)?).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::Unavailable
                    ) && s.message().contains("leader") =>
                {
                    last = Some(anyhow!("node {leader}: {}", s.message()));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(s) => bail!("node {leader}: {}: {}", code_name(s.code()), s.message()),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no leader")))
    }
}

#[expect(clippy::print_stdout, reason = "the command's result")]
fn emit_line(line: &str) {
    println!("{line}");
}

async fn preload(admin: &Admin, first: u64, users: u64, batch: u32) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    let (mut done, mut added) = (0u64, 0u64);
    while done < users {
        let count = (users - done).min(u64::from(batch)) as u32;
        let req = vault_proto::v1::PreloadRequest {
            first: first + done,
            count,
        };
        let r = admin
            .on_leader(|mut c| async move { c.preload(req).await })
            .await?;
        done += u64::from(count);
        added += u64::from(r.added);
        if last_report.elapsed() >= Duration::from_secs(5) || done == users {
            last_report = Instant::now();
            eprintln!(
                "preload: {done} of {users} ({added} new), {:.0} users/s, log index {}",
                done as f64 / started.elapsed().as_secs_f64().max(1e-3),
                r.log_index
            );
        }
    }
    let line = format!(
        "preloaded {users} users ({added} new) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    emit_line(&line);
    Ok(ExitCode::SUCCESS)
}

/// `cluster rotate-kek`.
async fn rotate_kek(
    admin: &Admin,
    to: u32,
    batch: u32,
    steps: Option<u64>,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    // Every node must be able to open what is sealed under the new version
    // before anything is.
    let mut lacking = Vec::new();
    for (id, s) in admin.all_status().await {
        match s {
            Ok(s) if s.kek_versions.contains(&to) => {}
            Ok(s) => lacking.push(format!("node {id} holds KEK versions {:?}", s.kek_versions)),
            Err(e) => lacking.push(format!("node {id} did not answer: {e}")),
        }
    }
    if !lacking.is_empty() {
        bail!(
            "not every node holds KEK v{to} (run `vaultctl hsm new-kek` on the founding token and the ceremony to every node first): {}",
            lacking.join("; ")
        );
    }
    let started = Instant::now();
    let mut last_report = Instant::now();
    let (mut taken, mut resealed) = (0u64, 0u64);
    let mut stuck_since: Option<Instant> = None;
    loop {
        if steps.is_some_and(|max| taken >= max) {
            eprintln!("rotate-kek: stopped after {taken} steps as asked; run it again to go on");
            return Ok(ExitCode::SUCCESS);
        }
        let req = vault_proto::v1::RotateKekRequest {
            target_version: to,
            batch,
        };
        let r = match admin
            .on_leader(|mut c| async move { c.rotate_kek(req).await })
            .await
        {
            Ok(r) => {
                stuck_since = None;
                r
            }
            Err(e)
                if [
                    "DataLoss",
                    "FailedPrecondition",
                    "InvalidArgument",
                    "PermissionDenied",
                ]
                .iter()
                .any(|code| format!("{e:#}").contains(code)) =>
            {
                return Err(e.context("rotate-kek stopped"));
            }
            Err(e) => {
                let since = *stuck_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= wait {
                    return Err(e.context(format!(
                        "rotate-kek: no progress for {} s; run it again to resume",
                        wait.as_secs()
                    )));
                }
                eprintln!("rotate-kek: {e:#}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        taken += 1;
        resealed += u64::from(r.resealed);
        if r.fleet_moved {
            eprintln!(
                "rotate-kek: the fleet's secrets are under KEK v{to}; new records are sealed under it"
            );
        }
        let done = r.remaining == 0;
        if done || last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            eprintln!(
                "rotate-kek: {resealed} records re-sealed, {} of {} live blobs left, {:.0} records/s",
                r.remaining,
                r.live,
                resealed as f64 / started.elapsed().as_secs_f64().max(1e-3)
            );
        }
        if done {
            emit_line(&format!(
                "rotated to KEK v{to}: {resealed} records re-sealed in {:.1} s ({:.0} records/s); destroy the old version with `vaultctl cluster destroy-kek`",
                started.elapsed().as_secs_f64(),
                resealed as f64 / started.elapsed().as_secs_f64().max(1e-3)
            ));
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// `cluster destroy-kek`: every node, each checking its own state.
async fn destroy_kek(admin: &Admin, version: u32) -> anyhow::Result<ExitCode> {
    let mut failed = Vec::new();
    for &id in admin.fleet.nodes.keys() {
        let req = vault_proto::v1::DestroyKekRequest { version };
        let answer = match admin.client(id) {
            Ok(mut c) => c
                .destroy_kek(req)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| format!("{}: {}", code_name(s.code()), s.message())),
            Err(e) => Err(format!("{e:#}")),
        };
        match answer {
            Ok(r) => eprintln!(
                "node {id}: KEK v{version} destroyed; its HSM holds {:?}",
                r.kek_versions
            ),
            Err(e) => {
                eprintln!("node {id}: refused or unreachable: {e}");
                failed.push(id);
            }
        }
    }
    if failed.is_empty() {
        emit_line(&format!("KEK v{version} destroyed on every node"));
        Ok(ExitCode::SUCCESS)
    } else {
        bail!(
            "KEK v{version} is still on nodes {failed:?}: fix what they said and run it again (nodes that destroyed it already say so)"
        )
    }
}

pub(crate) fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Leader) => "leader",
        Ok(Role::Follower) => "follower",
        Ok(Role::Candidate) => "candidate",
        Ok(Role::Learner) => "learner",
        Ok(Role::Shutdown) => "shutdown",
        _ => "?",
    }
}

/// One leader named by every reachable member, all members reachable and
/// ready, and equal applied indexes and state digests.
fn converged(all: &[(u64, Result<StatusReply, String>)]) -> bool {
    let ok: Vec<&StatusReply> = all.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
    let Some(first) = ok.first() else {
        return false;
    };
    let leader = first.leader_id;
    let members: Vec<u64> = ok
        .iter()
        .find(|s| s.node_id == leader)
        .map(|s| s.members.iter().map(|m| m.node_id).collect())
        .unwrap_or_default();
    leader != 0
        && !members.is_empty()
        && members.iter().all(|id| {
            ok.iter().any(|s| {
                s.node_id == *id
                    && s.leader_id == leader
                    && s.applied_index == first.applied_index
                    && s.fleet_initialized
                    && s.ready
            })
        })
        && ok
            .iter()
            .filter(|s| members.contains(&s.node_id))
            .all(|s| s.applied_index == first.applied_index && s.state_digest == first.state_digest)
}

fn status_json(fleet: &Fleet, all: &[(u64, Result<StatusReply, String>)]) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = all
        .iter()
        .map(|(id, s)| match s {
            Ok(s) => json!({
                "node_id": id,
                "datacenter": s.datacenter,
                "reachable": true,
                "role": role_name(s.role),
                "term": s.term,
                "leader_id": (s.leader_id != 0).then_some(s.leader_id),
                "last_log_index": s.last_log_index,
                "committed_index": s.committed_index,
                "applied_index": s.applied_index,
                "snapshot_index": s.snapshot_index,
                "purged_index": s.purged_index,
                "state_digest": hex::encode(&s.state_digest),
                "fleet_initialized": s.fleet_initialized,
                "ready": s.ready,
                "not_ready_reason": s.not_ready_reason,
                "checkpoint_resets": s.checkpoint_resets,
                "kek_versions": s.kek_versions,
                "fleet_kek_version": s.fleet_kek_version,
                "members": s.members.iter().map(|m| json!({
                    "node_id": m.node_id, "datacenter": m.datacenter,
                    "voter": m.voter, "peer_addr": m.peer_addr,
                })).collect::<Vec<_>>(),
            }),
            Err(e) => json!({
                "node_id": id,
                "datacenter": fleet.nodes.get(id).map(|n| n.datacenter.clone()),
                "reachable": false,
                "error": e,
            }),
        })
        .collect();
    let leaders: std::collections::BTreeSet<u64> = all
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .filter(|s| s.role == Role::Leader as i32)
        .map(|s| s.node_id)
        .collect();
    json!({
        "fleet_id": fleet.fleet_id.as_str(),
        "leaders": leaders,
        "converged": converged(all),
        "nodes": nodes,
    })
}

fn status_table(all: &[(u64, Result<StatusReply, String>)]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>4}  {:<10} {:<9} {:>5} {:>6} {:>8} {:>9} {:>8} {:>8}  {:<16} ready",
        "node",
        "dc",
        "role",
        "term",
        "leader",
        "last_log",
        "committed",
        "applied",
        "snapshot",
        "digest",
    );
    for (id, s) in all {
        match s {
            Ok(s) => {
                let _ = writeln!(
                    out,
                    "{:>4}  {:<10} {:<9} {:>5} {:>6} {:>8} {:>9} {:>8} {:>8}  {:<16} {}",
                    id,
                    s.datacenter,
                    role_name(s.role),
                    s.term,
                    if s.leader_id == 0 {
                        "-".to_owned()
                    } else {
                        s.leader_id.to_string()
                    },
                    s.last_log_index,
                    s.committed_index,
                    s.applied_index,
                    s.snapshot_index,
                    hex::encode(&s.state_digest[..s.state_digest.len().min(8)]),
                    if s.ready { "yes" } else { "no" },
                );
                if !s.ready && !s.not_ready_reason.is_empty() {
                    let _ = writeln!(out, "      not ready: {}", s.not_ready_reason);
                }
                if s.checkpoint_resets > 0 {
                    let _ = writeln!(
                        out,
                        "      its HSM checkpoint was lowered {} time(s) by an operator (--accept-rollback)",
                        s.checkpoint_resets
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "{id:>4}  unreachable: {e}");
            }
        }
    }
    if let Some(s) = all
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .find(|s| s.role == Role::Leader as i32)
    {
        let members: Vec<String> = s
            .members
            .iter()
            .map(|m| format!("{}{}", m.node_id, if m.voter { "" } else { " (learner)" }))
            .collect();
        let _ = writeln!(
            out,
            "members (per leader {}): {}",
            s.node_id,
            members.join(", ")
        );
    }
    out
}

fn print_membership(r: &MembershipReply) {
    let members: Vec<String> = r
        .members
        .iter()
        .map(|m| {
            format!(
                "{} [{}]{}",
                m.node_id,
                m.datacenter,
                if m.voter { "" } else { " learner" }
            )
        })
        .collect();
    eprintln!(
        "membership at log index {}: {}",
        r.log_index,
        members.join(", ")
    );
}

#[expect(clippy::print_stdout, reason = "status is the command's output")]
async fn cluster(cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCommand::Init { fleet, node, wait } => {
            let admin = Admin::open(fleet.load()?)?;
            let mut node = match node {
                Some(n) => n,
                None => *admin
                    .fleet
                    .bootstrap_voters()
                    .first()
                    .ok_or_else(|| anyhow!("no bootstrap node"))?,
            };
            let give_up = Instant::now() + Duration::from_secs(wait);
            loop {
                let mut client = admin.client(node)?;
                match client.init(InitRequest {}).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        eprintln!(
                            "fleet {} initialized: leader node {}, applied index {}",
                            admin.fleet.fleet_id.as_str(),
                            r.leader_id,
                            r.applied_index
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < give_up => {
                        eprintln!("node {node} not ready ({}); retrying", s.message());
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    // Membership is bootstrapped and another node leads: the
                    // fleet's first entry is committed there (a leader takes
                    // operator commands from the operator only).
                    Err(s)
                        if s.code() == tonic::Code::FailedPrecondition
                            && s.message().contains("not the leader")
                            && Instant::now() < give_up =>
                    {
                        if let Ok(leader) = admin.leader().await
                            && leader != node
                        {
                            eprintln!("node {node} does not lead; asking node {leader}");
                            node = leader;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(s) => bail!(
                        "init on node {node}: {}: {}",
                        code_name(s.code()),
                        s.message()
                    ),
                }
            }
        }
        ClusterCommand::RotateKek {
            fleet,
            to,
            batch,
            steps,
            wait,
        } => {
            let admin = Admin::open(fleet.load()?)?;
            rotate_kek(&admin, to, batch, steps, Duration::from_secs(wait)).await
        }
        ClusterCommand::DestroyKek { fleet, version } => {
            let admin = Admin::open(fleet.load()?)?;
            destroy_kek(&admin, version).await
        }
        ClusterCommand::Status {
            fleet,
            json,
            wait_converged,
        } => {
            let f = fleet.load()?;
            let admin = Admin::open(f)?;
            let give_up = Instant::now() + Duration::from_secs(wait_converged.unwrap_or(0));
            let all = loop {
                let all = admin.all_status().await;
                if wait_converged.is_none() || converged(&all) || Instant::now() >= give_up {
                    break all;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status_json(&admin.fleet, &all))?
                );
            } else {
                print!("{}", status_table(&all));
            }
            if wait_converged.is_some() && !converged(&all) {
                eprintln!("vaultctl: the fleet did not converge in time");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::AddNode {
            fleet,
            node_id,
            learner_only,
        } => {
            let admin = Admin::open(fleet.load()?)?;
            admin.fleet.node(node_id).map_err(anyhow::Error::msg)?;
            let r = admin
                .on_leader(
                    |mut c| async move { c.add_learner(AddLearnerRequest { node_id }).await },
                )
                .await
                .context("add learner")?;
            print_membership(&r);
            if !learner_only {
                let r = admin
                    .on_leader(|mut c| async move { c.promote(PromoteRequest { node_id }).await })
                    .await
                    .context("promote")?;
                print_membership(&r);
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Promote { fleet, node_id } => {
            let admin = Admin::open(fleet.load()?)?;
            let r = admin
                .on_leader(|mut c| async move { c.promote(PromoteRequest { node_id }).await })
                .await?;
            print_membership(&r);
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::RemoveNode { fleet, node_id } => {
            let admin = Admin::open(fleet.load()?)?;
            let r = admin
                .on_leader(
                    |mut c| async move { c.remove_node(RemoveNodeRequest { node_id }).await },
                )
                .await?;
            print_membership(&r);
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Preload {
            fleet,
            users,
            first,
            batch,
        } => {
            let admin = Admin::open(fleet.load()?)?;
            preload(&admin, first, users, batch).await
        }
        ClusterCommand::Snapshot { fleet, node } => {
            let admin = Admin::open(fleet.load()?)?;
            let r = match node {
                Some(n) => admin
                    .client(n)?
                    .trigger_snapshot(SnapshotRequest {})
                    .await
                    .map_err(|s| anyhow!("node {n}: {}", s.message()))?
                    .into_inner(),
                None => {
                    admin
                        .on_leader(
                            |mut c| async move { c.trigger_snapshot(SnapshotRequest {}).await },
                        )
                        .await?
                }
            };
            eprintln!("snapshot at index {}", r.snapshot_index);
            Ok(ExitCode::SUCCESS)
        }
    }
}
