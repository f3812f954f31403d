//! What a certificate says its holder is.
//!
//! Every certificate of a fleet names its holder in a DNS subject
//! alternative name under [`DOMAIN`]:
//! - `node-<id>.vault.internal`: vault node `<id>` (server and client
//!   certificate of the peer API; clients of a node check this name);
//! - `operator.vault.internal`: the operator (`vaultctl cluster ...`);
//! - `<name>.frontend.vault.internal`: a frontend server;
//! - `witness.vault.internal`: the witness's server certificate (issued by
//!   the witness's own CA, not the fleet's).
//!
//! The CA that issued a certificate says which fleet it belongs to; the name
//! says which role. A certificate with no such name, or with names of more
//! than one holder, names nobody and is refused.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The domain under which fleet identities are named.
pub const DOMAIN: &str = "vault.internal";

/// Who holds a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Vault node with this id.
    Node(u64),
    /// The fleet's operator.
    Operator,
    /// A frontend server with this name.
    Frontend(String),
    /// The witness (server certificate only).
    Witness,
}

impl Identity {
    /// The DNS name that says this identity.
    pub fn dns_name(&self) -> String {
        match self {
            Identity::Node(id) => node_dns_name(*id),
            Identity::Operator => format!("operator.{DOMAIN}"),
            Identity::Frontend(name) => format!("{name}.frontend.{DOMAIN}"),
            Identity::Witness => format!("witness.{DOMAIN}"),
        }
    }

    /// Parses a DNS name of a fleet identity.
    pub fn from_dns_name(name: &str) -> Option<Identity> {
        let local = name.strip_suffix(DOMAIN)?.strip_suffix('.')?;
        if local == "operator" {
            return Some(Identity::Operator);
        }
        if local == "witness" {
            return Some(Identity::Witness);
        }
        if let Some(front) = local.strip_suffix(".frontend") {
            let ok = !front.is_empty()
                && front
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            return ok.then(|| Identity::Frontend(front.to_owned()));
        }
        let id = local.strip_prefix("node-")?;
        if id.is_empty() || id.starts_with('0') || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        id.parse().ok().map(Identity::Node)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Operator => f.write_str("the operator"),
            Identity::Frontend(name) => write!(f, "frontend {name}"),
            Identity::Witness => f.write_str("the witness"),
        }
    }
}

/// The DNS name in node `id`'s certificate, which clients of that node
/// check.
pub fn node_dns_name(id: u64) -> String {
    format!("node-{id}.{DOMAIN}")
}

/// Why a certificate names nobody.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The bytes are not an X.509 certificate.
    #[error("the peer certificate does not parse")]
    Unparsable,
    /// No subject alternative name names a fleet identity.
    #[error("the peer certificate names no fleet identity")]
    NoIdentity,
    /// The names disagree about who the holder is.
    #[error("the peer certificate names more than one fleet identity")]
    Ambiguous,
}

/// Certificates whose identity was parsed lately, at most this many.
const KNOWN_CAP: usize = 32;

/// The identities of the certificates seen lately. The same few
/// certificates (the fleet's nodes, its frontends, the operator) come with
/// every call, and parsing one took about 1 % of a node's CPU under load;
/// the identity is a function of the certificate's bytes alone, so a
/// certificate equal byte for byte has the same identity.
static KNOWN: std::sync::Mutex<Vec<(Box<[u8]>, Identity)>> = std::sync::Mutex::new(Vec::new());

/// [`identity_of`], remembering the answers for the last few certificates
/// (compared byte for byte). Only certificates that name someone are
/// remembered.
pub fn identity_of_known(cert_der: &[u8]) -> Result<Identity, IdentityError> {
    {
        let known = KNOWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, id)) = known.iter().find(|(der, _)| **der == *cert_der) {
            return Ok(id.clone());
        }
    }
    let id = identity_of(cert_der)?;
    let mut known = KNOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if known.len() >= KNOWN_CAP {
        known.remove(0);
    }
    known.push((cert_der.into(), id.clone()));
    Ok(id)
}

/// The identity named by a DER certificate (already verified against the
/// fleet CA by TLS).
pub fn identity_of(cert_der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|_| IdentityError::Unparsable)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparsable)?
        .ok_or(IdentityError::NoIdentity)?;
    let mut found: Option<Identity> = None;
    for name in &san.value.general_names {
        if let GeneralName::DNSName(dns) = name
            && let Some(id) = Identity::from_dns_name(dns)
        {
            match &found {
                Some(prev) if *prev != id => return Err(IdentityError::Ambiguous),
                _ => found = Some(id),
            }
        }
    }
    found.ok_or(IdentityError::NoIdentity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_junk_is_nobody() {
        for id in [
            Identity::Node(1),
            Identity::Node(42),
            Identity::Operator,
            Identity::Witness,
            Identity::Frontend("fe-1".into()),
        ] {
            assert_eq!(Identity::from_dns_name(&id.dns_name()), Some(id));
        }
        for junk in [
            "node-0.vault.internal",
            "node-01.vault.internal",
            "node-.vault.internal",
            "node-1.vault.internal.evil.com",
            "node-1.evil.com",
            "xnode-1.vault.internal",
            ".frontend.vault.internal",
            "A.frontend.vault.internal",
            "vault.internal",
        ] {
            assert_eq!(Identity::from_dns_name(junk), None, "{junk}");
        }
    }
}
