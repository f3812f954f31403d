//! A provisioned fleet template: SoftHSM tokens, PINs and certificates,
//! made once per test binary by `vaultctl fleet provision` (the same
//! command `scripts/fleet.sh up` runs) and copied into each [`TestFleet`].
//!
//! [`TestFleet`]: crate::TestFleet

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::process::{Bins, free_ports, run};
use crate::spec::{ELECTION_MS, FleetSpec, PORTS_PER_NODE, source_ip};

/// HSM tokens, PINs and certificates for up to `nodes` nodes, provisioned
/// once and copied into each [`TestFleet`].
pub struct Template {
    pub(crate) dir: TempDir,
    pub(crate) nodes: u64,
    pub(crate) bins: Bins,
}

impl Template {
    /// Provisions SoftHSM tokens for nodes 1..=`nodes` (node 1 makes the
    /// KEK; the ceremony copies it to the others), PIN files, the operator
    /// token and every certificate, with `vaultctl fleet provision`. Takes
    /// a few seconds.
    pub fn provision(nodes: u64) -> anyhow::Result<Template> {
        let bins = Bins::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("bkv-fleet-template-")
            .tempdir()?;
        let root = dir.path().to_owned();
        let template = Template { dir, nodes, bins };
        let config = template.write_config(
            &root,
            &FleetSpec::voters(nodes),
            &free_ports(PORTS_PER_NODE * nodes as usize)?,
        )?;
        run(Command::new(&template.bins.vaultctl)
            .args(["fleet", "provision", "--frontend", "test", "--config"])
            .arg(&config)
            .arg("--fleet-dir")
            .arg(&root))?;
        std::fs::remove_file(config)?;
        Ok(template)
    }

    /// The binaries.
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// Writes the fleet file of `spec` on `ports` into `dir`.
    pub(crate) fn write_config(
        &self,
        dir: &Path,
        spec: &FleetSpec,
        ports: &[u16],
    ) -> anyhow::Result<PathBuf> {
        let timers = if spec.wan_timers {
            (500, 1500, 3000)
        } else {
            (100, ELECTION_MS.0, ELECTION_MS.1)
        };
        let mut t = String::new();
        let _ = write!(
            t,
            "version = 1\nfleet_id = \"test\"\nmax_attempts_cap = 10\n\n[raft]\n\
             heartbeat_ms = {}\nelection_timeout_min_ms = {}\nelection_timeout_max_ms = {}\n\
             snapshot_after_logs = {}\nkeep_logs_after_snapshot = {}\n\n[tls]\n\
             fleet_ca = \"pki/fleet-ca.pem\"\nfrontend_ca = \"pki/frontend-ca.pem\"\n\
             operator_cert = \"pki/operator.pem\"\n\
             operator_token = {{ softhsm_dir = \"hsm/operator\", token_label = \"operator\", pin_file = \"secrets/operator.user.pin\" }}\n",
            timers.0, timers.1, timers.2, spec.snapshot_after_logs, spec.keep_logs_after_snapshot
        );
        if !spec.limits.is_empty() {
            let _ = write!(t, "\n[limits]\n{}\n", spec.limits.join("\n"));
        }
        for n in 1..=spec.nodes {
            let i = (n - 1) as usize * PORTS_PER_NODE;
            let _ = write!(
                t,
                "\n[[node]]\nid = {n}\ndatacenter = \"dc-{n}\"\n\
                 frontend_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\nmetrics_addr = \"127.0.0.1:{}\"\n\
                 data_dir = \"node-{n}/data\"\nbootstrap = {}\n\
                 hsm = {{ module = \"softhsm\", softhsm_dir = \"hsm/node-{n}\", token_label = \"node-{n}\", pin_file = \"secrets/node-{n}.user.pin\", sessions = 2 }}\n\
                 tls = {{ cert = \"pki/node-{n}.pem\" }}\n",
                ports[i],
                ports[i + 1],
                ports[i + 2],
                n <= spec.bootstrap
            );
            if spec.proxied {
                let _ = writeln!(
                    t,
                    "peer_bind_addr = \"127.0.0.1:{}\"\npeer_source_ip = \"{}\"",
                    ports[i + 3],
                    source_ip(n)
                );
            }
        }
        let path = dir.join("fleet.toml");
        std::fs::write(&path, t)?;
        Ok(path)
    }
}
