//! Three replicas in one process: openraft nodes over an in-memory network
//! with faults, each driving the real `vault-core` state machine on a real
//! RocksDB store.
//!
//! A seeded workload registers users and runs attempts while the harness
//! crashes the leader (shutdown, then reopen the store from disk), isolates
//! a node (every link to and from it cut), and makes single directed links
//! lossy, slow or cut one way. After healing it checks:
//! - the guess bound: per user and generation, attempts granted to the
//!   client between two successes never exceed `max_attempts`;
//! - durability: acknowledged registrations and attempt counts survive;
//! - convergence: every replica reaches the same state digest at the same
//!   applied index.
//!
//! CI runs a fixed list of seeds. A failure prints its seed and the command
//! that replays it (`BKV_REPLICA_SEED=<seed> cargo test --workspace --test replicas`).

mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use network::{LinkFault, Network, Rng, Router};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use vault_storage::StateReader;
use vault_types::{
    Batch, Command, CommandError, FleetId, Generation, Proposal, Reply, RequestDigest, RequestId,
    RequestMeta, Response, SealedBytes, Timestamp, UserId, UserStatus,
};

const NODES: [u64; 3] = [1, 2, 3];
const USERS: u64 = 6;
const MAX_ATTEMPTS: u32 = 3;
const OPS: u64 = 240;
const CI_SEEDS: [u64; 3] = [1, 7, 2026];
/// Long enough for an election (timeouts 200–400 ms) and a commit.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);

struct Node {
    reader: StateReader,
}

struct Cluster {
    router: Arc<Router>,
    dirs: BTreeMap<u64, PathBuf>,
    nodes: BTreeMap<u64, Node>,
    config: Arc<Config>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    async fn start(seed: u64) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = Config {
            heartbeat_interval: 50,
            election_timeout_min: 200,
            election_timeout_max: 400,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(60),
            max_in_snapshot_log_to_keep: 10,
            purge_batch_size: 1,
            ..Default::default()
        };
        let mut cluster = Cluster {
            router: Router::new(seed),
            dirs: NODES
                .iter()
                .map(|&id| (id, tmp.path().join(format!("node-{id}"))))
                .collect(),
            nodes: BTreeMap::new(),
            config: Arc::new(config.validate().expect("raft config")),
            _tmp: tmp,
        };
        for id in NODES {
            cluster.boot(id).await;
        }
        let members: BTreeMap<u64, BasicNode> =
            NODES.iter().map(|&id| (id, BasicNode::default())).collect();
        cluster
            .router
            .get(1)
            .expect("node 1")
            .initialize(members)
            .await
            .expect("initialize");
        cluster
    }

    /// Starts (or restarts) `id` from its directory.
    async fn boot(&mut self, id: u64) {
        let dir = &self.dirs[&id];
        // A store just shut down may still be closing; retry briefly.
        let mut tries = 0;
        let (log, sm) = loop {
            match vault_storage::open_with_dedup_capacity(dir, 1000) {
                Ok(s) => break s,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("reopen node {id}: {e}"),
            }
        };
        let reader = sm.reader();
        let network = Network {
            router: self.router.clone(),
            from: id,
        };
        let raft = Raft::new(id, self.config.clone(), network, log, sm)
            .await
            .expect("start raft");
        self.router.add(id, raft);
        self.nodes.insert(id, Node { reader });
    }

    async fn crash(&mut self, id: u64) {
        if let Some(raft) = self.router.remove(id) {
            let _ = raft.shutdown().await;
        }
        self.nodes.remove(&id);
    }

    /// A node that is up, not cut off, and believes it leads.
    fn leader(&self) -> Option<u64> {
        self.router.up().into_iter().find(|&id| {
            !self.router.is_isolated(id)
                && self
                    .router
                    .get(id)
                    .is_some_and(|r| r.metrics().borrow().current_leader == Some(id))
        })
    }

    /// Proposes through whichever node leads; `None` when the outcome is
    /// unknown (no leader in time, or the leader failed mid-way).
    async fn propose(&self, proposal: Proposal) -> Option<Result<Response, CommandError>> {
        let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
        let mut target = self
            .leader()
            .or_else(|| self.router.up().first().copied())?;
        while tokio::time::Instant::now() < deadline {
            let Some(raft) = self.router.get(target) else {
                // The node named as leader is down: wait for an election.
                tokio::time::sleep(Duration::from_millis(50)).await;
                target = self
                    .leader()
                    .or_else(|| self.router.up().first().copied())?;
                continue;
            };
            let call =
                tokio::time::timeout_at(deadline, raft.client_write(Batch(vec![proposal.clone()])))
                    .await;
            match call {
                Ok(Ok(resp)) => {
                    return match resp.data.into_iter().next() {
                        Some(Reply::Vault(r)) => Some(r),
                        _ => None,
                    };
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    match f.leader_id {
                        Some(l) if l != target => target = l,
                        _ => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let up = self.router.up();
                            target = up[(up.iter().position(|&n| n == target).unwrap_or(0) + 1)
                                % up.len()];
                        }
                    }
                }
                // The node shut down or the write's fate is unknown.
                Ok(Err(_)) | Err(_) => return None,
            }
        }
        None
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    Known(Result<Response, CommandError>),
    Unknown,
}

#[derive(Debug, Clone)]
struct Record {
    user: u64,
    request: RequestId,
    command: &'static str,
    outcome: Outcome,
}

fn uid(u: u64) -> UserId {
    UserId::new(format!("user-{u}")).expect("user id")
}

fn request(rng: &mut Rng) -> RequestMeta {
    RequestMeta {
        id: RequestId(
            u128::from(rng.next())
                .wrapping_shl(64)
                .wrapping_add(u128::from(rng.next()))
                .to_be_bytes(),
        ),
        digest: RequestDigest([rng.below(256) as u8; 32]),
    }
}

async fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster::start(seed).await;
    let init = Proposal {
        request: None,
        at: Timestamp(0),
        command: Command::InitFleet {
            fleet_id: FleetId::new("replica-test").expect("fleet"),
            sealed_server_setup: SealedBytes(vec![1; 32]),
            sealed_hpke_key: SealedBytes(vec![0xdd; 40]),
            max_attempts_cap: 10,
        },
    };
    match cluster.propose(init).await {
        Some(Ok(_)) => {}
        other => return Err(format!("InitFleet failed: {other:?}")),
    }

    let mut history = Vec::new();
    let mut generation: BTreeMap<u64, u64> = BTreeMap::new();
    let mut crashed: Option<(u64, u64)> = None;
    for step in 0..OPS {
        // Faults, drawn from the seed.
        if step % 40 == 20
            && crashed.is_none()
            && let Some(leader) = cluster.leader()
        {
            cluster.crash(leader).await;
            crashed = Some((leader, step + 5 + rng.below(15)));
        }
        if let Some((id, until)) = crashed
            && step >= until
        {
            cluster.boot(id).await;
            crashed = None;
        }
        if step % 60 == 45 {
            let victim = NODES[rng.below(3) as usize];
            cluster.router.isolate(victim, &NODES);
        }
        if step % 60 == 55 {
            cluster.router.heal();
        }
        if step % 50 == 10 {
            // A lossy, slow link in one direction, and another one-way cut.
            let (a, b) = (NODES[rng.below(3) as usize], NODES[rng.below(3) as usize]);
            if a != b {
                cluster.router.set_link(
                    a,
                    b,
                    LinkFault {
                        cut: false,
                        drop_percent: 20,
                        max_delay_ms: 30,
                    },
                );
                cluster.router.set_link(
                    b,
                    a,
                    LinkFault {
                        cut: rng.chance(50),
                        drop_percent: 0,
                        max_delay_ms: 10,
                    },
                );
            }
        }
        if step % 50 == 30 {
            cluster.router.heal();
        }

        let user = rng.below(USERS);
        let req = request(&mut rng);
        let (name, command) = match rng.below(10) {
            0 | 1 => (
                "register",
                Command::Register {
                    user: uid(user),
                    // The newest generation any replica shows (a lockout
                    // or delete moves it): a stale view is refused, which
                    // the checks allow.
                    expected_generation: Generation(
                        cluster
                            .nodes
                            .values()
                            .filter_map(|n| match n.reader.status(&uid(user)) {
                                UserStatus::Unknown => None,
                                UserStatus::Active { generation, .. }
                                | UserStatus::Locked { generation }
                                | UserStatus::Deleted { generation } => Some(generation.0),
                            })
                            .max()
                            .unwrap_or(0),
                    ),
                    sealed_record: SealedBytes(vec![user as u8; 24]),
                    max_attempts: MAX_ATTEMPTS,
                },
            ),
            2..=6 => ("begin", Command::BeginAttempt { user: uid(user) }),
            _ => (
                "finish",
                Command::FinishAttempt {
                    user: uid(user),
                    generation: Generation(*generation.get(&user).unwrap_or(&1)),
                    success: rng.chance(30),
                },
            ),
        };
        let proposal = Proposal {
            request: Some(req),
            at: Timestamp(step),
            command,
        };
        let mut outcome = cluster.propose(proposal.clone()).await;
        if outcome.is_none() {
            // Retry once with the same request id: idempotent, costs nothing.
            outcome = cluster.propose(proposal).await;
        }
        if let Some(Ok(Response::Registered { generation: g })) = &outcome {
            generation.insert(user, g.0);
        }
        history.push(Record {
            user,
            request: req.id,
            command: name,
            outcome: outcome.map_or(Outcome::Unknown, Outcome::Known),
        });
    }

    // Heal everything and bring every node back.
    cluster.router.heal();
    if let Some((id, _)) = crashed {
        cluster.boot(id).await;
    }
    // A final write through the leader makes every replica catch up to it.
    let barrier = Proposal {
        request: None,
        at: Timestamp(OPS),
        command: Command::SetBundle {
            bundle: b"barrier".to_vec(),
            epoch: 1,
        },
    };
    if cluster.propose(barrier).await.is_none() {
        return Err("no leader after healing".into());
    }
    let converged = wait_converged(&cluster).await?;

    check_guess_bound(&history)?;
    check_durability(&history, &cluster)?;
    let count = |f: fn(&Outcome) -> bool| history.iter().filter(|r| f(&r.outcome)).count();
    eprintln!(
        "  seed {seed}: {} ops ({} unknown), {} attempts granted, {} answered Locked, converged at index {}",
        history.len(),
        count(|o| matches!(o, Outcome::Unknown)),
        count(|o| matches!(o, Outcome::Known(Ok(Response::AttemptGranted { .. })))),
        count(|o| matches!(o, Outcome::Known(Err(CommandError::Locked)))),
        converged
    );
    for id in NODES {
        cluster.crash(id).await;
    }
    Ok(())
}

async fn wait_converged(cluster: &Cluster) -> Result<u64, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let digests: BTreeSet<(Option<u64>, [u8; 32])> =
            cluster.nodes.values().map(|n| n.reader.digest()).collect();
        let leader_applied = match cluster.leader().and_then(|l| cluster.router.get(l)) {
            Some(raft) => raft.metrics().borrow().last_applied.map(|l| l.index),
            None => None,
        };
        if digests.len() == 1 && cluster.nodes.len() == NODES.len() {
            let (index, _) = digests.into_iter().next().expect("one digest");
            if index.is_some() && index >= leader_applied {
                return Ok(index.unwrap_or_default());
            }
        }
        if tokio::time::Instant::now() > deadline {
            let all: Vec<_> = cluster
                .nodes
                .iter()
                .map(|(id, n)| (id, n.reader.digest().0))
                .collect();
            return Err(format!(
                "replicas did not converge: applied indexes {all:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per user and generation, distinct requests granted an attempt between
/// two acknowledged successes never exceed the budget.
fn check_guess_bound(history: &[Record]) -> Result<(), String> {
    let mut granted: BTreeMap<(u64, u64), BTreeSet<RequestId>> = BTreeMap::new();
    for r in history {
        match &r.outcome {
            Outcome::Known(Ok(Response::AttemptGranted { generation, .. })) => {
                let set = granted.entry((r.user, generation.0)).or_default();
                set.insert(r.request);
                if set.len() > MAX_ATTEMPTS as usize {
                    return Err(format!(
                        "guess bound broken: user {} generation {} got {} attempts",
                        r.user,
                        generation.0,
                        set.len()
                    ));
                }
            }
            Outcome::Known(Ok(Response::AttemptFinished {
                success: true,
                generation,
                ..
            })) => {
                granted.remove(&(r.user, generation.0));
            }
            // A finish whose outcome is unknown may have succeeded and reset
            // the counter: the client cannot tell, so it counts afresh.
            Outcome::Unknown if r.command == "finish" => {
                granted.retain(|(user, _), _| *user != r.user);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Acknowledged registrations and attempt counts are in the final state.
fn check_durability(history: &[Record], cluster: &Cluster) -> Result<(), String> {
    let reader = &cluster.nodes.values().next().ok_or("no node")?.reader;
    for user in 0..USERS {
        let acked_gen = history
            .iter()
            .filter(|r| r.user == user)
            .filter_map(|r| match &r.outcome {
                Outcome::Known(Ok(Response::Registered { generation })) => Some(generation.0),
                _ => None,
            })
            .max();
        let status = reader.status(&uid(user));
        let final_gen = match &status {
            UserStatus::Unknown => None,
            UserStatus::Active { generation, .. }
            | UserStatus::Locked { generation }
            | UserStatus::Deleted { generation } => Some(generation.0),
        };
        if acked_gen > final_gen {
            return Err(format!(
                "user {user}: registration generation {acked_gen:?} was acknowledged but the state has {final_gen:?}"
            ));
        }
        // Attempts acknowledged since the last acknowledged success or
        // registration of the final generation must still be counted.
        if let UserStatus::Active {
            generation,
            attempts_left,
            max_attempts,
        } = status
        {
            let mut since = 0u32;
            for r in history.iter().filter(|r| r.user == user) {
                match &r.outcome {
                    Outcome::Known(Ok(Response::Registered { generation: g }))
                        if *g == generation =>
                    {
                        since = 0
                    }
                    Outcome::Known(Ok(Response::AttemptFinished {
                        success: true,
                        generation: g,
                        ..
                    })) if *g == generation => since = 0,
                    Outcome::Known(Ok(Response::AttemptGranted {
                        generation: g,
                        attempt,
                        ..
                    })) if *g == generation => since = since.max(*attempt),
                    // An unknown success may have reset the counter.
                    Outcome::Unknown if r.command == "finish" => since = 0,
                    _ => {}
                }
            }
            let used = max_attempts - attempts_left;
            if used < since {
                return Err(format!(
                    "user {user}: {since} attempts were acknowledged but the state counts {used}"
                ));
            }
        }
    }
    Ok(())
}

/// The guess-bound checker must fail on a history that breaks the bound, and
/// count afresh after a success or a finish of unknown outcome.
fn checker_self_test() -> Result<(), String> {
    let grant = |n: u8, attempt: u32| Record {
        user: 0,
        request: RequestId([n; 16]),
        command: "begin",
        outcome: Outcome::Known(Ok(Response::AttemptGranted {
            generation: Generation(1),
            sealed_record: SealedBytes(vec![]),
            attempts_left: MAX_ATTEMPTS.saturating_sub(attempt),
            attempt,
        })),
    };
    let mut history: Vec<Record> = (1..=3).map(|n| grant(n, u32::from(n))).collect();
    check_guess_bound(&history)?;
    history.push(Record {
        user: 0,
        request: RequestId([9; 16]),
        command: "finish",
        outcome: Outcome::Unknown,
    });
    history.extend((4..=6).map(|n| grant(n, u32::from(n) - 3)));
    check_guess_bound(&history)?;
    history.push(grant(7, 4));
    match check_guess_bound(&history) {
        Err(e) if e.contains("guess bound broken") => Ok(()),
        other => Err(format!("a fourth grant was not flagged: {other:?}")),
    }
}

fn main() -> std::process::ExitCode {
    let mut args = libtest_mimic::Arguments::from_args();
    // One cluster at a time: they are timing-sensitive and the machine is small.
    args.test_threads.get_or_insert(1);
    let seeds: Vec<u64> = match std::env::var("BKV_REPLICA_SEED") {
        Ok(s) => match s.parse() {
            Ok(seed) => vec![seed],
            Err(_) => {
                eprintln!("BKV_REPLICA_SEED must be a number, got {s:?}");
                return std::process::ExitCode::from(2);
            }
        },
        Err(_) => CI_SEEDS.to_vec(),
    };
    let mut trials: Vec<libtest_mimic::Trial> = vec![libtest_mimic::Trial::test(
        "replicas::checker_rejects_a_fourth_grant",
        || checker_self_test().map_err(Into::into),
    )];
    trials.extend(seeds
        .into_iter()
        .map(|seed| {
            libtest_mimic::Trial::test(format!("replicas::seed_{seed}"), move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(run_seed(seed)).map_err(|e| {
                    format!(
                        "seed {seed}: {e}\nreplay: BKV_REPLICA_SEED={seed} cargo test --workspace --test replicas"
                    )
                    .into()
                })
            })
        }));
    libtest_mimic::run(&args, trials).exit_code()
}
