//! KEK rotation that crypto-shreds, against a real fleet (node processes,
//! RocksDB, SoftHSM tokens, mutual TLS).
//!
//! The adversary: anyone holding a copy of a node's data directory made
//! before the rotation (a backup, an old disk, a snapshot): every sealed
//! record in it, including records since locked or deleted. After the
//! rotation and the old version's destruction, nothing in that copy opens
//! with any key left in any token, every live user still recovers, and a
//! user locked before the rotation is gone for good.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, ensure};
use openraft::storage::{RaftLogReader, RaftLogStorage};
use vault_testkit::{FleetSpec, Template, TestFleet, copy_tree};
use vault_types::{Command, UserId, sealed_kek_version};

type TestResult = anyhow::Result<()>;

fn main() -> ExitCode {
    let tests: Vec<(&str, vault_testkit::FleetTest)> = vec![(
        "a_rotation_survives_a_leader_kill_and_shreds_what_old_copies_hold",
        a_rotation_survives_a_leader_kill_and_shreds_what_old_copies_hold,
    )];
    vault_testkit::run_fleet_tests(3, tests)
}

const CONVERGE: Duration = Duration::from_secs(30);

/// The KEK version of every sealed blob a data directory holds: in its
/// applied state and in every log entry still on disk (registrations of
/// records since locked or deleted among them). `None` for bytes that are
/// not a blob.
fn blob_versions(rt: &tokio::runtime::Runtime, dir: &Path) -> anyhow::Result<Vec<Option<u32>>> {
    let (mut log, sm) = vault_storage::open(dir).context("open the copy")?;
    let mut out = Vec::new();
    sm.reader().with_state(|s| {
        for (version, n) in s.blobs_by_kek_version() {
            out.extend(std::iter::repeat_n(version, n as usize));
        }
    });
    let entries = rt.block_on(async {
        let state = log.get_log_state().await?;
        let last = state.last_log_id.map_or(0, |l| l.index);
        let first = state.last_purged_log_id.map_or(0, |l| l.index + 1);
        log.try_get_log_entries(first..=last).await
    })?;
    for entry in entries {
        let openraft::EntryPayload::Normal(batch) = entry.payload else {
            continue;
        };
        for proposal in batch.0 {
            match proposal.command {
                Command::InitFleet {
                    sealed_server_setup,
                    sealed_hpke_key,
                    ..
                } => {
                    out.push(sealed_kek_version(&sealed_server_setup.0));
                    out.push(sealed_kek_version(&sealed_hpke_key.0));
                }
                Command::Register { sealed_record, .. } => {
                    out.push(sealed_kek_version(&sealed_record.0));
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

fn a_rotation_survives_a_leader_kill_and_shreds_what_old_copies_hold(
    template: &Template,
) -> TestResult {
    let mut fleet = TestFleet::create(template, &FleetSpec::voters(3))?;
    fleet.start_all(1..=3)?;
    fleet.init()?;
    fleet.wait_converged(CONVERGE)?;
    let result = (|| -> TestResult {
        let rt = vault_testkit::client::runtime();
        let _entered = rt.enter();
        let client = fleet.client()?.with_deadline(Duration::from_secs(20));
        let users: Vec<(UserId, Vec<u8>)> = (0..6)
            .map(|i| {
                Ok((
                    UserId::new(format!("live-{i}"))?,
                    format!("pw-{i}").into_bytes(),
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        for (u, pw) in &users {
            rt.block_on(client.register(u, pw, 5))?;
        }
        let gone = UserId::new("locked-before-rotation")?;
        rt.block_on(client.register(&gone, b"right", 2))?;
        for _ in 0..2 {
            match rt.block_on(client.recover(&gone, b"wrong")) {
                Err(vault_client::ClientError::WrongPassword { .. })
                | Err(vault_client::ClientError::Locked) => {}
                other => anyhow::bail!("a wrong password gave {other:?}"),
            }
        }
        fleet.wait_converged(CONVERGE)?;

        // The copy an attacker keeps: node 3's disk before the rotation.
        fleet.terminate(3, Duration::from_secs(20))?;
        let copy = tempfile::tempdir()?;
        let dir3 = fleet.data_dir(3)?;
        copy_tree(&dir3, copy.path(), &[])?;
        fleet.start(3)?;
        fleet.wait_converged(CONVERGE)?;

        // Step 1: KEK v2 on the founding token (node 1's); step 2: the
        // ceremony to nodes 2 and 3, while they run.
        let hsm = |id: u64| -> anyhow::Result<(String, String, String, String)> {
            let n = fleet.fleet().node(id).map_err(anyhow::Error::msg)?;
            let dir = n.hsm.softhsm_dir.clone().context("a SoftHSM node")?;
            let so = n
                .hsm
                .pin_file
                .parent()
                .context("pin dir")?
                .join(format!("{}.so.pin", n.hsm.token_label));
            Ok((
                dir.display().to_string(),
                n.hsm.token_label.clone(),
                n.hsm.pin_file.display().to_string(),
                so.display().to_string(),
            ))
        };
        let (dir1, label1, pin1, so1) = hsm(1)?;
        let made = fleet.vaultctl_ok(&[
            "hsm",
            "new-kek",
            "--softhsm-dir",
            &dir1,
            "--label",
            &label1,
            "--user-pin-file",
            &pin1,
        ])?;
        ensure!(made.trim() == "2", "new-kek made version {made:?}");
        for id in [2, 3] {
            let (dir, label, pin, _) = hsm(id)?;
            fleet.vaultctl_ok(&[
                "hsm",
                "ceremony",
                "--from-dir",
                &dir1,
                "--from-label",
                &label1,
                "--from-so-pin-file",
                &so1,
                "--from-user-pin-file",
                &pin1,
                "--to-dir",
                &dir,
                "--to-label",
                &label,
                "--to-user-pin-file",
                &pin,
            ])?;
        }

        // Step 3, halfway: the fleet's secrets and one batch of two.
        fleet.vaultctl_ok(&[
            "cluster",
            "rotate-kek",
            "--to",
            "2",
            "--batch",
            "2",
            "--steps",
            "2",
        ])?;
        let status = fleet.status()?;
        let halfway = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["fleet_kek_version"].as_u64())
            .max();
        ensure!(
            halfway == Some(2),
            "the fleet did not move to v2: {status:#}"
        );
        // The leader dies in the middle; the rotation resumes under the
        // next one.
        let leader = fleet.wait_leader(&[1, 2, 3], CONVERGE)?;
        fleet.kill(leader)?;
        let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
        fleet.wait_leader(&others, CONVERGE)?;
        fleet.start(leader)?;
        fleet.wait_converged(CONVERGE)?;
        let done = fleet.vaultctl_ok(&["cluster", "rotate-kek", "--to", "2", "--batch", "2"])?;
        ensure!(done.contains("rotated to KEK v2"), "{done}");
        // A registration after the move is sealed under v2 too.
        let late = UserId::new("registered-during-rotation")?;
        rt.block_on(client.register(&late, b"late", 3))?;

        // Step 4: the old version destroyed everywhere.
        fleet.wait_converged(CONVERGE)?;
        fleet.vaultctl_ok(&["cluster", "destroy-kek", "--version", "1"])?;
        let status = fleet.status()?;
        for id in 1..=3u64 {
            let n = vault_testkit::node_status(&status, id).context("status")?;
            ensure!(
                n["kek_versions"] == serde_json::json!([2]) && n["fleet_kek_version"] == 2,
                "node {id} after destroy-kek: {n:#}"
            );
        }

        // Every live user still recovers; the locked one is gone for good.
        for (u, pw) in &users {
            let k = rt
                .block_on(client.recover(u, pw))
                .with_context(|| format!("{u} after the rotation"))?;
            ensure!(k.len() == 32, "{u}: K of {} bytes", k.len());
        }
        rt.block_on(client.recover(&late, b"late"))?;
        match rt.block_on(client.recover(&gone, b"right")) {
            Err(vault_client::ClientError::Locked) => {}
            other => anyhow::bail!("the user locked before the rotation: {other:?}"),
        }

        // The copy: every blob in it (its state, and its log with the
        // locked user's registration) names v1, which no token holds any
        // more; GCM authenticates the version in the header, so no other
        // key opens it.
        let versions = blob_versions(&rt, copy.path())?;
        let sealed: Vec<u32> = versions.iter().filter_map(|v| *v).collect();
        ensure!(
            sealed.len() >= 2 * (users.len() + 1) + 2,
            "the copy holds only {} blobs: {versions:?}",
            sealed.len()
        );
        ensure!(
            sealed.iter().all(|&v| v == 1),
            "blobs in the copy under versions other than 1: {sealed:?}"
        );
        // A disk made after the rotation has nothing under v1 left live.
        fleet.terminate(2, Duration::from_secs(20))?;
        let dir2 = fleet.data_dir(2)?;
        let after = tempfile::tempdir()?;
        copy_tree(&dir2, after.path(), &[])?;
        fleet.start(2)?;
        let (_, sm) = vault_storage::open(after.path())?;
        let live = sm.reader().with_state(|s| s.blobs_by_kek_version());
        ensure!(
            live.keys().all(|v| *v == Some(2)),
            "a disk after the rotation still has live blobs under {live:?}"
        );
        fleet.wait_converged(CONVERGE)?;

        // An operator puts node 3's pre-rotation copy back and forces it in
        // with --accept-rollback: every record in it is sealed under v1,
        // which node 3's token destroyed. Adopted, they would all be lost
        // (a snapshot of that state would spread the loss). The node must
        // refuse to start, and say why.
        fleet.terminate(3, Duration::from_secs(20))?;
        std::fs::remove_dir_all(&dir3)?;
        copy_tree(copy.path(), &dir3, &[])?;
        fleet.start_with(3, &["--accept-rollback"])?;
        let give_up = std::time::Instant::now() + CONVERGE;
        while fleet.is_running(3) && std::time::Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(100));
        }
        ensure!(
            !fleet.is_running(3),
            "node 3 adopted a pre-rotation disk under --accept-rollback: its records are sealed under KEK v1, destroyed on its token, and are lost"
        );
        let log = fleet.log(3);
        ensure!(
            log.contains("destroyed KEK version"),
            "node 3 stopped without saying why: {}",
            log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
        Ok(())
    })();
    fleet.with_logs(result)
}
