//! An in-memory network between openraft nodes of one process, with faults:
//! nodes cut off (partitions), random drops and random delays, all drawn
//! from a seeded generator.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use vault_storage::TypeConfig;

/// splitmix64: small, seeded, good enough to schedule faults.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What happens to messages on one directed link.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkFault {
    /// Every message is lost (a partition).
    pub cut: bool,
    /// Percent of messages lost.
    pub drop_percent: u64,
    /// Each message waits up to this long.
    pub max_delay_ms: u64,
}

#[derive(Debug)]
struct Faults {
    links: BTreeMap<(u64, u64), LinkFault>,
    rng: Rng,
}

impl Faults {
    fn link(&mut self, from: u64, to: u64) -> &mut LinkFault {
        self.links.entry((from, to)).or_default()
    }
}

/// Delivers RPCs between the nodes that are up.
pub struct Router {
    nodes: Mutex<BTreeMap<u64, Raft<TypeConfig>>>,
    faults: Mutex<Faults>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Cut(String);

impl Router {
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Router {
            nodes: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(Faults {
                links: BTreeMap::new(),
                rng: Rng::new(seed.wrapping_add(1)),
            }),
        })
    }

    pub fn add(&self, id: u64, raft: Raft<TypeConfig>) {
        self.nodes.lock().expect("router lock").insert(id, raft);
    }

    pub fn remove(&self, id: u64) -> Option<Raft<TypeConfig>> {
        self.nodes.lock().expect("router lock").remove(&id)
    }

    pub fn get(&self, id: u64) -> Option<Raft<TypeConfig>> {
        self.nodes.lock().expect("router lock").get(&id).cloned()
    }

    pub fn up(&self) -> Vec<u64> {
        self.nodes
            .lock()
            .expect("router lock")
            .keys()
            .copied()
            .collect()
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: u64, peers: &[u64]) {
        let mut f = self.faults.lock().expect("faults lock");
        for &p in peers.iter().filter(|&&p| p != id) {
            f.link(id, p).cut = true;
            f.link(p, id).cut = true;
        }
    }

    /// Sets the faults of the directed link `from -> to`.
    pub fn set_link(&self, from: u64, to: u64, fault: LinkFault) {
        *self.faults.lock().expect("faults lock").link(from, to) = fault;
    }

    /// Every link back to normal.
    pub fn heal(&self) {
        self.faults.lock().expect("faults lock").links.clear();
    }

    /// `true` when every link from `id` is cut.
    pub fn is_isolated(&self, id: u64) -> bool {
        let f = self.faults.lock().expect("faults lock");
        let out: Vec<_> = f
            .links
            .iter()
            .filter(|((from, _), _)| *from == id)
            .collect();
        !out.is_empty() && out.iter().all(|(_, l)| l.cut)
    }

    /// The target's handle, after the link's faults; `Err` when the message
    /// is lost.
    async fn deliver(&self, from: u64, to: u64) -> Result<Raft<TypeConfig>, Unreachable> {
        let (lost, delay) = {
            let mut f = self.faults.lock().expect("faults lock");
            let link = f.links.get(&(from, to)).copied().unwrap_or_default();
            let dropped = link.drop_percent > 0 && f.rng.chance(link.drop_percent);
            let delay = if link.max_delay_ms > 0 {
                f.rng.below(link.max_delay_ms)
            } else {
                0
            };
            (link.cut || dropped, delay)
        };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if lost {
            return Err(Unreachable::new(&Cut(format!("link {from}->{to} is cut"))));
        }
        self.get(to)
            .ok_or_else(|| Unreachable::new(&Cut(format!("node {to} is down"))))
    }
}

/// Connections from one node.
#[derive(Clone)]
pub struct Network {
    pub router: Arc<Router>,
    pub from: u64,
}

pub struct Conn {
    router: Arc<Router>,
    from: u64,
    to: u64,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Conn {
        Conn {
            router: self.router.clone(),
            from: self.from,
            to: target,
        }
    }
}

fn remote<E: std::error::Error>(
    to: u64,
    e: RaftError<u64, E>,
) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    RPCError::RemoteError(RemoteError::new(to, e))
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let raft = self.router.deliver(self.from, self.to).await?;
        let resp = raft
            .append_entries(rpc)
            .await
            .map_err(|e| remote(self.to, e))?;
        // The reply crosses the same link back.
        self.router.deliver(self.to, self.from).await?;
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let raft = self.router.deliver(self.from, self.to).await?;
        let resp = raft
            .install_snapshot(rpc)
            .await
            .map_err(|e| remote(self.to, e))?;
        self.router.deliver(self.to, self.from).await?;
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let raft = self.router.deliver(self.from, self.to).await?;
        let resp = raft.vote(rpc).await.map_err(|e| remote(self.to, e))?;
        self.router.deliver(self.to, self.from).await?;
        Ok(resp)
    }
}
