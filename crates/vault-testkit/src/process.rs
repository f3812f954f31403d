//! Binaries, ports and processes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use std::process::{Command, Output};

/// The binaries a fleet test runs.
#[derive(Clone, Debug)]
pub struct Bins {
    /// `vault-node`.
    pub vault_node: PathBuf,
    /// `vaultctl`.
    pub vaultctl: PathBuf,
    /// `vault-witness`.
    pub vault_witness: PathBuf,
}

impl Bins {
    /// Finds the binaries next to the running executable (a test in
    /// `target/<profile>/deps/`, or a binary in `target/<profile>/`), and refuses
    /// ones older than any source file of the workspace.
    pub fn locate() -> anyhow::Result<Bins> {
        let exe = std::env::current_exe()?;
        // A test runs from target/<profile>/deps, a binary from
        // target/<profile>.
        let dir = exe.parent().context("executable has no directory")?;
        let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().context("deps has no parent")?
        } else {
            dir
        };
        let bins = Bins {
            vault_node: profile_dir.join("vault-node"),
            vaultctl: profile_dir.join("vaultctl"),
            vault_witness: profile_dir.join("vault-witness"),
        };
        for bin in [&bins.vault_node, &bins.vaultctl, &bins.vault_witness] {
            check_fresh(bin, "cargo build --workspace --all-targets")?;
        }
        Ok(bins)
    }

    /// These binaries with `vault-node` replaced by `name` from the same
    /// directory (a variant built with other features), checked the same
    /// way.
    pub fn with_node_variant(&self, name: &str) -> anyhow::Result<Bins> {
        let node = self.vault_node.with_file_name(name);
        check_fresh(
            &node,
            "bash -c 'source scripts/lib/common.sh && bkv_build_all' (scripts/test.sh does)",
        )?;
        Ok(Bins {
            vault_node: node,
            vaultctl: self.vaultctl.clone(),
            vault_witness: self.vault_witness.clone(),
        })
    }
}

/// Fails if `bin` is missing or older than one of its sources.
fn check_fresh(bin: &Path, build: &str) -> anyhow::Result<()> {
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .with_context(|| format!("{} is missing: run `{build}` first", bin.display()))?;
    if let Some(source) = newer_source(bin, built)? {
        bail!(
            "{} is older than {}: run `{build}` first",
            bin.display(),
            source.display()
        );
    }
    Ok(())
}

/// A source file of `bin` (from cargo's dep-info file next to it) that
/// changed after `built`, if any.
fn newer_source(bin: &Path, built: SystemTime) -> anyhow::Result<Option<PathBuf>> {
    let dep_info = bin.with_extension("d");
    let text = std::fs::read_to_string(&dep_info)
        .with_context(|| format!("read {} (cargo's dep-info)", dep_info.display()))?;
    let deps = text.split_once(": ").map_or("", |(_, deps)| deps);
    // Paths are separated by spaces; a space inside a path is escaped.
    let deps = deps.replace("\\ ", "\0");
    for dep in deps.split_whitespace() {
        let path = PathBuf::from(dep.replace('\0', " "));
        if let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified())
            && modified > built
        {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// `n` distinct free TCP ports on 127.0.0.1 (free when this returns; a
/// fleet binds them moments later).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

/// Sends `signal` (e.g. "TERM", "STOP") to `pid` with the shell's `kill`.
pub(crate) fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid}")])
        .status()?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// Runs `cmd` to completion; fails with its output unless it succeeded.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
