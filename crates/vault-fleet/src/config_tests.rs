use super::*;

const GOOD: &str = r#"
version = 1
fleet_id = "test"
max_attempts_cap = 10

[raft]
profile = "lan"

[tls]
fleet_ca = "pki/fleet-ca.pem"
frontend_ca = "pki/frontend-ca.pem"
operator_cert = "pki/operator.pem"
operator_token = { softhsm_dir = "hsm/operator", token_label = "operator", pin_file = "secrets/operator.user.pin" }

[[node]]
id = 1
datacenter = "dc-a"
frontend_addr = "127.0.0.1:7101"
peer_addr = "127.0.0.1:7201"
metrics_addr = "127.0.0.1:7301"
data_dir = "node-1/data"
hsm = { module = "softhsm", softhsm_dir = "hsm/node-1", token_label = "node-1", pin_file = "secrets/node-1.user.pin" }
tls = { cert = "pki/node-1.pem" }

[[node]]
id = 2
datacenter = "dc-b"
frontend_addr = "127.0.0.1:7102"
peer_addr = "127.0.0.1:7202"
metrics_addr = "127.0.0.1:7302"
data_dir = "node-2/data"
bootstrap = false
hsm = { module = "/opt/hsm/lib.so", token_label = "node-2", pin_file = "/etc/pin" }
tls = { cert = "pki/node-2.pem" }
"#;

fn parse(text: &str) -> Result<Fleet, String> {
    Fleet::parse(text, Path::new("/fleet")).map_err(|e| e.to_string())
}

#[test]
fn a_good_file_becomes_typed_config_with_resolved_paths() {
    let f = parse(GOOD).unwrap();
    assert_eq!(f.fleet_id.as_str(), "test");
    assert_eq!(f.raft, RaftTimers::lan());
    let n1 = f.node(1).unwrap();
    assert_eq!(n1.data_dir, Path::new("/fleet/node-1/data"));
    assert_eq!(n1.hsm.module, HsmModule::SoftHsm);
    assert_eq!(
        n1.hsm.softhsm_dir.as_deref(),
        Some(Path::new("/fleet/hsm/node-1"))
    );
    assert_eq!(n1.hsm.sessions, 4);
    let n2 = f.node(2).unwrap();
    assert_eq!(n2.hsm.module, HsmModule::Path("/opt/hsm/lib.so".into()));
    assert_eq!(n2.hsm.pin_file, Path::new("/etc/pin"));
    assert!(!n2.bootstrap);
    assert_eq!(f.bootstrap_voters(), BTreeSet::from([1]));
    assert!(f.node(3).unwrap_err().contains("nodes: 1, 2"));
}

#[test]
fn bad_files_are_refused_with_a_reason() {
    let cases: &[(&str, &str, &str)] = &[
        ("version = 1", "version = 2", "version 2 is not supported"),
        (
            "max_attempts_cap = 10",
            "max_attempts_cap = 0",
            "max_attempts_cap",
        ),
        (
            "max_attempts_cap = 10",
            "max_attempts_cap = 10\ncolour = 1",
            "unknown field `colour`",
        ),
        (
            "profile = \"lan\"",
            "profile = \"moon\"",
            "\"lan\" or \"wan\"",
        ),
        ("profile = \"lan\"", "heartbeat_ms = 100", "set profile"),
        (
            "profile = \"lan\"",
            "heartbeat_ms = 400\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 900",
            "a third",
        ),
        (
            "profile = \"lan\"",
            "heartbeat_ms = 10\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 500",
            "below",
        ),
        (
            "profile = \"lan\"",
            "profile = \"lan\"\nheartbeat_ms = 5",
            "drop heartbeat_ms",
        ),
        ("id = 2", "id = 1", "used twice"),
        ("id = 2", "id = 0", "id 0"),
        (
            "peer_addr = \"127.0.0.1:7202\"",
            "peer_addr = \"127.0.0.1:7101\"",
            "used twice",
        ),
        (
            "peer_addr = \"127.0.0.1:7202\"",
            "peer_addr = \"127.0.0.1:0\"",
            "needs a port",
        ),
        (
            "peer_addr = \"127.0.0.1:7202\"",
            "peer_addr = \"here\"",
            "peer_addr",
        ),
        (
            "datacenter = \"dc-b\"",
            "datacenter = \" \"",
            "datacenter is empty",
        ),
        (
            "data_dir = \"node-2/data\"",
            "data_dir = \"node-1/data\"",
            "another node's",
        ),
        ("fleet_id = \"test\"", "fleet_id = \"\"", "fleet_id"),
        (
            "token_label = \"node-2\"",
            "token_label = \"\"",
            "token_label",
        ),
        (
            "module = \"/opt/hsm/lib.so\"",
            "module = \"\"",
            "hsm.module is empty",
        ),
    ];
    for (from, to, expect) in cases {
        assert!(GOOD.contains(from), "{from}");
        let text = GOOD.replacen(from, to, 1);
        let err = parse(&text).expect_err(to);
        assert!(err.contains(expect), "{to}: {err}");
    }
    let no_bootstrap = GOOD.replacen("id = 1\n", "id = 1\nbootstrap = false\n", 1);
    assert!(parse(&no_bootstrap).unwrap_err().contains("bootstrap"));
}

#[test]
fn datacenter_loss_check_counts_majorities() {
    let mut f = parse(GOOD).unwrap();
    // One voter in one datacenter: losing it loses the fleet.
    assert!(!f.survives_loss_of_any_datacenter());
    for (id, dc) in [(2, "dc-b"), (3, "dc-c")] {
        let mut n = f.node(1).unwrap().clone();
        n.id = id;
        n.datacenter = dc.into();
        f.nodes.insert(id, n);
    }
    assert!(f.survives_loss_of_any_datacenter());
    f.nodes.get_mut(&3).unwrap().datacenter = "dc-a".into();
    assert!(!f.survives_loss_of_any_datacenter());
}

#[test]
fn a_proxied_peer_address_is_checked_like_the_others() {
    let one = "peer_addr = \"127.0.0.1:7201\"";
    let two = "peer_addr = \"127.0.0.1:7202\"";
    // By default a node listens where it is called.
    let f = parse(GOOD).unwrap();
    let n = f.node(1).unwrap();
    assert_eq!(n.peer_bind_addr, n.peer_addr);
    assert_eq!(n.peer_source_ip, None);
    // Behind a proxy: listen elsewhere, call from an own address.
    let proxied = GOOD.replacen(
        one,
        &format!("{one}\npeer_bind_addr = \"127.0.0.1:7401\"\npeer_source_ip = \"127.0.1.1\""),
        1,
    );
    let f = parse(&proxied).unwrap();
    let n = f.node(1).unwrap();
    assert_eq!(n.peer_bind_addr.port(), 7401);
    assert_eq!(n.peer_source_ip, Some("127.0.1.1".parse().unwrap()));
    // The bind address may not be another address of the fleet.
    let clash = GOOD.replacen(
        one,
        &format!("{one}\npeer_bind_addr = \"127.0.0.1:7202\""),
        1,
    );
    assert!(parse(&clash).unwrap_err().contains("used twice"));
    // Two nodes calling from one address could not be told apart.
    let same_ip = proxied.replacen(two, &format!("{two}\npeer_source_ip = \"127.0.1.1\""), 1);
    assert!(parse(&same_ip).unwrap_err().contains("another node's"));
    let unspecified = GOOD.replacen(one, &format!("{one}\npeer_source_ip = \"0.0.0.0\""), 1);
    assert!(parse(&unspecified).unwrap_err().contains("unspecified"));
}

#[test]
fn a_key_file_for_a_node_or_the_operator_is_refused_with_the_reason() {
    let node_key = GOOD.replace(
        r#"tls = { cert = "pki/node-1.pem" }"#,
        r#"tls = { cert = "pki/node-1.pem", key = "pki/node-1.key" }"#,
    );
    let err = parse(&node_key).unwrap_err();
    assert!(err.contains("tls.key") && err.contains("bkv-tls"), "{err}");
    let operator_key = GOOD.replace(
        "operator_cert = \"pki/operator.pem\"",
        "operator_cert = \"pki/operator.pem\"\noperator_key = \"pki/operator.key\"",
    );
    let err = parse(&operator_key).unwrap_err();
    assert!(err.contains("tls.operator_key"), "{err}");
    let no_token: String = GOOD
        .lines()
        .filter(|l| !l.starts_with("operator_token"))
        .map(|l| format!("{l}\n"))
        .collect();
    let err = parse(&no_token).unwrap_err();
    assert!(err.contains("tls.operator_token is missing"), "{err}");
    let f = parse(GOOD).unwrap();
    let t = &f.tls.operator.token;
    assert_eq!(t.module, HsmModule::SoftHsm);
    assert_eq!(
        t.softhsm_dir.as_deref(),
        Some(Path::new("/fleet/hsm/operator"))
    );
    assert_eq!(t.pin_file, Path::new("/fleet/secrets/operator.user.pin"));
}
