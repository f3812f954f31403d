//! Generated gRPC code of the vault's protocols (`proto/vault/v1`): the
//! frontend API (frontends call nodes), the peer API between nodes, the
//! operator's admin API, and the witness API; with what every service
//! shares: the codec ([`codec`]), the error model ([`errors`]) and
//! conversions ([`convert`]).
//!
//! The generated items carry the `.proto` comments as their docs; see
//! `proto/vault/v1/*.proto` for what each message means.

pub mod codec;
pub mod convert;
pub mod errors;
pub mod methods;

/// `package vault.v1`.
pub mod v1 {
    #![allow(
        missing_docs,
        reason = "generated code; documented in the .proto files"
    )]
    #![allow(clippy::all, reason = "generated code")]
    tonic::include_proto!("vault.v1");
}

/// `package google.rpc`: the standard status message of gRPC's rich error
/// model, which carries our error details.
pub mod rpc {
    #![allow(
        missing_docs,
        reason = "generated code; documented in the .proto files"
    )]
    #![allow(clippy::all, reason = "generated code")]
    tonic::include_proto!("google.rpc");
}
