//! Refusals of the frontend API that are not [`super::status`]'s general
//! ones: a stale registration, no login-state place.

use tonic::{Code, Status};
use vault_proto::errors::ErrorKind;

use super::sessions::Refusal;
use super::status::{self, fail, invalid};

/// A registration sealed over a generation that is no longer current.
pub(super) fn conflict() -> Status {
    fail(
        Code::Aborted,
        ErrorKind::Conflict,
        "the user's generation changed since RegisterStart (another registration, a lockout or a delete); start the registration again",
    )
}

/// A refusal before anything was committed, for a `RecoverStart` that got
/// no login-state place.
pub(super) fn no_place(r: Refusal) -> Status {
    match r {
        Refusal::Full => fail(
            Code::ResourceExhausted,
            ErrorKind::Unavailable,
            "too many recoveries in progress on this node; retry (nothing was committed)",
        ),
        Refusal::UserFull => fail(
            Code::ResourceExhausted,
            ErrorKind::Unavailable,
            "too many recoveries of this user in progress on this node; finish or wait for one (nothing was committed)",
        ),
        Refusal::InFlight => status::unavailable(
            "this request is being committed on this node; retry with the same request id",
        ),
        Refusal::Finished => fail(
            Code::FailedPrecondition,
            ErrorKind::SessionExpired,
            "this recovery finished on this node; start a new one",
        ),
        Refusal::Reused => invalid("the request id was used for another request"),
    }
}
