//! A node whose anti-rollback checkpoint was lost, before it runs Raft.
//!
//! It remembers no vote, so a leader of a term the fleet has left (a
//! partitioned old leader) could count its acknowledgements toward
//! entries the fleet never committed. So before Raft starts, it asks the
//! fleet's other nodes for a read index until one answers as a leader
//! whose lead a quorum has just confirmed, and takes that leader's term
//! and vote as its own. No older leader can reach it after that. Then it
//! runs Raft without voting or standing for election, and only once it
//! has applied everything that leader had committed (a read barrier) does
//! it vote again ([`crate::checkpoint::HsmCheckpoint::caught_up_after_loss`]).

use std::time::Duration;

use vault_fleet::config::Fleet;
use vault_proto::v1::ReadIndexRequest;
use vault_raft::network::PeerChannels;

/// What a confirmed leader said.
#[derive(Debug, Clone, Copy)]
pub struct Learned {
    /// The leader.
    pub leader: u64,
    /// Its term.
    pub term: u64,
    /// Its read index: what it had committed.
    pub read_index: u64,
}

/// Asks every other node of `fleet` in turn until a confirmed leader
/// answers; tries again every second, logging each round, until `stop`.
pub async fn learn_term(
    fleet: &Fleet,
    me: u64,
    channels: &PeerChannels,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Learned> {
    let mut round = 0u32;
    loop {
        for (id, node) in fleet.nodes.iter().filter(|(id, _)| **id != me) {
            let Ok(mut client) = channels.client(*id, &node.peer_addr.to_string()) else {
                continue;
            };
            let mut req = tonic::Request::new(ReadIndexRequest {});
            req.set_timeout(Duration::from_secs(3));
            if let Ok(reply) = client.read_index(req).await {
                let r = reply.into_inner();
                // A member identity could name any term: one past the
                // bound would be saved as this node's vote for good.
                if r.term > 0 && r.term < vault_raft::peer::MAX_TERM && r.leader_id == *id {
                    return Ok(Learned {
                        leader: r.leader_id,
                        term: r.term,
                        read_index: r.read_index,
                    });
                }
            }
        }
        round += 1;
        if round % 10 == 1 {
            tracing::warn!(
                round,
                "lost checkpoint: no leader confirmed by a quorum answers yet; this node waits without Raft"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = crate::http::stop_requested(&mut stop) => anyhow::bail!("stopped while learning the fleet's term"),
        }
    }
}
