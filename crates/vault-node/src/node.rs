//! Wiring of one vault node: HSM, storage, Raft, servers, readiness and
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tonic::transport::Server;
use vault_fleet::config::{Fleet, HsmModule, NodeConfig};
use vault_fleet::serve::{ConnLimits, incoming};
use vault_fleet::tls::{ClientAuth, KeySource, TlsIdentity, rustls_server_config};
use vault_hsm::{AsyncHsm, HsmConfig, PinSource, Pkcs11Hsm};
use vault_proto::v1::admin_server::AdminServer;
use vault_proto::v1::peer_server::PeerServer;
use vault_raft::Raft;
use vault_raft::network::{MAX_MESSAGE, Network, PeerChannels};
use vault_raft::peer::{Gatekeeper, PeerService};
use vault_raft::proposer::{Batcher, Proposer};

use vault_raft::checkpoint::Mark;

use crate::admin::AdminService;
use crate::checkpoint::{HsmCheckpoint, Standing};
use crate::metrics::{Metrics, RpcLayer};

/// How long a proposal may wait for a leader before the caller is told to
/// retry.
pub const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);

/// The largest message a frontend may send (every field is bounded far
/// below this; larger messages are refused before they are parsed).
pub const FRONTEND_MAX_MESSAGE: usize = 64 << 10;

/// How long shutdown waits for in-flight calls.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// openraft's config for `fleet`.
pub fn raft_config(fleet: &Fleet) -> anyhow::Result<openraft::Config> {
    let t = &fleet.raft;
    let config = openraft::Config {
        cluster_name: fleet.fleet_id.as_str().to_owned(),
        heartbeat_interval: t.heartbeat.as_millis() as u64,
        election_timeout_min: t.election_min.as_millis() as u64,
        election_timeout_max: t.election_max.as_millis() as u64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_after_logs),
        max_in_snapshot_log_to_keep: t.keep_logs_after_snapshot,
        install_snapshot_timeout: t.election_max.as_millis() as u64 * 4,
        ..Default::default()
    };
    Ok(config.validate()?)
}

/// How a node is started, beyond its fleet file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--accept-rollback`: lower the HSM checkpoint to the disk's state
    /// rather than wait behind it.
    pub accept_rollback: bool,
}

/// The node's HSM, its TLS key in it (`bkv-tls`: the node's identity on
/// every port, which no file on its disk holds) and its anti-rollback
/// checkpoint.
fn open_hsm(
    node: &NodeConfig,
) -> anyhow::Result<(
    Pkcs11Hsm,
    Arc<vault_hsm::TokenKey>,
    vault_hsm::CheckpointStore,
)> {
    let module = match &node.hsm.module {
        HsmModule::SoftHsm => vault_hsm::softhsm::find_module()?,
        HsmModule::Path(p) => p.clone(),
    };
    let config = HsmConfig {
        module: module.clone(),
        token_label: node.hsm.token_label.clone(),
        pin: PinSource::File(node.hsm.pin_file.clone()),
        sessions: node.hsm.sessions,
    };
    let what = || format!("open HSM token {:?}", node.hsm.token_label);
    let hsm = Pkcs11Hsm::open(&config).with_context(what)?;
    let pin = config.pin.load().with_context(what)?;
    let tls = vault_hsm::TokenKey::open(&module, &node.hsm.token_label, &pin).with_context(what)?;
    let checkpoint = vault_hsm::CheckpointStore::open(&module, &node.hsm.token_label, &pin)
        .with_context(what)?;
    Ok((hsm, Arc::new(tls), checkpoint))
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind the {what} address {addr}"))
}

/// HTTP/2 pings on every connection: a peer that vanished without closing
/// is dropped within interval + timeout.
const H2_KEEPALIVE: (Duration, Duration) = (Duration::from_secs(20), Duration::from_secs(10));

/// Runs node `node_id` of `fleet` until SIGTERM or SIGINT, then shuts down
/// gracefully: stop accepting, finish in-flight calls, stop Raft, close the
/// database.
pub async fn run(fleet: Fleet, node_id: u64, options: Options) -> anyhow::Result<()> {
    let fleet = Arc::new(fleet);
    let me = fleet.node(node_id).map_err(anyhow::Error::msg)?.clone();
    let metrics = Metrics::new(node_id);

    #[cfg(feature = "unsafe-ke2-before-commit")]
    tracing::error!(
        "THIS NODE IS BUILT WITH `unsafe-ke2-before-commit`: it answers KE2 before the \
         attempt is committed. It exists to test the chaos checker; never deploy it"
    );
    tracing::info!(datacenter = %me.datacenter, "opening the HSM");
    let (hsm, tls_key, checkpoint_store) = {
        let me = me.clone();
        tokio::task::spawn_blocking(move || open_hsm(&me)).await??
    };
    let hsm = Arc::new(hsm);
    let raw_hsm = hsm.clone();
    let hsm = AsyncHsm::new(hsm);
    let identity = TlsIdentity {
        cert: me.tls.cert.clone(),
        key: KeySource::Signer(tls_key.rustls()),
    };

    let channels = PeerChannels::new(&identity, &fleet.tls.fleet_ca, me.peer_source_ip)
        .context("peer TLS settings")?;
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(watch_signals(stop_tx.clone()));
    if std::env::var_os(EXIT_WITH_STDIN).is_some() {
        let stop = stop_tx.clone();
        std::thread::spawn(move || stop_when_stdin_closes(stop));
    }
    let crate::startup::Reconciled {
        log,
        sm,
        reader,
        storage_stats,
        checkpoint,
        standing,
        behind,
        committed_at_start,
    } = crate::startup::reconcile(
        &me,
        node_id,
        &options,
        raw_hsm,
        checkpoint_store,
        &fleet,
        &channels,
        stop.clone(),
    )
    .await?;

    let mut config = raft_config(&fleet)?;
    config.enable_elect = standing == Standing::Current;
    let raft = Raft::new(
        node_id,
        Arc::new(config),
        Network::new(node_id, channels.clone()),
        log,
        sm,
    )
    .await
    .context("start Raft")?;
    // openraft re-applies the log up to the committed hint while it
    // starts: a check of the state armed for an index it has passed and
    // not run means the state was not re-applied there.
    if let (Some(at), Some(now)) = (reader.pending_verify(), reader.last_applied())
        && now.index >= at.index
    {
        anyhow::bail!(
            "FORKED: the state on disk reached entry {} without being checked against the HSM checkpoint; the disk was edited. Move the data directory aside and start again (docs/OPERATIONS.md, \"A node behind its checkpoint\")",
            at.index
        );
    }
    let batcher = Batcher::start(raft.clone());
    let proposer = Proposer::new(
        raft.clone(),
        batcher.clone(),
        channels,
        PROPOSE_DEADLINE,
        metrics.clone(),
    );

    if let Standing::Lost { .. } = &standing {
        tokio::spawn(catch_up_after_loss(
            proposer.clone(),
            raft.clone(),
            checkpoint.clone(),
            behind.clone(),
            stop.clone(),
        ));
    }
    let (ready_tx, ready) = watch::channel(Err("starting".to_owned()));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;

    let gate = Gatekeeper::new(raft.clone(), fleet.nodes.keys().copied().collect())
        .with_behind(behind.clone());
    let frontend = Arc::new(crate::frontend::FrontendService::new(
        fleet.clone(),
        reader.clone(),
        hsm.clone(),
        proposer.clone(),
        metrics.clone(),
    ));
    let admin = AdminService {
        node_id,
        fleet: fleet.clone(),
        raft: raft.clone(),
        reader,
        hsm,
        proposer,
        metrics: metrics.clone(),
        ready: ready.clone(),
        frontend: frontend.clone(),
        checkpoint: checkpoint.clone(),
        rotation_cursor: std::sync::Mutex::new(None),
        rotation_lock: tokio::sync::Mutex::new(()),
    };

    // TLS is done here, not by tonic: a connection cap, a handshake
    // deadline and TCP keepalive on both ports (vault_fleet::serve).
    let limits = ConnLimits::from(&fleet.limits);
    let peer_incoming = incoming(
        bind(me.peer_bind_addr, "peer").await?,
        rustls_server_config(&identity, &fleet.tls.fleet_ca, ClientAuth::Required)?,
        limits,
    );
    let front_incoming = incoming(
        bind(me.frontend_addr, "frontend").await?,
        rustls_server_config(&identity, &fleet.tls.frontend_ca, ClientAuth::Required)?,
        limits,
    );
    let metrics_listener = tokio::net::TcpListener::bind(me.metrics_addr)
        .await
        .with_context(|| format!("bind the metrics address {}", me.metrics_addr))?;

    let peer_server = Server::builder()
        .http2_keepalive_interval(Some(H2_KEEPALIVE.0))
        .http2_keepalive_timeout(Some(H2_KEEPALIVE.1))
        .timeout(Duration::from_secs(120))
        .layer(RpcLayer::new(metrics.clone(), node_id))
        .add_service(
            PeerServer::new(PeerService::new(raft.clone(), batcher, gate))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(AdminServer::new(admin))
        .add_service(health_service.clone())
        .serve_with_incoming_shutdown(peer_incoming, stopped(stop.clone()));
    let front_server = Server::builder()
        .http2_keepalive_interval(Some(H2_KEEPALIVE.0))
        .http2_keepalive_timeout(Some(H2_KEEPALIVE.1))
        .timeout(Duration::from_secs(30))
        .layer(RpcLayer::new(metrics.clone(), node_id))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            vault_proto::v1::frontend_server::FrontendServer::from_arc(frontend)
                .max_decoding_message_size(FRONTEND_MAX_MESSAGE),
            refuse_while_behind(behind.clone()),
        ))
        .add_service(health_service)
        .serve_with_incoming_shutdown(front_incoming, stopped(stop.clone()));
    let http = crate::http::serve(
        metrics_listener,
        metrics.clone(),
        ready.clone(),
        stop.clone(),
    );
    tracing::info!(
        peer = %me.peer_addr, frontend = %me.frontend_addr, metrics = %me.metrics_addr,
        "serving"
    );

    tokio::spawn(track(
        raft.clone(),
        Tracked {
            storage: storage_stats,
            metrics: metrics.clone(),
            committed_at_start,
            checkpoint,
            standing,
            behind,
        },
        ready_tx,
        health,
        stop.clone(),
    ));

    let servers = async {
        let (p, f, ()) = tokio::join!(peer_server, front_server, http);
        p.context("peer server")?;
        f.context("frontend server")?;
        anyhow::Ok(())
    };
    tokio::pin!(servers);
    let result = tokio::select! {
        r = &mut servers => r,
        () = stopped(stop.clone()) => {
            tracing::info!("shutting down: no new calls; finishing in-flight ones");
            match tokio::time::timeout(DRAIN_DEADLINE, &mut servers).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("in-flight calls did not finish in {DRAIN_DEADLINE:?}; stopping anyway");
                    Ok(())
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    raft.shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("stop Raft: {e}"))?;
    drop(raft);
    tracing::info!("stopped cleanly");
    result
}

/// A node that lost its checkpoint votes again once it has applied
/// everything a leader had committed when it asked (a read barrier),
/// recorded in the checkpoint so that a restart does not forget it.
async fn catch_up_after_loss(
    proposer: Proposer,
    raft: Raft,
    checkpoint: Arc<HsmCheckpoint>,
    behind: vault_raft::checkpoint::BehindFlag,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if proposer.read_barrier().await.is_ok() {
            let c = checkpoint.clone();
            match tokio::task::spawn_blocking(move || c.caught_up_after_loss()).await {
                Ok(Ok(())) => {
                    tracing::info!(
                        "caught up with the leader after a lost checkpoint: voting, standing for election and serving again"
                    );
                    behind.set(None);
                    raft.runtime_config().elect(true);
                    return;
                }
                Ok(Err(e)) => tracing::error!("record the catch-up in the HSM checkpoint: {e}"),
                Err(e) => tracing::error!("record the catch-up in the HSM checkpoint: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = crate::http::stop_requested(&mut stop) => return,
        }
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    crate::http::stop_requested(&mut stop).await;
}

/// With this environment variable set, the node shuts down gracefully
/// when its stdin closes. Test harnesses give each node a pipe, so nodes
/// stop even when the harness itself is killed and cannot clean up.
pub const EXIT_WITH_STDIN: &str = "BKV_EXIT_WITH_STDIN";

fn stop_when_stdin_closes(stop: watch::Sender<bool>) {
    use std::io::Read;
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    tracing::info!("stdin closed ({EXIT_WITH_STDIN} is set)");
    let _ = stop.send(true);
}

async fn watch_signals(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    let _ = stop.send(true);
}

/// Refuses every frontend call while the node is behind its checkpoint:
/// its state may be older than what the fleet committed.
fn refuse_while_behind(
    behind: vault_raft::checkpoint::BehindFlag,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |req| match behind.why() {
        None => Ok(req),
        Some(why) => Err(crate::frontend::status::unavailable(format!(
            "this node does not serve: {why}; ask another node"
        ))),
    }
}

/// What [`track`] keeps in step besides Raft.
struct Tracked {
    storage: Arc<vault_storage::StorageStats>,
    metrics: Arc<Metrics>,
    committed_at_start: u64,
    checkpoint: Arc<HsmCheckpoint>,
    /// Where the node stood against its checkpoint at start.
    standing: Standing,
    /// Why it must not vote or serve now (shared with the peer service
    /// and the frontend), cleared once it has caught up.
    behind: vault_raft::checkpoint::BehindFlag,
}

/// Keeps metrics, readiness and gRPC health in step with Raft. Ready = not
/// behind the HSM checkpoint, a leader is known, and everything committed
/// when the node started is applied. A node that started behind its
/// checkpoint goes back to voting, standing for election and serving once
/// it has applied past it.
async fn track(
    raft: Raft,
    t: Tracked,
    ready_tx: watch::Sender<Result<(), String>>,
    health: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let Tracked {
        storage,
        metrics,
        committed_at_start,
        checkpoint,
        mut standing,
        behind,
    } = t;
    let rx = raft.metrics();
    let mut was_ready = false;
    loop {
        let m = rx.borrow().clone();
        if let Standing::Behind { target, .. } = &standing {
            let now = Mark {
                vote: Some(m.vote),
                last_log: None,
                applied: m.last_applied.map(|l| (l, [0; 32])),
                log_hash: None,
            };
            if target.reached_by(&now) {
                tracing::info!(
                    applied = ?m.last_applied,
                    "caught up past the HSM checkpoint: voting, standing for election and serving again"
                );
                behind.set(None);
                raft.runtime_config().elect(true);
                standing = Standing::Current;
            }
        }
        metrics
            .checkpoint_behind
            .set(i64::from(behind.why().is_some()));
        metrics
            .checkpoint_resets
            .set(i64::from(checkpoint.resets()));
        metrics.checkpoint_writes.set(checkpoint.writes() as i64);
        let applied = m.last_applied.map_or(0, |l| l.index);
        metrics.term.set(m.current_term as i64);
        metrics.leader.set(m.current_leader.unwrap_or(0) as i64);
        metrics
            .is_leader
            .set(i64::from(m.current_leader == Some(m.id)));
        metrics
            .last_log_index
            .set(m.last_log_index.unwrap_or(0) as i64);
        metrics.applied_index.set(applied as i64);
        metrics
            .snapshot_index
            .set(m.snapshot.map_or(0, |l| l.index) as i64);
        let count =
            |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as i64;
        metrics
            .storage_synced_writes
            .set(count(&storage.synced_writes));
        metrics
            .storage_log_entries
            .set(count(&storage.log_entries_appended));
        metrics.storage_log_appends.set(count(&storage.log_appends));
        metrics.batches_applied.set(count(&storage.batches_applied));
        metrics
            .proposals_applied
            .set(count(&storage.proposals_applied));
        if let Ok(c) = raft
            .with_raft_state(|st| st.committed.map_or(0, |l| l.index))
            .await
        {
            metrics.committed_index.set(c as i64);
        }
        let readiness = if let Some(why) = behind.why() {
            Err(why)
        } else if m.current_leader.is_none() {
            Err("no leader known".to_owned())
        } else if applied < committed_at_start {
            Err(format!(
                "applied {applied} of the {committed_at_start} committed at start"
            ))
        } else {
            Ok(())
        };
        let is_ready = readiness.is_ok();
        metrics.ready.set(i64::from(is_ready));
        if is_ready != was_ready {
            let status = if is_ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            tracing::info!(ready = is_ready, leader = ?m.current_leader, term = m.current_term, "readiness changed");
            was_ready = is_ready;
        }
        let _ = ready_tx.send(readiness);
        // Poll rather than wake on every metrics change: reading the
        // committed index goes through Raft's core, which publishes metrics
        // again, so waking on changes would spin.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = crate::http::stop_requested(&mut stop) => return,
        }
    }
}
