//! Who is calling: the identity in a gRPC caller's TLS-verified
//! certificate, and the checks every API applies before anything else.
//!
//! TLS has already verified the certificate's chain against the CA the
//! port trusts; these functions read the name in it ([`crate::identity`])
//! and refuse callers of the wrong kind. Membership checks (is this node a
//! member of the Raft group?) need the Raft state and live in `vault-raft`.

use tonic::{Request, Status};

use crate::identity::{Identity, identity_of_known};

/// The identity in the caller's (TLS-verified) certificate.
pub fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    identity_of_known(leaf).map_err(|e| Status::permission_denied(e.to_string()))
}

/// The caller must be the operator.
pub fn operator<T>(req: &Request<T>) -> Result<(), Status> {
    match caller(req)? {
        Identity::Operator => Ok(()),
        other => Err(Status::permission_denied(format!(
            "{other} may not call the admin API"
        ))),
    }
}

/// The caller must be a frontend; returns its name.
pub fn frontend<T>(req: &Request<T>) -> Result<String, Status> {
    match caller(req)? {
        Identity::Frontend(name) => Ok(name),
        other => Err(Status::permission_denied(format!(
            "{other} may not call the frontend API"
        ))),
    }
}

/// The caller must be a node (any node id); returns its id. Whether that
/// node is a member is the caller's next check.
pub fn node<T>(req: &Request<T>) -> Result<u64, Status> {
    match caller(req)? {
        Identity::Node(id) => Ok(id),
        other => Err(Status::permission_denied(format!(
            "{other} may not call the peer API"
        ))),
    }
}
