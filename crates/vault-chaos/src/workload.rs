//! Clients that register users and recover their keys with right and wrong
//! passwords against a fleet under faults, recording every operation.
//!
//! They speak the frontend API directly (not through `vault-client`) so that
//! the history knows exactly which node answered, whether KE2 arrived and
//! what the fleet said. Retries reuse the request id (and the KE1), as a
//! real client does; an operation that gets no answer before its deadline
//! is recorded as unknown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::{OsRng, StdRng};
use rand::{Rng, RngCore, SeedableRng};
use tonic::transport::{Channel, Endpoint};
use vault_proto::v1::error_detail::Kind;
use vault_proto::v1::frontend_client::FrontendClient;
use vault_proto::v1::{
    RecoverFinishRequest, RecoverStartRequest, RegisterFinishRequest, RegisterStartRequest,
};
use vault_protocol::ProtocolError;
use vault_protocol::client::{Login, RegisterStartAnswer, Registration, argon2id};
use vault_types::{FleetId, UserId};

use crate::history::{Finish, History, Op, OpKind, Outcome, User};
use crate::scenario::Workload;

/// Marks an outcome that is a broken protocol promise seen by the client
/// (the checker reports these).
pub const CLIENT_CHECK: &str = "client check failed: ";

/// A recovery between RecoverStart and RecoverFinish.
pub struct Pending {
    /// The op so far.
    pub op: Op,
    /// Index of the node that holds the session.
    pub node: usize,
    login: Login,
    reply: vault_proto::v1::RecoverStartReply,
    password: Vec<u8>,
    user: User,
}

/// Frontend channels to every node of a fleet, with the fast KSF.
#[derive(Clone)]
pub struct Frontends {
    nodes: Vec<(u64, Channel)>,
    fleet_id: FleetId,
    call_timeout: Duration,
    op_deadline: Duration,
}

/// What one call's failure means.
fn classify(status: &tonic::Status) -> Outcome {
    let detail = vault_proto::errors::detail(status);
    if detail.as_ref().is_some_and(|d| d.attempt_committed) {
        // The node committed this request's attempt and then failed: its
        // outcome is open until a retry with the same id settles it.
        return Outcome::Unknown(format!("{:?}: {}", status.code(), status.message()));
    }
    let kind = detail.and_then(|d| Kind::try_from(d.kind).ok());
    match kind {
        Some(Kind::Unavailable) | None | Some(Kind::Unspecified) => {
            Outcome::Unknown(format!("{:?}: {}", status.code(), status.message()))
        }
        Some(k) => Outcome::Refused(k.as_str_name().to_owned()),
    }
}

impl Frontends {
    /// Lazily connected channels to every node's frontend address, with the
    /// `test` frontend certificate of a test fleet in `dir`.
    pub fn new(
        fleet: &vault_fleet::config::Fleet,
        dir: &std::path::Path,
        w: &Workload,
    ) -> anyhow::Result<Frontends> {
        let pki = dir.join("pki");
        let mut nodes = Vec::new();
        for (id, n) in &fleet.nodes {
            let tls = vault_testkit::client::tls(
                &fleet.tls.fleet_ca,
                Some((
                    &pki.join("frontend-test.pem"),
                    &pki.join("frontend-test.key"),
                )),
                *id,
            )?;
            nodes.push((*id, channel(n.frontend_addr, tls)?));
        }
        Ok(Frontends {
            nodes,
            fleet_id: fleet.fleet_id.clone(),
            call_timeout: Duration::from_millis(w.call_timeout_ms),
            op_deadline: Duration::from_millis(w.op_deadline_ms),
        })
    }

    fn client(&self, i: usize) -> FrontendClient<Channel> {
        FrontendClient::new(self.nodes[i].1.clone())
    }

    /// Runs `call` on node after node from `first` until one answers with
    /// something other than "unavailable", or the deadline passes.
    async fn any_node<T, F, Fut>(
        &self,
        first: usize,
        nodes: &mut Vec<u64>,
        call: F,
    ) -> Result<(usize, T), Outcome>
    where
        F: FnMut(FrontendClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.with_retries(first, true, None, nodes, call).await
    }

    /// Runs `call` on node `first` (and, with `rotate`, the nodes after
    /// it in turn), retrying while the answer is "unavailable", for at most
    /// `max_tries` calls and the operation's deadline.
    async fn with_retries<T, F, Fut>(
        &self,
        first: usize,
        rotate: bool,
        max_tries: Option<usize>,
        nodes: &mut Vec<u64>,
        mut call: F,
    ) -> Result<(usize, T), Outcome>
    where
        F: FnMut(FrontendClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let give_up = tokio::time::Instant::now() + self.op_deadline;
        let mut last = Outcome::Unknown("no call made".into());
        let n = self.nodes.len();
        for tried in 0..max_tries.unwrap_or(usize::MAX) {
            let i = if rotate { (first + tried) % n } else { first };
            nodes.push(self.nodes[i].0);
            match tokio::time::timeout(self.call_timeout, call(self.client(i))).await {
                Ok(Ok(r)) => return Ok((i, r.into_inner())),
                Ok(Err(s)) => match classify(&s) {
                    Outcome::Unknown(m) => last = Outcome::Unknown(m),
                    // After a try without answer, a refusal does not mean
                    // nothing happened: the first try may have committed
                    // (a RecoverStart that took the last attempt is
                    // answered from the dedup table as locked; a
                    // RecoverFinish finds its session consumed).
                    refused if tried > 0 && last.is_unknown() => {
                        return Err(Outcome::Unknown(format!("{last:?}, then {refused:?}")));
                    }
                    refused => return Err(refused),
                },
                Err(_) => last = Outcome::Unknown("call timed out".into()),
            }
            if tokio::time::Instant::now() >= give_up {
                break;
            }
            if !rotate || (tried + 1) % n == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(last)
    }

    /// Registers a new user `id` with a random password and K; when
    /// acknowledged, returns it (and adds it to the users the clients pick
    /// from when `share`).
    pub async fn register(
        &self,
        history: &History,
        client: u32,
        id: String,
        max_attempts: u32,
        first: usize,
        share: bool,
    ) -> Option<User> {
        let mut password = [0u8; 16];
        OsRng.fill_bytes(&mut password);
        let password = hex::encode(password).into_bytes();
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        let (mut op, request_id) = Op::start(history, client, OpKind::Register, &id);
        let result = self
            .register_inner(
                &mut op.nodes,
                &id,
                &password,
                &k,
                max_attempts,
                request_id,
                first,
            )
            .await;
        op.end_ms = history.now_ms();
        let user = match result {
            Ok(generation) => {
                op.generation = Some(generation);
                let user = User {
                    id,
                    password,
                    k,
                    max_attempts,
                    generation,
                };
                if share {
                    history.add_user(user.clone());
                }
                Some(user)
            }
            Err(o) => {
                op.outcome = o;
                None
            }
        };
        history.push(op);
        user
    }

    #[expect(clippy::too_many_arguments, reason = "one registration's inputs")]
    async fn register_inner(
        &self,
        nodes: &mut Vec<u64>,
        id: &str,
        password: &[u8],
        k: &[u8; 32],
        max_attempts: u32,
        request_id: [u8; 16],
        first: usize,
    ) -> Result<u64, Outcome> {
        let user = UserId::new(id).map_err(|e| Outcome::Refused(e.to_string()))?;
        let (state, request) = Registration::start(&mut OsRng, password)
            .map_err(|e| Outcome::Refused(e.to_string()))?;
        let (i, start) = self
            .any_node(first, nodes, |mut c| {
                let req = RegisterStartRequest {
                    user_id: id.to_owned(),
                    registration_request: request.clone(),
                };
                async move { c.register_start(req).await }
            })
            .await?;
        let keys = start
            .fleet
            .ok_or_else(|| Outcome::Refused("no fleet keys".into()))?;
        let ksf = argon2id(256, 1, 1).map_err(|e| Outcome::Refused(e.to_string()))?;
        let answer = RegisterStartAnswer {
            response: &start.registration_response,
            nonce: &start.registration_nonce,
            generation: vault_types::Generation(start.generation),
        };
        let out = state
            .finish(
                &mut OsRng,
                password,
                &answer,
                &user,
                &self.fleet_id,
                &keys.hpke_public_key,
                &ksf,
                max_attempts,
                k,
            )
            .map_err(|e| Outcome::Refused(format!("client: {e}")))?;
        let (_, finish) = self
            .any_node(i, nodes, |mut c| {
                let req = RegisterFinishRequest {
                    user_id: id.to_owned(),
                    sealed_registration: out.sealed.clone(),
                    request_id: request_id.to_vec(),
                    ..Default::default()
                };
                async move { c.register_finish(req).await }
            })
            .await?;
        Ok(finish.generation)
    }

    /// One recovery of `user`, with its password when `right`, else with a
    /// wrong one; on node `first` first.
    pub async fn recover(
        &self,
        history: &History,
        client: u32,
        user: &User,
        right: bool,
        first: usize,
    ) -> Op {
        match self.begin(history, client, user, right, first).await {
            Ok(pending) => self.complete(history, pending).await,
            Err(op) => op,
        }
    }

    /// RecoverStart: the op so far, or the finished op when it ended there.
    pub async fn begin(
        &self,
        history: &History,
        client: u32,
        user: &User,
        right: bool,
        first: usize,
    ) -> Result<Pending, Op> {
        let password = if right {
            user.password.clone()
        } else {
            b"not the password".to_vec()
        };
        let kind = if right {
            OpKind::RecoverRight
        } else {
            OpKind::RecoverWrong
        };
        let (mut op, request_id) = Op::start(history, client, kind, &user.id);
        let started = self
            .recover_start(&mut op, &password, request_id, first)
            .await;
        op.end_ms = history.now_ms();
        let Some((node, login, reply)) = started else {
            return Err(op);
        };
        op.ke2_ms = Some(op.end_ms);
        op.attempts_left = Some(reply.attempts_left);
        op.generation = Some(reply.generation);
        Ok(Pending {
            op,
            node,
            login,
            reply,
            password,
            user: user.clone(),
        })
    }

    /// Checks KE2 and, for the right password, sends KE3 to the node that
    /// holds the session.
    pub async fn complete(&self, history: &History, pending: Pending) -> Op {
        let Pending {
            mut op,
            node: i,
            login,
            reply,
            password,
            user,
        } = pending;
        let right = op.kind == OpKind::RecoverRight;
        let Ok(uid) = UserId::new(user.id.as_str()) else {
            return op;
        };
        let ksf = match argon2id(256, 1, 1) {
            Ok(k) => k,
            Err(e) => {
                op.outcome = Outcome::Refused(e.to_string());
                return op;
            }
        };
        let ok = match login.finish(
            &mut OsRng,
            &password,
            &reply.ke2,
            &uid,
            &self.fleet_id,
            &ksf,
        ) {
            Ok(ok) => ok,
            Err(ProtocolError::WrongPassword) => {
                if right {
                    op.outcome = Outcome::Refused(format!(
                        "{CLIENT_CHECK}the right password did not open KE2"
                    ));
                }
                return op;
            }
            Err(e) => {
                op.outcome = Outcome::Refused(format!("{CLIENT_CHECK}KE2: {e}"));
                return op;
            }
        };
        if !right {
            op.outcome = Outcome::Refused(format!("{CLIENT_CHECK}a wrong password opened KE2"));
            return op;
        }
        let mut finish = Finish {
            start_ms: history.now_ms(),
            end_ms: 0.0,
            outcome: Outcome::Ok,
            k_matches: None,
        };
        // The session lives on node i: retry there only.
        let answer = self
            .with_retries(i, false, Some(3), &mut Vec::new(), |mut c| {
                let req = RecoverFinishRequest {
                    session_id: reply.session_id.clone(),
                    ke3: ok.ke3.clone(),
                };
                async move { c.recover_finish(req).await }
            })
            .await;
        finish.end_ms = history.now_ms();
        match answer {
            Ok((_, a)) => {
                let k = ok.open(&a.sealed_key, &uid);
                finish.k_matches = Some(k.is_ok_and(|k| *k == user.k));
            }
            Err(last) => finish.outcome = last,
        }
        op.finish = Some(finish);
        op
    }

    async fn recover_start(
        &self,
        op: &mut Op,
        password: &[u8],
        request_id: [u8; 16],
        first: usize,
    ) -> Option<(usize, Login, vault_proto::v1::RecoverStartReply)> {
        let (login, ke1) = match Login::start(&mut OsRng, password) {
            Ok(x) => x,
            Err(e) => {
                op.outcome = Outcome::Refused(e.to_string());
                return None;
            }
        };
        let user = op.user.clone();
        let mut nodes = Vec::new();
        let result = self
            .any_node(first, &mut nodes, |mut c| {
                let req = RecoverStartRequest {
                    user_id: user.clone(),
                    ke1: ke1.clone(),
                    request_id: request_id.to_vec(),
                };
                async move { c.recover_start(req).await }
            })
            .await;
        op.nodes = nodes;
        match result {
            Ok((i, reply)) => Some((i, login, reply)),
            Err(o) => {
                if o == Outcome::Refused(Kind::Locked.as_str_name().to_owned()) {
                    op.attempts_left = Some(0);
                }
                op.outcome = o;
                None
            }
        }
    }

    /// These channels, restricted to node `id` (clients that call only
    /// it).
    pub fn only(&self, id: u64) -> Frontends {
        let mut f = self.clone();
        f.nodes.retain(|(n, _)| *n == id);
        f
    }

    /// Node count.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The index of node `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|(n, _)| *n == id)
    }
}

fn channel(addr: SocketAddr, tls: tonic::transport::ClientTlsConfig) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy())
}

/// The client tasks of a run; [`Load::stop`] ends them.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `w.clients` clients; client `c` draws its choices from
    /// `seed + c`.
    pub fn start(frontends: &Frontends, history: &History, w: &Workload, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let next_user = Arc::new(AtomicU64::new(0));
        let tasks = (0..w.clients)
            .map(|c| {
                let (f, h, w, stop, next_user) = (
                    frontends.clone(),
                    history.clone(),
                    w.clone(),
                    stop.clone(),
                    next_user.clone(),
                );
                tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(u64::from(c)));
                    while !stop.load(Ordering::Relaxed) {
                        client_step(&f, &h, &w, c, &mut rng, &next_user).await;
                    }
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients after their current operation.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn client_step(
    f: &Frontends,
    h: &History,
    w: &Workload,
    c: u32,
    rng: &mut StdRng,
    next_user: &AtomicU64,
) {
    let first = rng.gen_range(0..f.len());
    let total = w.register + w.recover_right + w.recover_wrong;
    let roll = rng.gen_range(0..total);
    let user = h.some_user(|n| rng.gen_range(0..n));
    match user {
        Some(user) if roll >= w.register => {
            let right = roll < w.register + w.recover_right;
            let op = f.recover(h, c, &user, right, first).await;
            h.push(op);
        }
        _ => {
            let n = next_user.fetch_add(1, Ordering::Relaxed);
            f.register(h, c, format!("chaos-user-{n}"), w.max_attempts, first, true)
                .await;
        }
    }
    // A little think time keeps two cores for the fleet.
    tokio::time::sleep(Duration::from_millis(rng.gen_range(5..30))).await;
}
