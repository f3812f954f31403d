//! A node whose anti-rollback checkpoint was lost, before it runs Raft.
//!
//! It remembers no vote, so a leader of a term the fleet has left (a
//! partitioned old leader) could count its acknowledgements toward
//! entries the fleet never committed. So before Raft starts, it asks the
//! fleet's other nodes for their views until a majority of the fleet's
//! nodes name one leader and term, has that leader confirm its lead with
//! a read index (a quorum just confirmed it), and takes that term and vote
//! as its own. No older leader can reach it after that. Then it
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

/// Asks every other node of `fleet` for its view (the leader it follows,
/// its term) until a majority of the fleet file's nodes agree on one leader
/// and term, then asks that leader to confirm it with a read index; tries
/// again every second, logging each round, until `stop`. One node's word
/// is never enough: a member identity answering first could otherwise
/// plant a term near the bound in this node's vote (issue 25's review).
pub async fn learn_term(
    fleet: &Fleet,
    me: u64,
    channels: &PeerChannels,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Learned> {
    // Over every node of the fleet file (any membership is a subset of
    // them), not the bootstrap voters, which may be one node, or retired.
    let quorum = fleet.nodes.len() / 2 + 1;
    let mut round = 0u32;
    loop {
        let mut views = Vec::new();
        for (id, node) in fleet.nodes.iter().filter(|(id, _)| **id != me) {
            let reply = ask(channels, *id, &node.peer_addr.to_string(), true).await;
            views.push((*id, reply.map(|r| (r.leader_id, r.term))));
        }
        if let Some((leader, term)) = agreed(&views, quorum)
            && let Some(node) = fleet.nodes.get(&leader)
            && let Some(r) = ask(channels, leader, &node.peer_addr.to_string(), false).await
            && r.leader_id == leader
            && r.term == term
        {
            return Ok(Learned {
                leader,
                term,
                read_index: r.read_index,
            });
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

/// One `ReadIndex` call to node `id` (`term_only`: its view, unconfirmed).
async fn ask(
    channels: &PeerChannels,
    id: u64,
    addr: &str,
    term_only: bool,
) -> Option<vault_proto::v1::ReadIndexReply> {
    let mut client = channels.client(id, addr).ok()?;
    let mut req = tonic::Request::new(ReadIndexRequest { term_only });
    req.set_timeout(Duration::from_secs(3));
    client.read_index(req).await.ok().map(|r| r.into_inner())
}

/// The (leader, term) that at least `quorum` of the nodes' `views` name,
/// within the term bound; `None` while they disagree or too few answer.
pub fn agreed(views: &[(u64, Option<(u64, u64)>)], quorum: usize) -> Option<(u64, u64)> {
    let mut counts: std::collections::BTreeMap<(u64, u64), usize> = Default::default();
    for (_, view) in views {
        if let Some((leader, term)) = *view
            && term > 0
            && term < vault_raft::peer::MAX_TERM
        {
            *counts.entry((leader, term)).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .find(|(_, n)| *n >= quorum)
        .map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::agreed;

    #[test]
    fn one_node_cannot_name_the_term() {
        // Five voters, this node lost: four others answer.
        let honest = Some((1, 7));
        let liar = Some((4, (1u64 << 62) - 1));
        // The liar alone, or with one follower that is out of date: no.
        assert_eq!(
            agreed(&[(4, liar), (2, None), (3, None), (5, None)], 3),
            None
        );
        assert_eq!(
            agreed(&[(4, liar), (2, honest), (3, Some((1, 6))), (5, None)], 3),
            None
        );
        // A majority of the fleet file's nodes agree: yes.
        assert_eq!(
            agreed(&[(4, liar), (1, honest), (2, honest), (3, honest)], 3),
            Some((1, 7))
        );
        // Terms past the bound never count.
        let huge = Some((4, u64::MAX));
        assert_eq!(agreed(&[(4, huge), (2, huge), (3, huge)], 2), None);
    }
}
