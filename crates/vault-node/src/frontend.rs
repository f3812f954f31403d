//! The frontend API (design brief §3): OPAQUE registration and recovery,
//! status, delete, the fleet's keys.
//!
//! The order of a recovery is the security core: `RecoverStart` commits
//! `BeginAttempt` (one attempt consumed, on a majority) and only then
//! unseals the record and computes KE2. The login state stays in this
//! node's memory under a random session id, bound to the user, generation
//! and attempt, for `session_ttl`. `RecoverFinish` commits the outcome
//! before it answers, and the answer (`enc_K` under the OPAQUE session key)
//! leaves only after `FinishAttempt{success}` is applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use rand::RngCore;
use rand::rngs::OsRng;
use tonic::{Code, Request, Response, Status};
use vault_fleet::config::Fleet;
use vault_hsm::{AsyncHsm, Pkcs11Hsm, SecretBytes};
use vault_proto::v1::error_detail::Kind;
use vault_proto::v1::frontend_server::Frontend;
use vault_proto::v1::user_status_reply::State;
use vault_proto::v1::{
    DeleteReply, DeleteRequest, ErrorDetail, FleetKeys, GetFleetBundleRequest, RecoverFinishReply,
    RecoverFinishRequest, RecoverStartReply, RecoverStartRequest, RegisterFinishReply,
    RegisterFinishRequest, RegisterStartReply, RegisterStartRequest, UserStatusReply,
    UserStatusRequest,
};
use vault_protocol::{
    FleetSecrets, MAX_OPAQUE_MESSAGE, MAX_SEALED_PAYLOAD, ServerLoginState, StoredRecord,
    hpke_key_aad, record_aad,
};
use vault_raft::proposer::{ProposeError, Proposer};
use vault_storage::StateReader;
use vault_types::{
    Command, CommandError, Generation, Proposal, Reply, RequestDigest, RequestId, RequestMeta,
    Response as VaultResponse, SealedBytes, Timestamp, UserId, UserStatus,
};
use zeroize::Zeroizing;

use crate::metrics::{Metrics, timed_hsm};

/// How long a login state waits for `RecoverFinish` by default.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(60);
/// How many login states a node holds at most by default.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Longest user id accepted (bytes), checked before anything else.
pub const MAX_USER_ID: usize = 256;

/// An error with its machine-readable detail.
fn fail(code: Code, kind: Kind, message: impl Into<String>, attempts_left: u32) -> Status {
    let detail = ErrorDetail {
        kind: kind as i32,
        attempts_left,
    };
    Status::with_details(code, message, detail.encode_to_vec().into())
}

fn invalid(message: impl Into<String>) -> Status {
    fail(Code::InvalidArgument, Kind::InvalidArgument, message, 0)
}

fn unavailable(message: impl Into<String>) -> Status {
    fail(Code::Unavailable, Kind::Unavailable, message, 0)
}

fn hsm_failed(e: vault_hsm::HsmError) -> Status {
    unavailable(format!("HSM: {e}"))
}

fn propose_failed(e: ProposeError) -> Status {
    match e {
        ProposeError::Retryable(m) => unavailable(m),
        ProposeError::Fatal(m) => Status::internal(m),
    }
}

/// A command the state machine refused, as the frontend sees it.
fn refused(e: CommandError) -> Status {
    match e {
        CommandError::NotFound => fail(Code::NotFound, Kind::NotFound, "no such user", 0),
        CommandError::Locked => fail(
            Code::FailedPrecondition,
            Kind::Locked,
            "locked: no attempts left, the key is erased",
            0,
        ),
        CommandError::FleetNotInitialized => fail(
            Code::FailedPrecondition,
            Kind::NotInitialized,
            "the fleet is not initialized",
            0,
        ),
        CommandError::RequestIdReused => invalid("the request id was used for another request"),
        CommandError::MaxAttemptsOutOfRange { requested, cap } => {
            invalid(format!("max_attempts {requested} is outside 1..={cap}"))
        }
        CommandError::StaleGeneration { .. } | CommandError::NoAttemptInProgress => fail(
            Code::FailedPrecondition,
            Kind::SessionExpired,
            "the record changed since this session began",
            0,
        ),
        other => Status::failed_precondition(other.to_string()),
    }
}

fn user_id(s: &str) -> Result<UserId, Status> {
    if s.len() > MAX_USER_ID {
        return Err(invalid(format!("user_id longer than {MAX_USER_ID} bytes")));
    }
    UserId::new(s).map_err(|e| invalid(format!("user_id: {e}")))
}

fn bounded<'a>(bytes: &'a [u8], max: usize, what: &str) -> Result<&'a [u8], Status> {
    if bytes.is_empty() || bytes.len() > max {
        return Err(invalid(format!("{what} must be 1..={max} bytes")));
    }
    Ok(bytes)
}

fn request_id(bytes: &[u8]) -> Result<RequestId, Status> {
    let id: [u8; 16] = bytes
        .try_into()
        .map_err(|_| invalid("request_id must be 16 bytes"))?;
    Ok(RequestId(id))
}

fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// One login between `RecoverStart` and `RecoverFinish`.
struct Session {
    user: UserId,
    generation: Generation,
    state: ServerLoginState,
    enc_k: Zeroizing<Vec<u8>>,
    expires: Instant,
}

/// The frontend API of one node.
pub struct FrontendService {
    fleet: Arc<Fleet>,
    reader: StateReader,
    hsm: AsyncHsm<Pkcs11Hsm>,
    proposer: Proposer,
    metrics: Arc<Metrics>,
    secrets: tokio::sync::OnceCell<Arc<FleetSecrets>>,
    sessions: Mutex<HashMap<[u8; 16], Session>>,
    session_ttl: Duration,
    max_sessions: usize,
}

impl FrontendService {
    /// The service, with default session limits.
    pub fn new(
        fleet: Arc<Fleet>,
        reader: StateReader,
        hsm: AsyncHsm<Pkcs11Hsm>,
        proposer: Proposer,
        metrics: Arc<Metrics>,
    ) -> FrontendService {
        FrontendService {
            fleet,
            reader,
            hsm,
            proposer,
            metrics,
            secrets: tokio::sync::OnceCell::new(),
            sessions: Mutex::new(HashMap::new()),
            session_ttl: DEFAULT_SESSION_TTL,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }

    /// Sets how long login states live and how many are held.
    pub fn with_sessions(mut self, ttl: Duration, max: usize) -> FrontendService {
        self.session_ttl = ttl;
        self.max_sessions = max;
        self
    }

    /// The fleet's secrets, unsealed once from the replicated state.
    async fn secrets(&self) -> Result<Arc<FleetSecrets>, Status> {
        self.secrets
            .get_or_try_init(|| async {
                let fleet = self
                    .reader
                    .with_state(|s| s.fleet().cloned())
                    .ok_or_else(|| {
                        fail(
                            Code::FailedPrecondition,
                            Kind::NotInitialized,
                            "the fleet is not initialized",
                            0,
                        )
                    })?;
                if fleet.fleet_id != self.fleet.fleet_id {
                    return Err(Status::internal(
                        "the replicated fleet id is not this fleet file's",
                    ));
                }
                let setup = timed_hsm(
                    &self.metrics,
                    "unseal",
                    self.hsm.unseal(
                        vault_protocol::suite::server_setup_aad(&fleet.fleet_id),
                        fleet.sealed_server_setup.0.clone(),
                    ),
                )
                .await
                .map_err(hsm_failed)?;
                let hpke = timed_hsm(
                    &self.metrics,
                    "unseal",
                    self.hsm.unseal(
                        hpke_key_aad(&fleet.fleet_id),
                        fleet.sealed_hpke_key.0.clone(),
                    ),
                )
                .await
                .map_err(hsm_failed)?;
                let secrets = FleetSecrets::new(fleet.fleet_id, setup.expose(), hpke.expose())
                    .map_err(|e| Status::internal(format!("fleet secrets: {e}")))?;
                Ok(Arc::new(secrets))
            })
            .await
            .cloned()
    }

    /// The fleet's public keys and current bundle (unseals the fleet
    /// secrets on first use).
    pub async fn public_keys(&self) -> Result<FleetKeys, Status> {
        let secrets = self.secrets().await?;
        Ok(self.fleet_keys(&secrets))
    }

    fn fleet_keys(&self, s: &FleetSecrets) -> FleetKeys {
        let bundle = self
            .reader
            .with_state(|st| st.fleet().and_then(|f| f.bundle.clone()));
        FleetKeys {
            fleet_id: s.fleet().as_str().to_owned(),
            opaque_public_key: s.opaque_public_key().to_vec(),
            hpke_public_key: s.hpke_public_key().to_vec(),
            max_attempts_cap: self.fleet.max_attempts_cap,
            signed_bundle: bundle.map(|(_, b)| b).unwrap_or_default(),
        }
    }

    async fn propose(
        &self,
        id: RequestId,
        digest: RequestDigest,
        command: Command,
    ) -> Result<Result<VaultResponse, CommandError>, Status> {
        let proposal = Proposal {
            request: Some(RequestMeta { id, digest }),
            at: now(),
            command,
        };
        match self
            .proposer
            .propose(proposal)
            .await
            .map_err(propose_failed)?
        {
            Reply::Vault(r) => Ok(r),
            Reply::Raft => Err(Status::internal("a command got a Raft reply")),
        }
    }

    /// DELIBERATELY BROKEN, for the chaos checker's bite test only (cargo
    /// feature `unsafe-ke2-before-commit`, never in a release): grants the
    /// attempt from this node's applied state and commits `BeginAttempt`
    /// 300 ms later in the background, so KE2 leaves before the attempt is
    /// durable. A crash, or a fast guesser, gets guesses that were never
    /// counted; the chaos checker must catch it.
    #[cfg(feature = "unsafe-ke2-before-commit")]
    async fn grant_before_commit(
        &self,
        id: RequestId,
        digest: RequestDigest,
        user: &UserId,
    ) -> Result<Result<VaultResponse, CommandError>, Status> {
        use vault_core::{RecordStatus, UserRecord};
        self.proposer.read_barrier().await.map_err(propose_failed)?;
        let granted = self.reader.with_state(|s| match s.user(user) {
            Some(UserRecord {
                generation,
                status:
                    RecordStatus::Active {
                        sealed_record,
                        max_attempts,
                        attempts_used,
                    },
                ..
            }) if attempts_used < max_attempts => Ok(VaultResponse::AttemptGranted {
                generation: *generation,
                sealed_record: sealed_record.clone(),
                attempts_left: max_attempts - attempts_used - 1,
                attempt: attempts_used + 1,
            }),
            Some(_) => Err(CommandError::Locked),
            None => Err(CommandError::NotFound),
        });
        let proposer = self.proposer.clone();
        let proposal = Proposal {
            request: Some(RequestMeta { id, digest }),
            at: now(),
            command: Command::BeginAttempt { user: user.clone() },
        };
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = proposer.propose(proposal).await;
        });
        Ok(granted)
    }

    fn keep_session(&self, session: Session) -> Result<[u8; 16], Status> {
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= self.max_sessions {
            return Err(fail(
                Code::ResourceExhausted,
                Kind::Unavailable,
                "too many recoveries in progress on this node; retry",
                0,
            ));
        }
        sessions.insert(id, session);
        Ok(id)
    }

    fn take_session(&self, id: &[u8]) -> Result<Session, Status> {
        let expired = || {
            fail(
                Code::FailedPrecondition,
                Kind::SessionExpired,
                "no such session on this node (expired, finished, or started elsewhere)",
                0,
            )
        };
        let id: [u8; 16] = id
            .try_into()
            .map_err(|_| invalid("session_id must be 16 bytes"))?;
        let session = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id)
            .ok_or_else(expired)?;
        if session.expires <= Instant::now() {
            return Err(expired());
        }
        Ok(session)
    }
}

#[tonic::async_trait]
impl Frontend for FrontendService {
    async fn register_start(
        &self,
        req: Request<RegisterStartRequest>,
    ) -> Result<Response<RegisterStartReply>, Status> {
        vault_fleet::callers::frontend(&req)?;
        let r = req.into_inner();
        let user = user_id(&r.user_id)?;
        let request = bounded(
            &r.registration_request,
            MAX_OPAQUE_MESSAGE,
            "registration_request",
        )?;
        let secrets = self.secrets().await?;
        let response = secrets
            .register_start(&user, request)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Response::new(RegisterStartReply {
            registration_response: response,
            fleet: Some(self.fleet_keys(&secrets)),
        }))
    }

    async fn register_finish(
        &self,
        req: Request<RegisterFinishRequest>,
    ) -> Result<Response<RegisterFinishReply>, Status> {
        vault_fleet::callers::frontend(&req)?;
        let r = req.into_inner();
        let user = user_id(&r.user_id)?;
        let sealed = bounded(
            &r.sealed_registration,
            MAX_SEALED_PAYLOAD,
            "sealed_registration",
        )?;
        let id = request_id(&r.request_id)?;
        let max_attempts = match r.max_attempts {
            0 => self.fleet.max_attempts_cap,
            n if n > self.fleet.max_attempts_cap => {
                return Err(invalid(format!(
                    "max_attempts {n} is above the fleet's cap {}",
                    self.fleet.max_attempts_cap
                )));
            }
            n => n,
        };
        let secrets = self.secrets().await?;
        let record = secrets
            .register_finish(&user, sealed)
            .map_err(|e| invalid(e.to_string()))?;
        // Seal for the generation this registration will get; the command
        // is refused if another registration takes it first.
        self.proposer.read_barrier().await.map_err(propose_failed)?;
        let current = self
            .reader
            .with_state(|s| s.user(&user).map(|u| u.generation))
            .unwrap_or(Generation(0));
        let generation = Generation(current.0 + 1);
        let sealed_record = timed_hsm(
            &self.metrics,
            "seal",
            self.hsm.seal(
                record_aad(secrets.fleet(), &user, generation),
                SecretBytes::new(record.encode().to_vec()),
            ),
        )
        .await
        .map_err(hsm_failed)?;
        let digest = RequestDigest::of(&[
            b"register",
            user.as_str().as_bytes(),
            sealed,
            &max_attempts.to_be_bytes(),
        ]);
        let command = Command::Register {
            user: user.clone(),
            generation: Some(generation),
            sealed_record: SealedBytes(sealed_record),
            max_attempts,
        };
        match self.propose(id, digest, command).await? {
            Ok(VaultResponse::Registered { generation }) => {
                tracing::info!(request = ?id, generation = generation.0, "registered");
                Ok(Response::new(RegisterFinishReply {
                    generation: generation.0,
                    max_attempts,
                }))
            }
            Ok(other) => Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(CommandError::StaleGeneration { .. }) => Err(fail(
                Code::Aborted,
                Kind::Conflict,
                "another registration of this user won; retry with a new request id",
                0,
            )),
            Err(e) => Err(refused(e)),
        }
    }

    async fn recover_start(
        &self,
        req: Request<RecoverStartRequest>,
    ) -> Result<Response<RecoverStartReply>, Status> {
        vault_fleet::callers::frontend(&req)?;
        let r = req.into_inner();
        let user = user_id(&r.user_id)?;
        let ke1 = bounded(&r.ke1, MAX_OPAQUE_MESSAGE, "ke1")?;
        let id = request_id(&r.request_id)?;
        // Junk must not cost the user an attempt: parse before committing.
        vault_protocol::check_ke1(ke1).map_err(|e| invalid(e.to_string()))?;
        let secrets = self.secrets().await?;
        // The digest binds the request id to this KE1: a retry with another
        // KE1 (another password guess) under the same id is refused.
        let digest = RequestDigest::of(&[b"begin-attempt", user.as_str().as_bytes(), ke1]);
        #[cfg(not(feature = "unsafe-ke2-before-commit"))]
        let granted = self
            .propose(id, digest, Command::BeginAttempt { user: user.clone() })
            .await?;
        #[cfg(feature = "unsafe-ke2-before-commit")]
        let granted = self.grant_before_commit(id, digest, &user).await?;
        // Only now, with the attempt committed and applied, may KE2 leave.
        let (generation, sealed_record, attempts_left) = match granted {
            Ok(VaultResponse::AttemptGranted {
                generation,
                sealed_record,
                attempts_left,
                ..
            }) => (generation, sealed_record, attempts_left),
            Ok(other) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(e) => return Err(refused(e)),
        };
        let plain = timed_hsm(
            &self.metrics,
            "unseal",
            self.hsm.unseal(
                record_aad(secrets.fleet(), &user, generation),
                sealed_record.0,
            ),
        )
        .await
        .map_err(hsm_failed)?;
        let record = StoredRecord::decode(plain.expose())
            .map_err(|e| Status::internal(format!("stored record: {e}")))?;
        let (ke2, state) = secrets
            .login_start(&mut OsRng, &user, &record, ke1)
            .map_err(|e| invalid(e.to_string()))?;
        let session_id = self.keep_session(Session {
            user,
            generation,
            state,
            enc_k: Zeroizing::new(record.enc_k.clone()),
            expires: Instant::now() + self.session_ttl,
        })?;
        tracing::info!(request = ?id, generation = generation.0, attempts_left, "attempt granted");
        Ok(Response::new(RecoverStartReply {
            ke2,
            session_id: session_id.to_vec(),
            attempts_left,
            generation: generation.0,
            fleet: Some(self.fleet_keys(&secrets)),
            session_ttl_seconds: self.session_ttl.as_secs() as u32,
        }))
    }

    async fn recover_finish(
        &self,
        req: Request<RecoverFinishRequest>,
    ) -> Result<Response<RecoverFinishReply>, Status> {
        vault_fleet::callers::frontend(&req)?;
        let r = req.into_inner();
        let ke3 = bounded(&r.ke3, MAX_OPAQUE_MESSAGE, "ke3")?;
        let session = self.take_session(&r.session_id)?;
        let Session {
            user,
            generation,
            state,
            enc_k,
            ..
        } = session;
        let outcome = state.finish(&mut OsRng, ke3, &enc_k);
        let success = outcome.is_ok();
        // The outcome is committed before anything is answered; the id is
        // fresh because this session finishes at most once.
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let digest = RequestDigest::of(&[
            b"finish-attempt",
            user.as_str().as_bytes(),
            &[u8::from(success)],
        ]);
        let finished = self
            .propose(
                RequestId(id),
                digest,
                Command::FinishAttempt {
                    user,
                    generation,
                    success,
                },
            )
            .await?;
        match (finished, outcome) {
            (Ok(VaultResponse::AttemptFinished { .. }), Ok(sealed_key)) => {
                tracing::info!(generation = generation.0, "recovered");
                Ok(Response::new(RecoverFinishReply { sealed_key }))
            }
            (Ok(VaultResponse::AttemptFinished { locked: true, .. }), Err(_)) => Err(fail(
                Code::FailedPrecondition,
                Kind::Locked,
                "wrong password; no attempts left: the key is erased",
                0,
            )),
            (Ok(VaultResponse::AttemptFinished { attempts_left, .. }), Err(_)) => Err(fail(
                Code::PermissionDenied,
                Kind::WrongPassword,
                format!("wrong password; {attempts_left} attempts left"),
                attempts_left,
            )),
            (Ok(other), _) => Err(Status::internal(format!("unexpected reply {other:?}"))),
            (Err(e), _) => Err(refused(e)),
        }
    }

    async fn status(
        &self,
        req: Request<UserStatusRequest>,
    ) -> Result<Response<UserStatusReply>, Status> {
        vault_fleet::callers::frontend(&req)?;
        let user = user_id(&req.into_inner().user_id)?;
        self.proposer.read_barrier().await.map_err(propose_failed)?;
        let reply = match self.reader.status(&user) {
            UserStatus::Unknown => UserStatusReply {
                state: State::Unknown as i32,
                ..Default::default()
            },
            UserStatus::Active {
                generation,
                attempts_left,
                max_attempts,
            } => UserStatusReply {
                state: State::Active as i32,
                generation: generation.0,
                attempts_left,
                max_attempts,
            },
            UserStatus::Locked { generation } => UserStatusReply {
                state: State::Locked as i32,
                generation: generation.0,
                ..Default::default()
            },
            UserStatus::Deleted { generation } => UserStatusReply {
                state: State::Deleted as i32,
                generation: generation.0,
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteReply>, Status> {
        vault_fleet::callers::frontend(&req)?;
        let r = req.into_inner();
        let user = user_id(&r.user_id)?;
        let id = request_id(&r.request_id)?;
        let digest = RequestDigest::of(&[b"delete", user.as_str().as_bytes()]);
        match self.propose(id, digest, Command::Delete { user }).await? {
            Ok(_) => Ok(Response::new(DeleteReply {})),
            Err(e) => Err(refused(e)),
        }
    }

    async fn get_fleet_bundle(
        &self,
        req: Request<GetFleetBundleRequest>,
    ) -> Result<Response<FleetKeys>, Status> {
        vault_fleet::callers::frontend(&req)?;
        let secrets = self.secrets().await?;
        Ok(Response::new(self.fleet_keys(&secrets)))
    }
}
