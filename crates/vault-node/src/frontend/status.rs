//! The frontend API's refusals, in one place: every one carries an error
//! detail (`vault_proto::errors`), and a refusal after a `BeginAttempt`
//! committed says so.

use tonic::{Code, Status};
use vault_proto::errors::{ErrorDetail, ErrorKind};
use vault_raft::proposer::ProposeError;
use vault_types::CommandError;

/// A refusal with `code`, a detail of `kind`, and `message`.
pub fn fail(code: Code, kind: ErrorKind, message: impl Into<String>) -> Status {
    vault_proto::errors::status(code, kind, message)
}

/// The caller's input is wrong.
pub fn invalid(message: impl Into<String>) -> Status {
    fail(Code::InvalidArgument, ErrorKind::InvalidArgument, message)
}

/// Retry later (same request id).
pub fn unavailable(message: impl Into<String>) -> Status {
    fail(Code::Unavailable, ErrorKind::Unavailable, message)
}

/// This node failed; nothing the caller can fix.
pub fn internal(message: impl Into<String>) -> Status {
    fail(Code::Internal, ErrorKind::Internal, message)
}

/// A wrong password, with the attempts left.
pub fn wrong_password(attempts_left: u32) -> Status {
    vault_proto::errors::status_with(
        Code::PermissionDenied,
        format!("wrong password; {attempts_left} attempts left"),
        ErrorDetail {
            kind: ErrorKind::WrongPassword as i32,
            attempts_left,
            ..Default::default()
        },
    )
}

/// `status`, marked: this request's attempt is committed, so the caller
/// must retry with the same request id and KE1 (which costs nothing more),
/// never with a new one.
pub fn after_commit(status: Status) -> Status {
    let mut detail = vault_proto::errors::detail(&status).unwrap_or_default();
    detail.attempt_committed = true;
    vault_proto::errors::status_with(
        status.code(),
        format!(
            "{} (the attempt is committed: retry with the same request id)",
            status.message()
        ),
        detail,
    )
}

/// A proposal that did not commit (or whose fate is unknown).
pub fn propose_failed(e: ProposeError) -> Status {
    match e {
        ProposeError::Retryable(m) => unavailable(m),
        ProposeError::Fatal(m) => internal(m),
        // Frontend commands are forwarded, never proposed here only.
        e @ ProposeError::NotLeader { .. } => unavailable(e.to_string()),
    }
}

/// The HSM failed; retry. The device's own words (token labels, PKCS#11
/// codes, operation names) go to this node's log, not to the frontend.
pub fn hsm_failed(e: vault_hsm::HsmError) -> Status {
    tracing::warn!("HSM operation for a frontend call failed: {e}");
    unavailable("this node's HSM did not answer; retry (another node may serve)")
}

/// The fleet is not initialized yet.
pub fn not_initialized() -> Status {
    fail(
        Code::FailedPrecondition,
        ErrorKind::NotInitialized,
        "the fleet is not initialized",
    )
}

/// A command the state machine refused, as the frontend sees it.
pub fn refused(e: CommandError) -> Status {
    match e {
        CommandError::NotFound => fail(Code::NotFound, ErrorKind::NotFound, "no such user"),
        CommandError::Locked => fail(
            Code::FailedPrecondition,
            ErrorKind::Locked,
            "locked: no attempts left, the key is erased",
        ),
        // A retry of a request whose attempt was granted, then the record
        // locked: the attempt was spent, and the caller must know it.
        CommandError::LockedAfterGrant => after_commit(fail(
            Code::FailedPrecondition,
            ErrorKind::Locked,
            "locked: no attempts left, the key is erased",
        )),
        CommandError::FleetNotInitialized => not_initialized(),
        CommandError::RequestIdReused => invalid("the request id was used for another request"),
        CommandError::MaxAttemptsOutOfRange { requested, cap } => {
            invalid(format!("max_attempts {requested} is outside 1..={cap}"))
        }
        // A replayed request id whose session is gone: nothing opened.
        CommandError::GrantExpired => fail(
            Code::FailedPrecondition,
            ErrorKind::SessionExpired,
            "this request's session has expired; start a new recovery",
        ),
        CommandError::StaleGeneration { .. } | CommandError::NoAttemptInProgress => fail(
            Code::FailedPrecondition,
            ErrorKind::SessionExpired,
            "the record changed since this session began",
        ),
        // Refused before anything changed; another try (through a node
        // that has applied the rotation) succeeds.
        CommandError::OldKek { .. } => unavailable(
            "this node sealed under the fleet's previous KEK (a rotation was under way); try again",
        ),
        other => internal(other.to_string()),
    }
}
