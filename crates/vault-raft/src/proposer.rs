//! Proposing a command from any node: here when this node leads, else
//! forwarded to the leader over the peer API.
//!
//! Commands carry request ids and the state machine answers a repeated id
//! with the first answer, so retrying after an unclear outcome (a leader
//! that stepped down, a forward that timed out) never applies a command
//! twice. The proposer retries within its deadline while a leader is being
//! elected; past it the caller gets [`ProposeError::Retryable`].

use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use vault_proto::v1::{ForwardRequest, ReadIndexRequest};
use vault_types::{Proposal, Reply, codec};

use crate::Raft;
use crate::network::PeerChannels;

/// Why a command has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No leader took it in time (an election, a partition). Retrying with
    /// the same request id is safe.
    #[error("no leader answered in time: {0}; retry with the same request id")]
    Retryable(String),
    /// The command could not be encoded, or Raft stopped on this node.
    #[error("{0}")]
    Fatal(String),
}

/// Something that counts forwarded commands (the node's metrics).
pub trait ForwardObserver: Send + Sync + 'static {
    /// A command was forwarded to `leader`; `ok` tells whether it got an
    /// answer.
    fn forwarded(&self, leader: u64, ok: bool);
}

/// Proposes commands on behalf of this node's callers.
#[derive(Clone)]
pub struct Proposer {
    raft: Raft,
    channels: PeerChannels,
    deadline: Duration,
    observer: std::sync::Arc<dyn ForwardObserver>,
}

impl Proposer {
    /// A proposer that gives up after `deadline`.
    pub fn new(
        raft: Raft,
        channels: PeerChannels,
        deadline: Duration,
        observer: std::sync::Arc<dyn ForwardObserver>,
    ) -> Proposer {
        Proposer {
            raft,
            channels,
            deadline,
            observer,
        }
    }

    /// Commits `proposal` through the leader and returns its applied reply.
    pub async fn propose(&self, proposal: Proposal) -> Result<Reply, ProposeError> {
        let bytes =
            codec::encode_proposal(&proposal).map_err(|e| ProposeError::Fatal(e.to_string()))?;
        let give_up = Instant::now() + self.deadline;
        let mut last = String::from("no leader known");
        loop {
            match self.raft.client_write(proposal.clone()).await {
                Ok(written) => return Ok(written.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let (Some(leader), Some(node)) = (f.leader_id, f.leader_node) {
                        match self.forward(leader, &node.addr, &bytes, give_up).await {
                            Ok(reply) => return Ok(reply),
                            Err(e) => last = e,
                        }
                    }
                }
                Err(RaftError::APIError(e)) => return Err(ProposeError::Fatal(e.to_string())),
                Err(RaftError::Fatal(e)) => return Err(ProposeError::Fatal(e.to_string())),
            }
            if Instant::now() >= give_up {
                return Err(ProposeError::Retryable(last));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn forward(
        &self,
        leader: u64,
        addr: &str,
        proposal: &[u8],
        give_up: Instant,
    ) -> Result<Reply, String> {
        let mut client = self
            .channels
            .client(leader, addr)
            .map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(ForwardRequest {
            proposal: proposal.to_vec(),
        });
        req.set_timeout(
            give_up
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100)),
        );
        let result = client.forward(req).await;
        self.observer.forwarded(leader, result.is_ok());
        let reply = result.map_err(|s| format!("forward to node {leader}: {}", s.message()))?;
        codec::decode("reply", codec::VALUE_V1, &reply.into_inner().reply)
            .map_err(|e| e.to_string())
    }

    /// Waits until this node has applied everything that was committed when
    /// the call began, as confirmed by the leader with a quorum (read index).
    /// After it returns, reading this node's state is linearizable.
    pub async fn read_barrier(&self) -> Result<u64, ProposeError> {
        let give_up = Instant::now() + self.deadline;
        loop {
            let metrics = self.raft.metrics().borrow().clone();
            let attempt: Result<u64, String> = match metrics.current_leader {
                Some(leader) if leader == metrics.id => self
                    .raft
                    .ensure_linearizable()
                    .await
                    .map(|l| l.map_or(0, |l| l.index))
                    .map_err(|e| e.to_string()),
                Some(leader) => match metrics.membership_config.membership().get_node(&leader) {
                    Some(node) => self.remote_read_index(leader, &node.addr, give_up).await,
                    None => Err(format!("leader {leader} has no address")),
                },
                None => Err("no leader known".into()),
            };
            match attempt {
                Ok(index) => {
                    let left = give_up.saturating_duration_since(Instant::now());
                    self.raft
                        .wait(Some(left))
                        .applied_index_at_least(Some(index), "read barrier")
                        .await
                        .map_err(|e| ProposeError::Retryable(e.to_string()))?;
                    return Ok(index);
                }
                Err(e) if Instant::now() >= give_up => return Err(ProposeError::Retryable(e)),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn remote_read_index(
        &self,
        leader: u64,
        addr: &str,
        give_up: Instant,
    ) -> Result<u64, String> {
        let mut client = self
            .channels
            .client(leader, addr)
            .map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(ReadIndexRequest {});
        req.set_timeout(
            give_up
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100)),
        );
        let reply = client
            .read_index(req)
            .await
            .map_err(|s| s.message().to_owned())?;
        Ok(reply.into_inner().read_index)
    }
}
