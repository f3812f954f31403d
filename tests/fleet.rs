//! Multi-process fleet tests: real `vault-node` processes, real RocksDB,
//! real SoftHSM tokens (the KEK copied by ceremony), mutual TLS, loopback
//! ports. Each test builds its own fleet from a template provisioned once,
//! and the fleet kills its nodes when dropped, also when the test fails.
//!
//! The tests run one at a time (each starts three or four node processes
//! on a 2-core machine).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use vault_testkit::client::{self, Driver};
use vault_testkit::{ELECTION_MS, FleetSpec, Template, TestFleet, node_status};
use vault_types::{Reply, Response};

type TestResult = anyhow::Result<()>;

fn main() -> ExitCode {
    let tests: Vec<(&str, vault_testkit::FleetTest)> = vec![
        (
            "three_nodes_elect_one_leader_and_converge",
            three_nodes_elect_one_leader_and_converge,
        ),
        (
            "killing_the_leader_elects_another_and_loses_nothing",
            killing_the_leader_elects_another_and_loses_nothing,
        ),
        (
            "a_node_behind_a_purged_log_catches_up_by_snapshot",
            a_node_behind_a_purged_log_catches_up_by_snapshot,
        ),
        (
            "add_a_learner_promote_it_then_remove_another",
            add_a_learner_promote_it_then_remove_another,
        ),
        (
            "a_node_certificate_cannot_speak_for_another_node",
            a_node_certificate_cannot_speak_for_another_node,
        ),
        (
            "the_frontend_port_refuses_plaintext_and_certless_clients",
            the_frontend_port_refuses_plaintext_and_certless_clients,
        ),
        (
            "sigterm_stops_cleanly_and_the_node_restarts_with_its_data",
            sigterm_stops_cleanly_and_the_node_restarts_with_its_data,
        ),
        (
            "concurrent_commands_share_log_entries_and_each_gets_its_own_reply",
            concurrent_commands_share_log_entries_and_each_gets_its_own_reply,
        ),
    ];
    vault_testkit::run_fleet_tests(4, tests)
}

const CONVERGE: Duration = Duration::from_secs(30);

/// A fleet of `spec` with its bootstrap nodes started and initialized.
fn started(template: &Template, spec: FleetSpec) -> anyhow::Result<TestFleet> {
    let mut fleet = TestFleet::create(template, &spec)?;
    fleet.start_all(1..=spec.bootstrap)?;
    fleet.init().context("cluster init")?;
    Ok(fleet)
}

fn voters(status: &serde_json::Value, leader: u64) -> Vec<u64> {
    node_status(status, leader)
        .and_then(|n| n["members"].as_array())
        .into_iter()
        .flatten()
        .filter(|m| m["voter"] == true)
        .filter_map(|m| m["node_id"].as_u64())
        .collect()
}

fn field(status: &serde_json::Value, id: u64, name: &str) -> anyhow::Result<u64> {
    node_status(status, id)
        .and_then(|n| n[name].as_u64())
        .with_context(|| format!("node {id} has no {name} in {status:#}"))
}

fn three_nodes_elect_one_leader_and_converge(template: &Template) -> TestResult {
    let fleet = started(template, FleetSpec::voters(3))?;
    let status = fleet.with_logs(fleet.wait_converged(CONVERGE))?;
    let leaders = status["leaders"].as_array().context("leaders")?;
    ensure!(leaders.len() == 1, "want one leader: {status:#}");
    let leader = leaders[0].as_u64().context("leader id")?;
    ensure!(
        voters(&status, leader) == [1, 2, 3],
        "want voters 1,2,3: {status:#}"
    );
    let applied: Vec<u64> = (1..=3)
        .map(|id| field(&status, id, "applied_index"))
        .collect::<Result<_, _>>()?;
    ensure!(
        applied.iter().all(|a| *a == applied[0] && *a > 0),
        "applied: {applied:?}"
    );
    for id in 1..=3 {
        let n = node_status(&status, id).context("node")?;
        ensure!(
            n["fleet_initialized"] == true && n["ready"] == true,
            "node {id}: {n:#}"
        );
    }
    // Init is idempotent, also on a follower (which first asks the leader
    // for a read index to see that the fleet exists).
    fleet.init()?;
    let follower: u64 = if leader == 2 { 3 } else { 2 };
    fleet.vaultctl_ok(&["cluster", "init", "--node", &follower.to_string()])?;
    let again = fleet.wait_converged(CONVERGE)?;
    ensure!(
        field(&again, leader, "applied_index")? == applied[0],
        "a repeated init wrote: {again:#}"
    );
    // The follower is measured serving the leader's appends, and the
    // leader serving the follower's read-index call.
    let metrics = fleet.metrics(follower)?;
    ensure!(
        metrics.contains(&format!("bkv_raft_leader{{node=\"{follower}\"}} {leader}")),
        "{metrics}"
    );
    ensure!(
        metrics.contains("bkv_rpc_total{code=\"OK\",method=\"Peer/AppendEntries\""),
        "{metrics}"
    );
    let metrics = fleet.metrics(leader)?;
    ensure!(
        metrics.contains("bkv_rpc_total{code=\"OK\",method=\"Peer/ReadIndex\""),
        "{metrics}"
    );
    Ok(())
}

fn killing_the_leader_elects_another_and_loses_nothing(template: &Template) -> TestResult {
    let mut fleet = started(template, FleetSpec::voters(3))?;
    let result = (|| {
        fleet.wait_converged(CONVERGE)?;
        let driver = Driver::new(&fleet, 1);
        let mut first_replies = Vec::new();
        for i in 0..20 {
            let reply = driver.register(i)?;
            ensure!(
                matches!(reply, Reply::Vault(Ok(Response::Registered { .. }))),
                "register {i}: {reply:?}"
            );
            first_replies.push(reply);
        }
        let before = fleet.wait_converged(CONVERGE)?;
        let old = fleet.wait_leader(&[1, 2, 3], CONVERGE)?;
        let applied_before = field(&before, old, "applied_index")?;
        drop(driver);

        fleet.kill(old)?;
        let killed_at = Instant::now();
        let rest: Vec<u64> = (1..=3).filter(|&n| n != old).collect();
        let new = fleet.wait_leader(&rest, Duration::from_secs(10))?;
        let took = killed_at.elapsed();
        eprintln!("node {old} killed; node {new} leads after {took:?}");
        // Detection takes up to one election timeout, the election about
        // one more (plus polling and a loaded 2-core machine).
        ensure!(
            took < Duration::from_millis(ELECTION_MS.1 * 4),
            "a new leader took {took:?}, election timeout max is {} ms",
            ELECTION_MS.1
        );
        let driver = Driver::new(&fleet, rest[0]);
        // A client that never saw its answers retries with the same request
        // ids: it gets the first answers back, not a second registration
        // (which would carry a new generation).
        for (i, first) in (0..20).zip(&first_replies) {
            let again = driver.register(i)?;
            ensure!(
                &again == first,
                "user-{i} registered twice: {first:?} then {again:?}"
            );
        }
        for i in 0..20 {
            match driver.begin_attempt(i)? {
                Reply::Vault(Ok(Response::AttemptGranted { .. })) => {}
                other => bail!("user-{i} lost after failover: {other:?}"),
            }
        }
        let after = fleet.status()?;
        ensure!(field(&after, new, "applied_index")? > applied_before);

        fleet.start(old)?;
        let converged = fleet.wait_converged(CONVERGE)?;
        let a = field(&converged, old, "applied_index")?;
        ensure!(
            a > applied_before,
            "restarted node applied {a}, before the kill {applied_before}"
        );
        Ok(())
    })();
    fleet.with_logs(result)
}

fn a_node_behind_a_purged_log_catches_up_by_snapshot(template: &Template) -> TestResult {
    let spec = FleetSpec {
        snapshot_after_logs: 20,
        keep_logs_after_snapshot: 5,
        ..FleetSpec::voters(3)
    };
    let mut fleet = started(template, spec)?;
    let result = (|| {
        fleet.wait_converged(CONVERGE)?;
        fleet.terminate(3, Duration::from_secs(15))?;
        let before = fleet.status()?;
        let behind = field(&before, 1, "applied_index")?;
        let driver = Driver::new(&fleet, 1);
        for i in 0..60 {
            driver.register(i)?;
        }
        fleet.vaultctl_ok(&["cluster", "snapshot"])?;
        let leader = fleet.wait_leader(&[1, 2], CONVERGE)?;
        // The purge follows the snapshot asynchronously.
        let give_up = std::time::Instant::now() + CONVERGE;
        let purged = loop {
            let purged = field(&fleet.status()?, leader, "purged_index")?;
            if purged > behind || std::time::Instant::now() >= give_up {
                break purged;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        ensure!(
            purged > behind,
            "the leader must have purged past node 3 ({behind}); purged {purged}"
        );

        fleet.start(3)?;
        let converged = fleet.wait_converged(CONVERGE)?;
        let snap = field(&converged, 3, "snapshot_index")?;
        ensure!(
            snap >= purged,
            "node 3 should hold a snapshot covering {purged}, has {snap}"
        );
        for i in [0, 59] {
            match driver.begin_attempt(i)? {
                Reply::Vault(Ok(Response::AttemptGranted { .. })) => {}
                other => bail!("user-{i}: {other:?}"),
            }
        }
        fleet.wait_converged(CONVERGE)?;
        Ok(())
    })();
    fleet.with_logs(result)
}

fn add_a_learner_promote_it_then_remove_another(template: &Template) -> TestResult {
    let spec = FleetSpec {
        bootstrap: 3,
        ..FleetSpec::voters(4)
    };
    let mut fleet = started(template, spec)?;
    let result = (|| {
        fleet.wait_converged(CONVERGE)?;
        let driver = Driver::new(&fleet, 1);
        for i in 0..5 {
            driver.register(i)?;
        }
        fleet.start(4)?;
        fleet.vaultctl_ok(&["cluster", "add-node", "4", "--learner-only"])?;
        let s = fleet.wait_converged(CONVERGE)?;
        let leader = fleet.wait_leader(&[1, 2, 3], CONVERGE)?;
        ensure!(
            voters(&s, leader) == [1, 2, 3],
            "4 is a learner first: {s:#}"
        );
        ensure!(
            node_status(&s, 4).context("node 4")?["role"] == "learner",
            "{s:#}"
        );

        fleet.vaultctl_ok(&["cluster", "promote", "4"])?;
        let s = fleet.wait_converged(CONVERGE)?;
        let leader = fleet.wait_leader(&[1, 2, 3, 4], CONVERGE)?;
        ensure!(voters(&s, leader) == [1, 2, 3, 4], "{s:#}");

        let gone = if leader == 2 { 3 } else { 2 };
        fleet.vaultctl_ok(&["cluster", "remove-node", &gone.to_string()])?;
        let rest: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&n| n != gone).collect();
        let leader = fleet.wait_leader(&rest, CONVERGE)?;
        let s = fleet.status()?;
        ensure!(voters(&s, leader) == rest, "after removing {gone}: {s:#}");
        fleet.kill(gone)?;
        fleet.wait_converged(CONVERGE)?;
        // The removed node's certificate no longer gets in.
        let as_removed = Driver::new(&fleet, gone);
        let (code, msg) =
            as_removed.raw_peer_call(leader, true, vault_raft::wire::encode(&vote(0, gone)))?;
        ensure!(
            code == tonic::Code::PermissionDenied,
            "removed node got {code:?} {msg}"
        );
        match Driver::new(&fleet, leader).begin_attempt(4)? {
            Reply::Vault(Ok(Response::AttemptGranted { .. })) => Ok(()),
            other => bail!("user-4: {other:?}"),
        }
    })();
    fleet.with_logs(result)
}

fn vote(term: u64, candidate: u64) -> openraft::raft::VoteRequest<u64> {
    openraft::raft::VoteRequest::new(openraft::Vote::new(term, candidate), None)
}

fn a_node_certificate_cannot_speak_for_another_node(template: &Template) -> TestResult {
    let fleet = started(template, FleetSpec::voters(3))?;
    let result = (|| {
        fleet.wait_converged(CONVERGE)?;
        let as2 = Driver::new(&fleet, 2);
        // Node 2 speaking as itself is heard (and, with term 0, refused by
        // Raft, which is fine: the call got through).
        let (code, msg) = as2.raw_peer_call(1, true, vault_raft::wire::encode(&vote(0, 2)))?;
        ensure!(code == tonic::Code::Ok, "node 2 as itself: {code:?} {msg}");
        // Node 2 claiming to be candidate 3, or leader 3, is refused.
        let (code, msg) = as2.raw_peer_call(1, true, vault_raft::wire::encode(&vote(99, 3)))?;
        ensure!(
            code == tonic::Code::PermissionDenied,
            "vote as 3: {code:?} {msg}"
        );
        ensure!(msg.contains("node 2 may not speak for node 3"), "{msg}");
        let append = openraft::raft::AppendEntriesRequest::<vault_raft::TypeConfig> {
            vote: openraft::Vote::new_committed(99, 3),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        let (code, msg) = as2.raw_peer_call(1, false, vault_raft::wire::encode(&append))?;
        ensure!(
            code == tonic::Code::PermissionDenied,
            "append as 3: {code:?} {msg}"
        );

        // The operator may not speak Raft; a node may not call the admin API.
        let f = fleet.fleet();
        let rt = client::runtime();
        // (Node and operator keys live in their tokens: the test speaks
        // with certificates of its own for those names, from the fleet CA.)
        let operator = fleet.test_identity(&vault_fleet::identity::Identity::Operator)?;
        let op = client::tls(&f.tls.fleet_ca, Some((&operator.0, &operator.1)), 1)?;
        let ch = rt.block_on(client::connect(
            f.node(1).map_err(anyhow::Error::msg)?.peer_addr,
            Some(op),
        ))?;
        let mut peer = vault_proto::v1::peer_client::PeerClient::new(ch);
        let r = rt.block_on(peer.vote(vault_proto::v1::RaftMessage {
            payload: vault_raft::wire::encode(&vote(0, 1)),
        }));
        ensure!(
            r.as_ref().err().map(|s| s.code()) == Some(tonic::Code::PermissionDenied),
            "operator on peer API: {r:?}"
        );
        let n2 = fleet.test_identity(&vault_fleet::identity::Identity::Node(2))?;
        let as_node = client::tls(&f.tls.fleet_ca, Some((&n2.0, &n2.1)), 1)?;
        let ch = rt.block_on(client::connect(
            f.node(1).map_err(anyhow::Error::msg)?.peer_addr,
            Some(as_node),
        ))?;
        let mut admin = vault_proto::v1::admin_client::AdminClient::new(ch);
        let r = rt.block_on(admin.status(vault_proto::v1::StatusRequest {}));
        ensure!(
            r.as_ref().err().map(|s| s.code()) == Some(tonic::Code::PermissionDenied),
            "node on admin API: {r:?}"
        );
        // A frontend certificate (another CA) does not even get through TLS
        // on the peer port.
        let fe = (
            fleet.dir().join("pki/frontend-test.pem"),
            fleet.dir().join("pki/frontend-test.key"),
        );
        let tls = client::tls(&f.tls.fleet_ca, Some((&fe.0, &fe.1)), 1)?;
        let r = rt.block_on(async {
            let ch = client::connect(f.node(1).map_err(anyhow::Error::msg)?.peer_addr, Some(tls))
                .await?;
            let mut peer = vault_proto::v1::peer_client::PeerClient::new(ch);
            anyhow::Ok(
                peer.vote(vault_proto::v1::RaftMessage { payload: vec![1] })
                    .await?,
            )
        });
        ensure!(
            r.is_err(),
            "a frontend certificate reached the peer API: {r:?}"
        );
        Ok(())
    })();
    fleet.with_logs(result)
}

fn the_frontend_port_refuses_plaintext_and_certless_clients(template: &Template) -> TestResult {
    let fleet = started(template, FleetSpec::voters(3))?;
    let result = (|| {
        fleet.wait_converged(CONVERGE)?;
        let f = fleet.fleet();
        let addr = f.node(2).map_err(anyhow::Error::msg)?.frontend_addr;
        let rt = client::runtime();
        let check = |tls: Option<tonic::transport::ClientTlsConfig>| {
            rt.block_on(async {
                let ch = client::connect(addr, tls).await?;
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                let r = h
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                anyhow::Ok(r.into_inner().status)
            })
        };
        let plaintext = check(None);
        ensure!(plaintext.is_err(), "plaintext got an answer: {plaintext:?}");
        let certless = check(Some(client::tls(&f.tls.fleet_ca, None, 2)?));
        ensure!(
            certless.is_err(),
            "a client without a certificate got an answer: {certless:?}"
        );
        let n1 = fleet.test_identity(&vault_fleet::identity::Identity::Node(1))?;
        let wrong_ca = check(Some(client::tls(&f.tls.fleet_ca, Some((&n1.0, &n1.1)), 2)?));
        ensure!(
            wrong_ca.is_err(),
            "a node certificate got onto the frontend port: {wrong_ca:?}"
        );
        let fe = (
            fleet.dir().join("pki/frontend-test.pem"),
            fleet.dir().join("pki/frontend-test.key"),
        );
        let ok = check(Some(client::tls(&f.tls.fleet_ca, Some((&fe.0, &fe.1)), 2)?))?;
        ensure!(
            ok == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "a frontend with its certificate should see SERVING, got {ok}"
        );
        Ok(())
    })();
    fleet.with_logs(result)
}

/// A metric's value from a node's `/metrics` text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Many commands at once, through every node: the leader batches them
/// into fewer log entries than commands, every caller still gets its own
/// answer (registrations their generation, deletes of unknown users
/// `NotFound`, recoveries their key), and the replicas agree.
fn concurrent_commands_share_log_entries_and_each_gets_its_own_reply(
    template: &Template,
) -> TestResult {
    let fleet = started(template, FleetSpec::voters(3))?;
    let status = fleet.wait_converged(CONVERGE)?;
    let leader = status["leaders"][0].as_u64().context("leader")?;
    let rt = client::runtime();
    let client = std::sync::Arc::new(rt.block_on(async { fleet.client() })?);
    let keys = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..12u32 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                let user = client::user(1000 + i);
                let k = c.register(&user, b"batch pw", 5).await?;
                anyhow::Ok((user, k))
            }));
        }
        let mut keys = Vec::new();
        for t in tasks {
            keys.push(t.await??);
        }
        let mut tasks = Vec::new();
        for i in 0..40u32 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                c.delete(&client::user(5000 + i)).await
            }));
        }
        for (user, k) in &keys {
            let (c, user, k) = (client.clone(), user.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                let got = c.recover(&user, b"batch pw").await?;
                if *got != *k {
                    return Err(vault_client::ClientError::Other(format!(
                        "{user:?} recovered another key"
                    )));
                }
                Err(vault_client::ClientError::NotFound)
            }));
        }
        for t in tasks {
            match t.await? {
                Err(vault_client::ClientError::NotFound) => {}
                other => bail!("expected NotFound (or a recovered key), got {other:?}"),
            }
        }
        anyhow::Ok(keys)
    })?;
    ensure!(keys.len() == 12);
    fleet.wait_converged(CONVERGE)?;
    // The node's gauges follow its metrics loop: wait for them.
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let m = fleet.metrics(leader)?;
        let (entries, proposals) = (
            metric(&m, "bkv_raft_batches_applied"),
            metric(&m, "bkv_raft_proposals_applied"),
        );
        // 12 registrations, 40 deletes, 24 attempt commands, plus init.
        if proposals >= 76 {
            eprintln!("{proposals} proposals in {entries} log entries");
            ensure!(
                entries < proposals,
                "no two commands shared an entry: {proposals} proposals, {entries} entries"
            );
            return Ok(());
        }
        ensure!(
            Instant::now() < give_up,
            "the leader reports {proposals} proposals applied:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sigterm_stops_cleanly_and_the_node_restarts_with_its_data(template: &Template) -> TestResult {
    let mut fleet = started(template, FleetSpec::voters(3))?;
    let result = (|| {
        fleet.wait_converged(CONVERGE)?;
        let driver = Driver::new(&fleet, 1);
        for i in 0..10 {
            driver.register(i)?;
        }
        let before = fleet.wait_converged(CONVERGE)?;
        let applied = field(&before, 2, "applied_index")?;
        let status = fleet.terminate(2, Duration::from_secs(15))?;
        ensure!(status.success(), "node 2 exited with {status} on SIGTERM");
        ensure!(
            fleet.log(2).contains("stopped cleanly"),
            "no clean-stop line in node 2's log"
        );
        // Writes go on without it.
        for i in 10..15 {
            driver.register(i)?;
        }
        fleet.start(2)?;
        let after = fleet.wait_converged(CONVERGE)?;
        ensure!(field(&after, 2, "applied_index")? > applied);
        // Registering user-0 again with its first request id is answered
        // from the dedup table: the entry came back with the node.
        match driver.register(0)? {
            Reply::Vault(Ok(Response::Registered { .. })) => {}
            other => bail!("replayed register: {other:?}"),
        }
        // A node whose harness dies (its stdin pipe closes) stops too.
        let status = fleet.orphan(3, Duration::from_secs(15))?;
        ensure!(status.success(), "orphaned node 3 exited with {status}");
        // No PIN reaches a log.
        for id in 1..=3 {
            let pin =
                std::fs::read_to_string(fleet.dir().join(format!("secrets/node-{id}.user.pin")))?;
            for n in 1..=3 {
                ensure!(
                    !fleet.log(n).contains(pin.trim()),
                    "node {id}'s PIN is in node {n}'s log"
                );
            }
        }
        Ok(())
    })();
    fleet.with_logs(result)
}
