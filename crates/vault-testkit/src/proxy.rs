//! A fault-injecting TCP proxy for the peer links of a test fleet.
//!
//! `tc netem` is not available on our machines, so faults on the wire are
//! made here. In a proxied fleet (see [`crate::FleetSpec::proxied`]) every
//! node advertises a peer address the proxy listens on, and connects to
//! its peers from its own loopback address; the proxy thus knows, for
//! every connection, which node called which, and applies the mode of each
//! direction of bytes separately:
//!
//! - `pass`: bytes go through (the default);
//! - `drop`: connections are reset and new ones closed at once (a crashed
//!   or firewalled host that answers with RST);
//! - `blackhole`: bytes are swallowed and nothing is answered (a silent
//!   partition; the callers time out);
//! - `delay`: bytes are held for a delay plus a random jitter, in order.
//!
//! A mode is per direction: blackholing only `a → b` makes a one-way
//! partition. A connection that lost bytes is closed once its link stops
//! swallowing them, as a real connection would break. Connections from an
//! address that is no node's (the operator's `vaultctl`) always pass.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What happens to the bytes of one direction of one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LinkMode {
    /// Delivered at once.
    #[default]
    Pass,
    /// Connections reset, new ones refused.
    Drop,
    /// Swallowed; nothing is answered.
    Blackhole,
    /// Delivered after `delay` plus up to `jitter`, in order.
    Delay {
        /// Fixed part.
        delay: Duration,
        /// Random extra, uniform in `0..=jitter`.
        jitter: Duration,
    },
}

/// Counters of what the proxy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed at once or reset because of `drop`.
    pub reset: u64,
    /// Bytes forwarded.
    pub bytes_passed: u64,
    /// Bytes swallowed by `blackhole`.
    pub bytes_swallowed: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    reset: AtomicU64,
    bytes_passed: AtomicU64,
    bytes_swallowed: AtomicU64,
}

struct Shared {
    /// Modes by (from node, to node); absent = pass.
    links: Mutex<HashMap<(u64, u64), LinkMode>>,
    /// Bumped on every change so that live connections look again.
    changed: watch::Sender<u64>,
    /// Node by source address.
    sources: HashMap<IpAddr, u64>,
    counters: Counters,
    rng: Mutex<rand::rngs::StdRng>,
}

impl Shared {
    fn mode(&self, from: Option<u64>, to: u64) -> LinkMode {
        let Some(from) = from else {
            return LinkMode::Pass;
        };
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }

    fn jitter(&self, max: Duration) -> Duration {
        use rand::Rng;
        if max.is_zero() {
            return max;
        }
        let micros = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .gen_range(0..=max.as_micros() as u64);
        Duration::from_micros(micros)
    }
}

/// One route: the proxy listens on `listen` for node `node`, whose peer
/// server is at `target`.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// The node behind this route.
    pub node: u64,
    /// Where the proxy listens (the node's advertised `peer_addr`).
    pub listen: SocketAddr,
    /// Where the node listens (its `peer_bind_addr`).
    pub target: SocketAddr,
}

/// The proxy; dropping it stops it and closes every connection.
pub struct FaultProxy {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts listening on every route. `sources` maps the address each
    /// node connects from to the node; `seed` drives the jitter. Call
    /// inside a tokio runtime.
    pub async fn start(
        routes: &[Route],
        sources: HashMap<IpAddr, u64>,
        seed: u64,
    ) -> anyhow::Result<FaultProxy> {
        use rand::SeedableRng;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            links: Mutex::new(HashMap::new()),
            changed,
            sources,
            counters: Counters::default(),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
        });
        let mut tasks = Vec::new();
        for route in routes {
            let listener = TcpListener::bind(route.listen)
                .await
                .with_context(|| format!("proxy: bind {}", route.listen))?;
            tasks.push(tokio::spawn(accept_loop(listener, *route, shared.clone())));
        }
        Ok(FaultProxy { shared, tasks })
    }

    /// The routes of a proxied test fleet (see
    /// [`crate::FleetSpec::proxied`]) and the map of its nodes' source
    /// addresses.
    pub fn routes_of(
        fleet: &vault_fleet::config::Fleet,
    ) -> anyhow::Result<(Vec<Route>, HashMap<IpAddr, u64>)> {
        let mut routes = Vec::new();
        let mut sources = HashMap::new();
        for (id, n) in &fleet.nodes {
            anyhow::ensure!(
                n.peer_bind_addr != n.peer_addr,
                "node {id} is not proxied (peer_bind_addr = peer_addr)"
            );
            routes.push(Route {
                node: *id,
                listen: n.peer_addr,
                target: n.peer_bind_addr,
            });
            let ip = n
                .peer_source_ip
                .with_context(|| format!("node {id} has no peer_source_ip"))?;
            sources.insert(ip, *id);
        }
        Ok((routes, sources))
    }

    /// Sets the mode of bytes going from node `from` to node `to`.
    pub fn set(&self, from: u64, to: u64, mode: LinkMode) {
        {
            let mut links = self
                .shared
                .links
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if mode == LinkMode::Pass {
                links.remove(&(from, to));
            } else {
                links.insert((from, to), mode);
            }
        }
        self.shared.changed.send_modify(|g| *g += 1);
    }

    /// Sets `mode` on both directions between `a` and `b`.
    pub fn set_both(&self, a: u64, b: u64, mode: LinkMode) {
        self.set(a, b, mode);
        self.set(b, a, mode);
    }

    /// Blackholes every link between `side` and the other `all` nodes,
    /// both ways: the two groups cannot talk; each talks within itself.
    pub fn partition(&self, side: &[u64], all: &[u64]) {
        for a in side {
            for b in all.iter().filter(|b| !side.contains(b)) {
                self.set_both(*a, *b, LinkMode::Blackhole);
            }
        }
    }

    /// Every link back to `pass`.
    pub fn heal(&self) {
        self.shared
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.shared.changed.send_modify(|g| *g += 1);
    }

    /// The links not in `pass` mode.
    pub fn faulty_links(&self) -> BTreeMap<(u64, u64), LinkMode> {
        self.shared
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            reset: c.reset.load(Ordering::Relaxed),
            bytes_passed: c.bytes_passed.load(Ordering::Relaxed),
            bytes_swallowed: c.bytes_swallowed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Live connections watch `changed`; closing it ends them.
        self.shared.changed.send_modify(|g| *g = u64::MAX);
    }
}

async fn accept_loop(listener: TcpListener, route: Route, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
        let from = shared.sources.get(&peer.ip()).copied();
        tokio::spawn(connection(inbound, from, route, shared.clone()));
    }
}

fn dropped(shared: &Shared, from: Option<u64>, to: u64) -> bool {
    shared.mode(from, to) == LinkMode::Drop
        || from.is_some_and(|f| shared.mode(Some(to), f) == LinkMode::Drop)
}

async fn connection(inbound: TcpStream, from: Option<u64>, route: Route, shared: Arc<Shared>) {
    if dropped(&shared, from, route.node) {
        shared.counters.reset.fetch_add(1, Ordering::Relaxed);
        let _ = inbound.set_zero_linger();
        return;
    }
    let Ok(outbound) = TcpStream::connect(route.target).await else {
        let _ = inbound.set_zero_linger();
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let stop = shared.changed.subscribe();
    let (in_r, in_w) = inbound.into_split();
    let (out_r, out_w) = outbound.into_split();
    // The caller's bytes go `from → node`, the answers `node → from`.
    let forward = pump(
        in_r,
        out_w,
        from,
        Some(route.node),
        shared.clone(),
        stop.clone(),
    );
    let back = pump(out_r, in_w, Some(route.node), from, shared.clone(), stop);
    let reset = tokio::select! {
        r = forward => r,
        r = back => r,
    };
    if reset {
        shared.counters.reset.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies `src` to `dst` under the mode of `from → to` (a `None` end is
/// not a node: always pass). Returns when either side closes or the link
/// breaks the connection; true if the proxy broke it.
async fn pump(
    mut src: tokio::net::tcp::OwnedReadHalf,
    mut dst: tokio::net::tcp::OwnedWriteHalf,
    from: Option<u64>,
    to: Option<u64>,
    shared: Arc<Shared>,
    mut changed: watch::Receiver<u64>,
) -> bool {
    let mode = |shared: &Shared| match (from, to) {
        (Some(f), Some(t)) => shared.mode(Some(f), t),
        _ => LinkMode::Pass,
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut swallowed = false;
    loop {
        let due = queue.front().map(|(at, _)| *at);
        tokio::select! {
            read = src.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => n,
                };
                match mode(&shared) {
                    LinkMode::Pass => {
                        let at = queue.back().map_or_else(Instant::now, |(t, _)| *t);
                        queue.push_back((at, buf[..n].to_vec()));
                    }
                    LinkMode::Delay { delay, jitter } => {
                        let at = Instant::now() + delay + shared.jitter(jitter);
                        let at = queue.back().map_or(at, |(t, _)| at.max(*t));
                        queue.push_back((at, buf[..n].to_vec()));
                    }
                    LinkMode::Blackhole => {
                        swallowed = true;
                        shared.counters.bytes_swallowed.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    LinkMode::Drop => return true,
                }
            }
            () = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((_, bytes)) = queue.pop_front() {
                    if dst.write_all(&bytes).await.is_err() {
                        return false;
                    }
                    shared.counters.bytes_passed.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
            }
            r = changed.changed() => {
                if r.is_err() || *changed.borrow() == u64::MAX {
                    return true;
                }
                let now = mode(&shared);
                if now == LinkMode::Drop
                    || (swallowed && now != LinkMode::Blackhole)
                    || from.zip(to).is_some_and(|(f, t)| shared.mode(Some(t), f) == LinkMode::Drop)
                {
                    return true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server, a proxy route to it for node 2, and callers that
    /// look like node 1 (from 127.0.1.1) and like the operator.
    async fn setup() -> (FaultProxy, SocketAddr) {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let sources = HashMap::from([("127.0.1.1".parse().unwrap(), 1)]);
        let proxy = FaultProxy::start(
            &[Route {
                node: 2,
                listen,
                target,
            }],
            sources,
            7,
        )
        .await
        .unwrap();
        (proxy, listen)
    }

    async fn connect_as_node_1(to: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.1.1:0".parse().unwrap()).unwrap();
        s.connect(to).await.unwrap()
    }

    /// Sends `msg` and waits up to `within` for the echo.
    async fn echo(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    #[tokio::test]
    async fn pass_blackhole_one_way_delay_and_drop() {
        let (proxy, addr) = setup().await;
        let short = Duration::from_millis(300);
        let mut s = connect_as_node_1(addr).await;
        assert_eq!(
            echo(&mut s, b"hello", short).await.as_deref(),
            Some(&b"hello"[..])
        );

        // Answers swallowed (one way, 2 → 1): the request gets through,
        // the echo does not.
        proxy.set(2, 1, LinkMode::Blackhole);
        assert_eq!(echo(&mut s, b"lost", short).await, None);
        assert!(proxy.stats().bytes_swallowed >= 4);
        // Healing breaks the connection that lost bytes.
        proxy.heal();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");

        // Delay: in order, and not before the delay.
        proxy.set_both(
            1,
            2,
            LinkMode::Delay {
                delay: Duration::from_millis(100),
                jitter: Duration::from_millis(20),
            },
        );
        let mut s = connect_as_node_1(addr).await;
        let t = std::time::Instant::now();
        let got = echo(&mut s, b"slow", Duration::from_secs(2)).await;
        assert_eq!(got.as_deref(), Some(&b"slow"[..]));
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );

        // Drop: the live connection is reset, new ones close at once.
        proxy.set_both(1, 2, LinkMode::Drop);
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        let mut s = connect_as_node_1(addr).await;
        assert_eq!(echo(&mut s, b"refused", short).await, None);

        // The operator (not a node's address) always passes.
        let mut op = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            echo(&mut op, b"admin", short).await.as_deref(),
            Some(&b"admin"[..])
        );
        proxy.heal();
        assert!(proxy.faulty_links().is_empty());
    }
}
