//! Fleet keys over the air, end to end: a real fleet, a real witness
//! process, the operator's SoftHSM token. Publishing, what apps check
//! (against an impostor node that hands out the genuine bundle), the
//! witness surviving SIGKILL, deployment evidence, and the audit catching a
//! forked log.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use vault_client::{BundleError, Client, ClientError, Endpoint, Ksf, PinnedTrust, Trust};
use vault_fleet::identity::Identity as FleetIdentity;
use vault_fleet::tls::CertFiles;
use vault_proto::v1::frontend_server::{Frontend, FrontendServer};
use vault_proto::v1::witness_client::WitnessClient;
use vault_proto::v1::{
    DeleteReply, DeleteRequest, FleetKeys, GetFleetBundleRequest, RecoverFinishReply,
    RecoverFinishRequest, RecoverStartReply, RecoverStartRequest, RegisterFinishReply,
    RegisterFinishRequest, RegisterStartReply, RegisterStartRequest, SubmitRequest,
    UserStatusReply, UserStatusRequest,
};
use vault_protocol::{FleetSecrets, new_hpke_key};
use vault_testkit::witness::TestWitness;
use vault_testkit::{FleetSpec, Template, TestFleet};
use vault_transparency::{Bundle, SignedBundle};
use vault_types::{FleetId, UserId};

type TestResult = anyhow::Result<()>;

fn main() -> ExitCode {
    let tests: Vec<(&str, vault_testkit::FleetTest)> = vec![
        (
            "published_keys_verify_rotate_and_the_audit_and_evidence_pass",
            published_keys_verify_rotate_and_the_audit_and_evidence_pass,
        ),
        (
            "an_impostor_node_gets_nothing_secret_from_a_pinned_client",
            an_impostor_node_gets_nothing_secret_from_a_pinned_client,
        ),
        (
            "the_witness_killed_mid_stream_loses_no_acknowledged_entry",
            the_witness_killed_mid_stream_loses_no_acknowledged_entry,
        ),
        (
            "a_forked_witness_log_is_detected_by_the_audit",
            a_forked_witness_log_is_detected_by_the_audit,
        ),
    ];
    vault_testkit::run_fleet_tests(3, tests)
}

const CONVERGE: Duration = Duration::from_secs(30);

fn user(s: &str) -> UserId {
    UserId::new(s).expect("user id")
}

/// A started, initialized fleet with its witness and epoch 1 published.
fn published(template: &Template) -> anyhow::Result<TestFleet> {
    let mut fleet = TestFleet::create(template, &FleetSpec::voters(3))?;
    fleet.start_all(1..=3)?;
    fleet.init()?;
    fleet.wait_converged(CONVERGE)?;
    fleet.start_witness()?;
    let out = fleet.publish_keys()?;
    ensure!(out.contains("epoch 1"), "publish said: {out}");
    Ok(fleet)
}

fn pinned(fleet: &TestFleet, store: Option<std::path::PathBuf>) -> anyhow::Result<Trust> {
    Ok(Trust::Pinned(Box::new(PinnedTrust::new(
        fleet.pins()?,
        store,
    )?)))
}

fn exit_code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn published_keys_verify_rotate_and_the_audit_and_evidence_pass(template: &Template) -> TestResult {
    let fleet = published(template)?;
    fleet.with_logs((|| {
        let rt = vault_testkit::client::runtime();
        let store = fleet.dir().join("app-epochs.json");
        let k = rt.block_on(async {
            let c = fleet
                .client()?
                .with_trust(pinned(&fleet, Some(store.clone()))?);
            let k = c.register(&user("alice"), b"pw", 0).await?;
            let back = c.recover(&user("alice"), b"pw").await?;
            ensure!(*back == *k, "recovered another key");
            anyhow::Ok(k)
        })?;
        let _ = k;
        ensure!(
            std::fs::read_to_string(&store)?.contains("\"test\": 1"),
            "the app did not keep epoch 1"
        );
        // vaultctl picks up <fleet dir>/pins.json by itself.
        let out =
            fleet.vaultctl_stdin(&["register", "--user", "bob", "--password-stdin"], "pw\n")?;
        ensure!(out.status.success(), "vaultctl register: {:?}", out);
        ensure!(
            !String::from_utf8_lossy(&out.stderr).contains("WARNING"),
            "vaultctl did not use the pins"
        );

        // Rotation: epoch 2 is accepted without an app update.
        let out = fleet.publish_keys()?;
        ensure!(out.contains("epoch 2"), "publish said: {out}");
        rt.block_on(async {
            let c = fleet
                .client()?
                .with_trust(pinned(&fleet, Some(store.clone()))?);
            c.recover(&user("alice"), b"pw").await?;
            anyhow::Ok(())
        })?;
        ensure!(std::fs::read_to_string(&store)?.contains("\"test\": 2"));

        let audit = fleet.vaultctl_ok(&["audit"])?;
        ensure!(audit.contains("audit: OK"), "{audit}");
        let rows: Vec<&str> = audit.lines().filter(|l| l.contains(" test ")).collect();
        ensure!(rows.len() == 2, "expected two epochs in:\n{audit}");
        ensure!(
            rows[0].contains("first epoch") && rows[1].contains("validity only"),
            "{audit}"
        );

        let evidence = fleet.dir().join("evidence.json");
        fleet.vaultctl_ok(&["fleet", "evidence", "--out", &evidence.to_string_lossy()])?;
        let audit = fleet.vaultctl_ok(&["audit", "--evidence", &evidence.to_string_lossy()])?;
        ensure!(
            audit.contains("evidence") && audit.contains("KEK generated on node 1"),
            "{audit}"
        );

        // Evidence that lies about a token (its serial) no longer verifies.
        let text = std::fs::read_to_string(&evidence)?;
        let mut doc: serde_json::Value = serde_json::from_str(&text)?;
        let st = doc["nodes"][1]["statement"]
            .as_str()
            .context("statement")?
            .to_owned();
        let lied = st.replacen("\"serial\":\"", "\"serial\":\"0", 1);
        ensure!(lied != st);
        doc["nodes"][1]["statement"] = serde_json::Value::String(lied);
        let forged = fleet.dir().join("forged.json");
        std::fs::write(&forged, doc.to_string())?;
        // No secret of the witness or the operator token in what the
        // processes wrote: logs, the evidence, the pins.
        let witness_seed = std::fs::read_to_string(fleet.dir().join("witness/witness.key"))?;
        let operator_pin = std::fs::read_to_string(fleet.dir().join("secrets/operator.user.pin"))?;
        for file in ["witness.log", "evidence.json", "pins.json", "node-1.log"] {
            let text = std::fs::read_to_string(fleet.dir().join(file)).unwrap_or_default();
            ensure!(!text.is_empty(), "{file} is empty");
            ensure!(
                !text.contains(witness_seed.trim()),
                "{file} holds the witness key"
            );
            ensure!(
                !text.contains(operator_pin.trim()),
                "{file} holds the operator PIN"
            );
        }
        let out = fleet.vaultctl(&["audit", "--evidence", &forged.to_string_lossy()])?;
        ensure!(exit_code(&out) == 1, "forged evidence passed: {out:?}");
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("signature does not verify"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })())
}

/// What the impostor hands out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lie {
    /// Its own OPAQUE and HPKE keys in FleetKeys, the genuine bundle.
    OwnKeys,
    /// The genuine FleetKeys and bundle, but answers with its own OPAQUE key.
    GenuineKeys,
    /// Its own keys and the fleet's older (epoch 1) bundle.
    OldBundle,
    /// No bundle at all.
    NoBundle,
}

/// A node that holds a fleet certificate (node-1's name) but not the
/// fleet's OPAQUE key: what a stolen CA key or a rogue operator could run.
struct Impostor {
    secrets: FleetSecrets,
    genuine: FleetKeys,
    old_bundle: Vec<u8>,
    lie: Lie,
    finishes: Arc<AtomicU32>,
}

impl Impostor {
    /// An impostor with its own OPAQUE server setup and HPKE key.
    fn new(genuine: &FleetKeys, old_bundle: &[u8], lie: Lie) -> anyhow::Result<Impostor> {
        Ok(Impostor {
            secrets: FleetSecrets::new(
                FleetId::new("test")?,
                &vault_protocol::suite::new_server_setup([9; 32]),
                &new_hpke_key([8; 32]),
            )?,
            genuine: genuine.clone(),
            old_bundle: old_bundle.to_vec(),
            lie,
            finishes: Arc::new(AtomicU32::new(0)),
        })
    }
}

#[tonic::async_trait]
impl Frontend for Impostor {
    async fn register_start(
        &self,
        req: Request<RegisterStartRequest>,
    ) -> Result<Response<RegisterStartReply>, Status> {
        let r = req.into_inner();
        let user = UserId::new(&r.user_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let started = self
            .secrets
            .register_start(
                &mut rand::rngs::OsRng,
                &user,
                vault_types::Generation(0),
                &r.registration_request,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut keys = self.genuine.clone();
        if self.lie != Lie::GenuineKeys {
            keys.opaque_public_key = self.secrets.opaque_public_key().to_vec();
            keys.hpke_public_key = self.secrets.hpke_public_key().to_vec();
        }
        match self.lie {
            Lie::OldBundle => keys.signed_bundle = self.old_bundle.clone(),
            Lie::NoBundle => keys.signed_bundle.clear(),
            _ => {}
        }
        Ok(Response::new(RegisterStartReply {
            registration_response: started.response,
            fleet: Some(keys),
            registration_nonce: started.nonce.to_vec(),
            generation: 0,
        }))
    }
    async fn register_finish(
        &self,
        _: Request<RegisterFinishRequest>,
    ) -> Result<Response<RegisterFinishReply>, Status> {
        self.finishes.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(RegisterFinishReply {
            generation: 1,
            max_attempts: 10,
        }))
    }
    async fn recover_start(
        &self,
        _: Request<RecoverStartRequest>,
    ) -> Result<Response<RecoverStartReply>, Status> {
        Err(Status::unimplemented("impostor"))
    }
    async fn recover_finish(
        &self,
        _: Request<RecoverFinishRequest>,
    ) -> Result<Response<RecoverFinishReply>, Status> {
        Err(Status::unimplemented("impostor"))
    }
    async fn status(
        &self,
        _: Request<UserStatusRequest>,
    ) -> Result<Response<UserStatusReply>, Status> {
        Err(Status::unimplemented("impostor"))
    }
    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteReply>, Status> {
        Err(Status::unimplemented("impostor"))
    }
    async fn get_fleet_bundle(
        &self,
        _: Request<GetFleetBundleRequest>,
    ) -> Result<Response<FleetKeys>, Status> {
        Ok(Response::new(self.genuine.clone()))
    }
}

/// Serves `impostor` with a node-1 certificate from the fleet CA; returns
/// its address and a shutdown handle.
async fn serve_impostor(
    fleet: &TestFleet,
    impostor: Impostor,
) -> anyhow::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let pki = fleet.dir().join("pki");
    let (cert, key) = fleet.test_identity(&FleetIdentity::Node(1))?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ))
        .client_ca_root(Certificate::from_pem(std::fs::read(
            pki.join("frontend-ca.pem"),
        )?));
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse()?)
        .map_err(|e| anyhow::anyhow!("bind: {e}"))?
        .with_nodelay(Some(true));
    let addr = incoming.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .tls_config(tls)?
        .add_service(FrontendServer::new(impostor))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = rx.await;
        });
    tokio::spawn(server);
    Ok((addr, tx))
}

fn impostor_client(fleet: &TestFleet, addr: SocketAddr, trust: Trust) -> anyhow::Result<Client> {
    let pki = fleet.dir().join("pki");
    Ok(Client::new(
        vec![Endpoint { node_id: 1, addr }],
        &pki.join("fleet-ca.pem"),
        &CertFiles {
            cert: pki.join("frontend-test.pem"),
            key: pki.join("frontend-test.key"),
        },
        FleetId::new("test")?,
        Ksf::Fast,
    )?
    .with_deadline(Duration::from_secs(5))
    .with_trust(trust))
}

fn an_impostor_node_gets_nothing_secret_from_a_pinned_client(template: &Template) -> TestResult {
    let fleet = published(template)?;
    fleet.with_logs((|| {
        let rt = vault_testkit::client::runtime();
        let old_bundle = rt.block_on(async { anyhow::Ok(fleet.client()?.fleet_keys().await?) })?;
        fleet.publish_keys()?;
        let genuine = rt.block_on(async { anyhow::Ok(fleet.client()?.fleet_keys().await?) })?;
        ensure!(genuine.signed_bundle != old_bundle.signed_bundle);
        let store = fleet.dir().join("app-epochs.json");
        // The app has seen epoch 2 from the real fleet.
        rt.block_on(async {
            fleet
                .client()?
                .with_trust(pinned(&fleet, Some(store.clone()))?)
                .fleet_keys()
                .await?;
            anyhow::Ok(())
        })?;

        let cases = [
            (Lie::OwnKeys, BundleError::KeyMismatch("OPAQUE server key")),
            (
                Lie::GenuineKeys,
                BundleError::KeyMismatch("OPAQUE server key"),
            ),
            (
                Lie::OldBundle,
                BundleError::EpochRollback { seen: 2, got: 1 },
            ),
            (Lie::NoBundle, BundleError::Missing),
        ];
        for (lie, expected) in cases {
            let impostor = Impostor::new(&genuine, &old_bundle.signed_bundle, lie)?;
            let finishes = impostor.finishes.clone();
            let err = rt.block_on(async {
                let (addr, stop) = serve_impostor(&fleet, impostor).await?;
                let c = impostor_client(&fleet, addr, pinned(&fleet, Some(store.clone()))?)?;
                let r = c.register(&user("carol"), b"secret password", 0).await;
                let _ = stop.send(());
                anyhow::Ok(r)
            })?;
            ensure!(
                err == Err(ClientError::Bundle(expected.clone())),
                "expected {expected:?}, got {err:?}"
            );
            ensure!(
                finishes.load(Ordering::SeqCst) == 0,
                "the impostor received a sealed registration"
            );
        }

        // Without pins, the consistent lie goes through: the check is what
        // stops it.
        let impostor = Impostor::new(&genuine, &[], Lie::OwnKeys)?;
        let finishes = impostor.finishes.clone();
        rt.block_on(async {
            let (addr, stop) = serve_impostor(&fleet, impostor).await?;
            let c = impostor_client(&fleet, addr, Trust::FleetCertificateOnly)?;
            c.register(&user("carol"), b"secret password", 0).await?;
            let _ = stop.send(());
            anyhow::Ok(())
        })?;
        ensure!(
            finishes.load(Ordering::SeqCst) == 1,
            "the unpinned client did not reach the impostor"
        );
        Ok(())
    })())
}

fn the_witness_killed_mid_stream_loses_no_acknowledged_entry(template: &Template) -> TestResult {
    let mut fleet = published(template)?;
    let result = (|| {
        // How long one publication takes here, to aim the kills at its
        // whole span (most of it is collecting the nodes' statements).
        let t0 = std::time::Instant::now();
        let mut acknowledged = vec![1u64, epoch_in(&fleet.publish_keys()?)?];
        let span = t0.elapsed();
        for round in 0..6u64 {
            // Start a publication and kill the witness while it runs (at a
            // different moment each round).
            let child = std::process::Command::new(&template.bins().vaultctl)
                .args(["fleet", "publish-keys"])
                .env("BKV_FLEET_CONFIG", fleet.dir().join("fleet.toml"))
                .env("BKV_FLEET_DIR", fleet.dir())
                .env("BKV_WITNESS", fleet.witness_addr().context("witness")?)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            std::thread::sleep(span.mul_f64(0.5 + 0.12 * round as f64));
            fleet.kill_witness()?;
            let out = child.wait_with_output()?;
            fleet.start_witness()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            eprintln!(
                "round {round}: publication during the kill {}",
                if out.status.success() {
                    "succeeded"
                } else {
                    "failed"
                }
            );
            if out.status.success() {
                acknowledged.push(epoch_in(&text)?);
            } else {
                // Not acknowledged: it may or may not be in the log. Publish
                // again (adopting a logged but uncommitted epoch).
                let text = fleet.publish_keys()?;
                acknowledged.push(epoch_in(&text)?);
            }
        }
        // The deterministic case of a lost answer: the witness logged the
        // next epoch, the fleet never got it. Publishing completes it.
        let rt = vault_testkit::client::runtime();
        let real = rt.block_on(async { anyhow::Ok(fleet.client()?.fleet_keys().await?) })?;
        let signed = SignedBundle::parse(&real.signed_bundle)?;
        let mut next = Bundle::parse(&signed.bundle)?;
        next.epoch += 1;
        next.previous_digest = vault_transparency::bundle::digest(&signed.bundle);
        next.not_after -= 1;
        let addr = fleet.witness_addr().context("witness")?;
        rt.block_on(submit(
            &fleet,
            &addr,
            &fleet.dir().join("witness"),
            next.encode()?,
        ))?;
        let out = fleet.vaultctl(&["fleet", "publish-keys"])?;
        ensure!(out.status.success(), "{out:?}");
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("completing it"),
            "{out:?}"
        );
        acknowledged.push(epoch_in(&String::from_utf8_lossy(&out.stdout))?);
        ensure!(acknowledged.last() == Some(&next.epoch));

        let audit = fleet.vaultctl_ok(&["audit"])?;
        ensure!(audit.contains("audit: OK"), "{audit}");
        let epochs: Vec<u64> = audit
            .lines()
            .filter(|l| l.contains(" test "))
            .map(|l| {
                l.split_whitespace()
                    .nth(2)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
            .collect();
        ensure!(
            epochs == acknowledged,
            "log epochs {epochs:?}, acknowledged {acknowledged:?}"
        );
        Ok(())
    })();
    fleet.with_logs(result)
}

/// Submits bundle bytes to the witness at `addr` (directory `dir`) as the
/// operator.
async fn submit(
    fleet: &TestFleet,
    addr: &str,
    dir: &std::path::Path,
    bundle: Vec<u8>,
) -> anyhow::Result<()> {
    let (cert, key) = fleet.test_identity(&vault_fleet::identity::Identity::Operator)?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(
            dir.join("tls/ca.pem"),
        )?))
        .domain_name(FleetIdentity::Witness.dns_name())
        .identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    WitnessClient::new(ch)
        .submit(SubmitRequest { bundle })
        .await?;
    Ok(())
}

fn epoch_in(text: &str) -> anyhow::Result<u64> {
    text.split("epoch ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|e| e.parse().ok())
        .with_context(|| format!("no epoch in {text:?}"))
}

fn a_forked_witness_log_is_detected_by_the_audit(template: &Template) -> TestResult {
    let fleet = published(template)?;
    fleet.with_logs((|| {
        // A second witness process with the same key and its own log: a
        // witness showing different histories to different people.
        let b_dir = fleet.dir().join("witness-b");
        std::fs::create_dir_all(b_dir.join("tls"))?;
        for f in [
            "witness.key",
            "witness.pub",
            "tls/ca.pem",
            "tls/ca.key",
            "tls/server.pem",
            "tls/server.key",
        ] {
            std::fs::copy(fleet.dir().join("witness").join(f), b_dir.join(f))?;
        }
        let port = vault_testkit::free_ports(1)?[0];
        let _b = TestWitness::start(
            &template.bins().vault_witness,
            &b_dir,
            port,
            &fleet.fleet().tls.fleet_ca,
            &fleet.dir().join("witness-b.log"),
        )?;
        let b_addr = format!("127.0.0.1:{port}");
        // B logs another epoch 1 of the same fleet.
        let rt = vault_testkit::client::runtime();
        let real = rt.block_on(async { anyhow::Ok(fleet.client()?.fleet_keys().await?) })?;
        let signed = SignedBundle::parse(&real.signed_bundle)?;
        let mut other = Bundle::parse(&signed.bundle)?;
        other.hpke_public_key = vec![7; 32];
        let bytes = other.encode()?;
        rt.block_on(submit(&fleet, &b_addr, &b_dir, bytes))?;
        let heads_b = fleet.dir().join("heads-b.json");
        let b_ca = b_dir.join("tls/ca.pem");
        // Each log on its own checks out…
        let out = fleet.vaultctl_ok(&[
            "audit",
            "--witness",
            &b_addr,
            "--witness-ca",
            &b_ca.to_string_lossy(),
            "--save-head",
            &heads_b.to_string_lossy(),
        ])?;
        ensure!(out.contains("audit: OK"), "{out}");
        fleet.vaultctl_ok(&["audit"])?;
        // …but a head of B's shown next to A's log is a fork.
        let out = fleet.vaultctl(&["audit", "--known-heads", &heads_b.to_string_lossy()])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(exit_code(&out) == 1, "the fork went unnoticed: {out:?}");
        ensure!(stderr.contains("forked log"), "{stderr}");
        if stderr.contains("panicked") {
            bail!("{stderr}");
        }
        Ok(())
    })())
}
