//! `vaultctl fleet publish-keys`: build the next bundle, have the witness
//! sign and log it, check its answer, counter-sign, commit.

use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use rand::RngCore;
use tonic::transport::Channel;
use vault_hsm::softhsm;
use vault_hsm::{OperatorKey, read_pin_file};
use vault_proto::v1::witness_client::WitnessClient;
use vault_proto::v1::{GetEntriesRequest, SetBundleRequest, SubmitRequest};
use vault_transparency::evidence::NodeStatement;
use vault_transparency::{Bundle, NodeKey, Pins, SignedBundle, bundle, merkle};

use super::evidence::{collect_statements, fleet_keys};
use super::{PublishArgs, hashes, head_from_pb, now_secs, say};
use crate::cluster_cmd::{Admin, code_name};
use crate::user_cmd::read_pins;

pub(super) async fn publish(a: PublishArgs) -> anyhow::Result<ExitCode> {
    let fleet = a.fleet.load()?;
    let dir = a.fleet.fleet_dir();
    let admin = Admin::open(fleet)?;
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

    let token = admin.fleet.tls.operator.token.clone();
    let module = match &token.module {
        vault_fleet::config::HsmModule::SoftHsm => softhsm::find_module()?,
        vault_fleet::config::HsmModule::Path(p) => p.clone(),
    };
    let operator = OperatorKey::open(
        &module,
        &token.token_label,
        &read_pin_file(&token.pin_file)?,
    )
    .with_context(|| format!("open the operator token {:?}", token.token_label))?;
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
    let mut witness = a.witness.connect(&dir, Some(&admin.identity))?;
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
        // The witness says so with ALREADY_EXISTS (and only then).
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
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
