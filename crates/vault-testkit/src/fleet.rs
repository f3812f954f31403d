//! A fleet of real node processes for one test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tempfile::TempDir;

use crate::process::{Bins, free_ports, run, signal};
use crate::spec::{FleetSpec, PORTS_PER_NODE};
use crate::template::Template;

/// One node process.
struct Node {
    child: Child,
    /// While the node is paused: a shell that SIGCONTs it if this process
    /// dies, so that it can see its stdin close and exit (a stopped
    /// process cannot).
    watchdog: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Node {
    /// Waits up to `within` for the process to exit; kills it and fails
    /// with `why()` if it does not.
    fn wait_exit(
        mut self,
        within: Duration,
        why: impl FnOnce() -> String,
    ) -> anyhow::Result<ExitStatus> {
        let give_up = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= give_up {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(why());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A fleet of node processes in a private directory. Dropping it kills
/// every node still running.
pub struct TestFleet {
    dir: TempDir,
    config: PathBuf,
    bins: Bins,
    fleet: vault_fleet::config::Fleet,
    running: BTreeMap<u64, Node>,
    starts: BTreeMap<u64, u32>,
    witness: Option<crate::witness::TestWitness>,
    witness_port: Option<u16>,
}

impl TestFleet {
    /// A fleet of `spec` from a copy of `template` (nothing started yet).
    pub fn create(template: &Template, spec: &FleetSpec) -> anyhow::Result<TestFleet> {
        if spec.nodes > template.nodes {
            bail!(
                "the template has tokens for {} nodes, not {}",
                template.nodes,
                spec.nodes
            );
        }
        let dir = tempfile::Builder::new().prefix("bkv-fleet-").tempdir()?;
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", template.dir.path().display()))
            .arg(dir.path()))?;
        let token_dirs = (1..=template.nodes)
            .map(|n| format!("hsm/node-{n}"))
            .chain(["hsm/operator".to_owned()]);
        for token_dir in token_dirs {
            // softhsm2.conf names its token dir by absolute path: point the
            // copy at its own tokens.
            let root = dir.path().join(token_dir);
            std::fs::remove_file(root.join("softhsm2.conf"))?;
            vault_hsm::softhsm::SoftHsmDir::create(&root)?;
        }
        let ports = free_ports(PORTS_PER_NODE * spec.nodes as usize)?;
        let config = template.write_config(dir.path(), spec, &ports)?;
        let fleet = vault_fleet::config::Fleet::load(&config, dir.path())?;
        Ok(TestFleet {
            dir,
            config,
            bins: template.bins.clone(),
            fleet,
            running: BTreeMap::new(),
            starts: BTreeMap::new(),
            witness: None,
            witness_port: None,
        })
    }

    /// Runs `bins` from now on (e.g. a node built with other features).
    pub fn set_bins(&mut self, bins: Bins) {
        self.bins = bins;
    }

    /// The fleet directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The parsed fleet file.
    pub fn fleet(&self) -> &vault_fleet::config::Fleet {
        &self.fleet
    }

    /// Node `id`'s log file (stderr of every start, appended).
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    /// Node `id`'s log so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Starts node `id`.
    pub fn start(&mut self, id: u64) -> anyhow::Result<()> {
        self.start_with(id, &[])
    }

    /// Starts node `id` with `extra` arguments (e.g. `--accept-rollback`).
    pub fn start_with(&mut self, id: u64, extra: &[&str]) -> anyhow::Result<()> {
        if self.running.contains_key(&id) {
            bail!("node {id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let child = Command::new(&self.bins.vault_node)
            .arg("--config")
            .arg(&self.config)
            .arg("--fleet-dir")
            .arg(self.dir.path())
            .args(["--node-id", &id.to_string()])
            .args(extra)
            .env("RUST_LOG", "info,openraft=warn")
            // The node stops when this pipe closes: if this process dies
            // without running Drop, its nodes still go away.
            .env("BKV_EXIT_WITH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start vault-node")?;
        *self.starts.entry(id).or_default() += 1;
        self.running.insert(
            id,
            Node {
                child,
                watchdog: None,
            },
        );
        Ok(())
    }

    /// Starts nodes `ids`.
    pub fn start_all(&mut self, ids: impl IntoIterator<Item = u64>) -> anyhow::Result<()> {
        ids.into_iter().try_for_each(|id| self.start(id))
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let mut node = self
            .running
            .remove(&id)
            .with_context(|| format!("node {id} is not running"))?;
        node.child.kill()?;
        node.child.wait()?;
        Ok(())
    }

    /// SIGSTOPs node `id`: it keeps its sockets but runs nothing until
    /// [`TestFleet::resume`].
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        let pid = self.pid(id)?;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -CONT {pid}",
                me = std::process::id()
            ))
            .stdin(Stdio::null())
            .spawn()
            .context("start the pause watchdog")?;
        if let Some(node) = self.running.get_mut(&id) {
            node.watchdog = Some(watchdog);
        }
        signal(pid, "STOP")
    }

    /// SIGCONTs a paused node `id`.
    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        signal(self.pid(id)?, "CONT")?;
        if let Some(mut w) = self.running.get_mut(&id).and_then(|n| n.watchdog.take()) {
            let _ = w.kill();
            let _ = w.wait();
        }
        Ok(())
    }

    /// Node `id`'s process id.
    pub fn pid(&self, id: u64) -> anyhow::Result<u32> {
        Ok(self
            .running
            .get(&id)
            .with_context(|| format!("node {id} is not running"))?
            .child
            .id())
    }

    /// The nodes started and not stopped since.
    pub fn running(&self) -> Vec<u64> {
        self.running.keys().copied().collect()
    }

    /// SIGTERMs node `id` and waits up to `within` for it to exit.
    pub fn terminate(&mut self, id: u64, within: Duration) -> anyhow::Result<ExitStatus> {
        let node = self.take(id)?;
        signal(node.child.id(), "TERM")?;
        node.wait_exit(within, || {
            format!("node {id} did not exit within {within:?} of SIGTERM")
        })
    }

    /// Closes node `id`'s stdin, as the death of this process would, and
    /// waits up to `within` for the node to exit by itself.
    pub fn orphan(&mut self, id: u64, within: Duration) -> anyhow::Result<ExitStatus> {
        let mut node = self.take(id)?;
        drop(node.child.stdin.take());
        node.wait_exit(within, || {
            format!("node {id} outlived its closed stdin by {within:?}")
        })
    }

    fn take(&mut self, id: u64) -> anyhow::Result<Node> {
        self.running
            .remove(&id)
            .with_context(|| format!("node {id} is not running"))
    }

    /// Adds the last log lines of every node to a failure: on failure, the
    /// logs are what explains it.
    pub fn with_logs<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        result.map_err(|e| {
            let mut logs = String::new();
            for id in self.fleet.nodes.keys() {
                let log = self.log(*id);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                logs.push_str(&format!("\n--- node {id} log (last lines) ---\n"));
                for l in tail.into_iter().rev() {
                    logs.push_str(l);
                    logs.push('\n');
                }
            }
            e.context(logs)
        })
    }

    /// Whether node `id` is running (and has not exited by itself).
    pub fn is_running(&mut self, id: u64) -> bool {
        self.running
            .get_mut(&id)
            .is_some_and(|n| matches!(n.child.try_wait(), Ok(None)))
    }

    /// `vaultctl <args>` aimed at this fleet: fleet file, fleet dir, the
    /// `test` frontend certificate and the fast Argon2id profile go through
    /// the environment.
    fn vaultctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bins.vaultctl);
        cmd.args(args)
            .env("BKV_FLEET_CONFIG", &self.config)
            .env("BKV_FLEET_DIR", self.dir.path())
            .env("BKV_FRONTEND", "test")
            .env("BKV_KSF", "fast");
        if let Some(port) = self.witness_port {
            cmd.env("BKV_WITNESS", format!("127.0.0.1:{port}"));
        }
        cmd
    }

    /// Starts the fleet's witness (first call: creates its key and TLS
    /// material in `<dir>/witness` and writes `<dir>/pins.json` with the
    /// witness and operator public keys). Later calls restart it on the
    /// same port with the same log. `vaultctl` commands then use it.
    pub fn start_witness(&mut self) -> anyhow::Result<()> {
        if self.witness.is_some() {
            bail!("the witness is already running");
        }
        let dir = self.dir.path().join("witness");
        let first = self.witness_port.is_none();
        if first {
            let out = run(Command::new(&self.bins.vault_witness)
                .args(["init", "--dir"])
                .arg(&dir))?;
            let witness_key = String::from_utf8(out.stdout)?.trim().to_owned();
            let operator_key = self
                .vaultctl_ok(&[
                    "hsm",
                    "operator-key",
                    "--softhsm-dir",
                    &self.dir.path().join("hsm/operator").to_string_lossy(),
                    "--label",
                    "operator",
                    "--user-pin-file",
                    &self
                        .dir
                        .path()
                        .join("secrets/operator.user.pin")
                        .to_string_lossy(),
                ])?
                .trim()
                .to_owned();
            std::fs::write(
                self.dir.path().join("pins.json"),
                serde_json::json!({"witness_key": witness_key, "operator_key": operator_key})
                    .to_string(),
            )?;
            self.witness_port = Some(free_ports(1)?[0]);
        }
        let port = self.witness_port.context("witness port")?;
        self.witness = Some(crate::witness::TestWitness::start(
            &self.bins.vault_witness,
            &dir,
            port,
            &self.fleet.tls.fleet_ca,
            &self.dir.path().join("witness.log"),
        )?);
        Ok(())
    }

    /// Kills the witness with SIGKILL (no clean shutdown).
    pub fn kill_witness(&mut self) -> anyhow::Result<()> {
        let mut w = self.witness.take().context("no witness is running")?;
        w.kill()
    }

    /// The witness's address, once started.
    pub fn witness_addr(&self) -> Option<String> {
        self.witness_port.map(|p| format!("127.0.0.1:{p}"))
    }

    /// The pinned keys in `<dir>/pins.json` (after [`TestFleet::start_witness`]).
    pub fn pins(&self) -> anyhow::Result<vault_client::Pins> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.path().join("pins.json"))?)?;
        Ok(vault_client::Pins::from_hex(
            v["witness_key"].as_str().context("witness_key")?,
            v["operator_key"].as_str().context("operator_key")?,
        )?)
    }

    /// `vaultctl fleet publish-keys` with the fleet's operator token.
    pub fn publish_keys(&self) -> anyhow::Result<String> {
        self.vaultctl_ok(&["fleet", "publish-keys"])
    }

    /// Runs `vaultctl <args>` against this fleet.
    pub fn vaultctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.vaultctl_command(args).output()?)
    }

    /// Runs `vaultctl <args>` with `stdin` as its standard input (for
    /// `--password-stdin`).
    pub fn vaultctl_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<Output> {
        use std::io::Write;
        let mut child = self
            .vaultctl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// Like [`TestFleet::vaultctl`], failing unless it exits 0.
    pub fn vaultctl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.vaultctl(args)?;
        if !out.status.success() {
            bail!(
                "vaultctl {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `vaultctl cluster status --json`.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.vaultctl_ok(&["cluster", "status", "--json"])?,
        )?)
    }

    /// Waits until one leader, all members reachable and following it,
    /// equal applied indexes and state digests; returns that status.
    pub fn wait_converged(&self, within: Duration) -> anyhow::Result<serde_json::Value> {
        let secs = within.as_secs().max(1).to_string();
        let out = self.vaultctl(&["cluster", "status", "--json", "--wait-converged", &secs])?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("status output: {}", String::from_utf8_lossy(&out.stderr)))?;
        if !out.status.success() {
            bail!("the fleet did not converge within {within:?}:\n{status:#}");
        }
        Ok(status)
    }

    /// Node `id`'s Prometheus metrics (GET /metrics on its metrics address).
    pub fn metrics(&self, id: u64) -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let addr = self
            .fleet
            .node(id)
            .map_err(anyhow::Error::msg)?
            .metrics_addr;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        ensure!(out.starts_with("HTTP/1.1 200"), "GET /metrics: {out}");
        Ok(out)
    }

    /// A vault client of this fleet (frontend certificate `test`, the fast
    /// Argon2id profile). Call inside a tokio runtime.
    pub fn client(&self) -> anyhow::Result<vault_client::Client> {
        Ok(vault_client::Client::from_fleet(
            &self.fleet,
            "test",
            vault_client::Ksf::Fast,
        )?)
    }

    /// A certificate and key for `identity`, issued by this fleet's CA (the
    /// frontend CA for frontends) with `vaultctl pki issue`, in
    /// `<dir>/test-identities/`: the keys of nodes and the operator live in
    /// their tokens, so a test that speaks for one holds a certificate of
    /// its own for that name.
    pub fn test_identity(
        &self,
        identity: &vault_fleet::identity::Identity,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let out = self.dir.path().join("test-identities");
        std::fs::create_dir_all(&out)?;
        let name = identity.dns_name();
        let (cert, key) = (
            out.join(format!("{name}.pem")),
            out.join(format!("{name}.key")),
        );
        let (key_pem, spki) = vault_fleet::pki::new_key_pair()?;
        vault_fleet::pki::write_file(&key, key_pem.as_bytes(), 0o600)?;
        let public = out.join(format!("{name}.pub.pem"));
        vault_fleet::pki::write_public_key(&public, &spki)?;
        let who = match identity {
            vault_fleet::identity::Identity::Node(n) => format!("node-{n}"),
            vault_fleet::identity::Identity::Frontend(f) => format!("frontend-{f}"),
            vault_fleet::identity::Identity::Operator => "operator".to_owned(),
            vault_fleet::identity::Identity::Witness => {
                anyhow::bail!("the witness has a CA of its own")
            }
        };
        self.vaultctl_ok(&[
            "pki",
            "issue",
            "--identity",
            &who,
            "--public-key",
            &public.to_string_lossy(),
            "--out",
            &cert.to_string_lossy(),
        ])?;
        Ok((cert, key))
    }

    /// A raw frontend-API client of node `id` with the `test` frontend
    /// certificate, connected now.
    pub async fn frontend(
        &self,
        id: u64,
    ) -> anyhow::Result<vault_proto::v1::frontend_client::FrontendClient<tonic::transport::Channel>>
    {
        Ok(vault_proto::v1::frontend_client::FrontendClient::new(
            self.frontend_channel(id).await?,
        ))
    }

    /// A channel to node `id`'s frontend address with the `test` frontend
    /// certificate, connected now (for calls the generated client cannot
    /// make, such as undecodable bytes).
    pub async fn frontend_channel(&self, id: u64) -> anyhow::Result<tonic::transport::Channel> {
        let pki = self.dir.path().join("pki");
        let tls = crate::client::tls(
            &self.fleet.tls.fleet_ca,
            Some((
                &pki.join("frontend-test.pem"),
                &pki.join("frontend-test.key"),
            )),
            id,
        )?;
        let addr = self
            .fleet
            .node(id)
            .map_err(anyhow::Error::msg)?
            .frontend_addr;
        crate::client::connect(addr, Some(tls)).await
    }

    /// Node `id`'s data directory (copy or replace it only while the node
    /// is stopped).
    pub fn data_dir(&self, id: u64) -> anyhow::Result<PathBuf> {
        Ok(self
            .fleet
            .node(id)
            .map_err(anyhow::Error::msg)?
            .data_dir
            .clone())
    }

    /// Every file under node `id`'s data directory, concatenated with its
    /// log: what a disk thief or a log reader would get.
    pub fn disk_and_logs(&self, id: u64) -> anyhow::Result<Vec<u8>> {
        let mut out = std::fs::read(self.log_path(id)).unwrap_or_default();
        let mut stack = vec![self.data_dir(id)?];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                } else {
                    out.extend(std::fs::read(entry.path())?);
                }
            }
        }
        Ok(out)
    }

    /// A fleet of `n` voters from `template`, started, initialised and
    /// converged within `within`.
    pub fn started(template: &Template, n: u64, within: Duration) -> anyhow::Result<TestFleet> {
        let mut fleet = TestFleet::create(template, &crate::FleetSpec::voters(n))?;
        fleet.start_all(1..=n)?;
        fleet.init()?;
        fleet.wait_converged(within)?;
        Ok(fleet)
    }

    /// Stops nodes `ids` gracefully, one after the other.
    pub fn terminate_all(&mut self, ids: &[u64]) -> anyhow::Result<()> {
        for &id in ids {
            self.terminate(id, Duration::from_secs(20))?;
        }
        Ok(())
    }

    /// `vaultctl cluster init` (waits for the nodes to come up).
    pub fn init(&self) -> anyhow::Result<()> {
        self.vaultctl_ok(&["cluster", "init", "--wait", "60"])
            .map(drop)
    }

    /// The leader that reachable nodes agree on, waiting up to `within`;
    /// only nodes in `among` count.
    pub fn wait_leader(&self, among: &[u64], within: Duration) -> anyhow::Result<u64> {
        let give_up = Instant::now() + within;
        loop {
            let status = self.status()?;
            let leaders: Vec<u64> = status["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["role"] == "leader")
                .filter_map(|n| n["node_id"].as_u64())
                .filter(|id| among.contains(id))
                .collect();
            if let [one] = leaders[..] {
                return Ok(one);
            }
            if Instant::now() >= give_up {
                bail!("no single leader among {among:?} within {within:?}:\n{status:#}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        if let Some(mut w) = self.witness.take() {
            let _ = w.kill();
        }
        for (_, mut node) in std::mem::take(&mut self.running) {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

/// One node's entry in a status JSON.
pub fn node_status(status: &serde_json::Value, id: u64) -> Option<&serde_json::Value> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node_id"].as_u64() == Some(id))
}

/// Copies the directory tree `from` into `to` (created), leaving out the
/// top-level entries named in `skip`; files that vanish while it runs are
/// skipped (RocksDB compacts under a running node). Returns how many
/// files it copied.
pub fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> anyhow::Result<usize> {
    let mut copied = 0;
    let mut stack = vec![(from.to_owned(), to.to_owned(), true)];
    while let Some((src, dst, top)) = stack.pop() {
        std::fs::create_dir_all(&dst)?;
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            let name = entry.file_name();
            if top && skip.iter().any(|s| name == *s) {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push((entry.path(), dst.join(&name), false));
            } else if kind.is_file() {
                match std::fs::copy(entry.path(), dst.join(&name)) {
                    Ok(_) => copied += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).context(format!("copy {}", entry.path().display())),
                }
            }
        }
    }
    Ok(copied)
}
