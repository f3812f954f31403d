//! Calls to the fleet's frontend API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::RngCore;
use rand::rngs::OsRng;
use tonic::transport::Channel;
use vault_fleet::tls::CertFiles;
use vault_proto::v1::error_detail::Kind;
use vault_proto::v1::frontend_client::FrontendClient;
use vault_proto::v1::user_status_reply::State;
use vault_proto::v1::{
    DeleteRequest, ErrorDetail, FleetKeys, GetFleetBundleRequest, RecoverFinishRequest,
    RecoverStartRequest, RegisterFinishRequest, RegisterStartRequest, UserStatusRequest,
};
use vault_protocol::client::{Login, RegisterStartAnswer, Registration, argon2id};
use vault_protocol::{KEY_LEN, ProtocolError};
use vault_types::{FleetId, Generation, UserId};
use zeroize::Zeroizing;

use crate::trust::Trust;

pub use vault_types::UserStatus as Status;

/// One node's frontend address.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The node id (its certificate must name it).
    pub node_id: u64,
    /// Its frontend address.
    pub addr: SocketAddr,
}

/// The Argon2id parameters that stretch the password. Recovery must use
/// the parameters the registration used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ksf {
    /// 19 MiB, 2 passes, 1 lane (OWASP's Argon2id recommendation): about
    /// 20–40 ms on a laptop core. The default.
    Production,
    /// 256 KiB, 1 pass: for tests and benchmarks only.
    Fast,
    /// Explicit memory (KiB), passes and lanes.
    Custom {
        /// Memory in KiB.
        m_kib: u32,
        /// Passes.
        t: u32,
        /// Lanes.
        p: u32,
    },
}

impl Ksf {
    fn argon2(self) -> Result<argon2::Argon2<'static>, ClientError> {
        let (m, t, p) = match self {
            Ksf::Production => (19 * 1024, 2, 1),
            Ksf::Fast => (256, 1, 1),
            Ksf::Custom { m_kib, t, p } => (m_kib, t, p),
        };
        argon2id(m, t, p).map_err(ClientError::Protocol)
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// No such user (never registered, or deleted).
    #[error("no such user")]
    NotFound,
    /// No attempts left: the key is erased.
    #[error("locked: no attempts left, the key is erased")]
    Locked,
    /// The password is wrong.
    #[error("wrong password; {attempts_left} attempts left")]
    WrongPassword {
        /// Attempts left after this one.
        attempts_left: u32,
    },
    /// The login session ended before `RecoverFinish` (expired, or its node
    /// went away, or the record changed).
    #[error("the recovery session expired; start again")]
    SessionExpired,
    /// A concurrent registration of the same user won; retry.
    #[error("a concurrent registration of this user won")]
    Conflict,
    /// The fleet has not been initialized.
    #[error("the fleet is not initialized")]
    NotInitialized,
    /// The request was refused as malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No node answered in time.
    #[error("the fleet is unavailable: {0}")]
    Unavailable(String),
    /// A protocol step failed on this side.
    #[error("protocol: {0}")]
    Protocol(ProtocolError),
    /// The fleet's signed key bundle failed a check (which one is named);
    /// nothing secret was sent.
    #[error("fleet-key bundle check failed: {0}")]
    Bundle(vault_transparency::BundleError),
    /// The fleet answered something that does not fit (wrong fleet, wrong
    /// server key).
    #[error("the fleet's answer does not check out: {0}")]
    Untrusted(String),
    /// Setting the client up failed (certificates, addresses).
    #[error("client setup: {0}")]
    Setup(String),
    /// Anything else the fleet said.
    #[error("{0}")]
    Other(String),
}

fn detail(status: &tonic::Status) -> Option<ErrorDetail> {
    vault_proto::errors::detail(status)
}

/// Whether a call may be repeated as it is (the same request id and bytes,
/// on any node): the fleet was unavailable, or the node says the attempt
/// of this request is committed (a retry with the same id costs nothing;
/// a new id would cost another attempt).
fn is_retryable(status: &tonic::Status) -> bool {
    if detail(status).is_some_and(|d| {
        d.attempt_committed
            && (d.kind == Kind::Unavailable as i32 || d.kind == Kind::Internal as i32)
    }) {
        return true;
    }
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => true,
        tonic::Code::ResourceExhausted => {
            detail(status).is_some_and(|d| d.kind == Kind::Unavailable as i32)
        }
        tonic::Code::Unknown => status.message().contains("transport"),
        _ => false,
    }
}

fn from_status(status: tonic::Status) -> ClientError {
    let kind = detail(&status).map(|d| {
        (
            Kind::try_from(d.kind).unwrap_or(Kind::Unspecified),
            d.attempts_left,
        )
    });
    match kind {
        Some((Kind::NotFound, _)) => ClientError::NotFound,
        Some((Kind::Locked, _)) => ClientError::Locked,
        Some((Kind::WrongPassword, left)) => ClientError::WrongPassword {
            attempts_left: left,
        },
        Some((Kind::SessionExpired, _)) => ClientError::SessionExpired,
        Some((Kind::NotInitialized, _)) => ClientError::NotInitialized,
        Some((Kind::Conflict, _)) => ClientError::Conflict,
        Some((Kind::InvalidArgument, _)) => {
            ClientError::InvalidArgument(status.message().to_owned())
        }
        Some((Kind::Unavailable, _)) => ClientError::Unavailable(status.message().to_owned()),
        _ if is_retryable(&status) => ClientError::Unavailable(status.message().to_owned()),
        _ => ClientError::Other(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// The budget an app gets when it asks for 0.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// The budget to seal: `requested`, or [`DEFAULT_MAX_ATTEMPTS`] for 0.
///
/// The cap in `RegisterStart`'s answer is not signed (a relaying frontend
/// could claim 1), so it never lowers the budget: a budget above the
/// claimed cap is an error the app sees, and the node checks the real cap.
fn budget(requested: u32, claimed_cap: u32) -> Result<u32, ClientError> {
    let budget = match requested {
        0 => DEFAULT_MAX_ATTEMPTS,
        n => n,
    };
    if budget > claimed_cap {
        return Err(ClientError::InvalidArgument(format!(
            "max_attempts {budget} is above the fleet's claimed cap {claimed_cap}; ask for a budget within it"
        )));
    }
    Ok(budget)
}

/// A client of one fleet.
pub struct Client {
    endpoints: Vec<Endpoint>,
    channels: Vec<Channel>,
    fleet_id: FleetId,
    ksf: Ksf,
    deadline: Duration,
    next: AtomicUsize,
    trust: Trust,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("fleet_id", &self.fleet_id)
            .field("ksf", &self.ksf)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of fleet `fleet_id` at `endpoints`, presenting the frontend
    /// certificate `identity` and trusting node certificates of `fleet_ca`.
    /// Call it inside a tokio runtime (channels connect lazily on it).
    pub fn new(
        endpoints: Vec<Endpoint>,
        fleet_ca: &Path,
        identity: &CertFiles,
        fleet_id: FleetId,
        ksf: Ksf,
    ) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Setup("no endpoints".into()));
        }
        let channels = endpoints
            .iter()
            .map(|e| {
                let tls = vault_fleet::tls::client_config_for_node(identity, fleet_ca, e.node_id)
                    .map_err(|err| ClientError::Setup(err.to_string()))?;
                Ok(
                    tonic::transport::Endpoint::from_shared(format!("https://{}", e.addr))
                        .map_err(|err| ClientError::Setup(err.to_string()))?
                        .tls_config(tls)
                        .map_err(|err| ClientError::Setup(err.to_string()))?
                        .tcp_nodelay(true)
                        .connect_timeout(Duration::from_secs(2))
                        .timeout(Duration::from_secs(15))
                        .connect_lazy(),
                )
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        // Spread clients over the nodes.
        let start = (OsRng.next_u32() as usize) % endpoints.len();
        Ok(Client {
            endpoints,
            channels,
            fleet_id,
            ksf,
            deadline: Duration::from_secs(30),
            next: AtomicUsize::new(start),
            trust: Trust::FleetCertificateOnly,
        })
    }

    /// A client of the fleet in `fleet` (its nodes' frontend addresses and
    /// CA) using the frontend certificate `frontend-<name>.pem` in the
    /// fleet's PKI directory.
    pub fn from_fleet(
        fleet: &vault_fleet::config::Fleet,
        frontend: &str,
        ksf: Ksf,
    ) -> Result<Client, ClientError> {
        let pki = fleet
            .tls
            .fleet_ca
            .parent()
            .ok_or_else(|| ClientError::Setup("tls.fleet_ca has no directory".into()))?;
        let (cert, key) = vault_fleet::pki::files::frontend(frontend);
        let identity = CertFiles {
            cert: pki.join(cert),
            key: pki.join(key),
        };
        let endpoints = fleet
            .nodes
            .values()
            .map(|n| Endpoint {
                node_id: n.id,
                addr: n.frontend_addr,
            })
            .collect();
        Client::new(
            endpoints,
            &fleet.tls.fleet_ca,
            &identity,
            fleet.fleet_id.clone(),
            ksf,
        )
    }

    /// What this client trusts (default [`Trust::FleetCertificateOnly`];
    /// apps set [`Trust::Pinned`]).
    pub fn with_trust(mut self, trust: Trust) -> Client {
        self.trust = trust;
        self
    }

    /// How long a call keeps retrying unavailable nodes (default 30 s).
    pub fn with_deadline(mut self, deadline: Duration) -> Client {
        self.deadline = deadline;
        self
    }

    fn frontend(&self, i: usize) -> FrontendClient<Channel> {
        FrontendClient::new(self.channels[i].clone())
    }

    /// Runs `call` on some node, moving on to the next node when one is
    /// unavailable and backing off after each round; returns the node that
    /// answered.
    async fn any_node<T, F, Fut>(&self, mut call: F) -> Result<(usize, T), ClientError>
    where
        F: FnMut(FrontendClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.endpoints.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let give_up = Instant::now() + self.deadline;
        let mut backoff = Duration::from_millis(50);
        let mut tried = 0;
        loop {
            let i = (first + tried) % n;
            match call(self.frontend(i)).await {
                Ok(r) => return Ok((i, r.into_inner())),
                Err(s) if is_retryable(&s) => {
                    if Instant::now() >= give_up {
                        return Err(ClientError::Unavailable(format!(
                            "node {}: {}",
                            self.endpoints[i].node_id,
                            s.message()
                        )));
                    }
                }
                Err(s) => return Err(from_status(s)),
            }
            tried += 1;
            if tried % n == 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// Runs `call` on node `i` only (the second call of a flow), retrying
    /// a short unavailability.
    async fn same_node<T, F, Fut>(&self, i: usize, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(FrontendClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut backoff = Duration::from_millis(50);
        for _ in 0..5 {
            match call(self.frontend(i)).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if is_retryable(&s) => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(s) => return Err(from_status(s)),
            }
        }
        Err(ClientError::SessionExpired)
    }

    fn check_keys(&self, keys: Option<&FleetKeys>) -> Result<FleetKeys, ClientError> {
        let keys =
            keys.ok_or_else(|| ClientError::Untrusted("no fleet keys in the answer".into()))?;
        if keys.fleet_id != self.fleet_id.as_str() {
            return Err(ClientError::Untrusted(format!(
                "answer from fleet {:?}, expected {:?}",
                keys.fleet_id,
                self.fleet_id.as_str()
            )));
        }
        Ok(keys.clone())
    }

    /// The fleet's public keys.
    pub async fn fleet_keys(&self) -> Result<FleetKeys, ClientError> {
        let (_, keys) = self
            .any_node(|mut c| async move { c.get_fleet_bundle(GetFleetBundleRequest {}).await })
            .await?;
        let keys = self.check_keys(Some(&keys))?;
        self.trust.check(self.fleet_id.as_str(), &keys)?;
        Ok(keys)
    }

    /// Registers `user` with `password`: generates a fresh K, registers it
    /// behind the password with up to `max_attempts` wrong guesses (0:
    /// [`DEFAULT_MAX_ATTEMPTS`]), and returns K. A re-registration replaces the old
    /// record (and its K) with a new generation.
    pub async fn register(
        &self,
        user: &UserId,
        password: &[u8],
        max_attempts: u32,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, ClientError> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(k.as_mut());
        self.register_key(user, password, max_attempts, &k).await?;
        Ok(k)
    }

    /// Registers a given K (see [`Client::register`]); returns the new
    /// generation.
    ///
    /// The generation the fleet reported in `RegisterStart` is sealed into
    /// the payload; if another registration of the user wins it first, the
    /// fleet answers `CONFLICT` and the whole registration starts over
    /// (a sealed payload never applies over another generation).
    pub async fn register_key(
        &self,
        user: &UserId,
        password: &[u8],
        max_attempts: u32,
        k: &[u8; KEY_LEN],
    ) -> Result<Generation, ClientError> {
        for _ in 0..3 {
            match self.register_once(user, password, max_attempts, k).await {
                Err(ClientError::Conflict) => continue,
                other => return other,
            }
        }
        Err(ClientError::Unavailable(
            "registrations of this user keep racing".into(),
        ))
    }

    async fn register_once(
        &self,
        user: &UserId,
        password: &[u8],
        max_attempts: u32,
        k: &[u8; KEY_LEN],
    ) -> Result<Generation, ClientError> {
        let ksf = self.ksf.argon2()?;
        let (state, request) =
            Registration::start(&mut OsRng, password).map_err(ClientError::Protocol)?;
        let (_, start) = self
            .any_node(|mut c| {
                let req = RegisterStartRequest {
                    user_id: user.as_str().to_owned(),
                    registration_request: request.clone(),
                };
                async move { c.register_start(req).await }
            })
            .await?;
        let keys = self.check_keys(start.fleet.as_ref())?;
        // Before anything secret is made or sent: the bundle, and that the
        // HPKE key we seal to is the bundle's.
        self.trust.check(self.fleet_id.as_str(), &keys)?;
        let budget = budget(max_attempts, keys.max_attempts_cap)?;
        let answer = RegisterStartAnswer {
            response: &start.registration_response,
            nonce: &start.registration_nonce,
            generation: Generation(start.generation),
        };
        let out = state
            .finish(
                &mut OsRng,
                password,
                &answer,
                user,
                &self.fleet_id,
                &keys.hpke_public_key,
                &ksf,
                budget,
                k,
            )
            .map_err(ClientError::Protocol)?;
        if out.server_public_key != keys.opaque_public_key {
            return Err(crate::trust::opaque_key_mismatch());
        }
        let sealed = out.sealed.clone();
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        // Retries (same id, same bytes) are answered once.
        let (_, r) = self
            .any_node(|mut c| {
                let req = RegisterFinishRequest {
                    user_id: user.as_str().to_owned(),
                    sealed_registration: sealed.clone(),
                    request_id: id.to_vec(),
                    ..Default::default()
                };
                async move { c.register_finish(req).await }
            })
            .await?;
        Ok(Generation(r.generation))
    }

    /// Recovers `user`'s K with `password`. A wrong password is found at
    /// KE2 and reported with the attempts left, without sending KE3.
    pub async fn recover(
        &self,
        user: &UserId,
        password: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, ClientError> {
        let ksf = self.ksf.argon2()?;
        let (login, ke1) = Login::start(&mut OsRng, password).map_err(ClientError::Protocol)?;
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        // Retries reuse the id and KE1, so they consume one attempt at most.
        let (node, start) = self
            .any_node(|mut c| {
                let req = RecoverStartRequest {
                    user_id: user.as_str().to_owned(),
                    ke1: ke1.clone(),
                    request_id: id.to_vec(),
                };
                async move { c.recover_start(req).await }
            })
            .await?;
        let keys = self.check_keys(start.fleet.as_ref())?;
        self.trust.check(self.fleet_id.as_str(), &keys)?;
        let ok = match login.finish(&mut OsRng, password, &start.ke2, user, &self.fleet_id, &ksf) {
            Ok(ok) => ok,
            Err(ProtocolError::WrongPassword) => {
                return Err(ClientError::WrongPassword {
                    attempts_left: start.attempts_left,
                });
            }
            Err(e) => return Err(ClientError::Protocol(e)),
        };
        // KE3 proves the password: it goes only to the bundle's server.
        if ok.server_public_key != keys.opaque_public_key {
            return Err(crate::trust::opaque_key_mismatch());
        }
        let finish = self
            .same_node(node, |mut c| {
                let req = RecoverFinishRequest {
                    session_id: start.session_id.clone(),
                    ke3: ok.ke3.clone(),
                };
                async move { c.recover_finish(req).await }
            })
            .await?;
        ok.open(&finish.sealed_key, user)
            .map_err(ClientError::Protocol)
    }

    /// `user`'s status (a linearizable read).
    pub async fn status(&self, user: &UserId) -> Result<Status, ClientError> {
        let (_, r) = self
            .any_node(|mut c| {
                let req = UserStatusRequest {
                    user_id: user.as_str().to_owned(),
                };
                async move { c.status(req).await }
            })
            .await?;
        Ok(match State::try_from(r.state) {
            Ok(State::Active) => Status::Active {
                generation: Generation(r.generation),
                attempts_left: r.attempts_left,
                max_attempts: r.max_attempts,
            },
            Ok(State::Locked) => Status::Locked {
                generation: Generation(r.generation),
            },
            Ok(State::Deleted) => Status::Deleted {
                generation: Generation(r.generation),
            },
            _ => Status::Unknown,
        })
    }

    /// Deletes `user`'s record (the key is gone for good).
    pub async fn delete(&self, user: &UserId) -> Result<(), ClientError> {
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        self.any_node(|mut c| {
            let req = DeleteRequest {
                user_id: user.as_str().to_owned(),
                request_id: id.to_vec(),
            };
            async move { c.delete(req).await }
        })
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_claimed_in_transit_never_lowers_the_apps_budget() {
        // `FleetKeys.max_attempts_cap` is not signed: a relaying frontend
        // can claim any cap. The app's default must not follow it down.
        for claimed in [1, 2, 9] {
            assert_ne!(
                budget(0, claimed).ok(),
                Some(claimed),
                "the default budget followed a claimed cap of {claimed}"
            );
        }
        assert_eq!(budget(0, 10).unwrap(), DEFAULT_MAX_ATTEMPTS);
        assert_eq!(budget(0, 100).unwrap(), DEFAULT_MAX_ATTEMPTS);
        assert_eq!(budget(5, 10).unwrap(), 5);
        assert!(budget(11, 10).is_err());
    }
}
