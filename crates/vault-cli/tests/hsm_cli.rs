//! `vaultctl hsm` end to end: real SoftHSM2 token directories, one per HSM,
//! each command in its own process, exactly as an operator runs them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const VAULTCTL: &str = env!("CARGO_BIN_EXE_vaultctl");

fn module() -> PathBuf {
    vault_hsm::softhsm::find_module().unwrap_or_else(|e| panic!("{e}"))
}

fn pin_file(dir: &Path, name: &str, pin: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{pin}\n")).expect("write PIN file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn vaultctl(args: &[&str]) -> Output {
    // Clear any SOFTHSM2_CONF of the caller: every command names its dir.
    Command::new(VAULTCTL)
        .args(args)
        .env_remove("SOFTHSM2_CONF")
        .output()
        .expect("run vaultctl")
}

fn ok(args: &[&str]) -> String {
    let out = vaultctl(args);
    assert!(
        out.status.success(),
        "vaultctl {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn fails(args: &[&str]) -> String {
    let out = vaultctl(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "vaultctl {args:?} should fail with 1: {out:?}"
    );
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

fn kek(report: &Value) -> &Value {
    report["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["role"] == "kek"))
        .unwrap_or_else(|| panic!("no KEK in {report}"))
}

#[test]
fn init_report_and_ceremony_across_two_softhsm_directories() {
    let _ = module();
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let so = pin_file(t, "so.pin", "so-secret-1");
    let user = pin_file(t, "user.pin", "user-secret-1");
    let (a, b) = (t.join("hsm-a"), t.join("hsm-b"));
    let s = |p: &Path| p.display().to_string();

    let founded: Value = serde_json::from_str(&ok(&[
        "hsm",
        "init",
        "--softhsm-dir",
        &s(&a),
        "--label",
        "node-1",
        "--so-pin-file",
        &s(&so),
        "--user-pin-file",
        &s(&user),
        "--kek",
        "--json",
    ]))
    .expect("init JSON");
    let k = kek(&founded);
    assert_eq!(k["sensitive"], true);
    assert_eq!(k["local"], true);
    assert_eq!(k["wrap_with_trusted"], true);
    for role in ["attestation", "transport"] {
        let key = founded["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["role"] == role))
            .unwrap_or_else(|| panic!("no {role} key"));
        assert_eq!(key["extractable"], false, "{role}");
        assert_eq!(key["never_extractable"], true, "{role}");
    }

    ok(&[
        "hsm",
        "init",
        "--softhsm-dir",
        &s(&b),
        "--label",
        "node-2",
        "--so-pin-file",
        &s(&so),
        "--user-pin-file",
        &s(&user),
    ]);
    ok(&[
        "hsm",
        "ceremony",
        "--from-dir",
        &s(&a),
        "--from-label",
        "node-1",
        "--from-so-pin-file",
        &s(&so),
        "--from-user-pin-file",
        &s(&user),
        "--to-dir",
        &s(&b),
        "--to-label",
        "node-2",
        "--to-user-pin-file",
        &s(&user),
    ]);
    let received: Value = serde_json::from_str(&ok(&[
        "hsm",
        "report",
        "--softhsm-dir",
        &s(&b),
        "--label",
        "node-2",
        "--user-pin-file",
        &s(&user),
        "--json",
    ]))
    .expect("report JSON");
    let copy = kek(&received);
    assert_eq!(copy["check_value"], k["check_value"], "B holds A's KEK");
    assert_eq!(copy["sensitive"], true);
    assert_eq!(copy["extractable"], false);
    assert_eq!(copy["local"], false);
    assert_ne!(received["token"]["serial"], founded["token"]["serial"]);

    // The directories really are separate HSMs: A's token is not in B's.
    let err = fails(&[
        "hsm",
        "report",
        "--softhsm-dir",
        &s(&b),
        "--label",
        "node-1",
        "--user-pin-file",
        &s(&user),
    ]);
    assert!(err.contains("no token labelled \"node-1\""), "{err}");

    // pkcs11-tool, an independent PKCS#11 client, sees the keys with the
    // same attributes.
    let listed = Command::new("pkcs11-tool")
        .args([
            "--module",
            &s(&module()),
            "--token-label",
            "node-2",
            "--login",
            "--pin",
        ])
        .arg("user-secret-1")
        .arg("--list-objects")
        .env("SOFTHSM2_CONF", b.join("softhsm2.conf"))
        .output()
        .expect("pkcs11-tool is installed by ./scripts/test.sh (Debian package opensc)");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("label:      bkv-kek-v1"), "{listed}");
    assert!(listed.contains("Access:     sensitive"), "{listed}");

    // The human report names the export policy of each key.
    let human = ok(&[
        "hsm",
        "report",
        "--softhsm-dir",
        &s(&a),
        "--label",
        "node-1",
        "--user-pin-file",
        &s(&user),
    ]);
    assert!(
        human.contains("leaves only wrapped under an SO-trusted key"),
        "{human}"
    );
    assert!(!human.contains("user-secret-1"));
}

#[test]
fn wrong_inputs_fail_with_messages_that_name_them() {
    let _ = module();
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let s = |p: &Path| p.display().to_string();
    let so = pin_file(t, "so.pin", "so-secret-2");
    let user = pin_file(t, "user.pin", "user-secret-2");
    let wrong = pin_file(t, "wrong.pin", "not-the-pin");
    let dir = t.join("hsm");
    ok(&[
        "hsm",
        "init",
        "--softhsm-dir",
        &s(&dir),
        "--label",
        "node-9",
        "--so-pin-file",
        &s(&so),
        "--user-pin-file",
        &s(&user),
        "--kek",
    ]);

    let err = fails(&[
        "hsm",
        "report",
        "--softhsm-dir",
        &s(&dir),
        "--label",
        "node-9",
        "--user-pin-file",
        &s(&wrong),
    ]);
    assert!(err.contains("wrong PIN") && err.contains("node-9"), "{err}");
    assert!(!err.contains("not-the-pin"), "the PIN leaked: {err}");

    let open = t.join("open.pin");
    std::fs::write(&open, "x").expect("write");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = fails(&[
        "hsm",
        "report",
        "--softhsm-dir",
        &s(&dir),
        "--label",
        "node-9",
        "--user-pin-file",
        &s(&open),
    ]);
    assert!(err.contains("chmod 600"), "{err}");

    let err = fails(&[
        "hsm",
        "report",
        "--softhsm-dir",
        &s(&dir),
        "--label",
        "node-9",
        "--user-pin-file",
        &s(&user),
        "--module",
        "/nonexistent/pkcs11.so",
    ]);
    assert!(err.contains("/nonexistent/pkcs11.so"), "{err}");

    let err = fails(&[
        "hsm",
        "report",
        "--softhsm-dir",
        &s(&t.join("nowhere")),
        "--label",
        "node-9",
        "--user-pin-file",
        &s(&user),
    ]);
    assert!(err.contains("no SoftHSM directory"), "{err}");

    let err = fails(&[
        "hsm",
        "init",
        "--softhsm-dir",
        &s(&dir),
        "--label",
        "node-9",
        "--so-pin-file",
        &s(&so),
        "--user-pin-file",
        &s(&user),
    ]);
    assert!(err.contains("exists already"), "{err}");

    let short = pin_file(t, "short.pin", "ab");
    let err = fails(&[
        "hsm",
        "init",
        "--softhsm-dir",
        &s(&t.join("hsm-short")),
        "--label",
        "node-short",
        "--so-pin-file",
        &s(&so),
        "--user-pin-file",
        &s(&short),
    ]);
    assert!(err.contains("user PIN is 2 bytes"), "{err}");

    // A transport key whose fingerprint the operator did not confirm is refused.
    let transport = t.join("transport.json");
    ok(&[
        "hsm",
        "export-transport",
        "--softhsm-dir",
        &s(&dir),
        "--label",
        "node-9",
        "--out",
        &s(&transport),
    ]);
    let err = fails(&[
        "hsm",
        "wrap-kek",
        "--softhsm-dir",
        &s(&dir),
        "--label",
        "node-9",
        "--so-pin-file",
        &s(&so),
        "--user-pin-file",
        &s(&user),
        "--transport",
        &s(&transport),
        "--expect-fingerprint",
        "00ff",
        "--out",
        &s(&t.join("w.json")),
    ]);
    assert!(err.contains("refusing to send the KEK"), "{err}");
}

#[test]
fn help_explains_every_hsm_command() {
    let top = ok(&["--help"]);
    assert!(top.contains("hsm"), "{top}");
    let hsm = ok(&["hsm", "--help"]);
    for cmd in [
        "init",
        "report",
        "export-transport",
        "wrap-kek",
        "import-kek",
        "ceremony",
    ] {
        assert!(hsm.contains(cmd), "hsm --help lacks {cmd}: {hsm}");
    }
    let bad = vaultctl(&["hsm", "frobnicate"]);
    assert_eq!(bad.status.code(), Some(2));
}
