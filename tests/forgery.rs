//! Issue 25's attacks on a node's disk and token, against a real fleet
//! (node processes, RocksDB, SoftHSM tokens, mutual TLS). The HSM
//! checkpoint, not the disk, decides what a node is:
//!
//! - an **operator editing one node's disk** (no PIN, no HSM): an old copy
//!   of node 3's data directory, rewritten with the project's own storage
//!   code to claim a vote of a term past the fleet's (for itself,
//!   committed) and everything purged and applied far ahead;
//! - an **operator deleting a checkpoint**: node 3's checkpoint object
//!   removed from its SoftHSM token and its data directory wiped, started
//!   together with node 2, which missed the lockout, while node 1 is down.
//!
//! The measure: password guesses ≤ attempts committed. Both end with a
//! user the fleet locked out; on 9722beb both gave that user's right
//! password its key back.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use vault_testkit::{Template, TestFleet, copy_tree};
use vault_types::UserId;

type TestResult = anyhow::Result<()>;

fn main() -> ExitCode {
    let tests: Vec<(&str, vault_testkit::FleetTest)> = vec![
        (
            "a_forged_disk_ahead_of_its_checkpoint_is_not_believed",
            a_forged_disk_ahead_of_its_checkpoint_is_not_believed,
        ),
        (
            "a_deleted_checkpoint_and_a_wiped_disk_do_not_make_a_new_voter",
            a_deleted_checkpoint_and_a_wiped_disk_do_not_make_a_new_voter,
        ),
    ];
    vault_testkit::run_fleet_tests(3, tests)
}

const CONVERGE: Duration = Duration::from_secs(60);

/// For `within`, tries the right password again and again: it must never
/// recover the key of a user the fleet locked out.
fn never_recovers(
    rt: &tokio::runtime::Runtime,
    fleet: &TestFleet,
    user: &UserId,
    within: Duration,
    what: &str,
) -> TestResult {
    let short = fleet.client()?.with_deadline(Duration::from_secs(2));
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(k) = rt.block_on(short.recover(user, b"right")) {
            anyhow::bail!(
                "{what} gave {user} a fresh budget: the right password recovered K ({} bytes) after the lockout",
                k.len()
            );
        }
    }
    Ok(())
}

/// The highest Raft term any running node reports.
fn term(fleet: &TestFleet, ids: &[u64]) -> anyhow::Result<u64> {
    let mut best = 0;
    for &id in ids {
        let text = fleet.metrics(id)?;
        let t = text
            .lines()
            .find(|l| l.starts_with("bkv_raft_term{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("no bkv_raft_term in node {id}'s metrics"))?;
        best = best.max(t as u64);
    }
    Ok(best)
}

/// Issue 25's critical finding. On 9722beb node 3 started as the leader
/// of the forged term at once (its checkpoint check called the disk
/// current and kept its vote), the other nodes took the higher term and
/// installed its old state as a snapshot, and the locked user's right
/// password recovered K.
fn a_forged_disk_ahead_of_its_checkpoint_is_not_believed(template: &Template) -> TestResult {
    let mut fleet = TestFleet::started(template, 3, CONVERGE)?;
    let result = (|| -> TestResult {
        let rt = vault_testkit::client::runtime();
        let _entered = rt.enter();
        let client = fleet.client()?.with_deadline(Duration::from_secs(20));
        let victim = UserId::new("forged-ahead-victim")?;
        rt.block_on(client.register(&victim, b"right", 3))?;
        fleet.wait_converged(CONVERGE)?;
        // A copy of node 3's disk while the budget is full.
        fleet.terminate_all(&[3])?;
        let copy = tempfile::tempdir()?;
        let dir3 = fleet.data_dir(3)?;
        copy_tree(&dir3, copy.path(), &[])?;
        fleet.start(3)?;
        fleet.wait_converged(CONVERGE)?;
        vault_testkit::client::lock_out(&rt, &client, &victim)?;
        fleet.wait_converged(CONVERGE)?;
        let t = term(&fleet, &[1, 2, 3])?;
        // The forgery: the old copy, claiming term t + 1 (voted for node
        // 3, committed) and everything purged and applied up to 10 000.
        fleet.terminate_all(&[3])?;
        std::fs::remove_dir_all(&dir3)?;
        copy_tree(copy.path(), &dir3, &[])?;
        let mut vote = openraft::Vote::new(t + 1, 3);
        vote.commit();
        let at = openraft::LogId::new(openraft::CommittedLeaderId::new(t + 1, 3), 10_000);
        vault_storage::tamper::forge_ahead(&dir3, vote, at)?;
        fleet.start(3)?;
        never_recovers(
            &rt,
            &fleet,
            &victim,
            Duration::from_secs(15),
            "node 3's forged disk",
        )?;
        let log3 = fleet.log(3);
        ensure!(
            log3.contains("moved aside") && log3.contains("BEHIND THE HSM CHECKPOINT"),
            "node 3 did not say it moved its disk aside and started behind"
        );
        // It catches up with the fleet, which still has the user locked.
        fleet.wait_converged(CONVERGE)?;
        match rt.block_on(client.recover(&victim, b"right")) {
            Err(vault_client::ClientError::Locked) => {}
            other => anyhow::bail!("after node 3 caught up, the right password gave {other:?}"),
        }
        let aside = std::fs::read_dir(dir3.parent().context("data dir parent")?)?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains(".unverified-"));
        ensure!(aside, "the forged data directory was not kept aside");
        Ok(())
    })();
    fleet.with_logs(result)
}

/// The newest token object file of node `id` (SoftHSM writes each object
/// to a file of its own; the checkpoint is rewritten at every log fsync,
/// so after the node has run it is the newest one).
fn newest_object(fleet: &TestFleet, id: u64) -> anyhow::Result<PathBuf> {
    let node = fleet.fleet().node(id).map_err(anyhow::Error::msg)?;
    let dir = node
        .hsm
        .softhsm_dir
        .clone()
        .context("node has no SoftHSM directory")?
        .join("tokens");
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for token in std::fs::read_dir(&dir)? {
        for f in std::fs::read_dir(token?.path())? {
            let f = f?;
            let name = f.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".object") || name == "token.object" {
                continue;
            }
            let m = f.metadata()?.modified()?;
            if newest.as_ref().is_none_or(|(t, _)| m > *t) {
                newest = Some((m, f.path()));
            }
        }
    }
    newest.map(|(_, p)| p).context("no token objects")
}

/// Issue 25's high finding. On 9722beb a token without a checkpoint and an
/// empty disk was a new node that voted at once: with node 2, which missed
/// the lockout, it elected node 2, which served the user's old budget.
fn a_deleted_checkpoint_and_a_wiped_disk_do_not_make_a_new_voter(
    template: &Template,
) -> TestResult {
    let mut fleet = TestFleet::started(template, 3, CONVERGE)?;
    let result = (|| -> TestResult {
        let rt = vault_testkit::client::runtime();
        let _entered = rt.enter();
        let client = fleet.client()?.with_deadline(Duration::from_secs(20));
        let victim = UserId::new("lost-checkpoint-victim")?;
        rt.block_on(client.register(&victim, b"right", 3))?;
        fleet.wait_converged(CONVERGE)?;
        // Node 2 misses the lockout.
        fleet.terminate_all(&[2])?;
        vault_testkit::client::lock_out(&rt, &client, &victim)?;
        fleet.terminate_all(&[1, 3])?;
        // Node 3: its checkpoint object deleted, its disk wiped.
        let object = newest_object(&fleet, 3)?;
        std::fs::remove_file(&object)?;
        let dir3 = fleet.data_dir(3)?;
        std::fs::remove_dir_all(&dir3)?;
        std::fs::create_dir_all(&dir3)?;
        fleet.start_all([2, 3])?;
        never_recovers(
            &rt,
            &fleet,
            &victim,
            Duration::from_secs(15),
            "a deleted checkpoint and a wiped disk",
        )?;
        ensure!(
            fleet.log(3).contains("LOST ANTI-ROLLBACK CHECKPOINT"),
            "node 3 did not say it lost its checkpoint (was {} the checkpoint?)",
            object.display()
        );
        // Node 1 back: the fleet elects a leader with the lockout, node 3
        // learns its term, catches up and votes again.
        fleet.start(1)?;
        let status = fleet.wait_converged(CONVERGE)?;
        match rt.block_on(client.recover(&victim, b"right")) {
            Err(vault_client::ClientError::Locked) => {}
            other => anyhow::bail!("with node 1 back, the right password gave {other:?}"),
        }
        let n3 = vault_testkit::node_status(&status, 3).context("status")?;
        ensure!(
            n3["checkpoint_resets"] == 1,
            "node 3 does not count the loss: {n3:#}"
        );
        ensure!(
            fleet
                .log(3)
                .contains("caught up with the leader after a lost checkpoint"),
            "node 3 did not catch up"
        );
        Ok(())
    })();
    fleet.with_logs(result)
}
