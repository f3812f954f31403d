//! Prometheus metrics of a node, and the tower layer that measures every
//! gRPC call.
//!
//! Labels carry method names and outcomes only: never a user id, request
//! body or anything secret.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tracing::Instrument;

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    /// Current Raft term.
    pub term: IntGauge,
    /// Id of the leader this node knows, 0 for none.
    pub leader: IntGauge,
    /// 1 when this node is the leader.
    pub is_leader: IntGauge,
    /// Index of the last log entry.
    pub last_log_index: IntGauge,
    /// Highest index known committed.
    pub committed_index: IntGauge,
    /// Index of the last applied entry.
    pub applied_index: IntGauge,
    /// Index covered by the current snapshot.
    pub snapshot_index: IntGauge,
    /// 1 when the node is ready.
    pub ready: IntGauge,
    /// 1 while the node's disk is behind its HSM checkpoint.
    pub checkpoint_behind: IntGauge,
    /// Times an operator lowered the HSM checkpoint (`--accept-rollback`),
    /// ever (kept in the checkpoint itself).
    pub checkpoint_resets: IntGauge,
    /// HSM checkpoint writes since start.
    pub checkpoint_writes: IntGauge,
    /// Synced writes (fsyncs) the database made since start.
    pub storage_synced_writes: IntGauge,
    /// Log entries appended since start.
    pub storage_log_entries: IntGauge,
    /// Log appends (one fsync each) since start.
    pub storage_log_appends: IntGauge,
    /// Applied log entries of client proposals (batches).
    pub batches_applied: IntGauge,
    /// Proposals those entries carried.
    pub proposals_applied: IntGauge,
    /// Login states this node holds between RecoverStart and RecoverFinish.
    pub sessions: IntGauge,
    rpc_total: IntCounterVec,
    rpc_seconds: HistogramVec,
    hsm_seconds: HistogramVec,
    forwarded_total: IntCounterVec,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    /// A fresh set of metrics for node `node_id`.
    pub fn new(node_id: u64) -> Arc<Metrics> {
        let registry = Registry::new_custom(
            Some("bkv".into()),
            Some([("node".to_owned(), node_id.to_string())].into()),
        )
        .expect("valid registry");
        let latency = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ];
        let rpc_total = IntCounterVec::new(
            Opts::new("rpc_total", "gRPC calls served, by method and status code"),
            &["method", "code"],
        )
        .expect("valid metric");
        let rpc_seconds = HistogramVec::new(
            HistogramOpts::new(
                "rpc_seconds",
                "gRPC call latency, by method and status code",
            )
            .buckets(latency.clone()),
            &["method", "code"],
        )
        .expect("valid metric");
        let hsm_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hsm_op_seconds",
                "HSM operation latency, by operation and outcome",
            )
            .buckets(latency),
            &["op", "outcome"],
        )
        .expect("valid metric");
        let forwarded_total = IntCounterVec::new(
            Opts::new(
                "forwarded_total",
                "Commands forwarded to the leader, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for c in [&rpc_total, &forwarded_total] {
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
        }
        for h in [&rpc_seconds, &hsm_seconds] {
            registry
                .register(Box::new(h.clone()))
                .expect("metric registered once");
        }
        Arc::new(Metrics {
            term: gauge(&registry, "raft_term", "Current Raft term"),
            leader: gauge(&registry, "raft_leader", "Id of the known leader (0: none)"),
            is_leader: gauge(&registry, "raft_is_leader", "1 when this node leads"),
            last_log_index: gauge(
                &registry,
                "raft_last_log_index",
                "Index of the last log entry",
            ),
            committed_index: gauge(
                &registry,
                "raft_committed_index",
                "Highest committed index known",
            ),
            applied_index: gauge(
                &registry,
                "raft_applied_index",
                "Index of the last applied entry",
            ),
            snapshot_index: gauge(
                &registry,
                "raft_snapshot_index",
                "Index covered by the snapshot",
            ),
            ready: gauge(&registry, "ready", "1 when the node is ready to serve"),
            checkpoint_behind: gauge(
                &registry,
                "checkpoint_behind",
                "1 while the node's disk is behind its HSM anti-rollback checkpoint",
            ),
            checkpoint_resets: gauge(
                &registry,
                "checkpoint_resets",
                "Times an operator lowered the HSM checkpoint (--accept-rollback), ever",
            ),
            checkpoint_writes: gauge(
                &registry,
                "checkpoint_writes",
                "HSM checkpoint writes since start",
            ),
            storage_synced_writes: gauge(
                &registry,
                "storage_synced_writes",
                "Write batches synced to disk since start",
            ),
            storage_log_entries: gauge(
                &registry,
                "storage_log_entries_appended",
                "Log entries appended since start",
            ),
            storage_log_appends: gauge(
                &registry,
                "storage_log_appends",
                "Log appends since start (each one fsync, however many entries)",
            ),
            batches_applied: gauge(
                &registry,
                "raft_batches_applied",
                "Log entries of client proposals applied since start (each a batch)",
            ),
            proposals_applied: gauge(
                &registry,
                "raft_proposals_applied",
                "Client proposals applied since start (over raft_batches_applied: proposals per entry)",
            ),
            sessions: gauge(
                &registry,
                "frontend_sessions",
                "Login states held between RecoverStart and RecoverFinish (open and being committed)",
            ),
            registry,
            rpc_total,
            rpc_seconds,
            hsm_seconds,
            forwarded_total,
        })
    }

    /// Records one served call.
    pub fn rpc(&self, method: &str, code: &str, elapsed: Duration) {
        self.rpc_total.with_label_values(&[method, code]).inc();
        self.rpc_seconds
            .with_label_values(&[method, code])
            .observe(elapsed.as_secs_f64());
    }

    /// Records one HSM operation.
    pub fn hsm(&self, op: &str, ok: bool, elapsed: Duration) {
        self.hsm_seconds
            .with_label_values(&[op, if ok { "ok" } else { "error" }])
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for registered, valid metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl vault_raft::proposer::ForwardObserver for Metrics {
    fn forwarded(&self, _leader: u64, ok: bool) {
        self.forwarded_total
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }
}

/// Times an HSM call into [`Metrics::hsm`].
pub async fn timed_hsm<T, E>(
    metrics: &Metrics,
    op: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = Instant::now();
    let result = call.await;
    metrics.hsm(op, result.is_ok(), start.elapsed());
    result
}

/// A tower layer that counts and times every gRPC call and runs it in a
/// span naming the node and the method.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
    node_id: u64,
}

impl RpcLayer {
    /// Measures into `metrics`.
    pub fn new(metrics: Arc<Metrics>, node_id: u64) -> RpcLayer {
        RpcLayer { metrics, node_id }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RpcLayer`].
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    layer: RpcLayer,
}

/// The gRPC status code name of a response: tonic puts a handler's error in
/// the headers (a trailers-only response); a success has none there.
fn code_of(headers: &http::HeaderMap) -> &'static str {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        _ => "OTHER",
    }
}

/// A refusal tonic made itself (a message over the size limit, a method
/// that does not exist, a deadline) carries no error detail; give it one
/// by its code, so every refusal a caller sees has the same form
/// (`vault_proto::errors`).
fn add_missing_detail(headers: &mut http::HeaderMap) {
    const DETAILS: &str = "grpc-status-details-bin";
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    let code = tonic::Code::from_i32(code);
    if code == tonic::Code::Ok || headers.contains_key(DETAILS) {
        return;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let detail = vault_proto::errors::ErrorDetail {
        kind: vault_proto::errors::kind_of_code(code) as i32,
        ..Default::default()
    };
    let bytes = vault_proto::errors::details_bytes(code, &message, &detail);
    // grpc-status-details-bin is base64 without padding (gRPC over HTTP/2).
    if let Ok(v) = http::HeaderValue::from_str(&base64_unpadded(&bytes)) {
        headers.insert(DETAILS, v);
    }
}

fn base64_unpadded(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // "/vault.v1.Peer/AppendEntries" -> "Peer/AppendEntries"; a path
        // of no known method -> "unknown" (labels are a fixed set).
        let method = vault_proto::methods::label(req.uri().path());
        let span = tracing::info_span!("rpc", node = self.layer.node_id, method = %method);
        let metrics = self.layer.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let mut result = fut.await;
                let code = match &mut result {
                    Ok(resp) => {
                        add_missing_detail(resp.headers_mut());
                        code_of(resp.headers())
                    }
                    Err(_) => "TRANSPORT",
                };
                metrics.rpc(method, code, start.elapsed());
                if code != "OK" {
                    tracing::debug!(code, "call failed");
                }
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_labelled_series() {
        let m = Metrics::new(3);
        m.rpc("Peer/Vote", "OK", Duration::from_millis(2));
        m.hsm("seal", true, Duration::from_micros(20));
        m.term.set(7);
        let text = m.render();
        assert!(text.contains("bkv_raft_term{node=\"3\"} 7"), "{text}");
        assert!(
            text.contains("bkv_rpc_total{code=\"OK\",method=\"Peer/Vote\",node=\"3\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bkv_hsm_op_seconds_count{op=\"seal\",outcome=\"ok\",node=\"3\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_refusal_without_a_detail_gets_one_by_its_code() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("11"));
        h.insert("grpc-message", http::HeaderValue::from_static("too large"));
        add_missing_detail(&mut h);
        let b64 = h
            .get("grpc-status-details-bin")
            .expect("added")
            .to_str()
            .unwrap();
        // What tonic's client does with the header: decode it and hand the
        // bytes over as the status details.
        let status = tonic::Status::from_header_map(&h).expect("a status");
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        let d = vault_proto::errors::detail(&status).expect("a detail");
        assert_eq!(
            d.kind,
            vault_proto::errors::ErrorKind::InvalidArgument as i32
        );
        assert!(!b64.ends_with('='));
        // A detail already there, and a success, are left alone.
        let mut ok = http::HeaderMap::new();
        add_missing_detail(&mut ok);
        assert!(ok.is_empty());
        let mut had = http::HeaderMap::new();
        had.insert("grpc-status", http::HeaderValue::from_static("3"));
        had.insert(
            "grpc-status-details-bin",
            http::HeaderValue::from_static("AA"),
        );
        add_missing_detail(&mut had);
        assert_eq!(had.get("grpc-status-details-bin").unwrap(), "AA");
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors_unpadded() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_unpadded(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn status_codes_are_read_from_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(code_of(&h), "OK");
        h.insert("grpc-status", http::HeaderValue::from_static("7"));
        assert_eq!(code_of(&h), "PERMISSION_DENIED");
    }
}
