//! The client side of the peer API: openraft's network over gRPC with
//! mutual TLS.
//!
//! One channel per peer, created on first use and reused for every RPC
//! after (tonic reconnects it when the peer comes back). Each RPC carries
//! openraft's deadline (`RPCOption::hard_ttl`) as its gRPC timeout. A
//! snapshot is streamed in 1 MiB pieces over one InstallSnapshot call.

#![allow(
    clippy::result_large_err,
    reason = "openraft defines these error types and the signatures that return them"
)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, Snapshot, SnapshotMeta, Vote};
use tonic::transport::{Channel, Endpoint};
use vault_proto::v1::peer_client::PeerClient;
use vault_proto::v1::{RaftMessage, SnapshotChunk};

use crate::TypeConfig;
use crate::wire;
use vault_fleet::identity::node_dns_name;
use vault_fleet::tls::{TlsConnector, TlsIdentity, rustls_client_config};

/// Size of one snapshot piece on the wire.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// The largest message a peer accepts (a full AppendEntries batch).
pub const MAX_MESSAGE: usize = 64 << 20;

/// The header piece of a snapshot stream.
pub type SnapshotHeader = (Vote<u64>, SnapshotMeta<u64, BasicNode>);

/// Persistent, lazily connected channels to this node's peers, shared by
/// the Raft network and the proposer.
#[derive(Clone)]
pub struct PeerChannels {
    inner: Arc<ChannelsInner>,
}

struct ChannelsInner {
    tls: Arc<rustls::ClientConfig>,
    source_ip: Option<IpAddr>,
    channels: Mutex<HashMap<(u64, String), Channel>>,
}

impl PeerChannels {
    /// Channels that present `own` (this node's certificate and its key in
    /// the HSM), trust the fleet CA at `fleet_ca` and connect from
    /// `source_ip` when given.
    pub fn new(
        own: &TlsIdentity,
        fleet_ca: &Path,
        source_ip: Option<IpAddr>,
    ) -> Result<PeerChannels, vault_fleet::tls::TlsFileError> {
        Ok(PeerChannels {
            inner: Arc::new(ChannelsInner {
                tls: rustls_client_config(Some(own), fleet_ca)?,
                source_ip,
                channels: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A client for node `id` at `addr` (host:port), on the channel kept
    /// for it.
    pub fn client(&self, id: u64, addr: &str) -> Result<PeerClient<Channel>, NetworkError> {
        let key = (id, addr.to_owned());
        let mut map = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let channel = match map.get(&key) {
            Some(c) => c.clone(),
            None => {
                let c = self.connect(id, addr)?;
                map.insert(key, c.clone());
                c
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    fn connect(&self, id: u64, addr: &str) -> Result<Channel, NetworkError> {
        // TLS through our connector: the client key signs in the HSM, which
        // tonic's own TLS (PEM keys only) cannot do. The server must be
        // the node the membership names.
        let connector = TlsConnector::new(
            self.inner.tls.clone(),
            &node_dns_name(id),
            self.inner.source_ip,
        )
        .map_err(|e| NetworkError::new(&std::io::Error::other(e)))?;
        connector
            .channel(addr, |e: Endpoint| {
                e.connect_timeout(Duration::from_secs(2))
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5))
            })
            .map_err(|e| NetworkError::new(&e))
    }
}

/// openraft's network factory: hands out one [`PeerLink`] per target.
#[derive(Clone)]
pub struct Network {
    own_id: u64,
    channels: PeerChannels,
}

impl Network {
    /// The network of node `own_id`.
    pub fn new(own_id: u64, channels: PeerChannels) -> Network {
        Network { own_id, channels }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerLink {
        PeerLink {
            own_id: self.own_id,
            target,
            client: self.channels.client(target, &node.addr),
        }
    }
}

/// The link to one peer.
pub struct PeerLink {
    own_id: u64,
    target: u64,
    client: Result<PeerClient<Channel>, NetworkError>,
}

/// How a failed call looks to openraft: a dead peer is unreachable (openraft
/// backs off), a timeout is a timeout, anything else a network error.
fn call_error<E: std::error::Error>(
    own_id: u64,
    target: u64,
    action: RPCTypes,
    timeout: Duration,
    status: tonic::Status,
) -> RPCError<u64, BasicNode, E> {
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
            action,
            id: own_id,
            target,
            timeout,
        }),
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl PeerLink {
    fn client(&self) -> Result<PeerClient<Channel>, NetworkError> {
        self.client.clone()
    }

    fn request<T>(message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(option.hard_ttl());
        req
    }

    fn decode_reply<R, E>(
        &self,
        payload: &[u8],
    ) -> Result<R, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        R: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let result: Result<R, RaftError<u64, E>> =
            wire::decode(payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// A reply whose vote is not one an honest peer could send next to
    /// ours ([`crate::peer::check_reply_vote`]) is a failed call: openraft
    /// would panic on a committed vote that conflicts with ours, and keep a
    /// term no later election could follow.
    fn checked<E>(
        &self,
        sent: &Vote<u64>,
        got: &Vote<u64>,
    ) -> Result<(), RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        E: std::error::Error,
    {
        crate::peer::check_reply_vote(sent, got).map_err(|why| {
            tracing::warn!(from = self.target, why, "refused a peer's reply");
            RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
                "node {}'s reply: {why}",
                self.target
            ))))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let rpc_vote = rpc.vote;
        let mut client = self.client().map_err(RPCError::Network)?;
        let req = Self::request(
            RaftMessage {
                payload: wire::encode(&rpc),
            },
            &option,
        );
        let reply = client.append_entries(req).await.map_err(|s| {
            call_error(
                self.own_id,
                self.target,
                RPCTypes::AppendEntries,
                option.hard_ttl(),
                s,
            )
        })?;
        let reply: AppendEntriesResponse<u64> = self.decode_reply(&reply.into_inner().payload)?;
        if let AppendEntriesResponse::HigherVote(v) = &reply {
            self.checked(&rpc_vote, v)?;
        }
        Ok(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let rpc_vote = rpc.vote;
        let mut client = self.client().map_err(RPCError::Network)?;
        let req = Self::request(
            RaftMessage {
                payload: wire::encode(&rpc),
            },
            &option,
        );
        let reply = client.vote(req).await.map_err(|s| {
            call_error(
                self.own_id,
                self.target,
                RPCTypes::Vote,
                option.hard_ttl(),
                s,
            )
        })?;
        let reply: VoteResponse<u64> = self.decode_reply(&reply.into_inner().payload)?;
        self.checked(&rpc_vote, &reply.vote)?;
        Ok(reply)
    }

    /// Not used: this network sends whole snapshots with
    /// [`RaftNetwork::full_snapshot`] (one streamed call). openraft only
    /// calls this from the default `full_snapshot`, which is overridden.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(RPCError::Network(NetworkError::new(
            &std::io::Error::other(
                "chunked InstallSnapshot is not part of this peer API; snapshots are streamed whole",
            ),
        )))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let mut client = self.client()?;
        let header: SnapshotHeader = (vote, snapshot.meta.clone());
        let data = snapshot.snapshot.into_inner();
        let mut pieces = vec![SnapshotChunk {
            header: wire::encode(&header),
            data: Vec::new(),
        }];
        pieces.extend(data.chunks(SNAPSHOT_CHUNK).map(|c| SnapshotChunk {
            header: Vec::new(),
            data: c.to_vec(),
        }));
        // A snapshot may take longer than one heartbeat-sized deadline:
        // allow a second per MiB on top.
        let ttl = option.hard_ttl() + Duration::from_secs(1 + (data.len() / SNAPSHOT_CHUNK) as u64);
        let mut req = tonic::Request::new(futures::stream::iter(pieces));
        req.set_timeout(ttl);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = client.install_snapshot(req) => r,
        };
        let reply = reply.map_err(|s| {
            match call_error::<Fatal<u64>>(
                self.own_id,
                self.target,
                RPCTypes::InstallSnapshot,
                ttl,
                s,
            ) {
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                other => StreamingError::Network(NetworkError::new(&other)),
            }
        })?;
        let result: Result<SnapshotResponse<u64>, Fatal<u64>> =
            wire::decode(&reply.into_inner().payload)
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let reply =
            result.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))?;
        crate::peer::check_reply_vote(&vote, &reply.vote).map_err(|why| {
            tracing::warn!(from = self.target, why, "refused a peer's reply");
            StreamingError::Network(NetworkError::new(&std::io::Error::other(format!(
                "node {}'s reply: {why}",
                self.target
            ))))
        })?;
        Ok(reply)
    }
}
