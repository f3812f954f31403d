//! Conversions between generated messages and the vault's own types that
//! more than one crate needs (the witness serves tree heads, `vaultctl`
//! reads them), so that no tool links another's server crate for them.

use vault_transparency::head::TreeHead;

use crate::v1::TreeHead as PbHead;

/// The protobuf form of a tree head.
pub fn tree_head_to_pb(h: &TreeHead) -> PbHead {
    PbHead {
        tree_size: h.tree_size,
        timestamp_ms: h.timestamp_ms,
        root_hash: h.root.to_vec(),
        signature: h.signature.clone(),
    }
}

/// A tree head from its protobuf form.
pub fn tree_head_from_pb(h: &PbHead) -> Result<TreeHead, String> {
    Ok(TreeHead {
        tree_size: h.tree_size,
        timestamp_ms: h.timestamp_ms,
        root: h
            .root_hash
            .as_slice()
            .try_into()
            .map_err(|_| "tree head root is not 32 bytes".to_owned())?,
        signature: h.signature.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_head_survives_the_round_trip_and_a_short_root_is_refused() {
        let h = TreeHead {
            tree_size: 7,
            timestamp_ms: 1_700_000_000_000,
            root: [3; 32],
            signature: vec![1, 2, 3],
        };
        let pb = tree_head_to_pb(&h);
        assert_eq!(tree_head_from_pb(&pb).unwrap(), h);
        let short = PbHead {
            root_hash: vec![0; 31],
            ..pb
        };
        assert!(tree_head_from_pb(&short).is_err());
    }
}
