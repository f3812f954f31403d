//! The node's part in fleet-key transparency: installing a signed bundle
//! (after checking it names this fleet and the keys it uses) and signing
//! deployment evidence with the attestation key in the HSM.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tonic::Status;
use vault_fleet::config::Fleet;
use vault_hsm::{AsyncHsm, Hsm, Pkcs11Hsm};
use vault_proto::v1::{EvidenceReply, FleetKeys};
use vault_transparency::evidence::{KeyReportInfo, NodeStatement, signed_bytes};
use vault_transparency::{Bundle, SignedBundle};

/// Checks a signed bundle against the fleet's own keys before it is
/// committed: a bundle naming other keys would make every app refuse the
/// fleet. Returns its epoch. Signatures are the apps' to check; the node
/// does not pin the witness or operator keys.
pub fn check_bundle(signed: &[u8], keys: &FleetKeys) -> Result<u64, Status> {
    let s = SignedBundle::parse(signed).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let b = Bundle::parse(&s.bundle).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if b.fleet_id != keys.fleet_id {
        return Err(Status::failed_precondition(format!(
            "the bundle is for fleet {:?}, this is {:?}",
            b.fleet_id, keys.fleet_id
        )));
    }
    if b.opaque_public_key != keys.opaque_public_key {
        return Err(Status::failed_precondition(
            "the bundle's OPAQUE key is not the fleet's",
        ));
    }
    if b.hpke_public_key != keys.hpke_public_key {
        return Err(Status::failed_precondition(
            "the bundle's HPKE key is not the fleet's",
        ));
    }
    if s.witness_signature.is_empty() || s.operator_signature.is_empty() {
        return Err(Status::invalid_argument(
            "the bundle needs both the witness signature and the operator counter-signature",
        ));
    }
    Ok(b.epoch)
}

/// SHA-256 of the running binary (hex).
fn binary_sha256() -> Result<String, Status> {
    let path = std::env::current_exe()
        .map_err(|e| Status::internal(format!("find the node binary: {e}")))?;
    let bytes = std::fs::read(&path)
        .map_err(|e| Status::internal(format!("read {}: {e}", path.display())))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// This node's signed statement for `nonce`.
pub async fn evidence(
    node_id: u64,
    fleet: &Fleet,
    hsm: &AsyncHsm<Pkcs11Hsm>,
    checkpoint_resets: u32,
    nonce: &[u8],
) -> Result<EvidenceReply, Status> {
    if !(16..=64).contains(&nonce.len()) {
        return Err(Status::invalid_argument("the nonce must be 16 to 64 bytes"));
    }
    let me = fleet.node(node_id).map_err(Status::internal)?;
    let h = hsm.clone();
    let report = tokio::task::spawn_blocking(move || h.blocking().key_report())
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(format!("HSM: {e}")))?;
    let key_report: KeyReportInfo = serde_json::to_value(&report)
        .and_then(serde_json::from_value)
        .map_err(|e| Status::internal(format!("key report: {e}")))?;
    let binary = tokio::task::spawn_blocking(binary_sha256)
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
    let statement = NodeStatement {
        version: 1,
        fleet_id: fleet.fleet_id.as_str().to_owned(),
        node_id,
        datacenter: me.datacenter.clone(),
        key_report,
        attestation_public_key: hex::encode(&hsm.blocking().attestation_public_key().0),
        binary_sha256: binary,
        binary_version: env!("CARGO_PKG_VERSION").to_owned(),
        config_sha256: hex::encode(fleet.source_sha256),
        issued_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        nonce: hex::encode(nonce),
        checkpoint_resets,
    };
    let text = serde_json::to_string(&statement)
        .map_err(|e| Status::internal(format!("statement: {e}")))?;
    let signature = hsm
        .sign(signed_bytes(&text))
        .await
        .map_err(|e| Status::unavailable(format!("HSM: {e}")))?;
    Ok(EvidenceReply {
        statement: text,
        signature: signature.0,
    })
}
