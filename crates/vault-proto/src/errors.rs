//! The error model of every API: a refusal's gRPC status carries, in the
//! `grpc-status-details-bin` trailer, a `google.rpc.Status` (the standard
//! rich error model every gRPC library can read) whose `details` hold one
//! `vault.v1.ErrorDetail` packed as an `Any`.
//!
//! Protocol v1 put a bare `ErrorDetail` there; [`detail`] still reads it.

use prost::Message;
use tonic::{Code, Status};

pub use crate::v1::ErrorDetail;
pub use crate::v1::error_detail::Kind as ErrorKind;

/// The `Any` type URL of an [`ErrorDetail`].
pub const DETAIL_TYPE_URL: &str = "type.googleapis.com/vault.v1.ErrorDetail";

/// The `grpc-status-details-bin` bytes of a refusal: a `google.rpc.Status`
/// with `code`, `message` and `detail`.
pub fn details_bytes(code: Code, message: &str, detail: &ErrorDetail) -> Vec<u8> {
    crate::rpc::Status {
        code: code as i32,
        message: message.to_owned(),
        details: vec![prost_types::Any {
            type_url: DETAIL_TYPE_URL.to_owned(),
            value: detail.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

/// A refusal with `code`, `message` and `detail`.
pub fn status_with(code: Code, message: impl Into<String>, detail: ErrorDetail) -> Status {
    let message = message.into();
    let bytes = details_bytes(code, &message, &detail);
    Status::with_details(code, message, bytes.into())
}

/// A refusal with `code`, `message` and a detail of `kind`.
pub fn status(code: Code, kind: ErrorKind, message: impl Into<String>) -> Status {
    status_with(
        code,
        message,
        ErrorDetail {
            kind: kind as i32,
            ..Default::default()
        },
    )
}

/// The [`ErrorDetail`] of a refusal: from the `google.rpc.Status` in its
/// details (protocol v2), or a bare `ErrorDetail` (protocol v1); `None`
/// when there is neither.
pub fn detail(status: &Status) -> Option<ErrorDetail> {
    detail_from_bytes(status.details())
}

/// [`detail`] from the raw `grpc-status-details-bin` bytes.
pub fn detail_from_bytes(bytes: &[u8]) -> Option<ErrorDetail> {
    if bytes.is_empty() {
        return None;
    }
    if let Ok(rich) = crate::rpc::Status::decode(bytes)
        && let Some(any) = rich.details.iter().find(|a| a.type_url == DETAIL_TYPE_URL)
    {
        return ErrorDetail::decode(any.value.as_slice()).ok();
    }
    ErrorDetail::decode(bytes).ok()
}

/// The detail kind a refusal without one gets, by its code: what tonic
/// itself answers (a message over the size limit, an unknown method, a
/// deadline) carries no detail of ours.
pub fn kind_of_code(code: Code) -> ErrorKind {
    match code {
        Code::InvalidArgument | Code::OutOfRange | Code::Unimplemented => {
            ErrorKind::InvalidArgument
        }
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Cancelled => {
            ErrorKind::Unavailable
        }
        Code::NotFound => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detail_travels_in_a_standard_status_and_the_old_form_still_reads() {
        let s = status_with(
            Code::ResourceExhausted,
            "full",
            ErrorDetail {
                kind: ErrorKind::Unavailable as i32,
                attempts_left: 3,
                attempt_committed: true,
            },
        );
        // What any gRPC library does: decode google.rpc.Status, unpack Any.
        let rich = crate::rpc::Status::decode(s.details()).unwrap();
        assert_eq!(rich.code, Code::ResourceExhausted as i32);
        assert_eq!(rich.message, "full");
        assert_eq!(rich.details.len(), 1);
        assert_eq!(rich.details[0].type_url, DETAIL_TYPE_URL);
        let d = detail(&s).unwrap();
        assert_eq!(d.kind, ErrorKind::Unavailable as i32);
        assert_eq!(d.attempts_left, 3);
        assert!(d.attempt_committed);
        // Protocol v1's bare detail, with and without attempts left.
        for old in [
            ErrorDetail {
                kind: ErrorKind::WrongPassword as i32,
                attempts_left: 4,
                ..Default::default()
            },
            ErrorDetail {
                kind: ErrorKind::Locked as i32,
                ..Default::default()
            },
        ] {
            let s = Status::with_details(Code::PermissionDenied, "x", old.encode_to_vec().into());
            assert_eq!(detail(&s), Some(old));
        }
        assert_eq!(detail(&Status::internal("no detail")), None);
    }
}
