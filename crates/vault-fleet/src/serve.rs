//! Accepting TLS connections for a gRPC server, with limits tonic's own TLS
//! acceptor does not have: a cap on open connections per port (a
//! connection past it is closed at once), a deadline on the TLS handshake
//! (a TCP connection that never starts TLS, or stalls in it, is closed
//! then), a smaller cap on connections still in their handshake, in all
//! and per source address (so that half-open connections from one host
//! cannot take the port's places from authenticated callers), and TCP
//! keepalive on every accepted socket (a peer that vanished is noticed).
//! Handshakes run concurrently, so a slow one holds up nobody else.
//!
//! The stream this yields goes to tonic's `serve_with_incoming*`, whose
//! handlers still see the caller's verified certificate chain
//! (`Request::peer_certs`).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::config::Limits;

/// How long an idle TCP connection waits before the first keepalive probe,
/// and between probes.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(10));

/// Connections one source address may have in their handshake at once.
pub const HANDSHAKES_PER_ADDRESS: usize = 16;

/// The limits of one listening port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections (in handshake or established) at most.
    pub max_connections: usize,
    /// A handshake not done by then is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes one source address may start per second (and at once).
    pub handshakes_per_second: u32,
}

impl ConnLimits {
    /// Connections in their handshake at once, in all: a quarter of the
    /// places (at least one), so that established callers keep the rest.
    pub fn max_handshakes(&self) -> usize {
        (self.max_connections / 4).max(1)
    }
}

/// Per source address: handshakes in flight, and a token bucket of
/// handshakes it may start (refilled at the port's rate, holding at most one
/// second's worth). A place is held by a guard.
#[derive(Default)]
struct InHandshake(std::sync::Mutex<HashMap<IpAddr, Address>>);

struct Address {
    in_flight: usize,
    tokens: f64,
    at: Instant,
}

/// Addresses remembered before idle ones with full buckets are forgotten.
const REMEMBERED_ADDRESSES: usize = 4096;

/// Why a connection is refused before its handshake.
#[derive(Debug, PartialEq, Eq)]
enum Busy {
    /// `HANDSHAKES_PER_ADDRESS` handshakes from the address are in flight.
    InFlight,
    /// The address started its second's worth of handshakes already.
    Rate,
}

struct HandshakePlace {
    table: Arc<InHandshake>,
    ip: IpAddr,
}

/// The source a connection counts against: its address (an IPv4-mapped
/// IPv6 address as its IPv4 one). Not its IPv6 /64: many hosts of a data
/// centre share one, and a frontend there could then use up the handshakes
/// of the nodes' own peer connections. An attacker with a /64 gets many
/// buckets; the port-wide cap on handshakes in flight still bounds it.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl InHandshake {
    fn enter(
        self: &Arc<Self>,
        ip: IpAddr,
        rate: u32,
        now: Instant,
    ) -> Result<HandshakePlace, Busy> {
        let ip = source(ip);
        let mut t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rate = f64::from(rate);
        let refilled = |a: &Address| {
            (a.tokens + now.saturating_duration_since(a.at).as_secs_f64() * rate).min(rate)
        };
        if t.len() >= REMEMBERED_ADDRESSES && !t.contains_key(&ip) {
            t.retain(|_, a| a.in_flight > 0 || refilled(a) < rate);
        }
        let a = t.entry(ip).or_insert(Address {
            in_flight: 0,
            tokens: rate,
            at: now,
        });
        a.tokens = refilled(a);
        a.at = now;
        if a.in_flight >= HANDSHAKES_PER_ADDRESS {
            return Err(Busy::InFlight);
        }
        if a.tokens < 1.0 {
            return Err(Busy::Rate);
        }
        a.tokens -= 1.0;
        a.in_flight += 1;
        Ok(HandshakePlace {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for HandshakePlace {
    fn drop(&mut self) {
        let mut t = self
            .table
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(a) = t.get_mut(&self.ip) {
            a.in_flight = a.in_flight.saturating_sub(1);
        }
    }
}

impl From<&Limits> for ConnLimits {
    fn from(l: &Limits) -> ConnLimits {
        ConnLimits {
            max_connections: l.max_connections,
            handshake_timeout: l.handshake_timeout,
            handshakes_per_second: l.handshakes_per_second,
        }
    }
}

/// An established TLS connection; it holds one of the port's places until
/// it is dropped.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    _place: OwnedSemaphorePermit,
}

impl Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn prepare(stream: &TcpStream) -> io::Result<()> {
    // Nagle would delay every handshake flight by ~40 ms.
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE.0)
        .with_interval(KEEPALIVE.1);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// The TLS connections accepted on `listener`, within `limits`, for
/// tonic's `serve_with_incoming*`. The accept loop ends when the stream is
/// dropped (the server stopped).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnLimits,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes()));
    let by_address = Arc::new(InHandshake::default());
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (stream, from) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(place) = places.clone().try_acquire_owned() else {
                // Over the cap: closed at once, before any TLS work.
                tracing::debug!("connection refused: the port is at its connection cap");
                drop(stream);
                continue;
            };
            let from_here =
                by_address.enter(from.ip(), limits.handshakes_per_second, Instant::now());
            let (Ok(shaking), Ok(from_here)) = (handshakes.clone().try_acquire_owned(), from_here)
            else {
                tracing::debug!(from = %from.ip(), "connection refused: too many handshakes in flight, or started this second");
                drop(stream);
                continue;
            };
            if let Err(e) = prepare(&stream) {
                tracing::debug!(error = %e, "socket options");
            }
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let shaken =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await;
                drop((shaking, from_here));
                match shaken {
                    Ok(Ok(inner)) => {
                        let _ = tx
                            .send(Ok(TlsConn {
                                inner,
                                _place: place,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_a_bounded_number_of_handshakes() {
        let t = Arc::new(InHandshake::default());
        let now = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..HANDSHAKES_PER_ADDRESS)
            .map(|_| t.enter(a, 1000, now).expect("a place"))
            .collect();
        assert_eq!(t.enter(a, 1000, now).err(), Some(Busy::InFlight));
        assert!(
            t.enter(b, 1000, now).is_ok(),
            "another address is not affected"
        );
        drop(held);
        assert!(t.enter(a, 1000, now).is_ok(), "places come back");
        assert_eq!(
            ConnLimits {
                max_connections: 1024,
                handshake_timeout: Duration::from_secs(5),
                handshakes_per_second: 50,
            }
            .max_handshakes(),
            256
        );
    }

    #[test]
    fn one_address_starts_a_bounded_number_of_handshakes_per_second() {
        let t = Arc::new(InHandshake::default());
        let now = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        // A burst of one second's worth, each finished at once.
        for _ in 0..10 {
            drop(t.enter(a, 10, now).expect("within the burst"));
        }
        assert_eq!(t.enter(a, 10, now).err(), Some(Busy::Rate));
        assert!(
            t.enter(b, 10, now).is_ok(),
            "another address is not affected"
        );
        // A tenth of a second later, one more; a second later, a burst again.
        let later = now + Duration::from_millis(100);
        assert!(t.enter(a, 10, later).is_ok());
        assert_eq!(t.enter(a, 10, later).err(), Some(Busy::Rate));
        let much_later = now + Duration::from_secs(5);
        for _ in 0..10 {
            drop(t.enter(a, 10, much_later).expect("refilled"));
        }
        assert_eq!(t.enter(a, 10, much_later).err(), Some(Busy::Rate));
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_its_ipv4_one() {
        let t = Arc::new(InHandshake::default());
        let now = Instant::now();
        for _ in 0..5 {
            let v4: IpAddr = "10.0.0.1".parse().unwrap();
            drop(t.enter(v4, 5, now).expect("within the burst"));
        }
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(t.enter(mapped, 5, now).err(), Some(Busy::Rate));
        let neighbour: IpAddr = "2001:db8:1:2::2".parse().unwrap();
        assert!(t.enter(neighbour, 5, now).is_ok());
    }

    #[test]
    fn idle_addresses_are_forgotten_but_not_a_throttled_one() {
        let t = Arc::new(InHandshake::default());
        let now = Instant::now();
        let busy: IpAddr = "10.0.0.1".parse().unwrap();
        while t.enter(busy, 5, now).is_ok() {}
        for i in 0..REMEMBERED_ADDRESSES as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            drop(t.enter(ip, 5, now - Duration::from_secs(2)));
        }
        // Past the table's size: the idle, refilled ones go; the throttled
        // address is still throttled.
        let new: IpAddr = "12.0.0.1".parse().unwrap();
        assert!(t.enter(new, 5, now).is_ok());
        assert_eq!(t.enter(busy, 5, now).err(), Some(Busy::Rate));
        assert!(t.0.lock().unwrap().len() < 10);
    }
}
