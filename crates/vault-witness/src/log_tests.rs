use std::io::Write;

use vault_transparency::bundle::{Bundle, NodeKey};

use super::*;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[0x57; 32])
}

fn bundle(epoch: u64, previous: Hash) -> Vec<u8> {
    let mut att = vec![4];
    att.extend_from_slice(&[epoch as u8; 64]);
    Bundle {
        fleet_id: "f".into(),
        epoch,
        not_before: 1,
        not_after: 2,
        opaque_public_key: vec![1; 32],
        hpke_public_key: vec![2; 32],
        previous_digest: previous,
        nodes: vec![NodeKey {
            node_id: 1,
            datacenter: "dc".into(),
            attestation_key: att,
        }],
    }
    .encode()
    .expect("encode")
}

fn chain(n: u64) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for e in 1..=n {
        let prev = out.last().map_or([0; 32], |b| bundle::digest(b));
        out.push(bundle(e, prev));
    }
    out
}

#[test]
fn appends_survive_reopen_and_proofs_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.v1");
    let bundles = chain(5);
    let heads = {
        let (mut log, report) = WitnessLog::open(&path, key()).expect("open");
        assert_eq!(report.entries, 0);
        for (i, b) in bundles.iter().enumerate() {
            let a = log.append(b, 1000 + i as u64).expect("append");
            assert_eq!(a.index, i as u64);
            assert!(merkle::verify_inclusion(
                &merkle::leaf_hash(b),
                a.index,
                a.head.tree_size,
                &a.inclusion_proof,
                &a.head.root
            ));
            assert!(a.head.verify(&key().verifying_key()));
        }
        log.heads().to_vec()
    };
    let (log, report) = WitnessLog::open(&path, key()).expect("reopen");
    assert_eq!(
        report,
        OpenReport {
            entries: 5,
            torn_bytes: 0
        }
    );
    assert_eq!(
        log.heads(),
        heads.as_slice(),
        "heads re-derive byte for byte"
    );
    let p = log.consistency_proof(2, 5).expect("proof");
    assert!(merkle::verify_consistency(
        2,
        5,
        &heads[1].root,
        &heads[4].root,
        &p
    ));
}

#[test]
fn rules_refuse_rollback_equivocation_and_broken_chains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = WitnessLog::open(&dir.path().join("log.v1"), key()).expect("open");
    let b = chain(3);
    assert!(matches!(
        log.append(&b[1], 1),
        Err(SubmitError::BrokenChain { last: 0, .. })
    ));
    log.append(&b[0], 1).expect("first");
    log.append(&b[1], 2).expect("second");
    // A retry is answered from the log.
    let again = log.append(&b[1], 3).expect("retry");
    assert!(again.existing);
    assert_eq!(again.index, 1);
    // Another bundle for epoch 2.
    let mut other = Bundle::parse(&b[1]).expect("parse");
    other.hpke_public_key = vec![9; 32];
    assert!(matches!(
        log.append(&other.encode().expect("encode"), 4),
        Err(SubmitError::Equivocation { epoch: 2, .. })
    ));
    let mut old = Bundle::parse(&b[0]).expect("parse");
    old.not_after = 3;
    assert!(matches!(
        log.append(&old.encode().expect("encode"), 5),
        Err(SubmitError::EpochNotIncreasing {
            last: 2,
            got: 1,
            ..
        })
    ));
    // An epoch that skips ahead, u64::MAX above all, is refused.
    for got in [4, u64::MAX] {
        let mut gap = Bundle::parse(&b[2]).expect("parse");
        gap.epoch = got;
        assert_eq!(
            log.append(&gap.encode().expect("encode"), 6),
            Err(SubmitError::EpochGap {
                fleet: gap.fleet_id.clone(),
                last: 2,
                got,
            })
        );
    }
    let mut skip = Bundle::parse(&b[2]).expect("parse");
    skip.previous_digest = [7; 32];
    assert!(matches!(
        log.append(&skip.encode().expect("encode"), 6),
        Err(SubmitError::BrokenChain { last: 2, .. })
    ));
    assert!(matches!(
        log.append(b"junk", 7),
        Err(SubmitError::Malformed(_))
    ));
    assert_eq!(log.size(), 2);
}

#[test]
fn a_torn_tail_is_cut_and_damage_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.v1");
    let b = chain(3);
    {
        let (mut log, _) = WitnessLog::open(&path, key()).expect("open");
        log.append(&b[0], 1).expect("append");
        log.append(&b[1], 2).expect("append");
    }
    let good_len = std::fs::metadata(&path).expect("stat").len();
    // A torn third record: header and half the payload.
    let mut f = OpenOptions::new().append(true).open(&path).expect("open");
    f.write_all(&[0, 0, 2, 0, 1, 2, 3, 4, 9, 9, 9])
        .expect("write");
    drop(f);
    let (mut log, report) = WitnessLog::open(&path, key()).expect("reopen");
    assert_eq!(
        report,
        OpenReport {
            entries: 2,
            torn_bytes: 11
        }
    );
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), good_len);
    log.append(&b[2], 3).expect("append after repair");
    drop(log);
    // A flipped byte inside the first record (data follows it): refuse.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[16 + 8 + 20] ^= 1;
    std::fs::write(&path, &bytes).expect("write");
    let err = WitnessLog::open(&path, key()).expect_err("damaged");
    assert!(
        matches!(err, OpenError::Damaged { offset: 16, .. }),
        "{err}"
    );
}
