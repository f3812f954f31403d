//! `vaultctl fleet evidence`: every node's signed statement about its HSM,
//! keys, binary and fleet file, with the fleet's current bundle.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use rand::RngCore;
use vault_proto::v1::{EvidenceReply, EvidenceRequest, GetFleetKeysRequest};
use vault_transparency::evidence::{DOCUMENT_FORMAT, EvidenceDocument, SignedStatement};

use super::{EvidenceArgs, say};
use crate::cluster_cmd::{Admin, code_name};

/// Every node's signed statement for one nonce.
pub(super) async fn collect_statements(
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

pub(super) async fn fleet_keys(admin: &Admin) -> anyhow::Result<vault_proto::v1::FleetKeys> {
    admin
        .on_leader(|mut c| async move { c.get_fleet_keys(GetFleetKeysRequest {}).await })
        .await
}

pub(super) async fn evidence(a: EvidenceArgs) -> anyhow::Result<ExitCode> {
    let admin = Admin::open(a.fleet.load()?)?;
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
    vault_fleet::pki::write_file(&a.out, text.as_bytes(), 0o644)?;
    say(&format!(
        "wrote evidence for fleet {} ({} nodes) to {}",
        doc.fleet_id,
        doc.nodes.len(),
        a.out.display()
    ));
    Ok(ExitCode::SUCCESS)
}
