//! Attacks from inside the fleet's perimeter, against a real fleet (node
//! processes, RocksDB, SoftHSM tokens, mutual TLS):
//!
//! - a **disk thief** holding a copy of every file of the fleet directory
//!   and a node's data directory, but no session on any HSM;
//! - a **member certificate** (a node's name, signed by the fleet CA) used
//!   to forward commands a frontend call never produces.
//!
//! The second is a narrowing, not a wall: Raft is not Byzantine fault
//! tolerant, and a member certificate can still send `AppendEntries` under
//! a term it never won (docs/THREAT-MODEL.md). What the first test shows is
//! that getting one now takes the member's HSM.
//!
//! Each test states the measure it checks: "no state change without the
//! right credential".

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, ensure};
use vault_fleet::identity::Identity;
use vault_testkit::client::Driver;
use vault_testkit::{FleetSpec, Template, TestFleet};
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
    ];
    vault_testkit::run_fleet_tests(3, tests)
}

const CONVERGE: Duration = Duration::from_secs(30);

fn started(template: &Template) -> anyhow::Result<TestFleet> {
    let mut fleet = TestFleet::create(template, &FleetSpec::voters(3))?;
    fleet.start_all(1..=3)?;
    fleet.init()?;
    fleet.wait_converged(CONVERGE)?;
    Ok(fleet)
}

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

/// Copies every file under `from` into `to`, except the top-level entries
/// named in `skip`. Files that vanish while copying (RocksDB compacts under
/// a running node) are left out.
fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> anyhow::Result<usize> {
    let mut copied = 0;
    let mut stack = vec![(from.to_owned(), to.to_owned(), true)];
    while let Some((src, dst, top)) = stack.pop() {
        std::fs::create_dir_all(&dst)?;
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            let name = entry.file_name();
            if top && skip.iter().any(|s| name == *s) {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push((entry.path(), dst.join(&name), false));
            } else if kind.is_file() {
                match std::fs::copy(entry.path(), dst.join(&name)) {
                    Ok(_) => copied += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).context(format!("copy {}", entry.path().display())),
                }
            }
        }
    }
    Ok(copied)
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
    let fleet = started(template)?;
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
        let ghost = Command::BeginAttempt {
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
    let fleet = started(template)?;
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
        match driver.forward_once(leader, &proposal(true, register(5, vec![7; 48])))? {
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
                "BeginAttempt without a request id",
                proposal(
                    false,
                    Command::BeginAttempt {
                        user: alice.clone(),
                    },
                ),
            ),
            (
                "FinishAttempt{success: true} without a request id",
                proposal(
                    false,
                    Command::FinishAttempt {
                        user: alice.clone(),
                        generation: Generation(1),
                        success: true,
                    },
                ),
            ),
            (
                "FinishAttempt of generation 0",
                proposal(
                    true,
                    Command::FinishAttempt {
                        user: alice.clone(),
                        generation: Generation(0),
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
