//! The server side of the peer API, with the caller checks.
//!
//! TLS has already verified the caller's certificate against the fleet CA.
//! Here every call additionally needs the certificate to name a node
//! (`vault_fleet::identity`) that is a member of the fleet as this node knows it
//! (any node of the fleet file while this node has no membership yet, so a
//! new node can be reached by the leader). Where a message claims to come
//! from a node (a leader's vote in AppendEntries and InstallSnapshot, a
//! candidate's in Vote), the certificate must name that very node: node 2
//! cannot speak as node 3.

use std::collections::BTreeSet;
use std::io::Cursor;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{Snapshot, Vote};
use tonic::{Request, Response, Status, Streaming};
use vault_proto::v1::peer_server::Peer;
use vault_proto::v1::{
    ForwardReply, ForwardRequest, RaftMessage, ReadIndexReply, ReadIndexRequest, SnapshotChunk,
};
use vault_types::codec;

use crate::checkpoint::BehindFlag;
use crate::network::SnapshotHeader;
use crate::proposer::{Batcher, WriteError};
use crate::{Raft, wire};

/// The largest snapshot a node accepts (the state is held in memory).
pub const MAX_SNAPSHOT: usize = 1 << 30;

/// Who may call a node, as the node sees it right now.
#[derive(Clone)]
pub struct Gatekeeper {
    raft: Raft,
    fleet_nodes: BTreeSet<u64>,
    behind: BehindFlag,
}

impl Gatekeeper {
    /// Checks callers against `raft`'s membership; `fleet_nodes` are the
    /// nodes of the fleet file.
    pub fn new(raft: Raft, fleet_nodes: BTreeSet<u64>) -> Gatekeeper {
        Gatekeeper {
            raft,
            fleet_nodes,
            behind: BehindFlag::default(),
        }
    }

    /// Refuses to vote while `behind` says this node's disk is behind its
    /// HSM checkpoint: a node that lost what it had acknowledged could
    /// elect a leader without it (or vote twice in one term).
    pub fn with_behind(mut self, behind: BehindFlag) -> Gatekeeper {
        self.behind = behind;
        self
    }

    /// The caller must be a member node; returns its id.
    pub fn member_node<T>(&self, req: &Request<T>) -> Result<u64, Status> {
        let id = vault_fleet::callers::node(req)?;
        if !self.fleet_nodes.contains(&id) {
            return Err(Status::permission_denied(format!(
                "node {id} is not in this node's fleet file"
            )));
        }
        let metrics = self.raft.metrics();
        let membership = metrics.borrow().membership_config.clone();
        let mut members = membership
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .peekable();
        if members.peek().is_some() && !members.any(|m| m == id) {
            return Err(Status::permission_denied(format!(
                "node {id} is not a member of the fleet"
            )));
        }
        Ok(id)
    }

    /// The caller must be the member node that `vote` names.
    fn speaks_for(&self, caller: u64, vote: &Vote<u64>) -> Result<(), Status> {
        match vote.leader_id().voted_for() {
            Some(n) if n == caller => Ok(()),
            claimed => Err(Status::permission_denied(format!(
                "node {caller} may not speak for node {}",
                claimed.map_or_else(|| "<none>".to_owned(), |n| n.to_string())
            ))),
        }
    }
}

/// The peer API of one node.
pub struct PeerService {
    raft: Raft,
    batcher: Batcher,
    gate: Gatekeeper,
}

impl PeerService {
    /// Serves `raft` to callers that `gate` lets in; forwarded commands go
    /// through `batcher` with this node's own.
    pub fn new(raft: Raft, batcher: Batcher, gate: Gatekeeper) -> PeerService {
        PeerService {
            raft,
            batcher,
            gate,
        }
    }
}

fn bad_message(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let caller = self.gate.member_node(&req)?;
        let rpc: openraft::raft::AppendEntriesRequest<crate::TypeConfig> =
            wire::decode(&req.into_inner().payload).map_err(bad_message)?;
        self.gate.speaks_for(caller, &rpc.vote)?;
        let result = self.raft.append_entries(rpc).await;
        Ok(Response::new(RaftMessage {
            payload: wire::encode(&result),
        }))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let caller = self.gate.member_node(&req)?;
        let rpc: openraft::raft::VoteRequest<u64> =
            wire::decode(&req.into_inner().payload).map_err(bad_message)?;
        self.gate.speaks_for(caller, &rpc.vote)?;
        if let Some(why) = self.gate.behind.why() {
            return Err(Status::unavailable(format!(
                "this node does not vote: {why}"
            )));
        }
        let result = self.raft.vote(rpc).await;
        Ok(Response::new(RaftMessage {
            payload: wire::encode(&result),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let caller = self.gate.member_node(&req)?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| bad_message("empty snapshot stream"))?;
        let (vote, meta): SnapshotHeader = wire::decode(&first.header).map_err(bad_message)?;
        self.gate.speaks_for(caller, &vote)?;
        let mut data = first.data;
        while let Some(piece) = stream.message().await? {
            if !piece.header.is_empty() {
                return Err(bad_message("a snapshot header after the first piece"));
            }
            if data.len() + piece.data.len() > MAX_SNAPSHOT {
                return Err(Status::resource_exhausted(
                    "snapshot larger than this node accepts",
                ));
            }
            data.extend_from_slice(&piece.data);
        }
        tracing::info!(from = caller, snapshot = %meta.snapshot_id, bytes = data.len(), "installing a snapshot");
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        };
        let result = self.raft.install_full_snapshot(vote, snapshot).await;
        Ok(Response::new(RaftMessage {
            payload: wire::encode(&result),
        }))
    }

    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        let caller = self.gate.member_node(&req)?;
        let proposal = codec::decode_proposal(&req.into_inner().proposal).map_err(bad_message)?;
        if let Err(why) = proposal.check_forwardable() {
            tracing::warn!(from = caller, why, "refused a forwarded command");
            return Err(Status::permission_denied(format!(
                "node {caller} may not forward this command: {why}"
            )));
        }
        tracing::debug!(
            from = caller,
            request = ?proposal.request.map(|r| r.id),
            "forwarded command"
        );
        match self.batcher.write(proposal).await {
            Ok(reply) => Ok(Response::new(ForwardReply {
                reply: codec::encode(codec::VALUE_V1, &reply)
                    .map_err(|e| Status::internal(e.to_string()))?,
            })),
            Err(WriteError::ForwardToLeader { leader }) => Err(Status::unavailable(format!(
                "not the leader (leader: {}); retry",
                leader.map_or_else(|| "unknown".to_owned(), |(l, _)| l.to_string())
            ))),
            Err(WriteError::Fatal(e)) => Err(Status::unavailable(format!(
                "the command did not commit: {e}; retry"
            ))),
        }
    }

    async fn read_index(
        &self,
        req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        self.gate.member_node(&req)?;
        match self.raft.ensure_linearizable().await {
            Ok(read) => Ok(Response::new(ReadIndexReply {
                read_index: read.map_or(0, |l| l.index),
                leader_id: self.raft.metrics().borrow().id,
            })),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(Status::unavailable("not the leader; retry"))
            }
            Err(e) => Err(Status::unavailable(format!(
                "leadership not confirmed: {e}; retry"
            ))),
        }
    }
}
