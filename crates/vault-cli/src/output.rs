//! Human-readable rendering of key reports.

use std::fmt::Write;

use vault_hsm::{KeyAttributes, KeyReport};

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    }
}

fn export_policy(k: &KeyAttributes) -> &'static str {
    match (k.sensitive, k.extractable, k.wrap_with_trusted) {
        (Some(true), Some(false), _) => "never leaves the HSM",
        (Some(true), Some(true), Some(true)) => "leaves only wrapped under an SO-trusted key",
        (Some(true), Some(true), _) => "leaves wrapped under any wrapping key",
        _ => "NOT PROTECTED: readable in plaintext",
    }
}

/// The report as a few aligned lines.
pub fn render_report(report: &KeyReport) -> String {
    let t = &report.token;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "token {:?}: {} {}, serial {}, firmware {}, hardware {}",
        t.label, t.manufacturer, t.model, t.serial, t.firmware, t.hardware
    );
    for k in &report.keys {
        let _ = writeln!(
            out,
            "  {:<16} {:<11} {:<3}  sensitive={} extractable={} never_extractable={} local={} wrap_with_trusted={}{}",
            k.label,
            k.role,
            k.key_type,
            yes_no(k.sensitive),
            yes_no(k.extractable),
            yes_no(k.never_extractable),
            yes_no(k.local),
            yes_no(k.wrap_with_trusted),
            k.check_value
                .as_ref()
                .map(|c| format!(" check_value={c}"))
                .unwrap_or_default(),
        );
        let _ = writeln!(out, "  {:<16} -> {}", "", export_policy(k));
    }
    out
}
