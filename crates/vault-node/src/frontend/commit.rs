//! What the frontend commits: proposals, `BeginAttempt` (and the bite
//! test's deliberately broken one), a success's reset in the background.

use tonic::Status;
use vault_types::{
    Command, CommandError, Proposal, Reply, RequestDigest, RequestId, RequestMeta,
    Response as VaultResponse, UserId,
};

use super::status::{internal, propose_failed};
use super::{FrontendService, now};

impl FrontendService {
    pub(super) async fn propose(
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
            Reply::Raft => Err(internal("a command got a Raft reply")),
        }
    }

    /// Commits a success's counter reset without holding the answer for it
    /// (the answer has left). Tried twice with one request id (a repeat is
    /// answered from the dedup table). A reset that is lost leaves the
    /// attempt counted, the safe direction, until the next success forgives
    /// it with its own.
    pub(super) fn reset_in_background(
        &self,
        id: RequestId,
        digest: RequestDigest,
        command: Command,
    ) {
        let proposer = self.proposer.clone();
        let proposal = Proposal {
            request: Some(RequestMeta { id, digest }),
            at: now(),
            command,
        };
        tokio::spawn(async move {
            for attempt in 1..=2 {
                match proposer.propose(proposal.clone()).await {
                    Ok(_) => return,
                    Err(e) => tracing::warn!(
                        attempt,
                        "a success's counter reset is not committed yet: {e}"
                    ),
                }
            }
        });
    }

    /// `BeginAttempt`, committed: the granted attempt's generation, sealed
    /// record, attempts left and serial. It carries the session TTL, so a
    /// replay of its request id gets the grant only while the first
    /// session could still live.
    #[cfg(not(feature = "unsafe-ke2-before-commit"))]
    pub(super) async fn begin_attempt(
        &self,
        id: RequestId,
        digest: RequestDigest,
        user: &UserId,
    ) -> Result<Result<VaultResponse, CommandError>, Status> {
        let command = Command::BeginAttemptTtl {
            user: user.clone(),
            session_ttl_ms: self.session_ttl_ms(),
        };
        self.propose(id, digest, command).await
    }

    /// The session TTL in ms, within what a command may carry.
    pub(super) fn session_ttl_ms(&self) -> u64 {
        let ms = u64::try_from(self.sessions.ttl().as_millis()).unwrap_or(u64::MAX);
        ms.clamp(1, vault_types::MAX_SESSION_TTL_MS)
    }

    /// DELIBERATELY BROKEN, for the chaos checker's bite test only (cargo
    /// feature `unsafe-ke2-before-commit`, which `build.rs` refuses to
    /// build unless `BKV_BUILD_UNSAFE_NODE` says so): grants the attempt
    /// from this node's applied state and commits `BeginAttempt` 300 ms
    /// later in the background, so KE2 leaves before the attempt is
    /// durable. A crash, or a fast guesser, gets guesses that were never
    /// counted; the chaos checker must catch it.
    #[cfg(feature = "unsafe-ke2-before-commit")]
    pub(super) async fn begin_attempt(
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
                        grants,
                    },
                ..
            }) if attempts_used < max_attempts => Ok(VaultResponse::AttemptGranted {
                generation: *generation,
                sealed_record: sealed_record.clone(),
                attempts_left: max_attempts - attempts_used - 1,
                attempt: grants.saturating_add(1),
            }),
            Some(_) => Err(CommandError::Locked),
            None => Err(CommandError::NotFound),
        });
        let proposer = self.proposer.clone();
        let proposal = Proposal {
            request: Some(RequestMeta { id, digest }),
            at: now(),
            command: Command::BeginAttemptTtl {
                user: user.clone(),
                session_ttl_ms: self.session_ttl_ms(),
            },
        };
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let _ = proposer.propose(proposal).await;
        });
        Ok(granted)
    }
}
