//! Attacks from inside the fleet's perimeter, against a real fleet (node
//! processes, RocksDB, SoftHSM tokens, mutual TLS):
//!
//! - a **disk thief** holding a copy of every file of the fleet directory
//!   and a node's data directory, but no session on any HSM;
//! - a **member certificate** (a node's name, signed by the fleet CA) used
//!   to forward commands a frontend call never produces;
//! - an **operator restoring old data**: every node's data directory put
//!   back to a copy taken before a user's attempts were spent (or one
//!   node's, alone).
//!
//! The second is a narrowing, not a wall: Raft is not Byzantine fault
//! tolerant, and a member certificate can still send `AppendEntries` under
//! a term it never won (docs/THREAT-MODEL.md). What the first test shows is
//! that getting one now takes the member's HSM.
//!
//! Each test states the measure it checks: "no state change without the
//! right credential", or "password guesses ≤ attempts committed".

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, ensure};
use vault_fleet::identity::Identity;
use vault_testkit::client::Driver;
use vault_testkit::{Template, TestFleet, copy_tree};
use vault_types::{
    Command, FleetId, Generation, Proposal, Reply, RequestDigest, RequestId, RequestMeta,
    SealedBytes, Timestamp, UserId,
};

type TestResult = anyhow::Result<()>;

fn main() -> ExitCode {
    let tests: Vec<(&str, vault_testkit::FleetTest)> = vec![
        (
            "a_copy_of_a_nodes_disk_cannot_pose_as_the_node",
            a_copy_of_a_nodes_disk_cannot_pose_as_the_node,
        ),
        (
            "a_member_certificate_cannot_forward_operator_or_malformed_commands",
            a_member_certificate_cannot_forward_operator_or_malformed_commands,
        ),
        (
            "old_disks_on_every_node_do_not_bring_attempts_back",
            old_disks_on_every_node_do_not_bring_attempts_back,
        ),
        (
            "a_node_restored_alone_catches_up_and_serves_the_current_counters",
            a_node_restored_alone_catches_up_and_serves_the_current_counters,
        ),
        (
            "a_restored_node_does_not_follow_a_leader_of_a_term_it_left",
            a_restored_node_does_not_follow_a_leader_of_a_term_it_left,
        ),
    ];
    vault_testkit::run_fleet_tests(3, tests)
}

const CONVERGE: Duration = Duration::from_secs(30);

fn proposal(request: bool, command: Command) -> Proposal {
    Proposal {
        request: request.then(|| {
            let id = RequestId(rand::random());
            RequestMeta {
                id,
                digest: RequestDigest::of(&[&id.0]),
            }
        }),
        at: Timestamp(1),
        command,
    }
}

/// The command a thief most wants through: a bundle epoch that leaves no
/// room for the next one, stranding every app pinned to the chain.
fn poison_bundle() -> Command {
    Command::SetBundle {
        bundle: b"not a bundle".to_vec(),
        epoch: u64::MAX,
    }
}

/// Every file under `dir` holding a PEM private key, whatever its name.
fn private_keys(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else if let Ok(bytes) = std::fs::read(entry.path())
                && bytes
                    .windows(b"PRIVATE KEY-----".len())
                    .any(|w| w == b"PRIVATE KEY-----")
            {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// A disk thief copies the fleet directory (certificates, PIN files, the
/// fleet file, every node's RocksDB directory) but not the HSMs, and tries
/// every private key in the copy two ways: as node 1's key behind node 1's
/// certificate, and as the fleet CA's key to mint a node 1 certificate of
/// its own. Either would let it forward commands as node 1.
fn a_copy_of_a_nodes_disk_cannot_pose_as_the_node(template: &Template) -> TestResult {
    let fleet = TestFleet::started(template, 3, CONVERGE)?;
    let result = (|| -> TestResult {
        let loot = tempfile::tempdir()?;
        // hsm/ is the HSMs (SoftHSM keeps its tokens in files; a real HSM
        // keeps them inside); test-identities/ is this test suite's own.
        let copied = copy_tree(fleet.dir(), loot.path(), &["hsm", "test-identities"])?;
        let l = loot.path();
        for must in [
            "pki/node-1.pem",
            "pki/fleet-ca.pem",
            "secrets/node-1.user.pin",
            "node-1/data",
        ] {
            ensure!(l.join(must).exists(), "the copy lacks {must}");
        }
        // Forwarded commands are committed by the leader (a follower answers
        // "not the leader"), so that is where the thief sends them.
        let target = fleet.wait_leader(&[1, 2, 3], CONVERGE)?;
        let keys = private_keys(l)?;
        eprintln!(
            "the thief copied {copied} files; private keys among them: {:?}",
            keys.iter()
                .map(|k| k.strip_prefix(l).unwrap_or(k))
                .collect::<Vec<_>>()
        );
        // Control: a certificate and key that do name node 1 get through,
        // so a refusal below is the missing key, not a broken channel.
        let (cert, key) = fleet.test_identity(&Identity::Node(1))?;
        let ghost = Command::BeginAttemptTtl {
            session_ttl_ms: 60_000,
            user: UserId::new("ghost")?,
        };
        match Driver::with_identity(&fleet, &cert, &key)
            .forward_once(target, &proposal(true, ghost))?
        {
            Ok(Reply::Vault(_)) => {}
            other => anyhow::bail!("node 1's own identity was refused: {other:?}"),
        }
        let mut posed = Vec::new();
        let minted_dir = tempfile::tempdir()?;
        for (i, key) in keys.iter().enumerate() {
            let shown = key.strip_prefix(l).unwrap_or(key).display().to_string();
            // 1. The key behind node 1's own certificate.
            let as_node = Driver::with_identity(&fleet, &l.join("pki/node-1.pem"), key);
            if let Ok(reply) = as_node.forward_once(target, &proposal(true, poison_bundle()))? {
                posed.push(format!("{shown} as node 1's key: {reply:?}"));
            }
            // 2. The key as the fleet CA's: a node 1 certificate of its own.
            let ca_pem = std::fs::read_to_string(l.join("pki/fleet-ca.pem"))?;
            let Ok(ca) = vault_fleet::pki::Authority::load(&ca_pem, &std::fs::read_to_string(key)?)
            else {
                continue;
            };
            let issued = ca.issue(&Identity::Node(1))?;
            let (cert, own_key) = (
                minted_dir.path().join(format!("{i}.pem")),
                minted_dir.path().join(format!("{i}.key")),
            );
            std::fs::write(&cert, issued.cert_pem)?;
            std::fs::write(&own_key, issued.key_pem)?;
            let minted = Driver::with_identity(&fleet, &cert, &own_key);
            if let Ok(reply) = minted.forward_once(target, &proposal(true, poison_bundle()))? {
                posed.push(format!("{shown} as the fleet CA's key: {reply:?}"));
            }
        }
        ensure!(
            posed.is_empty(),
            "a copy of the disk posed as node 1 and forwarded SetBundle{{epoch: u64::MAX}} to node {target}: {posed:#?}"
        );
        // The fleet still serves: the keys it needs were never on the disk.
        fleet.wait_converged(CONVERGE)?;
        Ok(())
    })();
    fleet.with_logs(result)
}

/// With a member node's certificate (node 2's name, from the fleet CA), an
/// attacker forwards to the leader what no frontend call produces: every
/// operator command, and frontend commands without a request id or with
/// impossible fields. Each is refused before it reaches the log; a
/// well-formed frontend command still goes through.
fn a_member_certificate_cannot_forward_operator_or_malformed_commands(
    template: &Template,
) -> TestResult {
    let fleet = TestFleet::started(template, 3, CONVERGE)?;
    let result = (|| -> TestResult {
        let leader = fleet.wait_leader(&[1, 2, 3], CONVERGE)?;
        let member = if leader == 2 { 3 } else { 2 };
        let driver = Driver::new(&fleet, member);
        let alice = UserId::new("alice")?;
        let register = |max_attempts, sealed: Vec<u8>| Command::Register {
            user: alice.clone(),
            expected_generation: Generation(0),
            sealed_record: SealedBytes(sealed),
            max_attempts,
        };
        // A well-formed frontend command goes through (the channel works).
        // (Bytes shaped like a blob under the fleet's KEK v1: the state
        // machine takes nothing else.)
        let mut blob_v1 = vec![1, 0, 0, 0, 1];
        blob_v1.extend([7; 43]);
        match driver.forward_once(leader, &proposal(true, register(5, blob_v1)))? {
            Ok(Reply::Vault(Ok(_))) => {}
            other => anyhow::bail!("a well-formed Register was not committed: {other:?}"),
        }
        let attacks: Vec<(&str, Proposal)> = vec![
            (
                "SetBundle{epoch: u64::MAX}",
                proposal(true, poison_bundle()),
            ),
            (
                "Preload",
                proposal(
                    true,
                    Command::Preload {
                        first: 0,
                        count: 10,
                    },
                ),
            ),
            (
                "InitFleet",
                proposal(
                    true,
                    Command::InitFleet {
                        fleet_id: FleetId::new("test")?,
                        sealed_server_setup: SealedBytes(vec![1; 64]),
                        sealed_hpke_key: SealedBytes(vec![1; 64]),
                        max_attempts_cap: u32::MAX,
                    },
                ),
            ),
            (
                "BeginAttemptTtl without a request id",
                proposal(
                    false,
                    Command::BeginAttemptTtl {
                        user: alice.clone(),
                        session_ttl_ms: 60_000,
                    },
                ),
            ),
            (
                "an older build's BeginAttempt (a fixed 60 s replay window)",
                proposal(
                    true,
                    Command::BeginAttempt {
                        user: alice.clone(),
                    },
                ),
            ),
            (
                "FinishGrant{success: true} without a request id",
                proposal(
                    false,
                    Command::FinishGrant {
                        user: alice.clone(),
                        generation: Generation(1),
                        attempt: 1,
                        success: true,
                    },
                ),
            ),
            (
                "FinishGrant of generation 0",
                proposal(
                    true,
                    Command::FinishGrant {
                        user: alice.clone(),
                        generation: Generation(0),
                        attempt: 1,
                        success: true,
                    },
                ),
            ),
            (
                "an older build's FinishAttempt{success: true}, which forgives every attempt",
                proposal(
                    true,
                    Command::FinishAttempt {
                        user: alice.clone(),
                        generation: Generation(1),
                        success: true,
                    },
                ),
            ),
            (
                "Register with a budget of 0",
                proposal(true, register(0, vec![7; 48])),
            ),
            (
                "Register without a sealed record",
                proposal(true, register(5, Vec::new())),
            ),
            (
                "Delete without a request id",
                proposal(
                    false,
                    Command::Delete {
                        user: alice.clone(),
                    },
                ),
            ),
        ];
        let mut accepted = Vec::new();
        for (what, p) in &attacks {
            match driver.forward_once(leader, p)? {
                Err(s)
                    if s.code() == tonic::Code::PermissionDenied
                        && s.message().contains("may not forward") => {}
                other => accepted.push(format!("{what}: {other:?}")),
            }
        }
        ensure!(
            accepted.is_empty(),
            "node {member}'s certificate forwarded to leader {leader}: {accepted:#?}"
        );
        fleet.wait_converged(CONVERGE)?;
        let log = fleet.log(leader);
        ensure!(
            log.contains("refused a forwarded command"),
            "the leader did not log the refusals"
        );
        Ok(())
    })();
    fleet.with_logs(result)
}

/// Every node's data directory.
fn data_dirs(fleet: &TestFleet) -> Vec<(u64, PathBuf)> {
    fleet
        .fleet()
        .nodes
        .values()
        .map(|n| (n.id, n.data_dir.clone()))
        .collect()
}

/// Puts the copy in `from` back as node `id`'s data directory.
fn restore(fleet: &TestFleet, id: u64, from: &Path) -> TestResult {
    let dir = fleet.data_dir(id)?;
    std::fs::remove_dir_all(&dir)?;
    copy_tree(from, &dir, &[])?;
    Ok(())
}

/// The operator restores every node's data directory from a copy taken
/// while a user still had a full budget, after the user was locked out.
/// Before issue 21 the fleet came back with the old counters: a fresh
/// budget of guesses. Now every node is behind its HSM checkpoint, none
/// votes or serves, and the fleet halts: the user never gets a KE2. Then
/// the documented way out (`--accept-rollback` on every node) brings the
/// old state back, counted in each node's checkpoint and shown by status.
fn old_disks_on_every_node_do_not_bring_attempts_back(template: &Template) -> TestResult {
    let mut fleet = TestFleet::started(template, 3, CONVERGE)?;
    let result = (|| -> TestResult {
        let rt = vault_testkit::client::runtime();
        let _entered = rt.enter();
        let client = fleet.client()?.with_deadline(Duration::from_secs(20));
        let victim = UserId::new("rollback-victim")?;
        rt.block_on(client.register(&victim, b"right", 3))?;
        // A copy of every disk while the budget is full (nodes stopped, as
        // a backup tool would do it, so the copy is consistent).
        fleet.terminate_all(&[1, 2, 3])?;
        let backup = tempfile::tempdir()?;
        for (id, dir) in data_dirs(&fleet) {
            copy_tree(&dir, &backup.path().join(id.to_string()), &[])?;
        }
        fleet.start_all(1..=3)?;
        fleet.wait_converged(CONVERGE)?;
        vault_testkit::client::lock_out(&rt, &client, &victim)?;
        // The restore.
        fleet.terminate_all(&[1, 2, 3])?;
        for id in 1..=3 {
            restore(&fleet, id, &backup.path().join(id.to_string()))?;
        }
        fleet.start_all(1..=3)?;
        // For as long as a fleet takes to elect and serve (a few election
        // timeouts), and then some: no recovery, right password or not.
        let short = fleet.client()?.with_deadline(Duration::from_secs(2));
        let until = std::time::Instant::now() + Duration::from_secs(12);
        while std::time::Instant::now() < until {
            if let Ok(k) = rt.block_on(short.recover(&victim, b"right")) {
                anyhow::bail!(
                    "the restored disks gave {victim} a fresh budget: the right password recovered K ({} bytes) after the lockout",
                    k.len()
                );
            }
        }
        let status = fleet.status()?;
        for id in 1..=3u64 {
            let n = vault_testkit::node_status(&status, id)
                .with_context(|| format!("node {id} in status: {status:#}"))?;
            ensure!(
                n["ready"] == false
                    && n["not_ready_reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("behind its HSM checkpoint")),
                "node {id} does not say it is behind its checkpoint: {n:#}"
            );
            ensure!(
                n["leader_id"].as_u64().unwrap_or(0) == 0 || n["role"] != "leader",
                "node {id} leads on a restored disk: {n:#}"
            );
            ensure!(
                fleet.log(id).contains("BEHIND THE HSM CHECKPOINT"),
                "node {id} did not log why it waits"
            );
        }
        // The operator's way out: accept the old state on every node.
        fleet.terminate_all(&[1, 2, 3])?;
        for id in 1..=3 {
            fleet.start_with(id, &["--accept-rollback"])?;
        }
        let status = fleet.wait_converged(CONVERGE)?;
        for id in 1..=3u64 {
            let n = vault_testkit::node_status(&status, id).context("status")?;
            ensure!(
                n["checkpoint_resets"] == 1,
                "node {id} does not report its reset: {n:#}"
            );
            ensure!(fleet.log(id).contains("ACCEPTING A ROLLBACK"));
        }
        // That is what the operator accepted: the copy's state, full budget
        // included.
        ensure!(
            rt.block_on(client.recover(&victim, b"right")).is_ok(),
            "after --accept-rollback the fleet should serve the restored state"
        );
        Ok(())
    })();
    fleet.with_logs(result)
}

/// One node's disk restored alone: it starts behind its checkpoint, takes
/// what it lost from the leader, and then serves the current counters
/// (the user stays locked), never the old ones.
fn a_node_restored_alone_catches_up_and_serves_the_current_counters(
    template: &Template,
) -> TestResult {
    let mut fleet = TestFleet::started(template, 3, CONVERGE)?;
    let result = (|| -> TestResult {
        let rt = vault_testkit::client::runtime();
        let _entered = rt.enter();
        let client = fleet.client()?.with_deadline(Duration::from_secs(20));
        let victim = UserId::new("lone-rollback")?;
        rt.block_on(client.register(&victim, b"right", 3))?;
        fleet.wait_converged(CONVERGE)?;
        fleet.terminate_all(&[3])?;
        let backup = tempfile::tempdir()?;
        let dir3 = fleet.data_dir(3)?;
        copy_tree(&dir3, backup.path(), &[])?;
        fleet.start(3)?;
        fleet.wait_converged(CONVERGE)?;
        vault_testkit::client::lock_out(&rt, &client, &victim)?;
        fleet.wait_converged(CONVERGE)?;
        fleet.terminate_all(&[3])?;
        restore(&fleet, 3, backup.path())?;
        fleet.start(3)?;
        let status = fleet.wait_converged(CONVERGE)?;
        ensure!(
            fleet.log(3).contains("BEHIND THE HSM CHECKPOINT")
                && fleet.log(3).contains("caught up past the HSM checkpoint"),
            "node 3 did not start behind and catch up"
        );
        let n3 = vault_testkit::node_status(&status, 3).context("status")?;
        ensure!(n3["checkpoint_resets"] == 0, "{n3:#}");
        let reply = rt.block_on(async {
            let mut c = fleet.frontend(3).await?;
            anyhow::Ok(
                c.status(vault_proto::v1::UserStatusRequest {
                    user_id: victim.as_str().into(),
                })
                .await?
                .into_inner(),
            )
        })?;
        ensure!(
            reply.state == vault_proto::v1::user_status_reply::State::Locked as i32,
            "node 3 serves {victim} as {reply:?} after catching up; the fleet has it locked"
        );
        Ok(())
    })();
    fleet.with_logs(result)
}

/// Found in review: a restored node must not follow a leader of a term it
/// had already left. Z leads; a copy of follower A's disk is taken (its
/// vote: Z's term); Z stops, A and L carry on under a later term and lock
/// the user out; A's old disk is put back and only Z and A start. Z's own
/// disk is as current as its checkpoint, so openraft makes it leader of
/// its old term again at once, and A's restored vote accepts that term:
/// together a majority, serving Z's old counters. With the HSM's vote put
/// back on A's disk, A refuses the old term and the fleet halts.
fn a_restored_node_does_not_follow_a_leader_of_a_term_it_left(template: &Template) -> TestResult {
    let mut fleet = TestFleet::started(template, 3, CONVERGE)?;
    let result = (|| -> TestResult {
        let rt = vault_testkit::client::runtime();
        let _entered = rt.enter();
        let client = fleet.client()?.with_deadline(Duration::from_secs(20));
        let victim = UserId::new("stale-leader-victim")?;
        rt.block_on(client.register(&victim, b"right", 3))?;
        fleet.wait_converged(CONVERGE)?;
        let z = fleet.wait_leader(&[1, 2, 3], CONVERGE)?;
        let others: Vec<u64> = (1..=3).filter(|&i| i != z).collect();
        let (a, l) = (others[0], others[1]);
        fleet.terminate_all(&[a])?;
        let backup = tempfile::tempdir()?;
        let dir_a = fleet.data_dir(a)?;
        copy_tree(&dir_a, backup.path(), &[])?;
        fleet.start(a)?;
        fleet.wait_converged(CONVERGE)?;
        // Z leaves; A and L go on under a later term.
        fleet.terminate_all(&[z])?;
        fleet.wait_leader(&[a, l], CONVERGE)?;
        vault_testkit::client::lock_out(&rt, &client, &victim)?;
        fleet.terminate_all(&[a, l])?;
        restore(&fleet, a, backup.path())?;
        fleet.start(z)?;
        fleet.start(a)?;
        let short = fleet.client()?.with_deadline(Duration::from_secs(2));
        let until = std::time::Instant::now() + Duration::from_secs(12);
        while std::time::Instant::now() < until {
            if let Ok(k) = rt.block_on(short.recover(&victim, b"right")) {
                anyhow::bail!(
                    "node {z}, leading its old term again, and node {a} on its restored disk gave {victim} a fresh budget: the right password recovered K ({} bytes) after the lockout",
                    k.len()
                );
            }
        }
        ensure!(
            fleet.log(a).contains("BEHIND THE HSM CHECKPOINT"),
            "node {a} did not notice its restored disk"
        );
        Ok(())
    })();
    fleet.with_logs(result)
}
