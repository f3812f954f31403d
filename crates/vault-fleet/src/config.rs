//! The fleet file: one versioned TOML file describes every node of a fleet.
//!
//! [`Fleet::load`] reads it, refuses unknown fields, resolves relative paths
//! against the fleet directory (`--fleet-dir`, where keys, tokens and data
//! live) and validates everything into typed values, so a node never starts
//! on a config it would misread. See `cluster-configs/` for examples and
//! README.md for every field.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vault_types::FleetId;

/// The config format this build reads.
pub const VERSION: u32 = 1;

/// The largest `max_attempts_cap` a fleet may set.
pub const MAX_ATTEMPTS_CAP_LIMIT: u32 = 100;

mod limits;
pub use limits::Limits;
use limits::{LimitsFile, limits};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    version: u32,
    fleet_id: String,
    max_attempts_cap: u32,
    raft: RaftFile,
    tls: TlsFile,
    #[serde(default)]
    limits: LimitsFile,
    node: Vec<NodeFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RaftFile {
    profile: Option<String>,
    heartbeat_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    snapshot_after_logs: Option<u64>,
    keep_logs_after_snapshot: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    fleet_ca: PathBuf,
    frontend_ca: PathBuf,
    operator_cert: PathBuf,
    /// Required; optional here only to explain its absence.
    operator_token: Option<TokenFile>,
    /// Refused with an explanation: the key is in the operator's token.
    operator_key: Option<PathBuf>,
}

/// A token holding a TLS key (`bkv-tls`): the operator's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default = "softhsm")]
    module: String,
    softhsm_dir: Option<PathBuf>,
    token_label: String,
    pin_file: PathBuf,
}

fn softhsm() -> String {
    "softhsm".into()
}

/// A node's certificate; its key is in its HSM.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeTlsFile {
    cert: PathBuf,
    /// Refused with an explanation: the key is in the node's HSM.
    key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    id: u64,
    datacenter: String,
    frontend_addr: SocketAddr,
    peer_addr: SocketAddr,
    peer_bind_addr: Option<SocketAddr>,
    peer_source_ip: Option<IpAddr>,
    metrics_addr: SocketAddr,
    data_dir: PathBuf,
    #[serde(default = "yes")]
    bootstrap: bool,
    hsm: HsmFile,
    tls: NodeTlsFile,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HsmFile {
    module: String,
    softhsm_dir: Option<PathBuf>,
    token_label: String,
    pin_file: PathBuf,
    sessions: Option<usize>,
}

/// A validated fleet file.
#[derive(Clone, Debug)]
pub struct Fleet {
    /// The fleet's name.
    pub fleet_id: FleetId,
    /// The most attempts any registration may ask for.
    pub max_attempts_cap: u32,
    /// Raft timers and log compaction.
    pub raft: RaftTimers,
    /// CA certificates and the operator's certificate.
    pub tls: FleetTls,
    /// What one node holds at most for callers.
    pub limits: Limits,
    /// Every node, by id.
    pub nodes: BTreeMap<u64, NodeConfig>,
    /// SHA-256 of the fleet file's text (deployment evidence names it).
    pub source_sha256: [u8; 32],
}

/// Raft timers and log compaction settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTimers {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout, lower bound.
    pub election_min: Duration,
    /// Election timeout, upper bound.
    pub election_max: Duration,
    /// Build a snapshot after this many applied entries.
    pub snapshot_after_logs: u64,
    /// Keep this many log entries behind a snapshot for slow followers.
    pub keep_logs_after_snapshot: u64,
}

impl RaftTimers {
    /// For nodes on one LAN (round trips well under 1 ms).
    pub fn lan() -> RaftTimers {
        RaftTimers {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(500),
            election_max: Duration::from_millis(1000),
            snapshot_after_logs: 10_000,
            keep_logs_after_snapshot: 1_000,
        }
    }

    /// For nodes over a WAN with 50–150 ms round trips: a heartbeat of a few
    /// round trips, an election timeout of about ten.
    pub fn wan() -> RaftTimers {
        RaftTimers {
            heartbeat: Duration::from_millis(500),
            election_min: Duration::from_millis(1500),
            election_max: Duration::from_millis(3000),
            snapshot_after_logs: 10_000,
            keep_logs_after_snapshot: 1_000,
        }
    }
}

/// Paths of the fleet's trust anchors and the operator's certificate.
#[derive(Clone, Debug)]
pub struct FleetTls {
    /// The fleet CA: node certificates and the operator's.
    pub fleet_ca: PathBuf,
    /// The frontend CA: frontend client certificates.
    pub frontend_ca: PathBuf,
    /// The operator's client certificate (used by `vaultctl cluster`),
    /// whose key is in the operator's token.
    pub operator: OperatorTls,
}

/// The operator's TLS identity: a certificate file and a token whose
/// `bkv-tls` key it names.
#[derive(Clone, Debug)]
pub struct OperatorTls {
    /// The certificate.
    pub cert: PathBuf,
    /// The token with the key.
    pub token: TokenRef,
}

/// Where a token is and how to log in to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRef {
    /// The PKCS#11 module.
    pub module: HsmModule,
    /// For SoftHSM: the token's directory (SoftHSM reads its config once
    /// per process, so a tool re-runs itself with it).
    pub softhsm_dir: Option<PathBuf>,
    /// The token label.
    pub token_label: String,
    /// The user PIN file (mode 600).
    pub pin_file: PathBuf,
}

/// A node's TLS certificate; the key is `bkv-tls` in the node's HSM.
#[derive(Clone, Debug)]
pub struct NodeTls {
    /// The certificate (server and client of the peer API).
    pub cert: PathBuf,
}

/// Where a node's PKCS#11 module is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HsmModule {
    /// SoftHSM2, looked up in the usual install paths.
    SoftHsm,
    /// A module at this path.
    Path(PathBuf),
}

/// A node's HSM.
#[derive(Clone, Debug)]
pub struct NodeHsm {
    /// The PKCS#11 module.
    pub module: HsmModule,
    /// For SoftHSM: the directory with this node's `softhsm2.conf` and
    /// tokens (SoftHSM reads its config once per process, so each node has
    /// its own).
    pub softhsm_dir: Option<PathBuf>,
    /// The token label.
    pub token_label: String,
    /// The file with the user PIN (mode 0600).
    pub pin_file: PathBuf,
    /// How many PKCS#11 sessions to open.
    pub sessions: usize,
}

/// One node of the fleet.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Its id (never reused).
    pub id: u64,
    /// Its datacenter.
    pub datacenter: String,
    /// Where frontends call it.
    pub frontend_addr: SocketAddr,
    /// Where peers and the operator call it (the address in the Raft
    /// membership).
    pub peer_addr: SocketAddr,
    /// Where it listens for peers: `peer_addr` unless something (a proxy,
    /// a NAT) stands between the two.
    pub peer_bind_addr: SocketAddr,
    /// The local address its outgoing peer connections come from, if set
    /// (lets a proxy in front of the peers tell the links apart).
    pub peer_source_ip: Option<IpAddr>,
    /// Where Prometheus scrapes it (`/metrics`, `/ready`).
    pub metrics_addr: SocketAddr,
    /// Its RocksDB directory.
    pub data_dir: PathBuf,
    /// Whether it is a voter when the fleet is first initialized (others
    /// join later with `vaultctl cluster add-node`).
    pub bootstrap: bool,
    /// Its HSM.
    pub hsm: NodeHsm,
    /// Its certificate (server and client of the peer API); the key is in
    /// its HSM.
    pub tls: NodeTls,
}

/// The fleet file is unreadable or invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown or missing fields.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said (with line and column).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Fleet {
    /// Reads and validates the fleet file at `path`; relative paths in it
    /// are resolved against `fleet_dir`.
    pub fn load(path: &Path, fleet_dir: &Path) -> Result<Fleet, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Fleet::parse(&text, fleet_dir).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates fleet-file text (see [`Fleet::load`]).
    pub fn parse(text: &str, fleet_dir: &Path) -> Result<Fleet, ConfigError> {
        let file: FleetFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        let mut fleet = validate(file, fleet_dir).map_err(|message| ConfigError::Invalid {
            path: PathBuf::from("<text>"),
            message,
        })?;
        fleet.source_sha256 = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()).into();
        Ok(fleet)
    }

    /// Node `id`, or an error naming the ids there are.
    pub fn node(&self, id: u64) -> Result<&NodeConfig, String> {
        self.nodes.get(&id).ok_or_else(|| {
            let ids: Vec<String> = self.nodes.keys().map(u64::to_string).collect();
            format!(
                "node {id} is not in the fleet file (nodes: {})",
                ids.join(", ")
            )
        })
    }

    /// The nodes that are voters of a freshly initialized fleet.
    pub fn bootstrap_voters(&self) -> BTreeSet<u64> {
        self.nodes
            .values()
            .filter(|n| n.bootstrap)
            .map(|n| n.id)
            .collect()
    }

    /// Whether the bootstrap voters keep a majority after losing any one
    /// datacenter (the point of spreading a fleet).
    pub fn survives_loss_of_any_datacenter(&self) -> bool {
        let voters: Vec<&NodeConfig> = self.nodes.values().filter(|n| n.bootstrap).collect();
        let dcs: BTreeSet<&str> = voters.iter().map(|n| n.datacenter.as_str()).collect();
        let majority = voters.len() / 2 + 1;
        dcs.iter()
            .all(|dc| voters.iter().filter(|n| n.datacenter != *dc).count() >= majority)
    }
}

fn validate(f: FleetFile, dir: &Path) -> Result<Fleet, String> {
    if f.version != VERSION {
        return Err(format!(
            "config version {} is not supported (this build reads version {VERSION})",
            f.version
        ));
    }
    let fleet_id = FleetId::new(f.fleet_id).map_err(|e| format!("fleet_id: {e}"))?;
    if !(1..=MAX_ATTEMPTS_CAP_LIMIT).contains(&f.max_attempts_cap) {
        return Err(format!(
            "max_attempts_cap must be 1..={MAX_ATTEMPTS_CAP_LIMIT}, not {}",
            f.max_attempts_cap
        ));
    }
    let raft = raft_timers(&f.raft)?;
    let resolve = |p: &Path| dir.join(p);
    if f.tls.operator_key.is_some() {
        return Err(KEY_IN_HSM.replace("{what}", "tls.operator_key: the operator's"));
    }
    let op = f.tls.operator_token.as_ref().ok_or_else(|| {
        "tls.operator_token is missing: name the operator's token, e.g. operator_token = { softhsm_dir = \"hsm/operator\", token_label = \"operator\", pin_file = \"secrets/operator.user.pin\" } (it holds the operator's TLS key and the CA keys; docs/OPERATIONS.md, \"Moving a fleet made before keys lived in HSMs\")".to_owned()
    })?;
    let tls = FleetTls {
        fleet_ca: resolve(&f.tls.fleet_ca),
        frontend_ca: resolve(&f.tls.frontend_ca),
        operator: OperatorTls {
            cert: resolve(&f.tls.operator_cert),
            token: TokenRef {
                module: module_of(&op.module, &resolve)
                    .map_err(|e| format!("tls.operator_token: {e}"))?,
                softhsm_dir: op.softhsm_dir.as_deref().map(resolve),
                token_label: op.token_label.clone(),
                pin_file: resolve(&op.pin_file),
            },
        },
    };
    if f.node.is_empty() {
        return Err("the fleet has no [[node]]".into());
    }
    let mut nodes = BTreeMap::new();
    let mut addrs = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let mut data_dirs = BTreeSet::new();
    let mut source_ips = BTreeSet::new();
    for n in f.node {
        let at = format!("node {}", n.id);
        if n.id == 0 {
            return Err("node id 0 is not allowed (ids start at 1)".into());
        }
        if n.datacenter.trim().is_empty() {
            return Err(format!("{at}: datacenter is empty"));
        }
        let peer_bind_addr = n.peer_bind_addr.unwrap_or(n.peer_addr);
        let mut own = vec![
            ("frontend_addr", n.frontend_addr),
            ("peer_addr", n.peer_addr),
            ("metrics_addr", n.metrics_addr),
        ];
        if n.peer_bind_addr.is_some() {
            own.push(("peer_bind_addr", peer_bind_addr));
        }
        for (what, a) in own {
            if a.port() == 0 {
                return Err(format!("{at}: {what} needs a port"));
            }
            if !addrs.insert(a) {
                return Err(format!("{at}: {what} {a} is used twice in the fleet"));
            }
        }
        if let Some(ip) = n.peer_source_ip
            && (ip.is_unspecified() || !source_ips.insert(ip))
        {
            return Err(format!(
                "{at}: peer_source_ip {ip} is unspecified or another node's"
            ));
        }
        if n.hsm.token_label.is_empty() || n.hsm.token_label.len() > 32 {
            return Err(format!("{at}: hsm.token_label must be 1..=32 bytes"));
        }
        let sessions = n.hsm.sessions.unwrap_or(4);
        if !(1..=64).contains(&sessions) {
            return Err(format!("{at}: hsm.sessions must be 1..=64"));
        }
        let module = module_of(&n.hsm.module, &resolve).map_err(|e| format!("{at}: hsm.{e}"))?;
        if n.tls.key.is_some() {
            return Err(KEY_IN_HSM.replace("{what}", &format!("{at}: tls.key: a node's")));
        }
        let softhsm_dir = n.hsm.softhsm_dir.as_deref().map(resolve);
        if let Some(d) = &softhsm_dir {
            // Two nodes in one SoftHSM dir would share tokens by label.
            if !labels.insert((Some(d.clone()), n.hsm.token_label.clone())) {
                return Err(format!(
                    "{at}: its SoftHSM dir and token label are another node's"
                ));
            }
        }
        let data_dir = resolve(&n.data_dir);
        if !data_dirs.insert(data_dir.clone()) {
            return Err(format!(
                "{at}: data_dir {} is another node's",
                data_dir.display()
            ));
        }
        let node = NodeConfig {
            id: n.id,
            datacenter: n.datacenter,
            frontend_addr: n.frontend_addr,
            peer_addr: n.peer_addr,
            peer_bind_addr,
            peer_source_ip: n.peer_source_ip,
            metrics_addr: n.metrics_addr,
            data_dir,
            bootstrap: n.bootstrap,
            hsm: NodeHsm {
                module,
                softhsm_dir,
                token_label: n.hsm.token_label,
                pin_file: resolve(&n.hsm.pin_file),
                sessions,
            },
            tls: NodeTls {
                cert: resolve(&n.tls.cert),
            },
        };
        if nodes.insert(n.id, node).is_some() {
            return Err(format!("node id {} is used twice", n.id));
        }
    }
    if !nodes.values().any(|n| n.bootstrap) {
        return Err("no node has bootstrap = true, so the fleet could never start".into());
    }
    Ok(Fleet {
        fleet_id,
        max_attempts_cap: f.max_attempts_cap,
        raft,
        tls,
        limits: limits(&f.limits)?,
        nodes,
        source_sha256: [0; 32],
    })
}

/// Why a key path is refused.
const KEY_IN_HSM: &str = "{what} TLS key lives in its token (object `bkv-tls`, made by `vaultctl fleet provision` or `vaultctl hsm tls-key`), never in a file: remove the field (a copy of a disk must not be enough to pose as a node or the operator)";

fn module_of(name: &str, resolve: &impl Fn(&Path) -> PathBuf) -> Result<HsmModule, String> {
    match name {
        "" => Err("module is empty".into()),
        "softhsm" => Ok(HsmModule::SoftHsm),
        path => Ok(HsmModule::Path(resolve(Path::new(path)))),
    }
}

fn raft_timers(r: &RaftFile) -> Result<RaftTimers, String> {
    let explicit = [
        r.heartbeat_ms,
        r.election_timeout_min_ms,
        r.election_timeout_max_ms,
    ];
    let mut t = match (r.profile.as_deref(), explicit) {
        (Some("lan"), [None, None, None]) => RaftTimers::lan(),
        (Some("wan"), [None, None, None]) => RaftTimers::wan(),
        (Some(p @ ("lan" | "wan")), _) => {
            return Err(format!(
                "raft: profile = \"{p}\" sets the timers; drop heartbeat_ms/election_timeout_*_ms or the profile"
            ));
        }
        (Some(other), _) => {
            return Err(format!(
                "raft.profile must be \"lan\" or \"wan\", not \"{other}\""
            ));
        }
        (None, [Some(h), Some(lo), Some(hi)]) => RaftTimers {
            heartbeat: Duration::from_millis(h),
            election_min: Duration::from_millis(lo),
            election_max: Duration::from_millis(hi),
            ..RaftTimers::lan()
        },
        (None, _) => {
            return Err(
                "raft: set profile = \"lan\" | \"wan\", or all of heartbeat_ms, election_timeout_min_ms, election_timeout_max_ms".into(),
            );
        }
    };
    if t.heartbeat.is_zero() || t.heartbeat * 3 > t.election_min {
        return Err(
            "raft: heartbeat_ms must be > 0 and at most a third of election_timeout_min_ms".into(),
        );
    }
    if t.election_min >= t.election_max {
        return Err("raft: election_timeout_min_ms must be below election_timeout_max_ms".into());
    }
    if let Some(n) = r.snapshot_after_logs {
        if n == 0 {
            return Err("raft.snapshot_after_logs must be > 0".into());
        }
        t.snapshot_after_logs = n;
    }
    if let Some(n) = r.keep_logs_after_snapshot {
        t.keep_logs_after_snapshot = n;
    }
    Ok(t)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
