//! Keys under which the state is persisted, one value per key, so a storage
//! layer writes only what an entry changed.

use vault_types::{RequestId, UserId};

/// One persisted piece of the state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StateKey {
    /// The fleet settings.
    Fleet,
    /// One user's record.
    User(UserId),
    /// One dedup entry.
    Dedup(RequestId),
}

const FLEET: u8 = b'f';
const USER: u8 = b'u';
const DEDUP: u8 = b'd';

impl StateKey {
    /// The key's bytes: a one-byte tag, then the id.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            StateKey::Fleet => vec![FLEET],
            StateKey::User(u) => {
                let mut out = vec![USER];
                out.extend_from_slice(u.as_str().as_bytes());
                out
            }
            StateKey::Dedup(id) => {
                let mut out = vec![DEDUP];
                out.extend_from_slice(&id.0);
                out
            }
        }
    }

    /// A key from its bytes, or `None` for bytes no key encodes to.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes.split_first()? {
            (&FLEET, []) => Some(StateKey::Fleet),
            (&USER, rest) => {
                let text = std::str::from_utf8(rest).ok()?;
                UserId::new(text).ok().map(StateKey::User)
            }
            (&DEDUP, rest) => rest
                .try_into()
                .ok()
                .map(|id| StateKey::Dedup(RequestId(id))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for key in [
            StateKey::Fleet,
            StateKey::User(UserId::new("ünïcode user").expect("id")),
            StateKey::Dedup(RequestId([3; 16])),
        ] {
            assert_eq!(StateKey::decode(&key.encode()), Some(key));
        }
        assert_eq!(StateKey::decode(b""), None);
        assert_eq!(StateKey::decode(b"x"), None);
        assert_eq!(StateKey::decode(b"d\x01"), None);
        assert_eq!(StateKey::decode(b"u"), None);
    }
}
