//! `vaultctl fleet publish-keys | evidence` and `vaultctl audit`: the
//! operator's side of fleet-key transparency, and anyone's audit of it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use rand::RngCore;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use vault_hsm::softhsm::{self, SoftHsmDir};
use vault_hsm::{OperatorKey, read_pin_file};
use vault_proto::v1::witness_client::WitnessClient;
use vault_proto::v1::{
    EvidenceReply, EvidenceRequest, GetConsistencyProofRequest, GetEntriesRequest,
    GetFleetKeysRequest, GetTreeHeadsRequest, SetBundleRequest, SubmitRequest, TreeHead as PbHead,
};
use vault_raft::identity::Identity as FleetIdentity;
use vault_transparency::audit::{Consistency, EpochRow, audit};
use vault_transparency::evidence::{
    DOCUMENT_FORMAT, EvidenceDocument, NodeStatement, SignedStatement,
};
use vault_transparency::head::TreeHead;
use vault_transparency::{Bundle, Hash, NodeKey, Pins, SignedBundle, bundle, merkle};

use vault_witness::service::from_pb;

use crate::cluster_cmd::{Admin, FleetArgs, code_name};
use crate::user_cmd::read_pins;

/// `vaultctl fleet …`
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Publish the fleet's keys: build the next fleet-key bundle from the
    /// running fleet (its OPAQUE and HPKE public keys, every node's
    /// attestation key and datacenter), have the witness sign and log it,
    /// check the witness's answer, counter-sign it with the operator token,
    /// and commit it to the fleet state. Nodes then hand it out.
    PublishKeys(PublishArgs),
    /// Write deployment evidence: every node's statement about its HSM
    /// token, key attributes, binary and fleet file, signed by its
    /// attestation key inside its HSM, and the fleet's current bundle.
    Evidence(EvidenceArgs),
}

/// Where the witness is.
#[derive(Debug, Args)]
pub struct WitnessArgs {
    /// The witness's address.
    #[arg(long, env = "BKV_WITNESS", default_value = "127.0.0.1:7400")]
    witness: String,
    /// The witness's CA certificate. Default: the local witness's,
    /// `<fleet dir>/witness/tls/ca.pem`.
    #[arg(long, env = "BKV_WITNESS_CA", value_name = "FILE")]
    witness_ca: Option<PathBuf>,
}

/// Arguments of `fleet publish-keys`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    witness: WitnessArgs,
    /// The pinned keys (JSON, see `vaultctl register --help`); the witness's
    /// answer is checked against its key. Default: `<fleet dir>/pins.json`.
    #[arg(long, value_name = "FILE")]
    pins: Option<PathBuf>,
    /// The operator token's label.
    #[arg(long, default_value = "operator")]
    operator_label: String,
    /// The operator token's SoftHSM directory. Default:
    /// `<fleet dir>/hsm/operator`.
    #[arg(long, value_name = "DIR")]
    operator_softhsm_dir: Option<PathBuf>,
    /// The operator token's user PIN file. Default:
    /// `<fleet dir>/secrets/operator.user.pin`.
    #[arg(long, value_name = "FILE")]
    operator_pin_file: Option<PathBuf>,
    /// PKCS#11 module of the operator token. Default: SoftHSM2.
    #[arg(long, value_name = "PATH")]
    module: Option<PathBuf>,
    /// How long the bundle stays valid, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
    validity_days: u64,
    /// Do nothing when the fleet has a bundle already (first start).
    #[arg(long)]
    if_missing: bool,
}

/// Arguments of `fleet evidence`.
#[derive(Debug, Args)]
pub struct EvidenceArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Where to write the evidence document (JSON).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Arguments of `vaultctl audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    witness: WitnessArgs,
    /// The pinned keys (JSON: witness_key, operator_key). Default:
    /// `<fleet dir>/pins.json` (BKV_FLEET_DIR, else .fleet).
    #[arg(long, value_name = "FILE")]
    pins: Option<PathBuf>,
    /// A deployment evidence file (`vaultctl fleet evidence`) to verify
    /// against the log.
    #[arg(long, value_name = "FILE")]
    evidence: Option<PathBuf>,
    /// Tree heads learned elsewhere (from apps, other auditors, an earlier
    /// run's --save-head): a JSON array. Each must be consistent with the
    /// log, or the audit reports a fork or a rollback.
    #[arg(long, value_name = "FILE")]
    known_heads: Vec<PathBuf>,
    /// Add the verified latest head to this JSON array file (created if
    /// missing), for later runs or other auditors' --known-heads.
    #[arg(long, value_name = "FILE")]
    save_head: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn fleet_dir() -> PathBuf {
    std::env::var_os("BKV_FLEET_DIR").map_or_else(|| PathBuf::from(".fleet"), PathBuf::from)
}

impl WitnessArgs {
    fn ca(&self, fleet_dir: &Path) -> PathBuf {
        self.witness_ca
            .clone()
            .unwrap_or_else(|| fleet_dir.join("witness/tls/ca.pem"))
    }

    /// A client of the witness, presenting `identity` when given.
    fn connect(
        &self,
        fleet_dir: &Path,
        identity: Option<&vault_raft::tls::CertFiles>,
    ) -> anyhow::Result<WitnessClient<Channel>> {
        let ca_path = self.ca(fleet_dir);
        let ca = std::fs::read(&ca_path)
            .with_context(|| format!("read the witness CA {}", ca_path.display()))?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(FleetIdentity::Witness.dns_name());
        if let Some(id) = identity {
            let cert =
                std::fs::read(&id.cert).with_context(|| format!("read {}", id.cert.display()))?;
            let key =
                std::fs::read(&id.key).with_context(|| format!("read {}", id.key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let channel = Endpoint::from_shared(format!("https://{}", self.witness))?
            .tls_config(tls)?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        Ok(WitnessClient::new(channel))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn head_from_pb(h: Option<PbHead>) -> anyhow::Result<TreeHead> {
    let h = h.ok_or_else(|| anyhow!("the witness answered without a tree head"))?;
    from_pb(&h).map_err(anyhow::Error::msg)
}

fn hashes(v: Vec<Vec<u8>>) -> anyhow::Result<Vec<Hash>> {
    v.into_iter()
        .map(|h| {
            h.as_slice()
                .try_into()
                .map_err(|_| anyhow!("a proof hash is not 32 bytes"))
        })
        .collect()
}

#[expect(clippy::print_stdout, reason = "a command's result goes to stdout")]
fn say(text: &str) {
    println!("{text}");
}

/// Runs a `fleet` command.
pub fn run_fleet(cmd: FleetCommand) -> anyhow::Result<ExitCode> {
    // The operator token lives in its own SoftHSM directory, which SoftHSM
    // reads once per process: re-run this command with it.
    if let FleetCommand::PublishKeys(a) = &cmd {
        let dir = a
            .operator_softhsm_dir
            .clone()
            .unwrap_or_else(|| a.fleet.fleet_dir().join("hsm/operator"));
        if a.module.is_none() {
            let dir = SoftHsmDir::at(&dir);
            if !dir.conf().is_file() {
                bail!(
                    "no operator token directory at {} (make one with `vaultctl hsm init --operator --softhsm-dir {} …`)",
                    dir.root().display(),
                    dir.root().display()
                );
            }
            if !dir.is_active() {
                return Ok(dir.rerun_self());
            }
        }
    }
    vault_raft::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        FleetCommand::PublishKeys(a) => rt.block_on(publish(a)),
        FleetCommand::Evidence(a) => rt.block_on(evidence(a)),
    }
}

/// Every node's signed statement for one nonce.
async fn collect_statements(
    admin: &Admin,
    nonce: &[u8],
) -> anyhow::Result<Vec<(u64, EvidenceReply)>> {
    let mut out = Vec::new();
    for &id in admin.fleet.nodes.keys() {
        let mut c = admin.client(id)?;
        let reply = c
            .evidence(EvidenceRequest {
                nonce: nonce.to_vec(),
            })
            .await
            .map_err(|s| {
                anyhow!(
                    "node {id}: {}: {} (every node of the fleet file must answer)",
                    code_name(s.code()),
                    s.message()
                )
            })?
            .into_inner();
        out.push((id, reply));
    }
    Ok(out)
}

async fn fleet_keys(admin: &Admin) -> anyhow::Result<vault_proto::v1::FleetKeys> {
    admin
        .on_leader(|mut c| async move { c.get_fleet_keys(GetFleetKeysRequest {}).await })
        .await
}

async fn publish(a: PublishArgs) -> anyhow::Result<ExitCode> {
    let fleet = a.fleet.load()?;
    let dir = a.fleet.fleet_dir();
    let admin = Admin { fleet };
    let keys = fleet_keys(&admin).await?;
    let current = if keys.signed_bundle.is_empty() {
        None
    } else {
        Some(SignedBundle::parse(&keys.signed_bundle).context("the fleet's current bundle")?)
    };
    if a.if_missing && current.is_some() {
        eprintln!("the fleet has a bundle already; nothing to do (--if-missing)");
        return Ok(ExitCode::SUCCESS);
    }
    let pins_path = a.pins.clone().unwrap_or_else(|| dir.join("pins.json"));
    let pins = read_pins(&pins_path)?;

    let module = match &a.module {
        Some(m) => m.clone(),
        None => softhsm::find_module()?,
    };
    let pin_file = a
        .operator_pin_file
        .clone()
        .unwrap_or_else(|| dir.join("secrets/operator.user.pin"));
    let operator = OperatorKey::open(&module, &a.operator_label, &read_pin_file(&pin_file)?)
        .with_context(|| format!("open the operator token {:?}", a.operator_label))?;
    let pinned_operator = Pins::new(pins.witness().as_bytes(), &operator.public_key().0)
        .context("the operator token's key")?;
    if pinned_operator != pins {
        bail!(
            "the operator token's key is not the operator key in {}; apps would refuse the bundle",
            pins_path.display()
        );
    }

    // Every node's attestation key, each proven by a signature with it.
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut nodes = Vec::new();
    for (id, reply) in collect_statements(&admin, &nonce).await? {
        let st: NodeStatement = serde_json::from_str(&reply.statement)
            .with_context(|| format!("node {id}: its statement"))?;
        let key = hex::decode(&st.attestation_public_key)
            .with_context(|| format!("node {id}: attestation key"))?;
        vault_hsm::AttestationPublicKey(key.clone())
            .verify(
                &vault_transparency::evidence::signed_bytes(&reply.statement),
                &vault_hsm::AttestationSignature(reply.signature.clone()),
            )
            .with_context(|| format!("node {id}: its statement's signature"))?;
        if st.node_id != id || st.nonce != hex::encode(nonce) {
            bail!("node {id} signed a statement for another node or nonce");
        }
        nodes.push(NodeKey {
            node_id: id,
            datacenter: st.datacenter,
            attestation_key: key,
        });
    }
    let (epoch, previous_digest) = match &current {
        Some(c) => {
            let b = Bundle::parse(&c.bundle).context("the fleet's current bundle")?;
            (b.epoch + 1, bundle::digest(&c.bundle))
        }
        None => (1, [0; 32]),
    };
    let now = now_secs();
    let next = Bundle {
        fleet_id: keys.fleet_id.clone(),
        epoch,
        // A little slack for apps whose clocks run behind.
        not_before: now.saturating_sub(600),
        not_after: now + a.validity_days * 86_400,
        opaque_public_key: keys.opaque_public_key.clone(),
        hpke_public_key: keys.hpke_public_key.clone(),
        previous_digest,
        nodes,
    };
    let bytes = next.encode()?;
    eprintln!(
        "fleet {}: submitting epoch {epoch} ({} nodes) to the witness at {}",
        next.fleet_id,
        next.nodes.len(),
        a.witness.witness
    );
    let mut witness = a.witness.connect(&dir, Some(&admin.fleet.tls.operator))?;
    let (bytes, reply) = match witness
        .submit(SubmitRequest {
            bundle: bytes.clone(),
        })
        .await
    {
        Ok(r) => (bytes, r.into_inner()),
        // An earlier run got epoch N logged but never committed it (its
        // answer was lost, or it stopped): adopt that bundle if it says
        // what this one says, since the witness signs one bundle per epoch.
        Err(s)
            if s.code() == tonic::Code::FailedPrecondition
                && s.message().contains("already signed a different bundle") =>
        {
            let logged = logged_bundle(&mut witness, &next).await?;
            eprintln!("the witness logged epoch {epoch} earlier with the same keys; completing it");
            let r = witness
                .submit(SubmitRequest {
                    bundle: logged.clone(),
                })
                .await
                .map_err(|s| {
                    anyhow!(
                        "the witness refused: {}: {}",
                        code_name(s.code()),
                        s.message()
                    )
                })?
                .into_inner();
            (logged, r)
        }
        Err(s) => bail!(
            "the witness refused: {}: {}",
            code_name(s.code()),
            s.message()
        ),
    };
    // Check the witness's answer before lending it the operator's name.
    pins.verify_witness(&bytes, &reply.witness_signature)?;
    let head = head_from_pb(reply.tree_head)?;
    let proof = hashes(reply.inclusion_proof)?;
    if !head.verify(pins.witness())
        || !merkle::verify_inclusion(
            &merkle::leaf_hash(&bytes),
            reply.log_index,
            head.tree_size,
            &proof,
            &head.root,
        )
    {
        bail!("the witness's tree head or inclusion proof does not check out");
    }
    let message = vault_transparency::signed::countersign_message(&bytes, &reply.witness_signature);
    let operator_signature = operator.sign(&message).context("counter-sign")?;
    let signed = SignedBundle {
        bundle: bytes,
        witness_signature: reply.witness_signature,
        operator_signature: operator_signature.0,
        log_index: reply.log_index,
        tree_head: head,
        inclusion_proof: proof,
    }
    .encode();
    // What every app will do with it.
    let verified = pins.verify(&signed, &keys.fleet_id, now, 0)?;
    verified.check_keys(&keys.opaque_public_key, &keys.hpke_public_key)?;
    let set = admin
        .on_leader(|mut c| {
            let req = SetBundleRequest {
                signed_bundle: signed.clone(),
            };
            async move { c.set_bundle(req).await }
        })
        .await?;
    say(&format!(
        "published fleet {} epoch {} (digest {}, witness log index {}, valid until {})",
        keys.fleet_id,
        set.epoch,
        hex::encode(verified.digest),
        verified.log_index,
        verified.bundle.not_after
    ));
    Ok(ExitCode::SUCCESS)
}

/// The logged bundle of `next`'s fleet and epoch, if it names the same
/// predecessor, keys and nodes (only the validity window may differ).
async fn logged_bundle(
    witness: &mut WitnessClient<Channel>,
    next: &Bundle,
) -> anyhow::Result<Vec<u8>> {
    let mut start = 0;
    loop {
        let got = witness
            .get_entries(GetEntriesRequest {
                start,
                end: u64::MAX,
            })
            .await
            .map_err(|s| anyhow!("read the witness log: {}", s.message()))?
            .into_inner()
            .entries;
        if got.is_empty() {
            bail!(
                "the witness refused epoch {} as already signed, but its log has no such entry",
                next.epoch
            );
        }
        start += got.len() as u64;
        for e in got {
            let Ok(b) = Bundle::parse(&e) else { continue };
            if b.fleet_id != next.fleet_id || b.epoch != next.epoch {
                continue;
            }
            let same = b.previous_digest == next.previous_digest
                && b.opaque_public_key == next.opaque_public_key
                && b.hpke_public_key == next.hpke_public_key
                && b.nodes == next.nodes;
            if !same {
                bail!(
                    "the witness logged a different bundle for fleet {} epoch {} (other keys or nodes): someone else published it; audit the log",
                    next.fleet_id,
                    next.epoch
                );
            }
            return Ok(e);
        }
    }
}

async fn evidence(a: EvidenceArgs) -> anyhow::Result<ExitCode> {
    let admin = Admin {
        fleet: a.fleet.load()?,
    };
    let keys = fleet_keys(&admin).await?;
    if keys.signed_bundle.is_empty() {
        bail!("the fleet has no signed bundle yet; run `vaultctl fleet publish-keys` first");
    }
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let nodes = collect_statements(&admin, &nonce)
        .await?
        .into_iter()
        .map(|(_, r)| SignedStatement {
            statement: r.statement,
            signature: hex::encode(r.signature),
        })
        .collect();
    let doc = EvidenceDocument {
        format: DOCUMENT_FORMAT.to_owned(),
        fleet_id: keys.fleet_id.clone(),
        created_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        nonce: hex::encode(nonce),
        nodes,
        signed_bundle: hex::encode(&keys.signed_bundle),
    };
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    vault_raft::pki::write_file(&a.out, text.as_bytes(), 0o644)?;
    say(&format!(
        "wrote evidence for fleet {} ({} nodes) to {}",
        doc.fleet_id,
        doc.nodes.len(),
        a.out.display()
    ));
    Ok(ExitCode::SUCCESS)
}

/// Runs `vaultctl audit`.
pub fn run_audit(a: AuditArgs) -> anyhow::Result<ExitCode> {
    vault_raft::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(audit_cmd(a))
}

fn read_heads(path: &Path) -> anyhow::Result<Vec<TreeHead>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("parse {} (a JSON array of tree heads)", path.display()))
}

async fn audit_cmd(a: AuditArgs) -> anyhow::Result<ExitCode> {
    let dir = fleet_dir();
    let pins_path = a.pins.clone().unwrap_or_else(|| dir.join("pins.json"));
    let pins = read_pins(&pins_path)?;
    let mut w = a.witness.connect(&dir, None)?;
    let unreachable = |s: tonic::Status| {
        anyhow!(
            "witness {}: {}: {}",
            a.witness.witness,
            code_name(s.code()),
            s.message()
        )
    };
    let heads: Vec<TreeHead> = w
        .get_tree_heads(GetTreeHeadsRequest {})
        .await
        .map_err(unreachable)?
        .into_inner()
        .heads
        .iter()
        .map(|h| from_pb(h).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let size = heads.iter().map(|h| h.tree_size).max().unwrap_or(0);
    let mut entries = Vec::new();
    while (entries.len() as u64) < size {
        let got = w
            .get_entries(GetEntriesRequest {
                start: entries.len() as u64,
                end: size,
            })
            .await
            .map_err(unreachable)?
            .into_inner()
            .entries;
        if got.is_empty() {
            bail!("the witness serves fewer entries than its tree head of size {size} claims");
        }
        entries.extend(got);
    }
    let mut sizes: Vec<u64> = heads
        .iter()
        .map(|h| h.tree_size)
        .filter(|&s| s > 0)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut consistency = Vec::new();
    for pair in sizes.windows(2) {
        let proof = w
            .get_consistency_proof(GetConsistencyProofRequest {
                first: pair[0],
                second: pair[1],
            })
            .await
            .map_err(unreachable)?
            .into_inner();
        consistency.push(Consistency {
            first: pair[0],
            second: pair[1],
            proof: hashes(proof.hashes)?,
        });
    }
    let mut known = Vec::new();
    for p in &a.known_heads {
        known.extend(read_heads(p)?);
    }
    let result = audit(pins.witness(), &entries, &heads, &consistency, &known)
        .map(|rows| (rows, evidence_result(&a, &pins, &entries)));
    let (rows, evidence) = match result {
        Ok((rows, Ok(evidence))) => (rows, evidence),
        Ok((_, Err(e))) => {
            eprintln!("vaultctl audit: FAILED: {e:#}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            eprintln!("vaultctl audit: FAILED: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let latest = heads.iter().max_by_key(|h| h.tree_size).cloned();
    if let (Some(path), Some(head)) = (&a.save_head, &latest) {
        let mut saved = if path.exists() {
            read_heads(path)?
        } else {
            Vec::new()
        };
        if !saved.contains(head) {
            saved.push(head.clone());
        }
        vault_raft::pki::write_file(
            path,
            serde_json::to_string_pretty(&saved)?.as_bytes(),
            0o644,
        )?;
    }
    if a.json {
        say(&serde_json::to_string_pretty(&audit_json(
            &rows,
            latest.as_ref(),
            &evidence,
        ))?);
    } else {
        say(&audit_table(
            &rows,
            latest.as_ref(),
            heads.len(),
            known.len(),
            &evidence,
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// The evidence check, when an evidence file was given: a summary line.
fn evidence_result(
    a: &AuditArgs,
    pins: &Pins,
    entries: &[Vec<u8>],
) -> anyhow::Result<Option<String>> {
    let Some(path) = &a.evidence else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let doc: EvidenceDocument =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let (verified, findings) = vault_transparency::evidence::verify(&doc, pins, now_secs())
        .with_context(|| format!("evidence {}", path.display()))?;
    let signed = SignedBundle::parse(&hex::decode(&doc.signed_bundle)?)?;
    if entries.get(verified.log_index as usize) != Some(&signed.bundle) {
        bail!(
            "evidence {}: its bundle is not entry {} of the witness log",
            path.display(),
            verified.log_index
        );
    }
    let tokens: Vec<String> = findings
        .iter()
        .map(|f| {
            let t = &f.statement.key_report.token;
            format!(
                "node {} ({}, {} {} serial {} firmware {})",
                f.statement.node_id,
                f.statement.datacenter,
                t.manufacturer,
                t.model,
                t.serial,
                t.firmware
            )
        })
        .collect();
    let origin = vault_transparency::evidence::kek_generated_on(&findings);
    let origin = if origin.is_empty() {
        "no current node generated the KEK (its founding node has left)".to_owned()
    } else {
        format!(
            "KEK generated on node {}, copies received by ceremony",
            origin
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Ok(Some(format!(
        "evidence {}: OK for fleet {} epoch {}: {} nodes, attestation keys generated on their tokens and never extractable, one KEK ({origin}), KEKs sensitive and wrappable only under trusted keys, one binary {}, one fleet file {}\n  {}",
        path.display(),
        doc.fleet_id,
        verified.bundle.epoch,
        findings.len(),
        findings
            .first()
            .map_or("", |f| &f.statement.binary_sha256[..16]),
        findings
            .first()
            .map_or("", |f| &f.statement.config_sha256[..16]),
        tokens.join("\n  ")
    )))
}

fn audit_table(
    rows: &[EpochRow],
    latest: Option<&TreeHead>,
    heads: usize,
    known: usize,
    evidence: &Option<String>,
) -> String {
    let mut out = String::new();
    if let Some(h) = latest {
        out.push_str(&format!(
            "witness log: {} entries, {} signed tree heads verified and consistent{}; latest root {}\n\n",
            h.tree_size,
            heads,
            if known > 0 { format!(", {known} known heads consistent") } else { String::new() },
            hex::encode(h.root)
        ));
    }
    out.push_str(&format!(
        "{:>5}  {:<16} {:>5}  {:<20} {:<20} {}\n",
        "index", "fleet", "epoch", "valid from", "valid until", "changed"
    ));
    for r in rows {
        out.push_str(&format!(
            "{:>5}  {:<16} {:>5}  {:<20} {:<20} {}\n",
            r.index,
            r.bundle.fleet_id,
            r.bundle.epoch,
            utc(r.bundle.not_before),
            utc(r.bundle.not_after),
            r.changed
        ));
    }
    if let Some(e) = evidence {
        out.push('\n');
        out.push_str(e);
        out.push('\n');
    }
    out.push_str("\naudit: OK");
    out
}

fn audit_json(
    rows: &[EpochRow],
    latest: Option<&TreeHead>,
    evidence: &Option<String>,
) -> serde_json::Value {
    serde_json::json!({
        "ok": true,
        "latest_head": latest,
        "epochs": rows.iter().map(|r| serde_json::json!({
            "index": r.index,
            "fleet_id": r.bundle.fleet_id,
            "epoch": r.bundle.epoch,
            "not_before": r.bundle.not_before,
            "not_after": r.bundle.not_after,
            "digest": hex::encode(r.digest),
            "changed": r.changed,
            "opaque_public_key": hex::encode(&r.bundle.opaque_public_key),
            "hpke_public_key": hex::encode(&r.bundle.hpke_public_key),
            "nodes": r.bundle.nodes.iter().map(|n| serde_json::json!({
                "node_id": n.node_id,
                "datacenter": n.datacenter,
                "attestation_key": hex::encode(&n.attestation_key),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "evidence": evidence,
    })
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC (civil-from-days, H. Hinnant).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06:40");
    }
}
