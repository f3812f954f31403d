//! The frontend API (design brief §3, docs/PROTOCOL.md v2): OPAQUE
//! registration and recovery, status, delete, the fleet's keys.
//!
//! The order of a recovery is the security core: `RecoverStart` reserves a
//! login-state place (refusing before anything is committed when the node
//! or the user is full), commits `BeginAttempt` (one attempt consumed, on a
//! majority) and only then unseals the record and computes KE2. The login
//! state stays in this node's memory under a random session id
//! ([`sessions`]). `RecoverFinish` of a wrong password commits nothing
//! unless it was the last attempt (its failure erases the record, committed
//! before the answer). A success of the last attempt commits its reset
//! (`FinishGrant`) before the answer leaves; any other success takes a
//! read barrier (the record is still that generation), answers (`enc_K`
//! under the OPAQUE session key), and commits the reset in the background.
//! Every refusal after the commit says that the attempt is committed.
//!
//! A registration is a compare-and-set: the app seals the generation it
//! saw in `RegisterStart` (and its budget, and the registration nonce)
//! into the payload, and `Register` applies only over that generation.

mod commit;
mod refusals;
mod sessions;
pub(crate) mod status;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rand::rngs::OsRng;
use tonic::{Code, Request, Response, Status};
use vault_fleet::config::Fleet;
use vault_hsm::{AsyncHsm, Pkcs11Hsm, SecretBytes};
use vault_proto::errors::ErrorKind;
use vault_proto::v1::frontend_server::Frontend;
use vault_proto::v1::user_status_reply::State;
use vault_proto::v1::{
    DeleteReply, DeleteRequest, FleetKeys, GetFleetBundleRequest, RecoverFinishReply,
    RecoverFinishRequest, RecoverStartReply, RecoverStartRequest, RegisterFinishReply,
    RegisterFinishRequest, RegisterStartReply, RegisterStartRequest, UserStatusReply,
    UserStatusRequest,
};
use vault_protocol::{FleetSecrets, ProtocolError, StoredRecord, hpke_key_aad, record_aad};
use vault_raft::proposer::Proposer;
use vault_storage::StateReader;
use vault_types::{
    Command, CommandError, Generation, RequestDigest, RequestId, Response as VaultResponse,
    SealedBytes, Timestamp, UserId, UserStatus,
};
use zeroize::Zeroizing;

use crate::metrics::{Metrics, timed_hsm};
use refusals::{conflict, no_place};
use sessions::{Answer, Begin, Grant, Sessions};
use status::{
    after_commit, fail, hsm_failed, internal, invalid, not_initialized, propose_failed, refused,
    wrong_password,
};

/// Longest user id accepted (bytes), checked before anything else.
pub const MAX_USER_ID: usize = 256;

fn user_id(s: &str) -> Result<UserId, Status> {
    if s.len() > MAX_USER_ID {
        return Err(invalid(format!("user_id longer than {MAX_USER_ID} bytes")));
    }
    UserId::new(s).map_err(|e| invalid(format!("user_id: {e}")))
}

fn sixteen(bytes: &[u8], what: &str) -> Result<[u8; 16], Status> {
    bytes
        .try_into()
        .map_err(|_| invalid(format!("{what} must be 16 bytes")))
}

fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// The frontend API of one node.
pub struct FrontendService {
    fleet: Arc<Fleet>,
    reader: StateReader,
    hsm: AsyncHsm<Pkcs11Hsm>,
    proposer: Proposer,
    metrics: Arc<Metrics>,
    secrets: tokio::sync::OnceCell<Arc<FleetSecrets>>,
    sessions: Sessions,
}

impl FrontendService {
    /// The user's generation after a read barrier (a linearizable read; 0
    /// for a user never registered).
    async fn newest_generation(&self, user: &UserId) -> Result<Generation, Status> {
        self.proposer.read_barrier().await.map_err(propose_failed)?;
        Ok(self
            .reader
            .with_state(|s| s.user(user).map(|u| u.generation))
            .unwrap_or(Generation(0)))
    }

    /// The service, with the session limits of the fleet file.
    pub fn new(
        fleet: Arc<Fleet>,
        reader: StateReader,
        hsm: AsyncHsm<Pkcs11Hsm>,
        proposer: Proposer,
        metrics: Arc<Metrics>,
    ) -> FrontendService {
        let l = &fleet.limits;
        let sessions = Sessions::new(l.session_ttl, l.max_sessions, l.sessions_per_user);
        sessions.spawn_purger();
        FrontendService {
            fleet,
            reader,
            hsm,
            proposer,
            metrics,
            secrets: tokio::sync::OnceCell::new(),
            sessions,
        }
    }

    /// The fleet's secrets, unsealed once from the replicated state.
    async fn secrets(&self) -> Result<Arc<FleetSecrets>, Status> {
        self.secrets
            .get_or_try_init(|| async {
                let fleet = self
                    .reader
                    .with_state(|s| s.fleet().cloned())
                    .ok_or_else(not_initialized)?;
                if fleet.fleet_id != self.fleet.fleet_id {
                    return Err(internal("the replicated fleet id is not this fleet file's"));
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
                    .map_err(|e| internal(format!("fleet secrets: {e}")))?;
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

    /// After `BeginAttempt` committed: unseals the record and computes KE2.
    /// Every error here is marked committed by the caller.
    async fn ke2(
        &self,
        secrets: &FleetSecrets,
        user: &UserId,
        generation: Generation,
        sealed_record: SealedBytes,
        ke1: &[u8],
    ) -> Result<
        (
            Vec<u8>,
            vault_protocol::ServerLoginState,
            Zeroizing<Vec<u8>>,
        ),
        Status,
    > {
        let plain = timed_hsm(
            &self.metrics,
            "unseal",
            self.hsm.unseal(
                record_aad(secrets.fleet(), user, generation),
                sealed_record.0,
            ),
        )
        .await
        .map_err(hsm_failed)?;
        let record = StoredRecord::decode(plain.expose())
            .map_err(|e| internal(format!("stored record: {e}")))?;
        let (ke2, state) = secrets
            .login_start(&mut OsRng, user, &record, ke1)
            .map_err(|e| internal(format!("KE2: {e}")))?;
        Ok((ke2, state, Zeroizing::new(record.enc_k.clone())))
    }

    fn start_reply(&self, a: Answer, secrets: &FleetSecrets) -> RecoverStartReply {
        RecoverStartReply {
            ke2: a.ke2,
            session_id: a.session_id.to_vec(),
            attempts_left: a.attempts_left,
            generation: a.generation.0,
            fleet: Some(self.fleet_keys(secrets)),
            session_ttl_seconds: self.sessions.ttl().as_secs() as u32,
        }
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
        let secrets = self.secrets().await?;
        // The generation the app will seal: a linearizable read, so that a
        // registration right after a lockout, delete or registration sees
        // it (the compare-and-set would refuse a stale one anyway).
        let generation = self.newest_generation(&user).await?;
        let started = secrets
            .register_start(&mut OsRng, &user, generation, &r.registration_request)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Response::new(RegisterStartReply {
            registration_response: started.response,
            fleet: Some(self.fleet_keys(&secrets)),
            registration_nonce: started.nonce.to_vec(),
            generation: generation.0,
        }))
    }

    async fn register_finish(
        &self,
        req: Request<RegisterFinishRequest>,
    ) -> Result<Response<RegisterFinishReply>, Status> {
        vault_fleet::callers::frontend(&req)?;
        let r = req.into_inner();
        let user = user_id(&r.user_id)?;
        let id = RequestId(sixteen(&r.request_id, "request_id")?);
        #[expect(deprecated, reason = "refusing the v1 field is its only use")]
        if r.max_attempts != 0 {
            return Err(invalid(
                "max_attempts travels inside the sealed payload (protocol v2); leave the field unset",
            ));
        }
        let secrets = self.secrets().await?;
        let digest = RequestDigest::of(&[
            b"register",
            user.as_str().as_bytes(),
            &r.sealed_registration,
        ]);
        // A retry of a registration that succeeded (its answer was lost)
        // gets the first execution's answer (docs/PROTOCOL.md §6), not the
        // conflict its now-stale generation would earn. These exact bytes
        // passed every check once, so opening them again tells nothing.
        let first = self.reader.with_state(|s| {
            s.remembered(&id)
                .filter(|e| e.digest == digest)
                .and_then(|e| match e.reply {
                    Ok(VaultResponse::Registered { generation }) => Some(generation),
                    _ => None,
                })
        });
        // Generations only grow: if this node already sees a newer one,
        // the compare-and-set would fail. The payload is refused as stale
        // before its OPRF evaluation is checked (its nonce may be the live
        // record's), and before the HSM and the log do any work.
        // A linearizable read: a node that has not applied the live
        // registration yet would otherwise check the evaluation first.
        let newest = match first {
            Some(_) => Generation(0),
            None => self.newest_generation(&user).await?,
        };
        let opened = match secrets.register_finish(&user, &r.sealed_registration, newest) {
            Ok(opened) => opened,
            Err(ProtocolError::Stale) => return Err(conflict()),
            Err(e) => return Err(invalid(e.to_string())),
        };
        let cap = self.fleet.max_attempts_cap;
        if opened.max_attempts == 0 || opened.max_attempts > cap {
            return Err(invalid(format!(
                "max_attempts {} is outside 1..={cap}",
                opened.max_attempts
            )));
        }
        if let Some(generation) = first {
            tracing::info!(request = ?id, generation = generation.0, "registration retried; answered from its first execution");
            return Ok(Response::new(RegisterFinishReply {
                generation: generation.0,
                max_attempts: opened.max_attempts,
            }));
        }
        let expected = opened.expected_generation;
        let Some(next) = expected.0.checked_add(1) else {
            return Err(conflict());
        };
        // Under the fleet's KEK version (during a rotation, the HSM may
        // already hold a newer one that not every node has yet).
        let version = self
            .reader
            .with_state(|s| s.fleet_kek_version())
            .map(vault_hsm::KekVersion)
            .ok_or_else(not_initialized)?;
        let sealed_record = timed_hsm(
            &self.metrics,
            "seal",
            self.hsm.seal_under(
                version,
                record_aad(secrets.fleet(), &user, Generation(next)),
                SecretBytes::new(opened.record.encode().to_vec()),
            ),
        )
        .await
        .map_err(hsm_failed)?;
        let command = Command::Register {
            user: user.clone(),
            expected_generation: expected,
            sealed_record: SealedBytes(sealed_record),
            max_attempts: opened.max_attempts,
        };
        match self.propose(id, digest, command).await? {
            Ok(VaultResponse::Registered { generation }) => {
                tracing::info!(request = ?id, generation = generation.0, "registered");
                Ok(Response::new(RegisterFinishReply {
                    generation: generation.0,
                    max_attempts: opened.max_attempts,
                }))
            }
            Ok(other) => Err(internal(format!("unexpected reply {other:?}"))),
            Err(CommandError::StaleGeneration { .. }) => Err(conflict()),
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
        let id = RequestId(sixteen(&r.request_id, "request_id")?);
        // Junk must not cost the user an attempt: parse before committing.
        vault_protocol::check_ke1(&r.ke1).map_err(|e| invalid(e.to_string()))?;
        let secrets = self.secrets().await?;
        // The digest binds the request id to this user and KE1: a retry
        // with another KE1 (another password guess) under the same id is
        // refused.
        let digest = RequestDigest::of(&[b"begin-attempt", user.as_str().as_bytes(), &r.ke1]);
        let reservation = match self.sessions.begin(&user, id, digest) {
            Begin::Reserved(reservation) => reservation,
            Begin::Replay(answer) => {
                // The user registered again (or locked, or was deleted)
                // since: the cached KE2 is of a record that is gone.
                let now = self
                    .reader
                    .with_state(|s| s.user(&user).map(|u| u.generation));
                if now != Some(answer.generation) {
                    return Err(fail(
                        Code::FailedPrecondition,
                        ErrorKind::SessionExpired,
                        "the record changed since this request's session began",
                    ));
                }
                return Ok(Response::new(self.start_reply(answer, &secrets)));
            }
            Begin::Refused(why) => return Err(no_place(why)),
        };
        let granted = self.begin_attempt(id, digest, &user).await?;
        let (grant, sealed_record) = match granted {
            Ok(VaultResponse::AttemptGranted {
                generation,
                sealed_record,
                attempts_left,
                attempt,
            }) => (
                Grant {
                    generation,
                    attempts_left,
                    attempt,
                },
                sealed_record,
            ),
            Ok(other) => return Err(internal(format!("unexpected reply {other:?}"))),
            Err(e) => return Err(refused(e)),
        };
        // Only now, with the attempt committed and applied, may KE2 leave.
        let (ke2, state, enc_k) = self
            .ke2(&secrets, &user, grant.generation, sealed_record, &r.ke1)
            .await
            .map_err(after_commit)?;
        let answer = reservation.open(user, grant, state, enc_k, ke2);
        self.metrics.sessions.set(self.sessions.held() as i64);
        tracing::info!(
            request = ?id,
            generation = grant.generation.0,
            attempts_left = grant.attempts_left,
            attempt = grant.attempt,
            "attempt granted"
        );
        Ok(Response::new(self.start_reply(answer, &secrets)))
    }

    async fn recover_finish(
        &self,
        req: Request<RecoverFinishRequest>,
    ) -> Result<Response<RecoverFinishReply>, Status> {
        vault_fleet::callers::frontend(&req)?;
        let r = req.into_inner();
        // A malformed KE3 is the caller's error: it neither ends the
        // session nor counts as a wrong password.
        vault_protocol::check_ke3(&r.ke3).map_err(|e| invalid(e.to_string()))?;
        let session_id = sixteen(&r.session_id, "session_id")?;
        let session = self.sessions.take(&session_id).ok_or_else(|| {
            fail(
                Code::FailedPrecondition,
                ErrorKind::SessionExpired,
                "no such session on this node (expired, finished, or started elsewhere)",
            )
        })?;
        self.metrics.sessions.set(self.sessions.held() as i64);
        let user = session.user.clone();
        let generation = session.generation;
        let outcome = session.state.finish(&mut OsRng, &r.ke3, &session.enc_k);
        let success = outcome.is_ok();
        if !success && session.attempts_left > 0 {
            // A wrong password that was not the last attempt: its
            // BeginAttempt was committed before KE2 left, and finishing it
            // would change nothing the state keeps, so nothing is
            // committed (docs/PROTOCOL.md §5). Attempts left: as granted, or
            // fewer if this node has applied other attempts since.
            let left = match self.reader.status(&user) {
                UserStatus::Active {
                    generation: now,
                    attempts_left,
                    ..
                } if now == generation => attempts_left.min(session.attempts_left),
                _ => session.attempts_left,
            };
            tracing::info!(
                generation = generation.0,
                attempts_left = left,
                "wrong password"
            );
            return Err(wrong_password(left));
        }
        // The outcome is committed before anything is answered; the id is
        // fresh because this session finishes at most once.
        let mut fid = [0u8; 16];
        OsRng.fill_bytes(&mut fid);
        let digest = RequestDigest::of(&[
            b"finish-attempt",
            user.as_str().as_bytes(),
            &[u8::from(success)],
        ]);
        let command = Command::FinishGrant {
            user: user.clone(),
            generation,
            attempt: session.attempt,
            success,
        };
        if session.attempts_left > 0
            && let Ok(sealed_key) = outcome
        {
            // A success that was not the last attempt (issue 26): its
            // BeginAttempt is committed (KE2 left after it), and the reset
            // only gives attempts back, so it need not hold the answer. A
            // read barrier confirms the record is still the generation the
            // attempt was granted for (not locked, deleted or replaced),
            // then the answer leaves and the reset rides a later batch. The
            // last attempt still commits first: while its reset is pending,
            // the next BeginAttempt would find the budget spent and erase
            // the record.
            self.proposer.read_barrier().await.map_err(propose_failed)?;
            if let Some(e) = self
                .reader
                .with_state(|s| s.finish_refusal(&user, generation))
            {
                return Err(refused(e));
            }
            self.reset_in_background(RequestId(fid), digest, command);
            tracing::info!(generation = generation.0, "recovered");
            return Ok(Response::new(RecoverFinishReply { sealed_key }));
        }
        let finished = self.propose(RequestId(fid), digest, command).await?;
        match (finished, outcome) {
            (Ok(VaultResponse::AttemptFinished { .. }), Ok(sealed_key)) => {
                tracing::info!(generation = generation.0, "recovered");
                Ok(Response::new(RecoverFinishReply { sealed_key }))
            }
            (Ok(VaultResponse::AttemptFinished { locked: true, .. }), Err(_)) => Err(fail(
                Code::FailedPrecondition,
                ErrorKind::Locked,
                "wrong password; no attempts left: the key is erased",
            )),
            (Ok(VaultResponse::AttemptFinished { attempts_left, .. }), Err(_)) => {
                Err(wrong_password(attempts_left))
            }
            (Ok(other), _) => Err(internal(format!("unexpected reply {other:?}"))),
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
        let id = RequestId(sixteen(&r.request_id, "request_id")?);
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

#[cfg(test)]
pub(crate) mod tests;
