//! The admin API (operator only): status, first-start initialization,
//! membership changes, snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tonic::{Request, Response, Status};
use vault_fleet::config::Fleet;
use vault_hsm::{AsyncHsm, HsmError, KekVersion, Pkcs11Hsm, SecretBytes};
use vault_proto::v1::admin_server::Admin;
use vault_proto::v1::{
    AddLearnerRequest, DestroyKekReply, DestroyKekRequest, EvidenceReply, EvidenceRequest,
    FleetKeys, GetFleetKeysRequest, InitReply, InitRequest, Member, MembershipReply, PreloadReply,
    PreloadRequest, PromoteRequest, RemoveNodeRequest, Role, RotateKekReply, RotateKekRequest,
    SetBundleReply, SetBundleRequest, SnapshotReply, SnapshotRequest, StatusReply, StatusRequest,
};
use vault_raft::Raft;
use vault_raft::proposer::{ProposeError, Proposer};
use vault_storage::StateReader;
use vault_types::{
    Command, CommandError, Proposal, Reply, RequestDigest, RequestId, RequestMeta, SealedBytes,
    Timestamp,
};

use crate::http::Readiness;
use crate::metrics::{Metrics, timed_hsm};

/// The admin API of one node.
pub struct AdminService {
    /// This node's id.
    pub node_id: u64,
    /// The fleet file.
    pub fleet: Arc<Fleet>,
    /// The Raft node.
    pub raft: Raft,
    /// Reads the applied state.
    pub reader: StateReader,
    /// The node's HSM.
    pub hsm: AsyncHsm<Pkcs11Hsm>,
    /// Proposes through the leader.
    pub proposer: Proposer,
    /// Metrics (HSM timings).
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub ready: Readiness,
    /// The node's anti-rollback checkpoint (its reset count is reported).
    pub checkpoint: Arc<crate::checkpoint::HsmCheckpoint>,
    /// The frontend service (for the fleet's public keys).
    pub frontend: Arc<crate::frontend::FrontendService>,
    /// Where this node's last rotation step stopped (target version, last
    /// user re-sealed), so that the next step does not walk the users done
    /// already. Lost with a leader change: the next leader starts from the
    /// first user, which costs one walk, nothing else.
    pub rotation_cursor: std::sync::Mutex<Option<(u32, vault_types::UserId)>>,
    /// One rotation step at a time on this node (two operators' shells
    /// would otherwise re-seal the same records twice and put two `Reseal`
    /// entries in one batch).
    pub rotation_lock: tokio::sync::Mutex<()>,
}

/// An HSM call that failed: worth a retry later.
fn hsm_unavailable(e: HsmError) -> Status {
    Status::unavailable(format!("HSM: {e}"))
}

fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Timestamp(ms)
}

fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::Retryable(m) => Status::unavailable(m),
        ProposeError::Fatal(m) => Status::internal(m),
        not_leader @ ProposeError::NotLeader { .. } => {
            Status::failed_precondition(not_leader.to_string())
        }
    }
}

fn write_status(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Status::failed_precondition(format!(
                "not the leader; ask node {}",
                f.leader_id
                    .map_or_else(|| "<unknown>".to_owned(), |l| l.to_string())
            ))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Status::failed_precondition(c.to_string())
        }
        RaftError::Fatal(f) => Status::internal(f.to_string()),
    }
}

impl AdminService {
    fn members(&self) -> Vec<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| Member {
                node_id: *id,
                datacenter: self
                    .fleet
                    .nodes
                    .get(id)
                    .map_or_else(|| "?".to_owned(), |n| n.datacenter.clone()),
                peer_addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    fn membership_reply(&self, log_index: u64) -> MembershipReply {
        MembershipReply {
            log_index,
            members: self.members(),
        }
    }

    fn must_lead(&self) -> Result<(), Status> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(self.node_id) {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "node {} is not the leader; ask node {}",
            self.node_id,
            m.current_leader
                .map_or_else(|| "<none yet>".to_owned(), |l| l.to_string())
        )))
    }

    fn peer_node(&self, id: u64) -> Result<BasicNode, Status> {
        self.fleet
            .node(id)
            .map(|n| BasicNode::new(n.peer_addr.to_string()))
            .map_err(Status::not_found)
    }

    /// Commits InitFleet with a fresh server setup drawn from and sealed by
    /// this node's HSM.
    async fn commit_init_fleet(&self) -> Result<(), Status> {
        let seed = timed_hsm(&self.metrics, "random", self.hsm.random(64))
            .await
            .map_err(hsm_unavailable)?;
        let mut opaque_seed = zeroize::Zeroizing::new([0u8; 32]);
        let mut hpke_seed = zeroize::Zeroizing::new([0u8; 32]);
        opaque_seed.copy_from_slice(&seed.expose()[..32]);
        hpke_seed.copy_from_slice(&seed.expose()[32..]);
        let fleet_id = &self.fleet.fleet_id;
        let setup = vault_protocol::suite::new_server_setup(*opaque_seed);
        let hpke_key = vault_protocol::new_hpke_key(*hpke_seed);
        let sealed = timed_hsm(
            &self.metrics,
            "seal",
            self.hsm.seal(
                vault_protocol::suite::server_setup_aad(fleet_id),
                SecretBytes::new(setup.to_vec()),
            ),
        )
        .await
        .map_err(hsm_unavailable)?;
        let sealed_hpke_key = timed_hsm(
            &self.metrics,
            "seal",
            self.hsm.seal(
                vault_protocol::hpke_key_aad(fleet_id),
                SecretBytes::new(hpke_key.to_vec()),
            ),
        )
        .await
        .map_err(hsm_unavailable)?;
        let command = Command::InitFleet {
            fleet_id: self.fleet.fleet_id.clone(),
            sealed_server_setup: SealedBytes(sealed),
            sealed_hpke_key: SealedBytes(sealed_hpke_key),
            max_attempts_cap: self.fleet.max_attempts_cap,
        };
        let digest = [b"init-fleet", self.fleet.fleet_id.as_str().as_bytes()];
        match self.commit(&digest, command).await? {
            Ok(()) => {
                tracing::info!(fleet = %self.fleet.fleet_id.as_str(), "fleet initialized");
                Ok(())
            }
            Err(CommandError::FleetAlreadyInitialized) => Ok(()),
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    /// Commits an operator command under a fresh request id whose digest is
    /// made of `digest`; the outer error is the proposal failing, the inner
    /// one the state machine refusing the command.
    async fn commit(
        &self,
        digest: &[&[u8]],
        command: Command,
    ) -> Result<Result<(), CommandError>, Status> {
        Ok(self.commit_reply(digest, command).await?.map(drop))
    }

    /// [`AdminService::commit`], keeping the state machine's response.
    async fn commit_reply(
        &self,
        digest: &[&[u8]],
        command: Command,
    ) -> Result<Result<vault_types::Response, CommandError>, Status> {
        // InitFleet and SetBundle are named by what they commit, so a retry
        // after a lost answer (another call, same bytes) gets the first
        // answer from the dedup table instead of "epoch not next". Preload
        // may be re-run on purpose over the same range: a fresh id each.
        let digest = RequestDigest::of(digest);
        let id = match command {
            Command::Preload { .. } => RequestId(rand::random()),
            _ => {
                let mut id = [0u8; 16];
                id.copy_from_slice(&digest.0[..16]);
                RequestId(id)
            }
        };
        let proposal = Proposal {
            request: Some(RequestMeta { id, digest }),
            at: now(),
            command,
        };
        // On the leader only: a peer's Forward never carries an operator
        // command, so a node's certificate alone cannot make one.
        match self
            .proposer
            .propose_here(proposal)
            .await
            .map_err(propose_status)?
        {
            Reply::Vault(r) => Ok(r),
            Reply::Raft => Err(Status::internal("an operator command got a Raft reply")),
        }
    }
}

/// Live blobs under another KEK version than `target`, and live blobs in
/// all (synthetic `Preload` records are neither).
fn blobs_left(state: &vault_core::VaultState, target: u32) -> (u64, u64) {
    state
        .blobs_by_kek_version()
        .into_iter()
        .filter_map(|(v, n)| v.map(|v| (v, n)))
        .fold((0, 0), |(left, live), (v, n)| {
            (left + if v == target { 0 } else { n }, live + n)
        })
}

impl AdminService {
    /// Unseals `blob` (sealed with `aad` under whatever version it names)
    /// and seals it again under `target`, with the same `aad`.
    async fn reseal_one(
        &self,
        target: KekVersion,
        aad: Vec<u8>,
        blob: &SealedBytes,
    ) -> Result<SealedBytes, HsmError> {
        let plain = timed_hsm(
            &self.metrics,
            "unseal",
            self.hsm.unseal(aad.clone(), blob.0.clone()),
        )
        .await?;
        let sealed = timed_hsm(
            &self.metrics,
            "seal",
            self.hsm.seal_under(target, aad, plain),
        )
        .await?;
        Ok(SealedBytes(sealed))
    }

    /// One rotation step (see `RotateKek` in admin.proto).
    async fn rotate_step(&self, target: u32, batch: usize) -> Result<RotateKekReply, Status> {
        let _one_at_a_time = self.rotation_lock.lock().await;
        self.must_lead()?;
        let version = KekVersion(target);
        let held = self.hsm.refresh_keks().await.map_err(hsm_unavailable)?;
        if !held.contains(&version) {
            return Err(Status::failed_precondition(format!(
                "this node's HSM does not hold KEK v{target}: run the ceremony to every node first"
            )));
        }
        let cursor = self
            .rotation_cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|(t, _)| *t == target)
            .map(|(_, u)| u);
        let (fleet, current, records) = self.reader.with_state(|s| {
            let mut records = s.records_not_under(target, cursor.as_ref(), batch);
            if records.is_empty() && cursor.is_some() {
                // Past the end: start over for what was skipped or
                // registered under the old version meanwhile.
                records = s.records_not_under(target, None, batch);
            }
            (s.fleet().cloned(), s.fleet_kek_version(), records)
        });
        if let Some((last, _, _)) = records.last() {
            *self
                .rotation_cursor
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((target, last.clone()));
        }
        let fleet =
            fleet.ok_or_else(|| Status::failed_precondition("the fleet is not initialized"))?;
        if current.is_some_and(|c| c > target) {
            return Err(Status::failed_precondition(format!(
                "the fleet is at KEK v{} already; a rotation only moves forward",
                current.unwrap_or_default()
            )));
        }
        let fleet_id = fleet.fleet_id.clone();
        let mut reply = RotateKekReply::default();
        let command = if current != Some(target) {
            // First the fleet's secrets: from this entry on, every node
            // seals new records under the new version.
            let setup = self
                .reseal_one(
                    version,
                    vault_protocol::suite::server_setup_aad(&fleet_id),
                    &fleet.sealed_server_setup,
                )
                .await
                .map_err(hsm_unavailable)?;
            let hpke = self
                .reseal_one(
                    version,
                    vault_protocol::hpke_key_aad(&fleet_id),
                    &fleet.sealed_hpke_key,
                )
                .await
                .map_err(hsm_unavailable)?;
            Command::Reseal {
                kek_version: target,
                fleet: Some((setup, hpke)),
                records: Vec::new(),
            }
        } else {
            let mut resealed = Vec::with_capacity(records.len());
            for (user, generation, sealed) in records {
                let aad = vault_protocol::record_aad(&fleet_id, &user, generation);
                let blob = match self.reseal_one(version, aad, &sealed).await {
                    Ok(b) => b,
                    // Not a device trouble: this record opens under no key
                    // this HSM holds, or not at all. Nobody can recover it,
                    // and a retry would fail forever.
                    Err(
                        e @ (HsmError::MalformedBlob(_)
                        | HsmError::UnsupportedBlobVersion(_)
                        | HsmError::UnknownKekVersion(_)
                        | HsmError::Unauthentic),
                    ) => {
                        return Err(Status::data_loss(format!(
                            "the record of {user} (generation {}) does not open on the leader (node {}): {e}. If no node can open it, nobody can recover it: delete the user (`vaultctl delete`) and run rotate-kek again; if only this node lacks a KEK version, run the ceremony to it",
                            generation.0, self.node_id
                        )));
                    }
                    Err(e) => return Err(hsm_unavailable(e)),
                };
                resealed.push((user, generation, blob));
            }
            Command::Reseal {
                kek_version: target,
                fleet: None,
                records: resealed,
            }
        };
        let moves = matches!(&command, Command::Reseal { fleet: Some(_), .. })
            || matches!(&command, Command::Reseal { records, .. } if !records.is_empty());
        if moves {
            let digest = [
                b"reseal".as_slice(),
                &target.to_be_bytes(),
                &rand::random::<[u8; 16]>(),
            ];
            match self.commit_reply(&digest, command).await? {
                Ok(vault_types::Response::Resealed {
                    records,
                    skipped,
                    fleet,
                }) => {
                    reply.resealed = records;
                    reply.skipped = skipped;
                    reply.fleet_moved = fleet;
                }
                Ok(other) => return Err(Status::internal(format!("Reseal answered {other:?}"))),
                Err(e) => return Err(Status::failed_precondition(e.to_string())),
            }
        }
        let (remaining, live) = self.reader.with_state(|s| blobs_left(s, target));
        reply.remaining = remaining;
        reply.live = live;
        tracing::info!(
            target_version = target,
            fleet_moved = reply.fleet_moved,
            resealed = reply.resealed,
            skipped = reply.skipped,
            remaining,
            "KEK rotation step"
        );
        Ok(reply)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        let m = self.raft.metrics().borrow().clone();
        let committed = self
            .raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (applied, digest) = self.reader.digest();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let me = self.fleet.node(self.node_id).map_err(Status::internal)?;
        // Status must answer even when the token does not: the versions
        // last seen, then.
        let kek_versions = match self.hsm.refresh_keks().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "status: could not look the KEKs up on the token");
                self.hsm.blocking().kek_versions()
            }
        }
        .into_iter()
        .map(|v| v.0)
        .collect();
        Ok(Response::new(StatusReply {
            node_id: self.node_id,
            datacenter: me.datacenter.clone(),
            fleet_id: self.fleet.fleet_id.as_str().to_owned(),
            role: role as i32,
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: committed.unwrap_or(0),
            applied_index: applied.unwrap_or(0),
            state_digest: digest.to_vec(),
            members: self.members(),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            fleet_initialized: self.reader.with_state(|s| s.fleet().is_some()),
            ready: self.ready.borrow().is_ok(),
            not_ready_reason: self.ready.borrow().clone().err().unwrap_or_default(),
            checkpoint_resets: self.checkpoint.resets(),
            kek_versions,
            fleet_kek_version: self
                .reader
                .with_state(|s| s.fleet_kek_version())
                .unwrap_or(0),
        }))
    }

    async fn init(&self, req: Request<InitRequest>) -> Result<Response<InitReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        let voters: BTreeMap<u64, BasicNode> = self
            .fleet
            .bootstrap_voters()
            .into_iter()
            .map(|id| Ok((id, self.peer_node(id)?)))
            .collect::<Result<_, Status>>()?;
        if !voters.contains_key(&self.node_id) {
            return Err(Status::failed_precondition(format!(
                "node {} is not a bootstrap node; run init on one that is",
                self.node_id
            )));
        }
        match self.raft.initialize(voters).await {
            Ok(()) => tracing::info!("membership bootstrapped"),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                tracing::info!("membership already bootstrapped");
            }
            Err(e) => return Err(Status::failed_precondition(e.to_string())),
        }
        self.raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| Status::unavailable(format!("no leader elected: {e}")))?;
        // Read what is committed before deciding whether InitFleet is needed.
        self.proposer.read_barrier().await.map_err(propose_status)?;
        if !self.reader.with_state(|s| s.fleet().is_some()) {
            self.commit_init_fleet().await?;
        }
        let m = self.raft.metrics().borrow().clone();
        Ok(Response::new(InitReply {
            leader_id: m.current_leader.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
        }))
    }

    async fn add_learner(
        &self,
        req: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        self.must_lead()?;
        let id = req.into_inner().node_id;
        let node = self.peer_node(id)?;
        if self.members().iter().any(|m| m.node_id == id) {
            return Err(Status::already_exists(format!(
                "node {id} is already a member"
            )));
        }
        // Blocking: returns once the learner has caught up with the log.
        let r = self
            .raft
            .add_learner(id, node, true)
            .await
            .map_err(write_status)?;
        tracing::info!(node = id, "learner added");
        Ok(Response::new(self.membership_reply(r.log_id.index)))
    }

    async fn promote(
        &self,
        req: Request<PromoteRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        self.must_lead()?;
        let id = req.into_inner().node_id;
        match self.members().iter().find(|m| m.node_id == id) {
            None => {
                return Err(Status::failed_precondition(format!(
                    "node {id} is not a learner; add it first"
                )));
            }
            Some(m) if m.voter => {
                return Err(Status::already_exists(format!(
                    "node {id} is already a voter"
                )));
            }
            Some(_) => {}
        }
        let r = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_status)?;
        tracing::info!(node = id, "promoted to voter");
        Ok(Response::new(self.membership_reply(r.log_id.index)))
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        self.must_lead()?;
        let id = req.into_inner().node_id;
        let members = self.members();
        let change = match members.iter().find(|m| m.node_id == id) {
            None => return Err(Status::not_found(format!("node {id} is not a member"))),
            Some(m) if m.voter => {
                if members.iter().filter(|m| m.voter).count() == 1 {
                    return Err(Status::failed_precondition("cannot remove the last voter"));
                }
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            }
            Some(_) => ChangeMembers::RemoveNodes(BTreeSet::from([id])),
        };
        let r = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(write_status)?;
        tracing::info!(node = id, "node removed");
        Ok(Response::new(self.membership_reply(r.log_id.index)))
    }

    async fn trigger_snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let m = self
            .raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot built",
            )
            .await
            .map_err(|e| Status::deadline_exceeded(e.to_string()))?;
        Ok(Response::new(SnapshotReply {
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
        }))
    }

    async fn get_fleet_keys(
        &self,
        req: Request<GetFleetKeysRequest>,
    ) -> Result<Response<FleetKeys>, Status> {
        vault_fleet::callers::operator(&req)?;
        Ok(Response::new(self.frontend.public_keys().await?))
    }

    async fn set_bundle(
        &self,
        req: Request<SetBundleRequest>,
    ) -> Result<Response<SetBundleReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        let signed = req.into_inner().signed_bundle;
        let keys = self.frontend.public_keys().await?;
        let epoch = crate::transparency::check_bundle(&signed, &keys)?;
        let digest = [b"set-bundle".as_slice(), &signed];
        let command = Command::SetBundle {
            bundle: signed.clone(),
            epoch,
        };
        match self.commit(&digest, command).await? {
            Ok(()) => {
                tracing::info!(epoch, "fleet-key bundle installed");
                Ok(Response::new(SetBundleReply { epoch }))
            }
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    async fn preload(
        &self,
        req: Request<PreloadRequest>,
    ) -> Result<Response<PreloadReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        let r = req.into_inner();
        let digest = [
            b"preload".as_slice(),
            &r.first.to_be_bytes(),
            &r.count.to_be_bytes(),
        ];
        let command = Command::Preload {
            first: r.first,
            count: r.count,
        };
        let added = match self.commit_reply(&digest, command).await? {
            Ok(vault_types::Response::Preloaded { added }) => added,
            Ok(other) => return Err(Status::internal(format!("Preload answered {other:?}"))),
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        };
        let log_index = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        Ok(Response::new(PreloadReply { added, log_index }))
    }

    async fn rotate_kek(
        &self,
        req: Request<RotateKekRequest>,
    ) -> Result<Response<RotateKekReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        let r = req.into_inner();
        let max = vault_types::MAX_RESEAL_PER_ENTRY as u32;
        if r.target_version == 0 || r.batch == 0 || r.batch > max {
            return Err(Status::invalid_argument(format!(
                "target_version must be at least 1 and batch 1..={max}"
            )));
        }
        self.rotate_step(r.target_version, r.batch as usize)
            .await
            .map(Response::new)
    }

    async fn destroy_kek(
        &self,
        req: Request<DestroyKekRequest>,
    ) -> Result<Response<DestroyKekReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        let v = req.into_inner().version;
        let (fleet_version, in_use) = self.reader.with_state(|s| {
            (
                s.fleet_kek_version(),
                s.blobs_by_kek_version().get(&Some(v)).copied().unwrap_or(0),
            )
        });
        if fleet_version.is_none_or(|f| v >= f) {
            return Err(Status::failed_precondition(format!(
                "this node's applied state has the fleet at KEK v{}: only older versions can be destroyed (rotate first, or let this node catch up)",
                fleet_version.unwrap_or(0)
            )));
        }
        if in_use > 0 {
            return Err(Status::failed_precondition(format!(
                "{in_use} live blobs on this node still name KEK v{v}: finish the rotation (and let this node catch up) first"
            )));
        }
        let held = self.hsm.refresh_keks().await.map_err(hsm_unavailable)?;
        match self.hsm.destroy_kek(KekVersion(v)).await {
            Err(e) => return Err(Status::failed_precondition(format!("HSM: {e}"))),
            // Destroyed before (a rerun after another node refused), or
            // never held here: recorded, and the transport key replaced.
            Ok(()) if !held.contains(&KekVersion(v)) => {}
            Ok(()) => tracing::warn!(
                version = v,
                "destroyed KEK version in this node's HSM: every blob sealed under it is unreadable for good; the token's transport key was replaced (KEK ceremonies to this token need its new fingerprint)"
            ),
        }
        let kek_versions = self
            .hsm
            .refresh_keks()
            .await
            .map_err(hsm_unavailable)?
            .into_iter()
            .map(|k| k.0)
            .collect();
        Ok(Response::new(DestroyKekReply { kek_versions }))
    }

    async fn evidence(
        &self,
        req: Request<EvidenceRequest>,
    ) -> Result<Response<EvidenceReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        let nonce = req.into_inner().nonce;
        crate::transparency::evidence(
            self.node_id,
            &self.fleet,
            &self.hsm,
            self.checkpoint.resets(),
            &nonce,
        )
        .await
        .map(Response::new)
    }
}
