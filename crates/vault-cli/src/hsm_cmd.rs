//! `vaultctl hsm …`: token provisioning, key reports and the KEK ceremony.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use vault_hsm::ceremony::{self, ImportOptions, TransportPublicKey, WrappedKeks};
use vault_hsm::provision::{self, InitRequest};
use vault_hsm::softhsm::{self, SoftHsmDir};
use vault_hsm::{KeyReport, SecretBytes, read_pin_file};

use crate::output::render_report;

/// Provision HSM tokens and copy the fleet KEK between them.
#[derive(Debug, Subcommand)]
pub enum HsmCommand {
    /// Create and initialise a token, set its PINs, and generate the vault's
    /// keys: the attestation key pair, the transport key pair and, with
    /// --kek, the fleet KEK (only on the founding node; the others receive
    /// it with `vaultctl hsm ceremony`).
    Init(InitArgs),
    /// Show a token and the PKCS#11 attributes of every vault key.
    Report(ReportArgs),
    /// Print an operator token's public key (hex), the key apps pin.
    OperatorKey(ReportArgs),
    /// Make sure a node's or the operator's token has its TLS key pair
    /// (`bkv-tls`: EC P-256, generated on the token, never extractable;
    /// the identity the node or operator presents in every handshake),
    /// generating it if a token lacks it, and write its public key (PEM)
    /// for `vaultctl pki init` to certify.
    TlsKey(TlsKeyArgs),
    /// Ceremony step 1, on the receiving HSM: write its transport public key.
    ExportTransport(ExportArgs),
    /// Ceremony step 2, on the sending HSM: the security officer trusts the
    /// receiver's transport key, and every KEK is wrapped under it.
    WrapKek(WrapArgs),
    /// Ceremony step 3, on the receiving HSM: unwrap the KEKs into it and
    /// check them against the sender's check values.
    ImportKek(ImportArgs),
    /// Run all three ceremony steps between two SoftHSM directories on this
    /// machine, each step in its own process.
    Ceremony(CeremonyArgs),
    /// KEK rotation, step 1, on the token that founded the fleet's KEK:
    /// generate the next KEK version (one above the highest on the token).
    /// Nothing uses it yet: step 2 copies it to every other node with the
    /// ceremony (which sends the versions a token lacks), step 3 is
    /// `vaultctl cluster rotate-kek --to N`, step 4 `vaultctl cluster
    /// destroy-kek --version OLD`. Prints the new version.
    NewKek(NewKekArgs),
}

/// Arguments of `hsm new-kek`.
#[derive(Debug, Args)]
pub struct NewKekArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// File holding the user PIN (mode 600).
    #[arg(long, value_name = "FILE")]
    user_pin_file: PathBuf,
}

/// Which token: its label, and where its module and (for SoftHSM) its
/// token directory are.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The token's label (1 to 32 printable ASCII bytes).
    #[arg(long)]
    label: String,
    /// SoftHSM2 directory of this HSM (holds softhsm2.conf and tokens/).
    /// Without it, SoftHSM uses $SOFTHSM2_CONF or its system default.
    #[arg(long, value_name = "DIR")]
    softhsm_dir: Option<PathBuf>,
    /// PKCS#11 module path. Defaults to the installed SoftHSM2 module.
    #[arg(long, value_name = "PATH")]
    module: Option<PathBuf>,
}

impl TokenArgs {
    fn module(&self) -> Result<PathBuf> {
        match &self.module {
            Some(m) => Ok(m.clone()),
            None => Ok(softhsm::find_module()?),
        }
    }

    /// When a SoftHSM directory is named and this process's SoftHSM reads
    /// another config, re-runs this command with `SOFTHSM2_CONF` set (SoftHSM
    /// reads it once per process) and returns the child's exit code.
    fn rerun_for_dir(&self, create: bool) -> Result<Option<ExitCode>> {
        let Some(root) = &self.softhsm_dir else {
            return Ok(None);
        };
        let dir = if create {
            SoftHsmDir::create(root)
                .with_context(|| format!("create SoftHSM directory {}", root.display()))?
        } else {
            let dir = SoftHsmDir::at(root);
            if !dir.conf().is_file() {
                bail!(
                    "no SoftHSM directory at {} (missing {}); create it with `vaultctl hsm init --softhsm-dir {}`",
                    root.display(),
                    dir.conf().display(),
                    root.display()
                );
            }
            dir
        };
        Ok((!dir.is_active()).then(|| dir.rerun_self()))
    }
}

/// Arguments of `hsm init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// File holding the security officer PIN to set (mode 600).
    #[arg(long, value_name = "FILE")]
    so_pin_file: PathBuf,
    /// File holding the user PIN to set (mode 600).
    #[arg(long, value_name = "FILE")]
    user_pin_file: PathBuf,
    /// Generate the fleet KEK on this token (the founding node only).
    #[arg(long, conflicts_with = "operator")]
    kek: bool,
    /// Make an operator token instead of a node token: one P-256 key pair
    /// (`bkv-operator`) that counter-signs fleet-key bundles, and nothing
    /// else.
    #[arg(long)]
    operator: bool,
    /// Print the key report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `hsm report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// File holding the user PIN (mode 600).
    #[arg(long, value_name = "FILE")]
    user_pin_file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `hsm tls-key`.
#[derive(Debug, Args)]
pub struct TlsKeyArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// File holding the user PIN (mode 600).
    #[arg(long, value_name = "FILE")]
    user_pin_file: PathBuf,
    /// Where to write the public key (PEM SubjectPublicKeyInfo), e.g.
    /// `pki/node-1.pub.pem`.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Arguments of `hsm export-transport`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// Where to write the transport public key (JSON).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Arguments of `hsm wrap-kek`.
#[derive(Debug, Args)]
pub struct WrapArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// File holding the sending token's security officer PIN.
    #[arg(long, value_name = "FILE")]
    so_pin_file: PathBuf,
    /// File holding the sending token's user PIN.
    #[arg(long, value_name = "FILE")]
    user_pin_file: PathBuf,
    /// The receiver's transport public key, from `export-transport`.
    #[arg(long, value_name = "FILE")]
    transport: PathBuf,
    /// The fingerprint the receiver's console showed; the KEK is sent only
    /// if the file's key has it.
    #[arg(long, value_name = "HEX")]
    expect_fingerprint: String,
    /// Where to write the wrapped KEKs (JSON; ciphertext only).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Arguments of `hsm import-kek`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// File holding the receiving token's user PIN.
    #[arg(long, value_name = "FILE")]
    user_pin_file: PathBuf,
    /// The wrapped KEKs, from `wrap-kek`.
    #[arg(long, value_name = "FILE")]
    wrapped: PathBuf,
    /// Let this copy be wrapped again later (under SO-trusted keys only), so
    /// that this HSM can send the KEK on. Off by default.
    #[arg(long)]
    rewrappable: bool,
}

/// Arguments of `hsm ceremony`.
#[derive(Debug, Args)]
pub struct CeremonyArgs {
    /// SoftHSM directory of the sending HSM (holds the KEK).
    #[arg(long, value_name = "DIR")]
    from_dir: PathBuf,
    /// Label of the sending token.
    #[arg(long)]
    from_label: String,
    /// Sending token's security officer PIN file.
    #[arg(long, value_name = "FILE")]
    from_so_pin_file: PathBuf,
    /// Sending token's user PIN file.
    #[arg(long, value_name = "FILE")]
    from_user_pin_file: PathBuf,
    /// SoftHSM directory of the receiving HSM.
    #[arg(long, value_name = "DIR")]
    to_dir: PathBuf,
    /// Label of the receiving token.
    #[arg(long)]
    to_label: String,
    /// Receiving token's user PIN file.
    #[arg(long, value_name = "FILE")]
    to_user_pin_file: PathBuf,
    /// PKCS#11 module for both. Defaults to the installed SoftHSM2 module.
    #[arg(long, value_name = "PATH")]
    module: Option<PathBuf>,
    /// Let the receiver send the KEK on later (see `import-kek`).
    #[arg(long)]
    rewrappable: bool,
}

fn pin(path: &Path) -> Result<SecretBytes> {
    Ok(read_pin_file(path)?)
}

#[expect(clippy::print_stdout, reason = "a command's result goes to stdout")]
fn emit(text: &str) {
    print!("{text}");
}

fn emit_report(report: &KeyReport, json: bool) -> Result<()> {
    if json {
        emit(&(serde_json::to_string_pretty(report)? + "\n"));
    } else {
        emit(&render_report(report));
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("write {}", path.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
}

/// Runs one `hsm` subcommand.
pub fn run(cmd: HsmCommand) -> Result<ExitCode> {
    match cmd {
        HsmCommand::Init(a) => init(a),
        HsmCommand::Report(a) => report(a),
        HsmCommand::OperatorKey(a) => operator_key(a),
        HsmCommand::TlsKey(a) => tls_key(a),
        HsmCommand::ExportTransport(a) => export_transport(a),
        HsmCommand::WrapKek(a) => wrap_kek(a),
        HsmCommand::ImportKek(a) => import_kek(a),
        HsmCommand::Ceremony(a) => run_ceremony(a),
        HsmCommand::NewKek(a) => new_kek(a),
    }
}

#[expect(clippy::print_stdout, reason = "the command's result")]
fn new_kek(a: NewKekArgs) -> Result<ExitCode> {
    let user_pin = pin(&a.user_pin_file)?;
    if let Some(code) = a.token.rerun_for_dir(false)? {
        return Ok(code);
    }
    let version = provision::new_kek(&a.token.module()?, &a.token.label, &user_pin)
        .with_context(|| format!("new KEK on token {:?}", a.token.label))?;
    eprintln!(
        "KEK v{} generated on {:?}; copy it to every other node with the ceremony, then `vaultctl cluster rotate-kek --to {}`",
        version.0, a.token.label, version.0
    );
    println!("{}", version.0);
    Ok(ExitCode::SUCCESS)
}

fn init(a: InitArgs) -> Result<ExitCode> {
    // Read the PINs before anything else, so a bad PIN file fails fast.
    let (so_pin, user_pin) = (pin(&a.so_pin_file)?, pin(&a.user_pin_file)?);
    if let Some(code) = a.token.rerun_for_dir(true)? {
        return Ok(code);
    }
    let module = a.token.module()?;
    let req = InitRequest {
        module: &module,
        label: &a.token.label,
        so_pin: &so_pin,
        user_pin: &user_pin,
        generate_kek: a.kek,
    };
    let report = if a.operator {
        eprintln!(
            "initialising operator token {:?} (generating the bundle-signing key)",
            a.token.label
        );
        provision::init_operator_token(&req)
    } else {
        eprintln!(
            "initialising token {:?} (generating {}attestation and transport keys; RSA-3072 takes a moment)",
            a.token.label,
            if a.kek { "fleet KEK, " } else { "" }
        );
        provision::init_token(&req)
    }
    .with_context(|| format!("initialise token {:?}", a.token.label))?;
    emit_report(&report, a.json)?;
    Ok(ExitCode::SUCCESS)
}

fn operator_key(a: ReportArgs) -> Result<ExitCode> {
    let user_pin = pin(&a.user_pin_file)?;
    if let Some(code) = a.token.rerun_for_dir(false)? {
        return Ok(code);
    }
    let key = vault_hsm::OperatorKey::open(&a.token.module()?, &a.token.label, &user_pin)
        .with_context(|| format!("open operator token {:?}", a.token.label))?;
    emit(&format!("{}\n", hex::encode(&key.public_key().0)));
    Ok(ExitCode::SUCCESS)
}

fn tls_key(a: TlsKeyArgs) -> Result<ExitCode> {
    let user_pin = pin(&a.user_pin_file)?;
    if let Some(code) = a.token.rerun_for_dir(false)? {
        return Ok(code);
    }
    let module = a.token.module()?;
    let made =
        provision::ensure_signing_key(&module, &a.token.label, &user_pin, vault_hsm::KeyRole::Tls)
            .with_context(|| format!("TLS key of token {:?}", a.token.label))?;
    let key = vault_hsm::TokenKey::open(&module, &a.token.label, &user_pin)
        .with_context(|| format!("open token {:?}", a.token.label))?;
    vault_fleet::pki::write_public_key(&a.out, &key.public_key_spki_der())?;
    eprintln!(
        "{} the TLS key of {:?}; its public key is in {} (fingerprint sha256:{}: compare it with what `vaultctl pki init` certifies)",
        if made { "generated" } else { "found" },
        a.token.label,
        a.out.display(),
        vault_fleet::pki::fingerprint(&key.public_key_spki_der())
    );
    Ok(ExitCode::SUCCESS)
}

fn report(a: ReportArgs) -> Result<ExitCode> {
    let user_pin = pin(&a.user_pin_file)?;
    if let Some(code) = a.token.rerun_for_dir(false)? {
        return Ok(code);
    }
    let report = provision::report(&a.token.module()?, &a.token.label, &user_pin)
        .with_context(|| format!("report on token {:?}", a.token.label))?;
    emit_report(&report, a.json)?;
    Ok(ExitCode::SUCCESS)
}

fn export_transport(a: ExportArgs) -> Result<ExitCode> {
    if let Some(code) = a.token.rerun_for_dir(false)? {
        return Ok(code);
    }
    let key = ceremony::export_transport_key(&a.token.module()?, &a.token.label)
        .with_context(|| format!("export transport key of {:?}", a.token.label))?;
    write_json(&a.out, &key)?;
    eprintln!(
        "transport key of {:?} written to {}\nfingerprint: {}\ncompare this fingerprint with the sender's console before the KEK is sent",
        a.token.label,
        a.out.display(),
        key.fingerprint()
    );
    Ok(ExitCode::SUCCESS)
}

fn wrap_kek(a: WrapArgs) -> Result<ExitCode> {
    let (so_pin, user_pin) = (pin(&a.so_pin_file)?, pin(&a.user_pin_file)?);
    let peer: TransportPublicKey = read_json(&a.transport)?;
    let fingerprint = peer.fingerprint();
    if !fingerprint.eq_ignore_ascii_case(a.expect_fingerprint.trim()) {
        bail!(
            "transport key in {} has fingerprint {fingerprint}, not the expected {}; refusing to send the KEK",
            a.transport.display(),
            a.expect_fingerprint
        );
    }
    if let Some(code) = a.token.rerun_for_dir(false)? {
        return Ok(code);
    }
    let wrapped = ceremony::wrap_keks_for(
        &a.token.module()?,
        &a.token.label,
        &so_pin,
        &user_pin,
        &peer,
    )
    .with_context(|| format!("wrap the KEKs of {:?}", a.token.label))?;
    write_json(&a.out, &wrapped)?;
    eprintln!(
        "{} KEK version(s) of {:?} wrapped for transport key {fingerprint}, written to {}",
        wrapped.keks.len(),
        a.token.label,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn import_kek(a: ImportArgs) -> Result<ExitCode> {
    let user_pin = pin(&a.user_pin_file)?;
    let wrapped: WrappedKeks = read_json(&a.wrapped)?;
    if let Some(code) = a.token.rerun_for_dir(false)? {
        return Ok(code);
    }
    let added = ceremony::import_keks(
        &a.token.module()?,
        &a.token.label,
        &user_pin,
        &wrapped,
        ImportOptions {
            rewrappable: a.rewrappable,
        },
    )
    .with_context(|| format!("import KEKs into {:?}", a.token.label))?;
    let versions: Vec<String> = added.iter().map(|v| format!("v{}", v.0)).collect();
    eprintln!(
        "token {:?} received KEK {} from {:?}; check values match",
        a.token.label,
        if versions.is_empty() {
            "(none new: already present)".to_owned()
        } else {
            versions.join(", ")
        },
        wrapped.source_token_label
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs the three steps as child processes, because SoftHSM reads its
/// directory once per process: exactly how the steps run on two machines.
fn run_ceremony(a: CeremonyArgs) -> Result<ExitCode> {
    // Fail on unreadable PIN files before touching either HSM.
    for f in [
        &a.from_so_pin_file,
        &a.from_user_pin_file,
        &a.to_user_pin_file,
    ] {
        pin(f)?;
    }
    let exe = std::env::current_exe().context("find the vaultctl executable")?;
    let work = tempfile::tempdir().context("create a working directory")?;
    let transport = work.path().join("transport.json");
    let wrapped = work.path().join("wrapped-keks.json");
    let module_args: Vec<String> = a
        .module
        .iter()
        .flat_map(|m| ["--module".to_owned(), m.display().to_string()])
        .collect();
    // Runs `vaultctl hsm SUB --softhsm-dir DIR --label LABEL [--flag [value]]…`.
    let step = |n: u32,
                what: &str,
                sub: &str,
                dir: &Path,
                label: &str,
                flags: &[(&str, String)]|
     -> Result<()> {
        eprintln!("step {n}/3: {what}");
        let status = std::process::Command::new(&exe)
            .args(["hsm", sub, "--softhsm-dir"])
            .arg(dir)
            .args(["--label", label])
            // An empty value marks a bare switch such as --rewrappable.
            .args(flags.iter().flat_map(|(flag, value)| {
                std::iter::once(*flag).chain((!value.is_empty()).then_some(value.as_str()))
            }))
            .args(&module_args)
            .status()
            .with_context(|| format!("run step {n}"))?;
        if !status.success() {
            bail!("step {n} ({what}) failed: {status}");
        }
        Ok(())
    };
    let s = |p: &Path| p.display().to_string();
    step(
        1,
        &format!("export the transport key of {:?}", a.to_label),
        "export-transport",
        &a.to_dir,
        &a.to_label,
        &[("--out", s(&transport))],
    )?;
    let fingerprint = read_json::<TransportPublicKey>(&transport)?.fingerprint();
    step(
        2,
        &format!("wrap the KEKs of {:?} for {fingerprint}", a.from_label),
        "wrap-kek",
        &a.from_dir,
        &a.from_label,
        &[
            ("--so-pin-file", s(&a.from_so_pin_file)),
            ("--user-pin-file", s(&a.from_user_pin_file)),
            ("--transport", s(&transport)),
            ("--expect-fingerprint", fingerprint.clone()),
            ("--out", s(&wrapped)),
        ],
    )?;
    let mut import = vec![
        ("--user-pin-file", s(&a.to_user_pin_file)),
        ("--wrapped", s(&wrapped)),
    ];
    if a.rewrappable {
        import.push(("--rewrappable", String::new()));
    }
    step(
        3,
        &format!("unwrap the KEKs into {:?}", a.to_label),
        "import-kek",
        &a.to_dir,
        &a.to_label,
        &import,
    )?;
    eprintln!(
        "ceremony done: {:?} now holds the fleet KEK of {:?}",
        a.to_label, a.from_label
    );
    Ok(ExitCode::SUCCESS)
}
