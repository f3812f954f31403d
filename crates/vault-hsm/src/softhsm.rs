//! SoftHSM2 helpers: finding the module, laying out a token directory, and
//! running a program against a private token directory.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process, when the module is
//! initialised. Two HSMs with separate token directories therefore need
//! separate processes; tests and tools that want a private directory re-run
//! themselves as a child with the variable set ([`run_with_private_softhsm`]),
//! which needs no `unsafe` environment mutation.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The environment variable SoftHSM reads its configuration path from.
pub const CONF_ENV: &str = "SOFTHSM2_CONF";
/// Overrides where the SoftHSM module is looked for.
pub const MODULE_ENV: &str = "BKV_PKCS11_MODULE";
/// Set in the child of [`run_with_private_softhsm`] to its token directory root.
const PRIVATE_ENV: &str = "BKV_PRIVATE_SOFTHSM";

/// Where distributions install the SoftHSM2 module.
pub const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// SoftHSM2 is not installed where we look for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "SoftHSM2 is not installed (looked for {looked}). Run ./scripts/test.sh, which installs it (apt-get install softhsm2), or set {MODULE_ENV} to the module's path"
)]
pub struct SoftHsmMissing {
    looked: String,
}

/// The SoftHSM2 module: `$BKV_PKCS11_MODULE` if set, else the first of
/// [`MODULE_CANDIDATES`] that exists.
pub fn find_module() -> Result<PathBuf, SoftHsmMissing> {
    if let Some(path) = std::env::var_os(MODULE_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(SoftHsmMissing {
                looked: path.display().to_string(),
            })
        };
    }
    MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| SoftHsmMissing {
            looked: MODULE_CANDIDATES.join(", "),
        })
}

/// A SoftHSM2 token directory: `ROOT/softhsm2.conf` and `ROOT/tokens/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftHsmDir {
    root: PathBuf,
}

impl SoftHsmDir {
    /// Creates the layout under `root` (keeping an existing config).
    pub fn create(root: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = SoftHsmDir::at(root);
        std::fs::create_dir_all(dir.tokens())?;
        std::fs::set_permissions(&dir.root, std::fs::Permissions::from_mode(0o700))?;
        if !dir.conf().exists() {
            let text = format!(
                "# SoftHSM2 token directory of one Backup Key Vault HSM\n\
                 directories.tokendir = {}\n\
                 objectstore.backend = file\n\
                 log.level = ERROR\n\
                 slots.removable = false\n\
                 slots.mechanisms = ALL\n\
                 library.reset_on_fork = false\n",
                dir.tokens().display()
            );
            let tmp = dir.root.join("softhsm2.conf.tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, dir.conf())?;
        }
        Ok(dir)
    }

    /// The layout under `root`, without touching the disk.
    pub fn at(root: &Path) -> Self {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_owned());
        SoftHsmDir { root }
    }

    /// The directory root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of `softhsm2.conf`.
    pub fn conf(&self) -> PathBuf {
        self.root.join("softhsm2.conf")
    }

    /// The token directory.
    pub fn tokens(&self) -> PathBuf {
        self.root.join("tokens")
    }

    /// `true` when this process's SoftHSM reads this directory's config.
    pub fn is_active(&self) -> bool {
        std::env::var_os(CONF_ENV).map(PathBuf::from) == Some(self.conf())
    }

    /// A command whose SoftHSM uses this directory.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env(CONF_ENV, self.conf());
        cmd
    }

    /// Runs this same program again, with the same arguments, against this
    /// directory, and returns its exit code.
    pub fn rerun_self(&self) -> ExitCode {
        rerun(self.command(current_exe()), std::iter::empty())
    }

    /// Replaces this process by this same program, with the same arguments,
    /// against this directory (`execve`: same pid, so signals sent to the
    /// process reach the program that holds the HSM). Returns only on error.
    pub fn exec_self(&self) -> std::io::Error {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.command(current_exe());
        cmd.args(std::env::args_os().skip(1));
        cmd.exec()
    }
}

fn current_exe() -> PathBuf {
    std::env::current_exe()
        .unwrap_or_else(|_| PathBuf::from(std::env::args_os().next().unwrap_or_default()))
}

fn rerun(
    mut cmd: Command,
    extra_env: impl IntoIterator<Item = (&'static str, OsString)>,
) -> ExitCode {
    cmd.args(std::env::args_os().skip(1));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    match cmd.status() {
        Ok(status) => match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => {
                eprintln!("child process ended by a signal: {status}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("re-run {:?} with {CONF_ENV} set: {e}", cmd.get_program());
            ExitCode::FAILURE
        }
    }
}

/// Runs `body` in a process whose SoftHSM uses a fresh, private token
/// directory, removed afterwards. The calling process re-runs itself as a
/// child with `SOFTHSM2_CONF` set, waits for it and cleans up, so the
/// directory goes away even when `body` panics or the child is killed.
pub fn run_with_private_softhsm(body: impl FnOnce(&SoftHsmDir) -> ExitCode) -> ExitCode {
    if let Some(root) = std::env::var_os(PRIVATE_ENV) {
        let dir = SoftHsmDir::at(Path::new(&root));
        if dir.is_active() {
            return body(&dir);
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let root = std::env::temp_dir().join(format!("bkv-softhsm-{}-{nanos}", std::process::id()));
    let dir = match SoftHsmDir::create(&root) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("create private SoftHSM directory {}: {e}", root.display());
            return ExitCode::FAILURE;
        }
    };
    let code = rerun(
        dir.command(current_exe()),
        [(PRIVATE_ENV, dir.root().as_os_str().to_owned())],
    );
    if let Err(e) = std::fs::remove_dir_all(dir.root()) {
        eprintln!("remove {}: {e}", dir.root().display());
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_layout_and_config() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = SoftHsmDir::create(&tmp.path().join("hsm")).expect("create");
        let conf = std::fs::read_to_string(dir.conf()).expect("read conf");
        assert!(conf.contains(&format!(
            "directories.tokendir = {}",
            dir.tokens().display()
        )));
        assert!(dir.tokens().is_dir());
        // Creating again keeps the existing config.
        std::fs::write(dir.conf(), "custom").expect("write");
        SoftHsmDir::create(dir.root()).expect("again");
        assert_eq!(std::fs::read_to_string(dir.conf()).expect("read"), "custom");
    }
}
