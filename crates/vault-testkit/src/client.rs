//! gRPC clients with a chosen identity, to drive and probe a test fleet.
//!
//! [`Driver`] proposes commands the way a node does when it forwards one
//! (it holds a node certificate): that is how fleet tests write entries
//! before the frontend API exists, and how they check what survived.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use vault_fleet::identity::node_dns_name;
use vault_proto::v1::peer_client::PeerClient;
use vault_proto::v1::{ForwardRequest, RaftMessage};
use vault_types::{
    Command, Generation, Proposal, Reply, RequestDigest, RequestId, RequestMeta, SealedBytes,
    Timestamp, UserId, codec,
};

use crate::TestFleet;

/// TLS client settings: trust `ca`, present `identity` (cert, key) if any,
/// and expect node `node`'s certificate.
pub fn tls(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    node: u64,
) -> anyhow::Result<ClientTlsConfig> {
    let mut t = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .domain_name(node_dns_name(node));
    if let Some((cert, key)) = identity {
        t = t.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(t)
}

/// A channel to `addr` with `tls` (or plaintext for `None`), connected now.
pub async fn connect(
    addr: std::net::SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> anyhow::Result<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut e = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    if let Some(t) = tls {
        e = e.tls_config(t)?;
    }
    Ok(e.connect().await?)
}

/// A single-threaded runtime for sync tests.
pub fn runtime() -> tokio::runtime::Runtime {
    vault_fleet::tls::install_crypto_provider();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Proposes commands through the peer API's Forward call, holding a
/// certificate for node `as_node`.
///
/// Nodes' own keys live in their HSMs, so the driver holds a certificate
/// of its own for that node name, issued by the test fleet's CA (whose key
/// the test owns): it is what a holder of the fleet CA key, or of a node
/// certificate and its key, could do.
pub struct Driver {
    fleet: vault_fleet::config::Fleet,
    identity: (std::path::PathBuf, std::path::PathBuf),
    rt: tokio::runtime::Runtime,
}

impl Driver {
    /// A driver for `fleet` that speaks as node `as_node`.
    pub fn new(fleet: &TestFleet, as_node: u64) -> Driver {
        let identity = fleet
            .test_identity(&vault_fleet::identity::Identity::Node(as_node))
            .expect("issue a test certificate from the fleet CA");
        Driver {
            fleet: fleet.fleet().clone(),
            identity,
            rt: runtime(),
        }
    }

    /// A driver for `fleet` that presents `cert` and `key` (any files: a
    /// thief's guess, say).
    pub fn with_identity(fleet: &TestFleet, cert: &Path, key: &Path) -> Driver {
        Driver {
            fleet: fleet.fleet().clone(),
            identity: (cert.to_owned(), key.to_owned()),
            rt: runtime(),
        }
    }

    /// Sends `proposal` once through node `to`'s Forward call: the reply,
    /// or the status the call ended with (a refused handshake included).
    pub fn forward_once(
        &self,
        to: u64,
        proposal: &Proposal,
    ) -> anyhow::Result<Result<Reply, tonic::Status>> {
        let bytes = codec::encode_proposal(proposal)?;
        let (mut client, _) = match self.peer(to) {
            Ok(c) => c,
            Err(e) => return Ok(Err(tonic::Status::unavailable(format!("connect: {e:#}")))),
        };
        match self
            .rt
            .block_on(client.forward(ForwardRequest { proposal: bytes }))
        {
            Ok(r) => Ok(Ok(codec::decode(
                "reply",
                codec::VALUE_V1,
                &r.into_inner().reply,
            )?)),
            Err(s) => Ok(Err(s)),
        }
    }

    fn peer(&self, node: u64) -> anyhow::Result<(PeerClient<Channel>, std::net::SocketAddr)> {
        let f = &self.fleet;
        let target = f.node(node).map_err(anyhow::Error::msg)?;
        let tls = tls(
            &f.tls.fleet_ca,
            Some((&self.identity.0, &self.identity.1)),
            node,
        )?;
        let channel = self.rt.block_on(connect(target.peer_addr, Some(tls)))?;
        Ok((PeerClient::new(channel), target.peer_addr))
    }

    /// Commits `command` with request id `id` through whichever node
    /// leads, retrying for up to `within` (the same id, so never twice).
    pub fn propose(
        &self,
        id: RequestId,
        command: Command,
        within: Duration,
    ) -> anyhow::Result<Reply> {
        let proposal = Proposal {
            request: Some(RequestMeta {
                id,
                digest: RequestDigest::of(&[&id.0]),
            }),
            at: Timestamp(1),
            command,
        };
        let bytes = codec::encode_proposal(&proposal)?;
        let give_up = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < give_up {
            for &node in self.fleet.nodes.keys() {
                let Ok((mut client, _)) = self.peer(node) else {
                    continue;
                };
                let call = client.forward(ForwardRequest {
                    proposal: bytes.clone(),
                });
                match self.rt.block_on(call) {
                    Ok(r) => {
                        return Ok(codec::decode(
                            "reply",
                            codec::VALUE_V1,
                            &r.into_inner().reply,
                        )?);
                    }
                    Err(s) => last = format!("node {node}: {}", s.message()),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("no node committed the command within {within:?}; last: {last}")
    }

    /// Registers user `user-<i>` (with request id derived from `i`).
    pub fn register(&self, i: u32) -> anyhow::Result<Reply> {
        // Synthetic bytes, never shaped like a sealed blob (format byte 0),
        // so the state machine does not take them for one under some KEK.
        let mut sealed = vec![i as u8; 48];
        sealed[0] = 0;
        self.propose(
            request_id(b'r', i),
            Command::Register {
                user: user(i),
                expected_generation: Generation(0),
                sealed_record: SealedBytes(sealed),
                max_attempts: 5,
            },
            Duration::from_secs(20),
        )
    }

    /// Begins an attempt for `user-<i>` (a new request id each call).
    pub fn begin_attempt(&self, i: u32) -> anyhow::Result<Reply> {
        self.propose(
            RequestId(rand::random()),
            Command::BeginAttemptTtl {
                user: user(i),
                session_ttl_ms: 60_000,
            },
            Duration::from_secs(20),
        )
    }

    /// Sends a raw Vote or AppendEntries payload to node `to` and returns
    /// the gRPC status code and message.
    pub fn raw_peer_call(
        &self,
        to: u64,
        vote: bool,
        payload: Vec<u8>,
    ) -> anyhow::Result<(tonic::Code, String)> {
        let (mut client, _) = self.peer(to).context("connect")?;
        let msg = RaftMessage { payload };
        let result = if vote {
            self.rt.block_on(client.vote(msg))
        } else {
            self.rt.block_on(client.append_entries(msg))
        };
        Ok(match result {
            Ok(_) => (tonic::Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().to_owned()),
        })
    }
}

/// The test user `user-<i>`.
pub fn user(i: u32) -> UserId {
    UserId::new(format!("user-{i}")).expect("valid user id")
}

fn request_id(kind: u8, i: u32) -> RequestId {
    let mut id = [0u8; 16];
    id[0] = kind;
    id[12..].copy_from_slice(&i.to_be_bytes());
    RequestId(id)
}

/// Spends every attempt of `user` with wrong passwords through `client`,
/// until the fleet answers that the record is locked.
pub fn lock_out(
    rt: &tokio::runtime::Runtime,
    client: &vault_client::Client,
    user: &UserId,
) -> anyhow::Result<()> {
    for _ in 0..10 {
        match rt.block_on(client.recover(user, b"wrong")) {
            Err(vault_client::ClientError::WrongPassword { .. }) => {}
            Err(vault_client::ClientError::Locked) => return Ok(()),
            other => bail!("a wrong password gave {other:?}"),
        }
    }
    bail!("{user} never locked")
}
