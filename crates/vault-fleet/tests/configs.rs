//! Every fleet file in cluster-configs/ parses and validates, and the
//! shipped ones have the shapes their comments promise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vault_fleet::config::Fleet;

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster-configs")
}

fn load(name: &str) -> Fleet {
    Fleet::load(&configs_dir().join(name), Path::new("/fleet")).unwrap()
}

#[test]
fn every_file_in_cluster_configs_validates() {
    let mut seen = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Fleet::load(&path, Path::new("/fleet")).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(
        seen >= 3,
        "expected at least the three shipped fleet files, saw {seen}"
    );
}

#[test]
fn shipped_fleets_have_the_promised_shapes() {
    let local3 = load("local-3.toml");
    assert_eq!(local3.nodes.len(), 3);
    assert_eq!(local3.bootstrap_voters().len(), 3);
    assert!(
        local3
            .nodes
            .values()
            .all(|n| n.peer_addr.ip().is_loopback())
    );
    assert!(local3.survives_loss_of_any_datacenter());

    let local5 = load("local-5.toml");
    assert_eq!(local5.nodes.len(), 5);
    assert!(
        local5
            .nodes
            .values()
            .all(|n| n.frontend_addr.ip().is_loopback())
    );

    let geo = load("geo-5x3dc.toml");
    assert_eq!(geo.nodes.len(), 5);
    let mut per_dc = std::collections::BTreeMap::<&str, usize>::new();
    for n in geo.nodes.values() {
        *per_dc.entry(n.datacenter.as_str()).or_default() += 1;
    }
    let mut sizes: Vec<usize> = per_dc.values().copied().collect();
    sizes.sort();
    assert_eq!(sizes, [1, 2, 2]);
    assert!(geo.survives_loss_of_any_datacenter());
    // WAN timers for 50-150 ms round trips: heartbeat several round trips,
    // election timeout about ten.
    let rtt = Duration::from_millis(150);
    assert!(geo.raft.heartbeat >= rtt * 3);
    assert!(geo.raft.election_min >= rtt * 10);
    assert!(geo.raft.election_min >= geo.raft.heartbeat * 3);
}
