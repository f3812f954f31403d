//! `vaultctl fleet provision`: everything a fleet file's nodes need before
//! their first start, in one idempotent command: PIN files, one SoftHSM
//! token per node (the fleet KEK made on the first node and copied to the
//! others by ceremony; each with its TLS key), the operator's token (the
//! bundle-signing key and the operator's TLS key), the TLS public keys
//! exported from the tokens, and every certificate, issued for those keys
//! (no node or operator key file exists).
//!
//! `scripts/fleet.sh up` and the test harness (`vault-testkit`) both call
//! it, so there is one provisioning sequence. It keeps what exists: run it
//! again after adding a node to the fleet file and it provisions just that
//! node (its token, the KEK by ceremony, its certificate).
//!
//! SoftHSM reads its directory once per process, so each token step runs
//! in a child `vaultctl` (`hsm init`, `hsm ceremony`), exactly as an
//! operator would run them by hand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use vault_fleet::config::{Fleet, HsmModule, NodeConfig};

use super::ProvisionArgs;

/// Label, SoftHSM directory and PIN files of one token to provision.
struct Token {
    what: String,
    label: String,
    dir: PathBuf,
    so_pin: PathBuf,
    user_pin: PathBuf,
}

impl Token {
    fn of_node(n: &NodeConfig) -> anyhow::Result<Token> {
        let dir = match (&n.hsm.module, &n.hsm.softhsm_dir) {
            (HsmModule::SoftHsm, Some(dir)) => dir.clone(),
            _ => bail!(
                "node {}: `fleet provision` makes SoftHSM tokens only (hsm.module = \"softhsm\" with hsm.softhsm_dir); provision a hardware HSM with `vaultctl hsm init` and the ceremony by hand (docs/OPERATIONS.md)",
                n.id
            ),
        };
        let secrets = n
            .hsm
            .pin_file
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        Ok(Token {
            what: format!("node-{}", n.id),
            label: n.hsm.token_label.clone(),
            dir,
            so_pin: secrets.join(format!("{}.so.pin", n.hsm.token_label)),
            user_pin: n.hsm.pin_file.clone(),
        })
    }

    fn operator(fleet: &Fleet) -> anyhow::Result<Token> {
        let t = &fleet.tls.operator.token;
        let dir = match (&t.module, &t.softhsm_dir) {
            (HsmModule::SoftHsm, Some(dir)) => dir.clone(),
            _ => bail!(
                "tls.operator_token: `fleet provision` makes SoftHSM tokens only; provision a hardware token with `vaultctl hsm init --operator` and `vaultctl hsm tls-key` by hand"
            ),
        };
        let secrets = t
            .pin_file
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        Ok(Token {
            what: "operator".to_owned(),
            label: t.token_label.clone(),
            dir,
            so_pin: secrets.join(format!("{}.so.pin", t.token_label)),
            user_pin: t.pin_file.clone(),
        })
    }

    /// Makes sure the token has its TLS key and exports the public key to
    /// `out` (for the certificate).
    fn export_tls_key(&self, out: &Path) -> anyhow::Result<()> {
        vaultctl(
            &format!("export {}'s TLS public key", self.what),
            &[
                "hsm".as_ref(),
                "tls-key".as_ref(),
                "--softhsm-dir".as_ref(),
                self.dir.as_os_str(),
                "--label".as_ref(),
                self.label.as_ref(),
                "--user-pin-file".as_ref(),
                self.user_pin.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
        )
    }

    /// Whether the token directory holds a token already.
    fn exists(&self) -> bool {
        std::fs::read_dir(self.dir.join("tokens"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    fn ensure_pins(&self) -> anyhow::Result<()> {
        for path in [&self.so_pin, &self.user_pin] {
            new_pin(path)?;
        }
        Ok(())
    }
}

/// Writes a fresh random PIN (32 hex digits, mode 600) unless the file
/// exists; its directory is created with mode 700.
fn new_pin(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    let mut pin = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut pin);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create the PIN file {}", path.display()))?;
    f.write_all(hex::encode(pin).as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// Runs `vaultctl ARGS…` as a child and fails with its step's name.
fn vaultctl(what: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    child(what, args, false)
}

/// Like [`vaultctl`], letting the child's messages through.
fn vaultctl_echo(what: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    child(what, args, true)
}

fn child(what: &str, args: &[&std::ffi::OsStr], echo: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find the vaultctl executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args).stdin(std::process::Stdio::null());
    if echo {
        cmd.stderr(std::process::Stdio::inherit());
    }
    let out = cmd
        .output()
        .with_context(|| format!("run `vaultctl` to {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn init_token(t: &Token, extra: &[&str]) -> anyhow::Result<()> {
    eprintln!("{}: making its SoftHSM token {:?}", t.what, t.label);
    let mut args: Vec<&std::ffi::OsStr> = ["hsm", "init"].map(std::ffi::OsStr::new).to_vec();
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.extend([
        "--softhsm-dir".as_ref(),
        t.dir.as_os_str(),
        "--label".as_ref(),
        t.label.as_ref(),
        "--so-pin-file".as_ref(),
        t.so_pin.as_os_str(),
        "--user-pin-file".as_ref(),
        t.user_pin.as_os_str(),
    ]);
    vaultctl(&format!("make {}'s token", t.what), &args)
}

fn ceremony(from: &Token, to: &Token) -> anyhow::Result<()> {
    eprintln!(
        "{}: receiving the fleet KEK from {} by ceremony",
        to.what, from.what
    );
    vaultctl(
        &format!("copy the KEK from {} to {}", from.what, to.what),
        &[
            "hsm".as_ref(),
            "ceremony".as_ref(),
            "--from-dir".as_ref(),
            from.dir.as_os_str(),
            "--from-label".as_ref(),
            from.label.as_ref(),
            "--from-so-pin-file".as_ref(),
            from.so_pin.as_os_str(),
            "--from-user-pin-file".as_ref(),
            from.user_pin.as_os_str(),
            "--to-dir".as_ref(),
            to.dir.as_os_str(),
            "--to-label".as_ref(),
            to.label.as_ref(),
            "--to-user-pin-file".as_ref(),
            to.user_pin.as_os_str(),
        ],
    )
}

/// Provisions every node token of `fleet`: the first node (lowest id)
/// founds the KEK, the others receive it by ceremony from it.
fn node_tokens(fleet: &Fleet) -> anyhow::Result<usize> {
    let tokens = fleet
        .nodes
        .values()
        .map(Token::of_node)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let Some((founder, others)) = tokens.split_first() else {
        bail!("the fleet file has no nodes");
    };
    let mut made = 0;
    if !founder.exists() {
        // A new KEK beside tokens that hold the old one would split the
        // fleet into nodes that cannot open each other's records.
        if let Some(t) = others.iter().find(|t| t.exists()) {
            bail!(
                "{} has a token but {} (the first node, which founds the KEK) has none: restore {}'s token directory {} rather than making a new KEK",
                t.what,
                founder.what,
                founder.what,
                founder.dir.display()
            );
        }
        founder.ensure_pins()?;
        init_token(founder, &["--kek"])?;
        made += 1;
    }
    for t in others {
        if t.exists() {
            continue;
        }
        t.ensure_pins()?;
        init_token(t, &[])?;
        ceremony(founder, t)?;
        made += 1;
    }
    Ok(made)
}

/// Runs `vaultctl fleet provision`.
pub(super) fn provision(a: ProvisionArgs) -> anyhow::Result<ExitCode> {
    let fleet = a.fleet.load()?;
    let fleet_dir = a.fleet.fleet_dir();
    let nodes = fleet.nodes.len();
    eprintln!(
        "provisioning fleet {} ({nodes} nodes) in {}",
        fleet.fleet_id.as_str(),
        fleet_dir.display()
    );
    let made = node_tokens(&fleet)?;
    let operator = Token::operator(&fleet)?;
    if !operator.exists() {
        operator.ensure_pins()?;
        init_token(&operator, &["--operator"])?;
    }
    // The certificates name keys that never leave the tokens: export each
    // public key next to the certificate it goes into.
    let pki = fleet
        .tls
        .fleet_ca
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    std::fs::create_dir_all(&pki).with_context(|| format!("create {}", pki.display()))?;
    eprintln!("exporting the TLS public keys of the tokens");
    for n in fleet.nodes.values() {
        Token::of_node(n)?.export_tls_key(&pki.join(vault_fleet::pki::files::node(n.id).1))?;
    }
    operator.export_tls_key(&pki.join(vault_fleet::pki::files::OPERATOR_PUBLIC))?;
    eprintln!(
        "issuing certificates with the CA keys on the operator token (current ones are kept)"
    );
    // --replace: the public keys were just exported from the tokens by this
    // very command, so a changed one is a token made again, not a swap.
    let mut args: Vec<std::ffi::OsString> = vec!["pki".into(), "init".into(), "--replace".into()];
    args.extend(a.fleet.to_args());
    for f in &a.frontends {
        args.extend(["--frontend".into(), f.into()]);
    }
    vaultctl_echo(
        "issue the certificates",
        &args
            .iter()
            .map(std::ffi::OsString::as_os_str)
            .collect::<Vec<_>>(),
    )?;
    eprintln!(
        "provisioned: {made} new node token(s), {} kept; operator token in {}",
        nodes - made,
        operator.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
