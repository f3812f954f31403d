//! `scripts/fleet.sh` end to end on the shipped five-node fleet file: `up`
//! provisions (through `vaultctl fleet provision`) and starts every node of
//! the file, not a hard-coded three, and `down` stops every one of them.
//!
//! The file is `cluster-configs/local-5.toml` with its loopback ports
//! replaced by free ones (tests never take fixed ports); the fleet
//! directory is a temporary one; the binaries are the ones this test was
//! built with (`BKV_NO_BUILD=1`: no cargo inside cargo).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Fleet {
    dir: tempfile::TempDir,
    config: PathBuf,
    witness: String,
    target: PathBuf,
}

impl Fleet {
    fn script(&self, args: &[&str]) -> Output {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Command::new(root.join("scripts/fleet.sh"))
            .args(args)
            .env("FLEET_DIR", self.dir.path())
            .env("FLEET_CONFIG", &self.config)
            .env("WITNESS_ADDR", &self.witness)
            .env("CARGO_TARGET_DIR", &self.target)
            .env("BKV_NO_BUILD", "1")
            .env_remove("VAULT_NODE")
            .output()
            .expect("run scripts/fleet.sh")
    }

    /// Pids of processes whose command line names this fleet's directory
    /// or file (nodes, witness).
    fn processes(&self) -> Vec<u32> {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let config = self.config.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmd);
            let env = String::from_utf8_lossy(&environ);
            if (text.contains("vault-node") || text.contains("vault-witness"))
                && (text.contains(&dir) || env.contains(&dir) || env.contains(&config))
            {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Stops whatever a failed test left running.
        let _ = self.script(&["down"]);
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `local-5.toml` with every `127.0.0.1:<port>` replaced by a free port.
fn local_5_on_free_ports(into: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let original =
        std::fs::read_to_string(root.join("cluster-configs/local-5.toml")).expect("local-5.toml");
    let count = original.matches("\"127.0.0.1:").count();
    assert_eq!(count, 15, "local-5.toml has three addresses per node");
    let mut ports = vault_testkit::free_ports(count)
        .expect("free ports")
        .into_iter();
    let mut out = String::new();
    let mut rest = original.as_str();
    while let Some(i) = rest.find("\"127.0.0.1:") {
        let (head, tail) = rest.split_at(i + "\"127.0.0.1:".len());
        out.push_str(head);
        let end = tail.find('"').expect("closing quote");
        out.push_str(&ports.next().expect("a port").to_string());
        rest = &tail[end..];
    }
    out.push_str(rest);
    let path = into.join("local-5.toml");
    std::fs::write(&path, out).expect("write the fleet file");
    path
}

#[test]
fn fleet_sh_brings_up_every_node_of_the_five_node_file_and_stops_them() {
    let bins = vault_testkit::Bins::locate().expect("built binaries");
    let profile = bins.vaultctl.parent().expect("profile dir");
    let target = profile.parent().expect("target dir").to_owned();
    let files = tempfile::tempdir().expect("tempdir");
    let config = local_5_on_free_ports(files.path());
    let witness = format!(
        "127.0.0.1:{}",
        vault_testkit::free_ports(1).expect("a port")[0]
    );
    let fleet = Fleet {
        dir: tempfile::Builder::new()
            .prefix("bkv-fleet-sh-")
            .tempdir()
            .expect("tempdir"),
        config,
        witness,
        target,
    };

    let up = fleet.script(&["up"]);
    assert!(up.status.success(), "fleet.sh up failed:\n{}", text(&up));
    let status = fleet.script(&["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let v: serde_json::Value =
        serde_json::from_slice(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&status)));
    assert_eq!(v["converged"], true, "{v:#}");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 5, "{v:#}");
    for n in nodes {
        assert_eq!(n["reachable"], true, "{v:#}");
        let voters = n["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter(|m| m["voter"] == true)
            .count();
        assert_eq!(voters, 5, "every node sees five voters: {v:#}");
    }
    for id in 1..=5 {
        assert!(
            fleet.dir.path().join(format!("node-{id}.pid")).exists(),
            "no pid file for node {id}"
        );
    }
    let running = fleet.processes();
    assert_eq!(running.len(), 6, "five nodes and the witness: {running:?}");

    let down = fleet.script(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    let left = fleet.processes();
    assert!(left.is_empty(), "still running after down: {left:?}");
}
