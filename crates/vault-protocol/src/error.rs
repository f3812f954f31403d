//! What a protocol step can fail with.

/// A protocol step failed. The messages name the step, never a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A message does not parse, or is too large.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The password is wrong (the client saw it at KE2), or KE3 is wrong
    /// (the server saw it).
    #[error("wrong password")]
    WrongPassword,
    /// Decryption failed: the data was changed, or is for another user or
    /// key.
    #[error("{0} does not open")]
    Unauthentic(&'static str),
    /// The payload is for a generation older than the user's newest: a
    /// registration that another one, a lockout or a delete overtook.
    #[error("stale generation")]
    Stale,
    /// A primitive refused its input (should not happen with valid input).
    #[error("{0} failed")]
    Internal(&'static str),
}
