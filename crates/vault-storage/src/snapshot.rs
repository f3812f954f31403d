//! Snapshot files: `MAGIC ‖ postcard(SnapshotFileV1) ‖ SHA-256 of what precedes`.
//!
//! The same bytes are what a leader streams to a lagging follower, so a
//! follower checks the digest before it installs anything.

use std::io::Write;
use std::path::{Path, PathBuf};

use openraft::{BasicNode, SnapshotMeta};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::StoreError;

const MAGIC: &[u8; 8] = b"BKVSNAP1";
const CURRENT: &str = "current.snap";

#[derive(Serialize, Deserialize)]
struct SnapshotFileV1 {
    meta: SnapshotMeta<u64, BasicNode>,
    /// State column family: key, framed value.
    items: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A decoded snapshot.
pub(crate) struct Decoded {
    pub(crate) meta: SnapshotMeta<u64, BasicNode>,
    pub(crate) items: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) fn encode(
    meta: SnapshotMeta<u64, BasicNode>,
    items: Vec<(Vec<u8>, Vec<u8>)>,
) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    // Serialising in-memory data into a Vec cannot fail.
    out = postcard::to_extend(&SnapshotFileV1 { meta, items }, out).unwrap_or_default();
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded, StoreError> {
    let bad = |reason: &str| StoreError::Snapshot {
        op: "decode snapshot",
        path: "(snapshot bytes)".into(),
        reason: reason.into(),
    };
    if bytes.len() < MAGIC.len() + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad(
            "not a snapshot of this format (bad magic or too short)",
        ));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body)[..] != *digest {
        return Err(bad(
            "checksum mismatch: the snapshot is corrupt or truncated",
        ));
    }
    let file: SnapshotFileV1 =
        postcard::from_bytes(&body[MAGIC.len()..]).map_err(|e| bad(&e.to_string()))?;
    Ok(Decoded {
        meta: file.meta,
        items: file.items,
    })
}

pub(crate) fn current_path(dir: &Path) -> PathBuf {
    dir.join(CURRENT)
}

/// Writes `bytes` as the current snapshot: temporary file, fsync, rename,
/// fsync of the directory. A crash leaves either the old or the new file.
pub(crate) fn write_current(dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let path = current_path(dir);
    let err = |op: &'static str, p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| StoreError::Snapshot {
            op,
            path: p,
            reason: e.to_string(),
        }
    };
    std::fs::create_dir_all(dir).map_err(err("create snapshot dir", dir))?;
    let tmp = dir.join(format!("{CURRENT}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(err("create", &tmp))?;
    file.write_all(bytes).map_err(err("write", &tmp))?;
    file.sync_all().map_err(err("sync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(err("rename", &tmp))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("sync snapshot dir", dir))?;
    Ok(())
}

pub(crate) fn read_current(dir: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let path = current_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Snapshot {
            op: "read",
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::StoredMembership;

    #[test]
    fn round_trip_and_corruption() {
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "s1".into(),
        };
        let bytes = encode(meta.clone(), vec![(b"k".to_vec(), b"v".to_vec())]);
        let back = decode(&bytes).expect("decode");
        assert_eq!(back.meta, meta);
        assert_eq!(back.items, vec![(b"k".to_vec(), b"v".to_vec())]);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x80;
            assert!(decode(&bad).is_err(), "flip at {i} accepted");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
