//! `vault-bench` end to end: it starts a fleet of its own (`--spawn
//! local-3`, real SoftHSM tokens and node processes), measures this
//! machine's ceilings in a throwaway token, runs workloads, writes its JSON
//! summary, and leaves no node or fleet directory behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bench() -> PathBuf {
    vault_testkit::Bins::locate()
        .expect("built binaries")
        .vault_node
        .with_file_name("vault-bench")
}

fn run(args: &[&str]) -> Output {
    Command::new(bench())
        .args(args)
        // Not the developer's own fleet: --spawn makes its own.
        .env_remove("BKV_FLEET_DIR")
        .env_remove("BKV_FLEET_CONFIG")
        .output()
        .expect("run vault-bench")
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("the JSON summary")).expect("JSON")
}

/// What a successful `--spawn local-3` run with two clients left: its JSON
/// summary and its output.
struct SpawnedRun {
    summary: serde_json::Value,
    stdout: String,
    stderr: String,
}

/// Runs `workload` on a fleet vault-bench spawns, with two clients and
/// `args`, and checks that it succeeded.
fn run_spawned(workload: &str, args: &[&str]) -> SpawnedRun {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let json = out_dir.path().join("summary.json");
    let mut all = vec![
        "--spawn",
        "local-3",
        "--workload",
        workload,
        "--concurrency",
        "2",
    ];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", json.to_str().expect("utf-8 path")]);
    let out = run(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    SpawnedRun {
        summary: summary(&json),
        stdout,
        stderr,
    }
}

/// The spawned fleet's directory, from the progress output; checks that it
/// is gone and that no process still runs from it.
fn assert_fleet_gone(stderr: &str) {
    let dir = stderr
        .lines()
        .find_map(|l| l.strip_prefix("fleet up in "))
        .unwrap_or_else(|| panic!("no fleet directory in:\n{stderr}"));
    assert!(!Path::new(dir).exists(), "{dir} left behind");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !cmdline.contains(dir),
            "a process still runs from {dir}: {cmdline}"
        );
    }
}

#[test]
fn delete_on_a_spawned_fleet_with_the_ceilings() {
    let SpawnedRun {
        summary: v,
        stdout,
        stderr,
    } = run_spawned("delete", &["--pool", "5", "--ceiling"]);
    assert_eq!(v["workload"], "delete", "{v:#}");
    assert_eq!(
        v["ok"], 10,
        "two workers delete their five users each: {v:#}"
    );
    assert_eq!(v["errors"], 0, "{v:#}");
    for field in [
        "ceiling_single_core_opaque_logins_per_s",
        "ceiling_single_core_hsm_unseals_per_s",
        "fraction_of_two_core_opaque_ceiling",
        "throughput_per_s",
    ] {
        assert!(v[field].as_f64().is_some_and(|x| x > 0.0), "{field}: {v:#}");
    }
    let nodes = v["storage_by_node"].as_object().expect("storage_by_node");
    assert_eq!(nodes.len(), 3, "{v:#}");
    for n in nodes.values() {
        assert!(
            n["proposals_per_entry"].as_f64().is_some_and(|x| x >= 1.0),
            "{v:#}"
        );
    }
    // Each delete is one client call, and commits: the leader replicates
    // its entry to both followers (two deletes may share one entry).
    let rpcs = v["rpcs_per_op"].as_object().expect("rpcs_per_op");
    let per_op = |m: &str| rpcs.get(m).and_then(|x| x.as_f64()).unwrap_or(0.0);
    assert!((1.0..1.5).contains(&per_op("Frontend/Delete")), "{v:#}");
    assert!(per_op("Peer/AppendEntries") >= 1.0, "{v:#}");
    assert!(
        stdout.contains("calls served per operation (all nodes): "),
        "{stdout}"
    );
    assert!(stdout.contains("SoftHSM unseals/s on one core"), "{stdout}");
    assert_fleet_gone(&stderr);
}

#[test]
fn mixed_on_a_spawned_fleet_stops_after_the_operation_count() {
    let SpawnedRun {
        summary: v, stderr, ..
    } = run_spawned("mixed", &["--ops", "22"]);
    // Two workers each finish the operation they are in when the count is
    // reached, so it may end one or two past it.
    let total = v["ok"].as_u64().unwrap_or(0) + v["errors"].as_u64().unwrap_or(0);
    assert!((22..=24).contains(&total), "{v:#}");
    assert_eq!(v["errors"], 0, "{v:#}");
    let p50 = v["latency_ms"]["p50"].as_f64().unwrap_or(0.0);
    let p99 = v["latency_ms"]["p99"].as_f64().unwrap_or(0.0);
    assert!(p50 > 0.0 && p99 >= p50, "{v:#}");
    assert_fleet_gone(&stderr);
}

#[test]
fn bad_arguments_are_refused_before_anything_starts() {
    for (args, code, says) in [
        (
            &["--spawn", "local-9"][..],
            1,
            "expected local-N with N from 1 to 7",
        ),
        (&["--spawn", "remote"][..], 1, "expected local-N"),
        (
            &["--concurrency", "0", "--spawn", "local-3"][..],
            1,
            "at least 1",
        ),
        (&["--workload", "nope"][..], 2, "invalid value"),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("fleet up in"), "{args:?}: {stderr}");
    }
}
