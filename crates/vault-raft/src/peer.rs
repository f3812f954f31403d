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

    /// The caller must be the member node that `vote` names, and the vote
    /// must be one such a message can carry next to this node's own
    /// ([`check_peer_vote`]): a member identity is not trusted to keep to
    /// Raft, and openraft panics on some votes it never expects.
    fn speaks_for(&self, caller: u64, vote: &Vote<u64>, kind: Sender) -> Result<(), Status> {
        let ours = self.raft.metrics().borrow().vote;
        check_peer_vote(kind, caller, vote, &ours).map_err(|why| {
            tracing::warn!(from = caller, why, "refused a peer message's vote");
            Status::permission_denied(format!("node {caller} {why}"))
        })
    }
}

/// The largest step in term a peer message may take past this node's
/// term. A candidate that timed out alone for a long partition is many
/// terms ahead (one per election timeout: 2^20 terms is about two days at
/// 150 ms); a member identity sending a vote at term `u64::MAX` would make
/// the next election's `term + 1` overflow, and every node that saved that
/// vote keeps it (on disk and in its HSM checkpoint) for good.
pub const MAX_TERM_STEP: u64 = 1 << 20;

/// No vote is taken at or above this term, however it was reached: at one
/// step of [`MAX_TERM_STEP`] per message it takes 2^42 messages.
pub const MAX_TERM: u64 = 1 << 62;

/// Who a peer message says it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A candidate asking for a vote: its vote is never committed.
    Candidate,
    /// A leader replicating (AppendEntries, InstallSnapshot): its vote is
    /// committed, granted by a quorum.
    Leader,
}

/// Checks the vote a peer message from `caller` carries (`theirs`) against
/// this node's (`ours`), before openraft sees it:
/// - it names the caller (node 2 cannot speak as node 3);
/// - a candidate's vote is not committed, a leader's is (a committed vote
///   in a VoteRequest would be taken as a leader's);
/// - its term is below [`MAX_TERM`] and at most [`MAX_TERM_STEP`] past ours;
/// - it is comparable with ours as Raft orders votes: two committed votes
///   for different nodes in one term (a member claiming a term another
///   node leads) reach an `unreachable!` in openraft and panic its core.
pub fn check_peer_vote(
    kind: Sender,
    caller: u64,
    theirs: &Vote<u64>,
    ours: &Vote<u64>,
) -> Result<(), String> {
    use crate::checkpoint::votes_conflict;
    let named = theirs.leader_id().voted_for();
    if named != Some(caller) {
        return Err(format!(
            "may not speak for node {}",
            named.map_or_else(|| "<none>".to_owned(), |n| n.to_string())
        ));
    }
    match (kind, theirs.is_committed()) {
        (Sender::Candidate, true) => {
            return Err("sent a vote request with a committed vote".into());
        }
        (Sender::Leader, false) => {
            return Err("sent a leader's message with a vote no quorum granted".into());
        }
        _ => {}
    }
    let (term, our_term) = (theirs.leader_id().term, ours.leader_id().term);
    if term >= MAX_TERM || term > our_term.saturating_add(MAX_TERM_STEP) {
        return Err(format!(
            "named term {term}, too far past this node's term {our_term}"
        ));
    }
    // Two uncommitted votes for different candidates in one term are a
    // split vote: openraft orders them by node id and the higher candidate
    // wins the term. Refusing it kept two candidates in lockstep, term
    // after term, with no leader (seen in the gate's pause_leader run). A
    // committed vote that conflicts (two leaders of one term) is what a
    // check must stop.
    if votes_conflict(theirs, ours) {
        return Err(format!(
            "sent a vote in term {term} that conflicts with this node's vote in the same term"
        ));
    }
    Ok(())
}

/// The peer API of one node.
pub struct PeerService {
    raft: Raft,
    batcher: Batcher,
    gate: Gatekeeper,
    /// One snapshot is received at a time: each is held in memory whole
    /// (up to [`MAX_SNAPSHOT`]), so concurrent ones from a member identity
    /// would multiply that.
    receiving: std::sync::Arc<tokio::sync::Semaphore>,
}

impl PeerService {
    /// Serves `raft` to callers that `gate` lets in; forwarded commands go
    /// through `batcher` with this node's own.
    pub fn new(raft: Raft, batcher: Batcher, gate: Gatekeeper) -> PeerService {
        PeerService {
            raft,
            batcher,
            gate,
            receiving: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
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
        self.gate.speaks_for(caller, &rpc.vote, Sender::Leader)?;
        let result = self.raft.append_entries(rpc).await;
        Ok(Response::new(RaftMessage {
            payload: wire::encode(&result),
        }))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let caller = self.gate.member_node(&req)?;
        let rpc: openraft::raft::VoteRequest<u64> =
            wire::decode(&req.into_inner().payload).map_err(bad_message)?;
        self.gate.speaks_for(caller, &rpc.vote, Sender::Candidate)?;
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
        self.gate.speaks_for(caller, &vote, Sender::Leader)?;
        let _one_at_a_time = self.receiving.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted("this node is receiving another snapshot; retry")
        })?;
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
        if req.get_ref().term_only {
            let m = self.raft.metrics().borrow().clone();
            return match m.current_leader {
                Some(leader) if m.vote.is_committed() => Ok(Response::new(ReadIndexReply {
                    read_index: 0,
                    leader_id: leader,
                    term: m.vote.leader_id().term,
                })),
                _ => Err(Status::unavailable("no leader known; retry")),
            };
        }
        match self.raft.ensure_linearizable().await {
            Ok(read) => {
                // The term of the lead a quorum just confirmed: if the lead
                // moved on meanwhile, say so rather than name a term this
                // node does not lead.
                let m = self.raft.metrics().borrow().clone();
                if m.current_leader != Some(m.id) || !m.vote.is_committed() {
                    return Err(Status::unavailable("not the leader any more; retry"));
                }
                Ok(Response::new(ReadIndexReply {
                    read_index: read.map_or(0, |l| l.index),
                    leader_id: m.id,
                    term: m.vote.leader_id().term,
                }))
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(Status::unavailable("not the leader; retry"))
            }
            Err(e) => Err(Status::unavailable(format!(
                "leadership not confirmed: {e}; retry"
            ))),
        }
    }
}

/// Checks the vote in a peer's reply (`got`: a higher vote that refuses
/// an AppendEntries or a snapshot, the voter's vote in a VoteResponse)
/// against the vote this node sent (`sent`): within the term bounds of
/// [`check_peer_vote`], and comparable with it as Raft orders votes.
pub fn check_reply_vote(sent: &Vote<u64>, got: &Vote<u64>) -> Result<(), String> {
    use crate::checkpoint::votes_conflict;
    let (term, our_term) = (got.leader_id().term, sent.leader_id().term);
    if term >= MAX_TERM || term > our_term.saturating_add(MAX_TERM_STEP) {
        return Err(format!(
            "term {term} is too far past this node's term {our_term}"
        ));
    }
    // Two uncommitted votes for different candidates in one term are a
    // split vote, which openraft handles; two leaders of one term are not.
    if votes_conflict(got, sent) {
        return Err(format!(
            "its vote in term {term} conflicts with this node's vote in the same term"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(term: u64, node: u64) -> Vote<u64> {
        let mut v = Vote::new(term, node);
        v.commit();
        v
    }

    /// The member-identity attacks of issue 25: before this check,
    /// `speaks_for` looked only at the node the vote names, so each of
    /// these reached openraft.
    #[test]
    fn a_member_cannot_send_votes_that_brick_or_panic_the_fleet() {
        let ours = committed(7, 1);
        // A leader's message at term u64::MAX (saved by every follower;
        // the next election's term + 1 overflows).
        let e = check_peer_vote(Sender::Leader, 2, &committed(u64::MAX, 2), &ours).unwrap_err();
        assert!(e.contains("too far"), "{e}");
        assert!(
            check_peer_vote(
                Sender::Leader,
                2,
                &committed(MAX_TERM, 2),
                &committed(MAX_TERM - 1, 1)
            )
            .is_err()
        );
        // A jump past the bound, and one within it.
        assert!(
            check_peer_vote(
                Sender::Leader,
                2,
                &committed(7 + MAX_TERM_STEP + 1, 2),
                &ours
            )
            .is_err()
        );
        assert!(
            check_peer_vote(Sender::Leader, 2, &committed(7 + MAX_TERM_STEP, 2), &ours).is_ok()
        );
        // A committed vote for itself in the term node 1 leads: openraft's
        // vote comparison reaches `unreachable!`.
        let e = check_peer_vote(Sender::Leader, 2, &committed(7, 2), &ours).unwrap_err();
        assert!(e.contains("conflicts"), "{e}");
        // A committed vote in a VoteRequest.
        let e = check_peer_vote(Sender::Candidate, 2, &committed(8, 2), &ours).unwrap_err();
        assert!(e.contains("committed"), "{e}");
        // A leader's message without a granted vote.
        assert!(check_peer_vote(Sender::Leader, 2, &Vote::new(8, 2), &ours).is_err());
        // Speaking for another node.
        assert!(check_peer_vote(Sender::Leader, 2, &committed(8, 3), &ours).is_err());
    }

    /// Found in review: the same votes in replies. A `HigherVote` with a
    /// committed vote for the replier in the leader's own term panicked
    /// the leader's core; one at term `u64::MAX` bricked the fleet.
    #[test]
    fn a_member_cannot_answer_with_votes_that_brick_or_panic_the_leader() {
        let ours = committed(7, 1);
        assert!(check_reply_vote(&ours, &committed(7, 2)).is_err());
        assert!(check_reply_vote(&ours, &committed(u64::MAX, 2)).is_err());
        assert!(check_reply_vote(&ours, &Vote::new(7 + MAX_TERM_STEP + 1, 2)).is_err());
        // Honest answers: a later term, the same vote, a lower one
        // (a voter that refused an old candidate).
        assert!(check_reply_vote(&ours, &committed(9, 3)).is_ok());
        assert!(check_reply_vote(&ours, &ours).is_ok());
        assert!(check_reply_vote(&Vote::new(8, 1), &committed(8, 3)).is_ok());
        assert!(check_reply_vote(&Vote::new(8, 1), &committed(6, 3)).is_ok());
        // A split vote.
        assert!(check_reply_vote(&Vote::new(8, 1), &Vote::new(8, 2)).is_ok());
    }

    #[test]
    fn openraft_orders_two_leaders_of_one_term_without_panicking() {
        // With openraft 0.9's default leader ids (`LeaderId { term,
        // node_id }`, not the `single-term-leader` feature) votes are
        // totally ordered: two committed votes for different nodes in one
        // term compare by node id. So a conflicting committed vote that
        // slips past `check_peer_vote` in a race (it reads the vote openraft
        // last published) is a second leader of that term to openraft, not
        // the `unreachable!` of the single-term ordering. If this fails, the
        // feature was turned on and the race can panic a Raft core again.
        use std::cmp::Ordering;
        let (a, b) = (committed(7, 1), committed(7, 2));
        assert_eq!(b.partial_cmp(&a), Some(Ordering::Greater));
        assert_eq!(a.partial_cmp(&b), Some(Ordering::Less));
        assert_eq!(Vote::new(7, 2).partial_cmp(&a), Some(Ordering::Greater));
        // This node's own check stays stricter than openraft's order.
        assert!(check_peer_vote(Sender::Leader, 2, &b, &a).is_err());
    }

    /// Two candidates of one term (a split vote) must reach openraft, which
    /// lets the higher node id win the term: refused, the two candidates
    /// went on in lockstep with no leader, term after term.
    #[test]
    fn a_split_vote_reaches_openraft() {
        let (mine, theirs) = (Vote::new(2, 2), Vote::new(2, 3));
        assert_eq!(
            check_peer_vote(Sender::Candidate, 3, &theirs, &mine),
            Ok(())
        );
        assert_eq!(
            check_peer_vote(Sender::Candidate, 2, &mine, &theirs),
            Ok(())
        );
        assert!(theirs > mine, "openraft orders a split vote by node id");
    }

    #[test]
    fn honest_messages_pass() {
        // A new leader of a later term; the current leader; an old leader
        // (openraft refuses it itself, with the higher vote in the answer).
        let ours = committed(7, 1);
        assert!(check_peer_vote(Sender::Leader, 2, &committed(8, 2), &ours).is_ok());
        assert!(check_peer_vote(Sender::Leader, 1, &committed(7, 1), &ours).is_ok());
        assert!(check_peer_vote(Sender::Leader, 3, &committed(5, 3), &ours).is_ok());
        // This node voted for 2 in term 8, and 2 won.
        assert!(check_peer_vote(Sender::Leader, 2, &committed(8, 2), &Vote::new(8, 2)).is_ok());
        // 3 won term 8 without this node's vote (it voted for 2).
        assert!(check_peer_vote(Sender::Leader, 3, &committed(8, 3), &Vote::new(8, 2)).is_ok());
        // Candidates: a later term, and one this node already voted for.
        assert!(check_peer_vote(Sender::Candidate, 2, &Vote::new(9, 2), &ours).is_ok());
        assert!(check_peer_vote(Sender::Candidate, 2, &Vote::new(9, 2), &Vote::new(9, 2)).is_ok());
        // A fresh node (no vote yet: term 0) hears from the leader.
        assert!(check_peer_vote(Sender::Leader, 1, &committed(3, 1), &Vote::default()).is_ok());
    }
}
