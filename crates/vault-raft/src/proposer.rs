//! Proposing a command from any node: here when this node leads, else
//! forwarded to the leader over the peer API.
//!
//! On the leader, proposals (its own callers' and forwarded ones) pass
//! through a [`Batcher`]: while a few log entries are being committed, the
//! proposals that arrive meanwhile wait and go out together as the next
//! entry's [`Batch`], so concurrent requests share one log write, one fsync
//! and one replication round instead of paying for each.
//!
//! Commands carry request ids and the state machine answers a repeated id
//! with the first answer, so retrying after an unclear outcome (a leader
//! that stepped down, a forward that timed out) never applies a command
//! twice. The proposer retries within its deadline while a leader is being
//! elected; past it the caller gets [`ProposeError::Retryable`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use vault_proto::v1::{ForwardRequest, ReadIndexRequest};
use vault_types::{Batch, MAX_BATCH, Proposal, Reply, codec};

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
    /// [`Proposer::propose_here`] on a node that does not lead.
    #[error("node {me} is not the leader; ask node {}", .leader.map_or_else(|| "<none yet>".to_owned(), |l| l.to_string()))]
    NotLeader {
        /// This node.
        me: u64,
        /// The leader it knows of.
        leader: Option<u64>,
    },
}

/// Something that counts forwarded commands (the node's metrics).
pub trait ForwardObserver: Send + Sync + 'static {
    /// A command was forwarded to `leader`; `ok` tells whether it got an
    /// answer.
    fn forwarded(&self, leader: u64, ok: bool);
}

/// Log entries a leader's batcher keeps in flight at once: while they
/// commit, new proposals gather into the next batch. Measured (docs/
/// BENCHMARKS.md): with two, recover at 20 clients on the loopback fleet
/// gained about 10 % but a WAN fleet's commit latency rose by half at p90
/// (proposals waited a whole WAN commit for a slot); one left the loopback
/// fleet idle between commits; four keeps the WAN latency and most of the
/// loopback gain.
const BATCHES_IN_FLIGHT: usize = 4;

/// Proposals waiting for a batch; past this, callers wait to queue.
const QUEUE: usize = 4 * MAX_BATCH;

/// Why the batcher could not write a proposal.
#[derive(Debug)]
pub enum WriteError {
    /// This node does not lead; `leader` (with its peer address) may.
    ForwardToLeader {
        /// The leader this node knows of, if any, and its address.
        leader: Option<(u64, String)>,
    },
    /// Raft refused or stopped; the message says why.
    Fatal(String),
}

struct Pending {
    proposal: Proposal,
    reply: oneshot::Sender<Result<Reply, WriteError>>,
}

/// Gathers proposals into log entries (see the module documentation).
/// Cheap to clone; every clone feeds the same queue.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Pending>,
    /// Set by `BKV_BATCHING=off`: every proposal is its own entry, written
    /// at once (how nodes worked before batching; for benchmarks).
    unbatched: Option<Raft>,
}

impl Batcher {
    /// A batcher writing to `raft`. Spawns its task on the current tokio
    /// runtime; the task ends when every clone is dropped. With the
    /// environment variable `BKV_BATCHING=off`, proposals are not batched
    /// (to measure what batching gains).
    pub fn start(raft: Raft) -> Batcher {
        let (queue, rx) = mpsc::channel(QUEUE);
        let unbatched = (std::env::var("BKV_BATCHING").as_deref() == Ok("off")).then(|| {
            tracing::warn!("BKV_BATCHING=off: one proposal per log entry");
            raft.clone()
        });
        tokio::spawn(batch_loop(raft, rx));
        Batcher { queue, unbatched }
    }

    /// Commits `proposal` (in a batch with whatever else is waiting) and
    /// returns its applied reply.
    pub async fn write(&self, proposal: Proposal) -> Result<Reply, WriteError> {
        if let Some(raft) = &self.unbatched {
            return match raft.client_write(Batch(vec![proposal])).await {
                Ok(written) => written
                    .data
                    .into_iter()
                    .next()
                    .ok_or_else(|| WriteError::Fatal("an entry without a reply".into())),
                Err(e) => Err(write_error(&e)),
            };
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { proposal, reply })
            .await
            .map_err(|_| WriteError::Fatal("the batcher stopped".into()))?;
        answer
            .await
            .map_err(|_| WriteError::Fatal("the batcher dropped a proposal".into()))?
    }
}

async fn batch_loop(raft: Raft, mut rx: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a slot first: whatever arrives meanwhile joins this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (proposals, waiters): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.proposal, p.reply)).unzip();
            let result = raft.client_write(Batch(proposals)).await;
            drop(permit);
            match result {
                Ok(written) if written.data.len() == waiters.len() => {
                    for (waiter, reply) in waiters.into_iter().zip(written.data) {
                        let _ = waiter.send(Ok(reply));
                    }
                }
                Ok(written) => {
                    let why = format!(
                        "a batch of {} proposals got {} replies",
                        waiters.len(),
                        written.data.len()
                    );
                    for waiter in waiters {
                        let _ = waiter.send(Err(WriteError::Fatal(why.clone())));
                    }
                }
                Err(e) => {
                    for waiter in waiters {
                        let _ = waiter.send(Err(write_error(&e)));
                    }
                }
            }
        });
    }
}

fn write_error(e: &RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => WriteError::ForwardToLeader {
            leader: f
                .leader_id
                .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
        },
        RaftError::APIError(e) => WriteError::Fatal(e.to_string()),
        RaftError::Fatal(e) => WriteError::Fatal(e.to_string()),
    }
}

/// Proposes commands on behalf of this node's callers.
#[derive(Clone)]
pub struct Proposer {
    batcher: Batcher,
    channels: PeerChannels,
    deadline: Duration,
    observer: std::sync::Arc<dyn ForwardObserver>,
    raft: Raft,
}

impl Proposer {
    /// A proposer that writes through `batcher` and gives up after
    /// `deadline`.
    pub fn new(
        raft: Raft,
        batcher: Batcher,
        channels: PeerChannels,
        deadline: Duration,
        observer: std::sync::Arc<dyn ForwardObserver>,
    ) -> Proposer {
        Proposer {
            batcher,
            channels,
            deadline,
            observer,
            raft,
        }
    }

    /// Commits `proposal` through the leader and returns its applied reply.
    pub async fn propose(&self, proposal: Proposal) -> Result<Reply, ProposeError> {
        let bytes =
            codec::encode_proposal(&proposal).map_err(|e| ProposeError::Fatal(e.to_string()))?;
        let give_up = Instant::now() + self.deadline;
        let mut last = String::from("no leader known");
        loop {
            // A follower that knows the leader forwards at once; otherwise
            // (this node leads, or no leader is known) the batcher tries
            // and Raft says where to go.
            let forward_to = match self.known_leader_elsewhere() {
                Some(leader) => Some(leader),
                None => match self.batcher.write(proposal.clone()).await {
                    Ok(reply) => return Ok(reply),
                    Err(WriteError::ForwardToLeader { leader }) => leader,
                    Err(WriteError::Fatal(e)) => return Err(ProposeError::Fatal(e)),
                },
            };
            if let Some((leader, addr)) = forward_to {
                match self.forward(leader, &addr, &bytes, give_up).await {
                    Ok(reply) => return Ok(reply),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= give_up {
                return Err(ProposeError::Retryable(last));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Commits `proposal` only if this node leads: never forwarded. For
    /// operator commands, which a leader takes only from the operator's own
    /// connection (a peer's `Forward` carries frontend commands only).
    pub async fn propose_here(&self, proposal: Proposal) -> Result<Reply, ProposeError> {
        match self.batcher.write(proposal).await {
            Ok(reply) => Ok(reply),
            Err(WriteError::ForwardToLeader { leader }) => Err(ProposeError::NotLeader {
                me: self.raft.metrics().borrow().id,
                leader: leader.map(|(l, _)| l),
            }),
            Err(WriteError::Fatal(e)) => Err(ProposeError::Fatal(e)),
        }
    }

    /// The leader this node's Raft knows of, with its address, when it is
    /// another node.
    fn known_leader_elsewhere(&self) -> Option<(u64, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader.filter(|l| *l != m.id)?;
        let node = m.membership_config.membership().get_node(&leader)?;
        Some((leader, node.addr.clone()))
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
        let mut req = tonic::Request::new(ReadIndexRequest { term_only: false });
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
