//! `vaultctl register | recover | status | delete | backup`: what an app
//! does, from the command line, against a fleet's frontend API.
//!
//! Exit codes: 0 success; 3 wrong password (attempts left printed); 4
//! locked; 5 unknown user; 1 anything else; 2 bad command line.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use vault_client::{Client, ClientError, Ksf, PinnedTrust, Status, Trust};
use vault_fleet::config::Fleet;
use vault_types::UserId;
use zeroize::Zeroizing;

/// Exit code: wrong password.
pub const EXIT_WRONG_PASSWORD: u8 = 3;
/// Exit code: locked.
pub const EXIT_LOCKED: u8 = 4;
/// Exit code: unknown user.
pub const EXIT_UNKNOWN_USER: u8 = 5;

/// Which fleet to talk to, and as which frontend.
#[derive(Debug, Args)]
pub struct FleetChoice {
    /// A fleet directory (its `fleet.toml` if it has one, else the default
    /// fleet file) or a fleet file. Default: the local fleet that
    /// `scripts/fleet.sh up` made (`cluster-configs/local-3.toml`, `.fleet`).
    #[arg(long)]
    fleet: Option<PathBuf>,
    /// The frontend certificate to present (`pki/frontend-<NAME>.pem`).
    #[arg(long, env = "BKV_FRONTEND", default_value = "local")]
    frontend: String,
    /// Argon2id strength for the password: `production` (19 MiB, 2 passes)
    /// or `fast` (tests only). Recovery must use the registration's.
    #[arg(long, env = "BKV_KSF", value_enum, default_value = "production")]
    ksf: KsfChoice,
    /// The pinned witness and operator public keys (JSON:
    /// `{"witness_key": HEX, "operator_key": HEX}`). Default: `pins.json` in
    /// the fleet directory, which `scripts/fleet.sh up` writes. With pins,
    /// every registration and recovery checks the fleet's signed key bundle
    /// before sending anything secret; the newest epoch seen is kept in
    /// `seen-epochs.json` beside the pins file.
    #[arg(long, env = "BKV_PINS", value_name = "FILE")]
    pins: Option<PathBuf>,
}

/// The pins file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinsFile {
    /// The witness's Ed25519 public key (hex).
    pub witness_key: String,
    /// The operator's P-256 public key (hex, SEC1 uncompressed).
    pub operator_key: String,
}

/// Reads a pins file.
pub fn read_pins(path: &Path) -> anyhow::Result<vault_client::Pins> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("read pins {}", path.display()))?;
    let file: PinsFile =
        serde_json::from_str(&text).with_context(|| format!("parse pins {}", path.display()))?;
    vault_client::Pins::from_hex(&file.witness_key, &file.operator_key)
        .with_context(|| format!("pins {}", path.display()))
}

/// Argon2id profiles.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KsfChoice {
    /// 19 MiB, 2 passes, 1 lane.
    Production,
    /// 256 KiB, 1 pass: tests and demos only.
    Fast,
}

impl FleetChoice {
    fn fleet_and_dir(&self) -> anyhow::Result<(Fleet, PathBuf)> {
        let env_config = std::env::var_os("BKV_FLEET_CONFIG").map(PathBuf::from);
        let env_dir = std::env::var_os("BKV_FLEET_DIR").map(PathBuf::from);
        let default_config = PathBuf::from("cluster-configs/local-3.toml");
        let (config, dir) = match &self.fleet {
            Some(p) if p.is_dir() => {
                let own = p.join("fleet.toml");
                (if own.exists() { own } else { default_config }, p.clone())
            }
            Some(p) => (
                p.clone(),
                env_dir.unwrap_or_else(|| PathBuf::from(".fleet")),
            ),
            None => (
                env_config.unwrap_or(default_config),
                env_dir.unwrap_or_else(|| PathBuf::from(".fleet")),
            ),
        };
        let fleet = Fleet::load(&config, &dir).with_context(|| {
            "no fleet to talk to: start one with ./scripts/fleet.sh up, or pass --fleet".to_owned()
        })?;
        Ok((fleet, dir))
    }

    fn client(&self) -> anyhow::Result<Client> {
        let ksf = match self.ksf {
            KsfChoice::Production => Ksf::Production,
            KsfChoice::Fast => Ksf::Fast,
        };
        let (fleet, dir) = self.fleet_and_dir()?;
        let client = Client::from_fleet(&fleet, &self.frontend, ksf)?;
        let pins = self.pins.clone().or_else(|| {
            let p = dir.join("pins.json");
            p.exists().then_some(p)
        });
        let trust = match pins {
            Some(path) => {
                let store = path.with_file_name("seen-epochs.json");
                Trust::Pinned(Box::new(PinnedTrust::new(read_pins(&path)?, Some(store))?))
            }
            None => {
                eprintln!(
                    "vaultctl: WARNING: no pinned witness and operator keys (--pins); trusting the keys of any node with a fleet certificate"
                );
                Trust::FleetCertificateOnly
            }
        };
        Ok(client.with_trust(trust))
    }
}

/// Where the password comes from.
#[derive(Debug, Args)]
pub struct PasswordInput {
    /// Read the password from the first line of stdin (else: prompt on the
    /// terminal). Never pass a password as an argument.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordInput {
    fn read(&self, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
        let password = if self.password_stdin {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin().lock().read_line(&mut line)?;
            let trimmed = line.trim_end_matches(['\n', '\r']).to_owned();
            Zeroizing::new(trimmed)
        } else {
            if !std::io::stdin().is_terminal() {
                bail!("stdin is not a terminal: pass --password-stdin and the password on stdin");
            }
            let p = Zeroizing::new(rpassword::prompt_password("password: ")?);
            if confirm {
                let again = Zeroizing::new(rpassword::prompt_password("again: ")?);
                if *again != *p {
                    bail!("the passwords differ");
                }
            }
            p
        };
        if password.is_empty() {
            bail!("the password is empty");
        }
        Ok(password)
    }
}

/// `vaultctl backup …`
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Encrypt a file with a backup key.
    Encrypt(BackupArgs),
    /// Decrypt a file made by `backup encrypt`; the output appears only if
    /// the whole file authenticates.
    Decrypt(BackupArgs),
}

/// Files of a backup command.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The key file (64 hex digits, as `--key-out` writes it).
    #[arg(long)]
    key_file: PathBuf,
    /// Input file.
    #[arg(long = "in")]
    input: PathBuf,
    /// Output file (written through a temporary file and renamed).
    #[arg(long = "out")]
    output: PathBuf,
}

/// The user-facing commands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Register a user: generate a backup key K, store it behind the
    /// password, print K (hex) or write it to --key-out.
    Register {
        /// The user id.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        password: PasswordInput,
        /// Wrong guesses allowed before the key is erased (0: the default,
        /// 10; at most the fleet's cap).
        #[arg(long, default_value_t = 0)]
        max_attempts: u32,
        /// Write K here (hex, mode 0600) instead of printing it.
        #[arg(long)]
        key_out: Option<PathBuf>,
        #[command(flatten)]
        fleet: FleetChoice,
    },
    /// Recover a user's backup key with the password.
    Recover {
        /// The user id.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        password: PasswordInput,
        /// Write K here (hex, mode 0600) instead of printing it.
        #[arg(long)]
        key_out: Option<PathBuf>,
        #[command(flatten)]
        fleet: FleetChoice,
    },
    /// Show a user's status (attempts left, locked, deleted).
    Status {
        /// The user id.
        #[arg(long)]
        user: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetChoice,
    },
    /// Delete a user's record: the key is gone for good.
    Delete {
        /// The user id.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        fleet: FleetChoice,
    },
}

#[expect(clippy::print_stdout, reason = "the key is the command's output")]
fn emit_key(k: &[u8; 32], out: Option<&Path>) -> anyhow::Result<()> {
    let hex = Zeroizing::new(format!("{}\n", hex::encode(k)));
    match out {
        Some(p) => {
            vault_fleet::pki::write_file(p, hex.as_bytes(), 0o600)?;
            eprintln!("backup key written to {}", p.display());
        }
        None => print!("{}", hex.as_str()),
    }
    Ok(())
}

fn user(s: &str) -> anyhow::Result<UserId> {
    UserId::new(s).map_err(|e| anyhow::anyhow!("--user: {e}"))
}

fn fail(e: ClientError) -> ExitCode {
    eprintln!("vaultctl: {e}");
    match e {
        ClientError::WrongPassword { .. } => ExitCode::from(EXIT_WRONG_PASSWORD),
        ClientError::Locked => ExitCode::from(EXIT_LOCKED),
        ClientError::NotFound => ExitCode::from(EXIT_UNKNOWN_USER),
        _ => ExitCode::FAILURE,
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    vault_fleet::tls::install_crypto_provider();
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs a user command.
#[expect(clippy::print_stdout, reason = "status is the command's output")]
pub fn run(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    // Channels are created (lazily) inside the runtime.
    let _entered = rt.enter();
    match cmd {
        UserCommand::Register {
            user: u,
            password,
            max_attempts,
            key_out,
            fleet,
        } => {
            let u = user(&u)?;
            let client = fleet.client()?;
            let password = password.read(true)?;
            match rt.block_on(client.register(&u, password.as_bytes(), max_attempts)) {
                Ok(k) => {
                    eprintln!("registered {}", u.as_str());
                    emit_key(&k, key_out.as_deref())?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(fail(e)),
            }
        }
        UserCommand::Recover {
            user: u,
            password,
            key_out,
            fleet,
        } => {
            let u = user(&u)?;
            let client = fleet.client()?;
            let password = password.read(false)?;
            match rt.block_on(client.recover(&u, password.as_bytes())) {
                Ok(k) => {
                    eprintln!("recovered the backup key of {}", u.as_str());
                    emit_key(&k, key_out.as_deref())?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(fail(e)),
            }
        }
        UserCommand::Status {
            user: u,
            json,
            fleet,
        } => {
            let u = user(&u)?;
            let client = fleet.client()?;
            let status = match rt.block_on(client.status(&u)) {
                Ok(s) => s,
                Err(e) => return Ok(fail(e)),
            };
            let (state, generation, left, max) = match status {
                Status::Unknown => ("unknown", None, None, None),
                Status::Active {
                    generation,
                    attempts_left,
                    max_attempts,
                } => (
                    "active",
                    Some(generation.0),
                    Some(attempts_left),
                    Some(max_attempts),
                ),
                Status::Locked { generation } => ("locked", Some(generation.0), Some(0), None),
                Status::Deleted { generation } => ("deleted", Some(generation.0), None, None),
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "user": u.as_str(), "state": state, "generation": generation,
                        "attempts_left": left, "max_attempts": max,
                    })
                );
            } else {
                let mut line = format!("{}: {state}", u.as_str());
                if let Some(g) = generation {
                    line.push_str(&format!(", generation {g}"));
                }
                if let (Some(l), Some(m)) = (left, max) {
                    line.push_str(&format!(", {l} of {m} attempts left"));
                }
                println!("{line}");
            }
            Ok(if matches!(status, Status::Unknown) {
                ExitCode::from(EXIT_UNKNOWN_USER)
            } else {
                ExitCode::SUCCESS
            })
        }
        UserCommand::Delete { user: u, fleet } => {
            let u = user(&u)?;
            let client = fleet.client()?;
            match rt.block_on(client.delete(&u)) {
                Ok(()) => {
                    eprintln!("deleted {}: its backup key is gone", u.as_str());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(fail(e)),
            }
        }
    }
}

fn read_key(path: &Path) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
    );
    let mut k = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), k.as_mut())
        .map_err(|_| anyhow::anyhow!("{}: not a key (64 hex digits)", path.display()))?;
    Ok(k)
}

/// Runs a backup command.
pub fn run_backup(cmd: BackupCommand) -> anyhow::Result<ExitCode> {
    let (decrypting, args) = match cmd {
        BackupCommand::Encrypt(a) => (false, a),
        BackupCommand::Decrypt(a) => (true, a),
    };
    let k = read_key(&args.key_file)?;
    let input = std::io::BufReader::new(
        std::fs::File::open(&args.input)
            .with_context(|| format!("open {}", args.input.display()))?,
    );
    let dir = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("create a file in {}", dir.display()))?;
    let mut out = std::io::BufWriter::new(tmp.as_file());
    let result = if decrypting {
        vault_client::backup::decrypt(&k, input, &mut out)
    } else {
        vault_client::backup::encrypt(&k, input, &mut out)
    };
    let bytes = match result {
        Ok(n) => n,
        Err(e) => {
            eprintln!("vaultctl: {}: {e}", args.input.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    drop(out);
    tmp.as_file().sync_all()?;
    tmp.persist(&args.output)
        .with_context(|| format!("write {}", args.output.display()))?;
    eprintln!(
        "{} {} bytes into {}",
        if decrypting { "decrypted" } else { "encrypted" },
        bytes,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
