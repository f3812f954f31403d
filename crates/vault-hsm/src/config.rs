//! Where an HSM is and how to log in to it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::PinError;
use crate::secret::SecretBytes;

/// Which PKCS#11 module and token to use, and where the PIN comes from.
///
/// The token is named by its label, never by a slot number: SoftHSM (and some
/// real HSMs) renumber slots when tokens are added.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the PKCS#11 shared library.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// Where the user PIN is read from. Never the config file itself.
    pub pin: PinSource,
    /// How many PKCS#11 sessions to keep open (each used by one thread at a
    /// time). Defaults to [`DEFAULT_SESSIONS`].
    #[serde(default = "default_sessions")]
    pub sessions: usize,
}

/// Sessions kept open by default: enough to keep two cores busy with some
/// headroom for callers that block on I/O.
pub const DEFAULT_SESSIONS: usize = 4;

fn default_sessions() -> usize {
    DEFAULT_SESSIONS
}

/// Where a PIN is read from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PinSource {
    /// A file that holds the PIN (one trailing newline is ignored). It must not
    /// be open to its group or others (mode 600 or 400).
    File(PathBuf),
    /// An environment variable that holds the PIN.
    Env(String),
}

impl PinSource {
    /// Reads the PIN.
    pub fn load(&self) -> Result<SecretBytes, PinError> {
        match self {
            PinSource::File(path) => read_pin_file(path),
            PinSource::Env(var) => {
                let value =
                    std::env::var(var).map_err(|_| PinError::EnvMissing { var: var.clone() })?;
                non_empty(value.into_bytes(), format!("${var}"))
            }
        }
    }
}

/// Reads a PIN file, refusing one that other users can read.
pub fn read_pin_file(path: &Path) -> Result<SecretBytes, PinError> {
    use std::os::unix::fs::PermissionsExt;
    let file_err = |e: std::io::Error| PinError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    // Only a regular file is opened (a FIFO would block the open, a device
    // would read forever); then the checks are of the file opened, the same
    // one, not of a path that may change between a check and a read.
    let seen = std::fs::metadata(path).map_err(file_err)?;
    let not_private = |reason: String| PinError::FileNotPrivate {
        path: path.to_owned(),
        reason,
    };
    if !seen.is_file() {
        return Err(not_private("not a regular file".into()));
    }
    let mut file = std::fs::File::open(path).map_err(file_err)?;
    let opened = file.metadata().map_err(file_err)?;
    if (opened.dev(), opened.ino()) != (seen.dev(), seen.ino()) {
        return Err(not_private("it changed while being opened".into()));
    }
    if let Some(uid) = effective_uid()
        && opened.uid() != uid
    {
        return Err(not_private(format!(
            "owned by uid {}, not by this process's uid {uid}",
            opened.uid()
        )));
    }
    let mode = opened.permissions().mode();
    // Group or others may neither read nor write it.
    if mode & 0o077 != 0 {
        return Err(PinError::FileTooOpen {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(file_err)?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    non_empty(bytes, path.display().to_string())
}

/// This process's effective uid, from `/proc/self/status` (Linux); `None`
/// elsewhere, where the owner is not checked.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Uid: real effective saved filesystem
    line.split_whitespace().nth(2)?.parse().ok()
}

fn non_empty(bytes: Vec<u8>, source_name: String) -> Result<SecretBytes, PinError> {
    let secret = SecretBytes::new(bytes);
    if secret.is_empty() {
        return Err(PinError::Empty { source_name });
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pin_file_loses_one_newline_and_must_be_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pin");
        std::fs::write(&path, "1234\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let pin = PinSource::File(path.clone()).load().expect("load");
        assert_eq!(pin.expose(), b"1234");

        // Readable or writable by anyone but the owner: refused.
        for mode in [0o644, 0o640, 0o620, 0o604, 0o660, 0o610] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = PinSource::File(path.clone())
                .load()
                .expect_err(&format!("mode {mode:o} was accepted"));
            assert!(err.to_string().contains("chmod 600"), "{err}");
            assert!(!err.to_string().contains("1234"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        assert!(
            PinSource::File(path.clone()).load().is_ok(),
            "owner read-only"
        );
        // Not a regular file: refused before it is opened (a FIFO would
        // block the open).
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .expect("mkfifo")
                .success()
        );
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            PinSource::File(fifo).load(),
            Err(PinError::FileNotPrivate { .. })
        ));
        assert!(matches!(
            PinSource::File(dir.path().to_owned()).load(),
            Err(PinError::FileNotPrivate { .. })
        ));
        assert!(super::effective_uid().is_some(), "this is Linux");

        std::fs::write(&path, "\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            PinSource::File(path).load(),
            Err(PinError::Empty { .. })
        ));
    }

    #[test]
    fn missing_sources_are_named() {
        let err = PinSource::File("/nonexistent/pin".into())
            .load()
            .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/pin"), "{err}");
        let err = PinSource::Env("BKV_TEST_SURELY_UNSET_PIN".into())
            .load()
            .expect_err("unset");
        assert!(
            err.to_string().contains("BKV_TEST_SURELY_UNSET_PIN"),
            "{err}"
        );
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let ok: HsmConfig =
            serde_json::from_str(r#"{"module":"/m.so","token_label":"n1","pin":{"file":"/p"}}"#)
                .expect("parse");
        assert_eq!(ok.sessions, DEFAULT_SESSIONS);
        let bad = serde_json::from_str::<HsmConfig>(
            r#"{"module":"/m.so","token_label":"n1","pin":{"file":"/p"},"pin_value":"1"}"#,
        );
        assert!(bad.is_err());
    }
}
