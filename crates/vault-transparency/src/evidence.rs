//! Deployment evidence: each node's statement about its HSM, its keys, its
//! binary and its config, signed by its attestation key inside the HSM,
//! and the checks an auditor runs on a whole deployment's evidence.
//!
//! A node signs `"BKV-NODE-EVIDENCE-v1\n" || statement`, where `statement`
//! is the exact JSON text of a [`NodeStatement`] as the node wrote it; the
//! evidence document carries that text verbatim, so verification needs no
//! canonical JSON.

use std::collections::BTreeSet;

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::signed::{BundleError, Pins, Verified};

/// Domain prefix of what a node's evidence signature covers.
pub const EVIDENCE_CONTEXT: &[u8] = b"BKV-NODE-EVIDENCE-v1\n";
/// The `format` of an evidence document.
pub const DOCUMENT_FORMAT: &str = "bkv-deployment-evidence-v1";

/// The token, as it reports itself (same fields as `vault_hsm::TokenReport`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Token label.
    pub label: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Firmware version.
    pub firmware: String,
    /// Hardware version.
    pub hardware: String,
}

/// One key's attributes (same fields as `vault_hsm::KeyAttributes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// CKA_LABEL.
    pub label: String,
    /// `kek`, `attestation`, `transport`.
    pub role: String,
    /// `secret`, `private`, `public`.
    pub class: String,
    /// `AES`, `EC`, `RSA`.
    pub key_type: String,
    /// KEK version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek_version: Option<u32>,
    /// KEK check value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_value: Option<String>,
    /// CKA_SENSITIVE.
    pub sensitive: Option<bool>,
    /// CKA_EXTRACTABLE.
    pub extractable: Option<bool>,
    /// CKA_NEVER_EXTRACTABLE.
    pub never_extractable: Option<bool>,
    /// CKA_ALWAYS_SENSITIVE.
    pub always_sensitive: Option<bool>,
    /// CKA_LOCAL.
    pub local: Option<bool>,
    /// CKA_WRAP_WITH_TRUSTED.
    pub wrap_with_trusted: Option<bool>,
}

/// The token and its keys (same shape as `vault_hsm::KeyReport`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyReportInfo {
    /// The token.
    pub token: TokenInfo,
    /// Its vault keys.
    pub keys: Vec<KeyInfo>,
}

/// What a node states about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeStatement {
    /// Statement format version (1).
    pub version: u32,
    /// The fleet.
    pub fleet_id: String,
    /// The node.
    pub node_id: u64,
    /// Its datacenter.
    pub datacenter: String,
    /// Its HSM token and keys.
    pub key_report: KeyReportInfo,
    /// Hex of its attestation public key (SEC1 uncompressed).
    pub attestation_public_key: String,
    /// SHA-256 of the running node binary (hex).
    pub binary_sha256: String,
    /// The binary's version.
    pub binary_version: String,
    /// SHA-256 of the fleet file it runs with (hex).
    pub config_sha256: String,
    /// When it signed (Unix milliseconds).
    pub issued_at_ms: u64,
    /// The requester's nonce (hex), for freshness.
    pub nonce: String,
    /// How many times an operator lowered this node's anti-rollback
    /// checkpoint (`vault-node --accept-rollback`), ever: each time, the
    /// node accepted a disk older than what it had made durable. Kept in
    /// its HSM, never lowered. Absent in statements of older nodes.
    #[serde(default)]
    pub checkpoint_resets: u32,
}

/// A statement and the node's signature, as carried in a document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedStatement {
    /// The statement's exact JSON text.
    pub statement: String,
    /// ECDSA P-256/SHA-256 over [`EVIDENCE_CONTEXT`] || statement (hex r || s).
    pub signature: String,
}

/// `vaultctl fleet evidence`'s output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceDocument {
    /// [`DOCUMENT_FORMAT`].
    pub format: String,
    /// The fleet.
    pub fleet_id: String,
    /// When it was collected (Unix milliseconds).
    pub created_at_ms: u64,
    /// The nonce every node signed (hex).
    pub nonce: String,
    /// Per node.
    pub nodes: Vec<SignedStatement>,
    /// The signed bundle this deployment leads to (hex).
    pub signed_bundle: String,
}

/// The bytes a node signs for `statement`.
pub fn signed_bytes(statement: &str) -> Vec<u8> {
    let mut m = EVIDENCE_CONTEXT.to_vec();
    m.extend_from_slice(statement.as_bytes());
    m
}

/// Why evidence does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// The document is not in the expected format.
    #[error("evidence document: {0}")]
    Format(String),
    /// The bundle in the document fails a check.
    #[error("the evidence's bundle: {0}")]
    Bundle(#[from] BundleError),
    /// A node's statement fails a check.
    #[error("node {node}: {reason}")]
    Node {
        /// The node (0 when the statement did not parse).
        node: u64,
        /// Why.
        reason: String,
    },
    /// The nodes disagree where they must agree.
    #[error("the nodes disagree: {0}")]
    Disagree(String),
}

/// What an auditor learns from verified evidence, per node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFinding {
    /// The statement.
    pub statement: NodeStatement,
}

fn node_err(node: u64, reason: impl Into<String>) -> EvidenceError {
    EvidenceError::Node {
        node,
        reason: reason.into(),
    }
}

fn check_keys(s: &NodeStatement) -> Result<(), EvidenceError> {
    let n = s.node_id;
    let att = s
        .key_report
        .keys
        .iter()
        .find(|k| k.role == "attestation" && k.class == "private")
        .ok_or_else(|| node_err(n, "the key report lists no private attestation key"))?;
    if att.sensitive != Some(true)
        || att.extractable != Some(false)
        || att.never_extractable != Some(true)
        || att.local != Some(true)
    {
        return Err(node_err(
            n,
            "the attestation key is not generated on the token, sensitive and never extractable",
        ));
    }
    let keks: Vec<&KeyInfo> = s
        .key_report
        .keys
        .iter()
        .filter(|k| k.role == "kek")
        .collect();
    if keks.is_empty() {
        return Err(node_err(n, "the key report lists no fleet KEK"));
    }
    for k in keks {
        // A copy received in the ceremony reports CKA_LOCAL and
        // CKA_ALWAYS_SENSITIVE false (it was unwrapped, not generated);
        // what every copy must show is that it cannot leave in plaintext
        // and can be exported only under a key the security officer trusted.
        let export_guarded = k.extractable == Some(false) || k.wrap_with_trusted == Some(true);
        if k.sensitive != Some(true) || !export_guarded {
            return Err(node_err(
                n,
                format!(
                    "KEK {} is not sensitive and wrappable only under trusted keys",
                    k.label
                ),
            ));
        }
    }
    Ok(())
}

/// Where the fleet KEK came from: the nodes whose copy was generated on
/// their token and has always been sensitive (normally the founding node;
/// empty once it has left the fleet).
pub fn kek_generated_on(findings: &[NodeFinding]) -> Vec<u64> {
    findings
        .iter()
        .filter(|f| {
            f.statement.key_report.keys.iter().any(|k| {
                k.role == "kek" && k.local == Some(true) && k.always_sensitive == Some(true)
            })
        })
        .map(|f| f.statement.node_id)
        .collect()
}

/// Verifies a deployment's evidence: the bundle (with `pins` at `now`),
/// every node's signature under the attestation key that the bundle names
/// for it, the nonce, the key attributes (attestation key generated on the
/// token and never extractable; KEKs sensitive and wrappable only under
/// trusted keys), one KEK across the fleet (equal check values), and one
/// binary and one fleet file across the fleet.
pub fn verify(
    doc: &EvidenceDocument,
    pins: &Pins,
    now: u64,
) -> Result<(Verified, Vec<NodeFinding>), EvidenceError> {
    if doc.format != DOCUMENT_FORMAT {
        return Err(EvidenceError::Format(format!(
            "format is {:?}, expected {DOCUMENT_FORMAT:?}",
            doc.format
        )));
    }
    let signed = hex::decode(&doc.signed_bundle)
        .map_err(|_| EvidenceError::Format("signed_bundle is not hex".into()))?;
    let verified = pins.verify(&signed, &doc.fleet_id, now, 0)?;
    let mut findings = Vec::new();
    let mut seen = BTreeSet::new();
    for s in &doc.nodes {
        let st: NodeStatement = serde_json::from_str(&s.statement)
            .map_err(|e| node_err(0, format!("statement does not parse: {e}")))?;
        let n = st.node_id;
        let node = verified
            .bundle
            .node(n)
            .ok_or_else(|| node_err(n, "the bundle names no such node"))?;
        let key_hex = hex::encode(&node.attestation_key);
        if st.attestation_public_key != key_hex {
            return Err(node_err(
                n,
                "its attestation key is not the one in the bundle",
            ));
        }
        let key = VerifyingKey::from_sec1_bytes(&node.attestation_key)
            .map_err(|_| node_err(n, "the bundle's attestation key is not a P-256 point"))?;
        let sig = hex::decode(&s.signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| node_err(n, "the signature is malformed"))?;
        key.verify(&signed_bytes(&s.statement), &sig)
            .map_err(|_| node_err(n, "the statement's signature does not verify"))?;
        if st.version != 1 {
            return Err(node_err(
                n,
                format!("unknown statement version {}", st.version),
            ));
        }
        if st.fleet_id != doc.fleet_id || st.nonce != doc.nonce {
            return Err(node_err(n, "the statement names another fleet or nonce"));
        }
        if st.datacenter != node.datacenter {
            return Err(node_err(n, "its datacenter is not the one in the bundle"));
        }
        if !seen.insert(n) {
            return Err(node_err(n, "two statements for one node"));
        }
        check_keys(&st)?;
        findings.push(NodeFinding { statement: st });
    }
    for n in &verified.bundle.nodes {
        if !seen.contains(&n.node_id) {
            return Err(node_err(
                n.node_id,
                "the bundle names it but the evidence has no statement",
            ));
        }
    }
    let distinct = |f: &dyn Fn(&NodeStatement) -> Vec<String>| {
        findings
            .iter()
            .map(|x| f(&x.statement))
            .collect::<BTreeSet<_>>()
            .len()
    };
    if distinct(&|s| {
        s.key_report
            .keys
            .iter()
            .filter(|k| k.role == "kek")
            .map(|k| format!("{:?}:{:?}", k.kek_version, k.check_value))
            .collect()
    }) > 1
    {
        return Err(EvidenceError::Disagree(
            "their HSMs do not hold the same fleet KEK (check values differ)".into(),
        ));
    }
    if distinct(&|s| vec![s.config_sha256.clone()]) > 1 {
        return Err(EvidenceError::Disagree(
            "they run different fleet files".into(),
        ));
    }
    if distinct(&|s| vec![s.binary_sha256.clone()]) > 1 {
        return Err(EvidenceError::Disagree(
            "they run different node binaries".into(),
        ));
    }
    Ok((verified, findings))
}
