//! The witness's gRPC API.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::transport::Server;
use tonic::{Request, Response, Status};
use vault_proto::convert::tree_head_to_pb;
use vault_proto::v1::witness_server::{Witness, WitnessServer};
use vault_proto::v1::{
    Entries, GetConsistencyProofRequest, GetEntriesRequest, GetInclusionProofRequest,
    GetPublicKeyRequest, GetTreeHeadRequest, GetTreeHeadsRequest, Proof, PublicKey, SubmitReply,
    SubmitRequest, TreeHead as PbHead, TreeHeads,
};

use crate::log::{SubmitError, WitnessLog};

/// Most entries one `GetEntries` call returns.
pub const MAX_ENTRIES_PER_CALL: u64 = 1000;

/// The API over one log.
pub struct WitnessService {
    log: Arc<Mutex<WitnessLog>>,
    public: Vec<u8>,
}

impl WitnessService {
    /// Serves `log`; `public` is the witness's public key.
    pub fn new(log: WitnessLog, public: Vec<u8>) -> WitnessService {
        WitnessService {
            log: Arc::new(Mutex::new(log)),
            public,
        }
    }

    fn with_log<T>(&self, f: impl FnOnce(&mut WitnessLog) -> T) -> T {
        f(&mut self.log.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A refused submission as a status. An equivocation (another bundle for
/// this fleet and epoch is logged) has a code of its own, `ALREADY_EXISTS`,
/// because a publisher completes the logged bundle on it: clients decide by
/// the code, never by the message text.
fn submit_status(e: SubmitError) -> Status {
    match e {
        SubmitError::Malformed(m) => Status::invalid_argument(m),
        SubmitError::Storage(m) => Status::unavailable(m),
        e @ SubmitError::Equivocation { .. } => Status::already_exists(e.to_string()),
        other => Status::failed_precondition(other.to_string()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tonic::async_trait]
impl Witness for WitnessService {
    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<SubmitReply>, Status> {
        vault_fleet::callers::operator(&req)?;
        let bundle = req.into_inner().bundle;
        let log = self.log.clone();
        // The append fsyncs: keep it off the async workers.
        let appended = tokio::task::spawn_blocking(move || {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&bundle, now_ms())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(submit_status)?;
        tracing::info!(
            index = appended.index,
            existing = appended.existing,
            size = appended.head.tree_size,
            "bundle signed"
        );
        Ok(Response::new(SubmitReply {
            witness_signature: appended.witness_signature,
            log_index: appended.index,
            tree_head: Some(tree_head_to_pb(&appended.head)),
            inclusion_proof: appended
                .inclusion_proof
                .iter()
                .map(|h| h.to_vec())
                .collect(),
            existing: appended.existing,
        }))
    }

    async fn get_tree_head(
        &self,
        _: Request<GetTreeHeadRequest>,
    ) -> Result<Response<PbHead>, Status> {
        Ok(Response::new(
            self.with_log(|l| tree_head_to_pb(&l.latest_head())),
        ))
    }

    async fn get_tree_heads(
        &self,
        _: Request<GetTreeHeadsRequest>,
    ) -> Result<Response<TreeHeads>, Status> {
        Ok(Response::new(TreeHeads {
            heads: self.with_log(|l| l.heads().iter().map(tree_head_to_pb).collect()),
        }))
    }

    async fn get_entries(
        &self,
        req: Request<GetEntriesRequest>,
    ) -> Result<Response<Entries>, Status> {
        let r = req.into_inner();
        if r.end < r.start {
            return Err(Status::invalid_argument("end is before start"));
        }
        let end = r.end.min(r.start.saturating_add(MAX_ENTRIES_PER_CALL));
        Ok(Response::new(Entries {
            entries: self.with_log(|l| l.entries(r.start, end).to_vec()),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<GetInclusionProofRequest>,
    ) -> Result<Response<Proof>, Status> {
        let r = req.into_inner();
        let proof = self
            .with_log(|l| l.inclusion_proof(r.index, r.tree_size))
            .ok_or_else(|| Status::out_of_range("index or tree size outside the log"))?;
        Ok(Response::new(Proof {
            hashes: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<Proof>, Status> {
        let r = req.into_inner();
        let proof = self
            .with_log(|l| l.consistency_proof(r.first, r.second))
            .ok_or_else(|| Status::out_of_range("sizes outside the log or out of order"))?;
        Ok(Response::new(Proof {
            hashes: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_public_key(
        &self,
        _: Request<GetPublicKeyRequest>,
    ) -> Result<Response<PublicKey>, Status> {
        Ok(Response::new(PublicKey {
            ed25519: self.public.clone(),
        }))
    }
}

/// Serves `service` on `addr` until `shutdown` resolves. TLS presents the
/// witness's certificate; a client certificate is optional (reads are
/// public) and, when present, must come from `operator_ca`. Connections
/// are capped and handshakes have a deadline (`vault_fleet::serve`).
pub async fn serve(
    service: WitnessService,
    addr: SocketAddr,
    tls: &vault_fleet::tls::CertFiles,
    operator_ca: &std::path::Path,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    use vault_fleet::serve::{ConnLimits, incoming};
    use vault_fleet::tls::{ClientAuth, rustls_server_config};
    // The witness is its own party: its TLS key, like its signing key, is a
    // file of its host (docs/THREAT-MODEL.md).
    let identity = vault_fleet::tls::TlsIdentity::files(&tls.cert, &tls.key);
    let config = rustls_server_config(&identity, operator_ca, ClientAuth::Optional)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?;
    // The nodes' defaults: 1024 connections, 5 s to finish a handshake.
    let limits = ConnLimits::from(&vault_fleet::config::Limits::default());
    Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(WitnessServer::new(service))
        .serve_with_incoming_shutdown(incoming(listener, config, limits), shutdown)
        .await?;
    Ok(())
}
