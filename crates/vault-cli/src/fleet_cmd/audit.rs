//! `vaultctl audit`: anyone's check of the witness log, the bundles, the
//! tree heads learned elsewhere, and deployment evidence.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use vault_proto::v1::{GetConsistencyProofRequest, GetEntriesRequest, GetTreeHeadsRequest};
use vault_transparency::audit::{Consistency, EpochRow, audit};
use vault_transparency::evidence::EvidenceDocument;
use vault_transparency::head::TreeHead;
use vault_transparency::{Pins, SignedBundle};

use super::{AuditArgs, fleet_dir, from_pb, hashes, now_secs, say};
use crate::cluster_cmd::code_name;
use crate::user_cmd::read_pins;

/// Runs `vaultctl audit`.
pub fn run_audit(a: AuditArgs) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(audit_cmd(a))
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
        vault_fleet::pki::write_file(
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
            let resets = match f.statement.checkpoint_resets {
                0 => String::new(),
                n => format!(
                    "; WARNING: its anti-rollback checkpoint was lowered {n} time(s) by an operator (--accept-rollback)"
                ),
            };
            format!(
                "node {} ({}, {} {} serial {} firmware {}){resets}",
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
