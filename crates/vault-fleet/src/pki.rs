//! Issuing a fleet's certificates (rcgen, ECDSA P-256).
//!
//! Two authorities: the **fleet CA** issues node certificates (server and
//! client of the peer API) and the operator's certificate; the **frontend
//! CA** issues frontend client certificates. A node trusts the fleet CA on
//! its peer address and the frontend CA on its frontend address, so a
//! frontend certificate can never speak Raft and a node certificate can
//! never call the frontend API.
//!
//! [`ensure`] lays the files out in one directory and creates only what is
//! missing, so re-running it keeps existing keys. Private keys are written
//! with mode 0600, through a temporary file and a rename.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::identity::Identity;

/// A certificate authority that can issue fleet certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority { .. }")
    }
}

/// A freshly issued certificate and its private key, both PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (secret).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued { key: <redacted> }")
    }
}

/// A PKI step failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused to build or parse something.
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl Authority {
    /// Generates a new self-signed CA named `common_name`. Returns the CA and
    /// its key in PEM (to be stored by the caller).
    pub fn generate(common_name: &str) -> Result<(Authority, String), PkiError> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok((
            Authority {
                issuer: Issuer::new(params, key),
                cert_pem,
            },
            key_pem,
        ))
    }

    /// Loads a CA from its certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Authority {
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate (PEM), which is what peers trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate naming `identity` (see [`crate::identity`]).
    pub fn issue(&self, identity: &Identity) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let name = identity.dns_name();
        let mut params = CertificateParams::new(vec![name.clone()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match identity {
            Identity::Witness => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Identity::Node(_) => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Identity::Operator | Identity::Frontend(_) => {
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            }
        };
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// File names inside a PKI directory.
pub mod files {
    /// The fleet CA certificate.
    pub const FLEET_CA: &str = "fleet-ca.pem";
    /// The fleet CA key.
    pub const FLEET_CA_KEY: &str = "fleet-ca.key";
    /// The frontend CA certificate.
    pub const FRONTEND_CA: &str = "frontend-ca.pem";
    /// The frontend CA key.
    pub const FRONTEND_CA_KEY: &str = "frontend-ca.key";
    /// The operator's certificate.
    pub const OPERATOR: &str = "operator.pem";
    /// The operator's key.
    pub const OPERATOR_KEY: &str = "operator.key";

    /// Node `id`'s certificate and key.
    pub fn node(id: u64) -> (String, String) {
        (format!("node-{id}.pem"), format!("node-{id}.key"))
    }

    /// Frontend `name`'s certificate and key.
    pub fn frontend(name: &str) -> (String, String) {
        (
            format!("frontend-{name}.pem"),
            format!("frontend-{name}.key"),
        )
    }
}

/// What [`ensure`] should make.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Node ids that need a certificate.
    pub nodes: Vec<u64>,
    /// Frontend names that need a certificate.
    pub frontends: Vec<String>,
}

/// Creates in `dir` every CA and certificate of `plan` that does not exist
/// yet; returns the files it wrote. Existing files are kept.
pub fn ensure(dir: &Path, plan: &Plan) -> Result<Vec<PathBuf>, PkiError> {
    create_dir(dir)?;
    let mut written = Vec::new();
    let fleet_ca = ensure_ca(
        dir,
        files::FLEET_CA,
        files::FLEET_CA_KEY,
        "vault fleet CA",
        &mut written,
    )?;
    let front_ca = ensure_ca(
        dir,
        files::FRONTEND_CA,
        files::FRONTEND_CA_KEY,
        "vault frontend CA",
        &mut written,
    )?;
    let mut wanted: Vec<(&Authority, Identity, String, String)> = vec![(
        &fleet_ca,
        Identity::Operator,
        files::OPERATOR.into(),
        files::OPERATOR_KEY.into(),
    )];
    for &id in &plan.nodes {
        let (c, k) = files::node(id);
        wanted.push((&fleet_ca, Identity::Node(id), c, k));
    }
    for name in &plan.frontends {
        let (c, k) = files::frontend(name);
        wanted.push((&front_ca, Identity::Frontend(name.clone()), c, k));
    }
    for (ca, identity, cert, key) in wanted {
        if dir.join(&cert).exists() && dir.join(&key).exists() {
            continue;
        }
        let issued = ca.issue(&identity)?;
        write_file(&dir.join(&key), issued.key_pem.as_bytes(), 0o600)?;
        write_file(&dir.join(&cert), issued.cert_pem.as_bytes(), 0o644)?;
        written.push(dir.join(cert));
    }
    Ok(written)
}

fn ensure_ca(
    dir: &Path,
    cert: &str,
    key: &str,
    name: &str,
    written: &mut Vec<PathBuf>,
) -> Result<Authority, PkiError> {
    let (cert_path, key_path) = (dir.join(cert), dir.join(key));
    if cert_path.exists() && key_path.exists() {
        return Authority::load(&read(&cert_path)?, &read(&key_path)?);
    }
    let (ca, key_pem) = Authority::generate(name)?;
    write_file(&key_path, key_pem.as_bytes(), 0o600)?;
    write_file(&cert_path, ca.cert_pem().as_bytes(), 0o644)?;
    written.push(cert_path);
    Ok(ca)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `bytes` to `path` with exactly `mode` through a synced
/// temporary file and a rename, so a crash never leaves a half-written key.
///
/// The temporary file has a name of its own (the target's, the pid and
/// random bytes) and is created exclusively, so a stale file or a symlink
/// planted at a predictable name is neither reused nor followed; its mode
/// is set on the open file, so neither the umask nor a stale file decides
/// it; the rename replaces whatever is at `path` (a symlink included)
/// rather than writing through it.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no file name",
        ))
    })?;
    let mut salt = [0u8; 8];
    rand_bytes(&mut salt);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}.{:016x}.tmp",
        std::process::id(),
        u64::from_le_bytes(salt)
    ));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is.
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io)
}

/// Random bytes for temporary names (not secrets): the OS's generator.
fn rand_bytes(out: &mut [u8]) {
    use std::io::Read;
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(out))
        .is_err()
    {
        // Uniqueness then rests on the pid and the time.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        for (o, b) in out.iter_mut().zip(t.to_le_bytes()) {
            *o = b;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::identity::{identity_of, identity_of_known};

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_stale_temporary_file_does_not_lend_its_mode_to_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("node.key");
        // Left behind by a crash (or planted), world-readable.
        let stale = key.with_extension("tmp");
        fs::write(&stale, b"old").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();
        write_file(&key, b"secret key", 0o600).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"secret key");
        assert_eq!(mode_of(&key), 0o600, "the key took the stale file's mode");
    }

    #[test]
    fn a_symlink_in_the_way_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"victim's data").unwrap();
        let key = dir.path().join("node.key");
        // A link where the temporary file would go, and one at the target.
        std::os::unix::fs::symlink(&victim, key.with_extension("tmp")).unwrap();
        write_file(&key, b"secret key", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"victim's data");
        let linked = dir.path().join("linked.key");
        std::os::unix::fs::symlink(&victim, &linked).unwrap();
        write_file(&linked, b"another key", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"victim's data");
        assert!(
            !fs::symlink_metadata(&linked)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&linked).unwrap(), b"another key");
        assert_eq!(mode_of(&linked), 0o600);
    }

    #[test]
    fn the_mode_is_exact_whatever_the_umask_and_nothing_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("ca.pem");
        write_file(&public, b"cert", 0o644).unwrap();
        assert_eq!(mode_of(&public), 0o644);
        write_file(&public, b"cert 2", 0o600).unwrap();
        assert_eq!(
            mode_of(&public),
            0o600,
            "an existing file's mode is replaced"
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ca.pem")]);
    }

    fn der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64_decode(&body)
    }

    // A small base64 decoder keeps this test free of another dependency.
    fn base64_decode(s: &str) -> Vec<u8> {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = T.iter().position(|&t| t == c).expect("base64") as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }

    #[test]
    fn ensure_issues_named_certs_once_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan {
            nodes: vec![1, 2],
            frontends: vec!["local".into()],
        };
        let first = ensure(dir.path(), &plan).unwrap();
        assert_eq!(first.len(), 2 + 1 + 2 + 1);
        let again = ensure(dir.path(), &plan).unwrap();
        assert!(again.is_empty(), "a second run must keep what exists");

        let node2 = fs::read_to_string(dir.path().join("node-2.pem")).unwrap();
        assert_eq!(identity_of(&der(&node2)).unwrap(), Identity::Node(2));
        let op = fs::read_to_string(dir.path().join(files::OPERATOR)).unwrap();
        assert_eq!(identity_of(&der(&op)).unwrap(), Identity::Operator);
        let fe = fs::read_to_string(dir.path().join("frontend-local.pem")).unwrap();
        assert_eq!(
            identity_of(&der(&fe)).unwrap(),
            Identity::Frontend("local".into())
        );
        for key in ["fleet-ca.key", "node-1.key", "operator.key"] {
            let mode = fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let ca = fs::read_to_string(dir.path().join(files::FLEET_CA)).unwrap();
        assert_eq!(
            identity_of(&der(&ca)),
            Err(crate::identity::IdentityError::NoIdentity)
        );
    }

    #[test]
    fn remembered_identities_are_those_of_the_same_bytes() {
        let (ca, _) = Authority::generate("t").unwrap();
        let (other_ca, _) = Authority::generate("t").unwrap();
        let ids: Vec<Identity> = (1..=40)
            .map(Identity::Node)
            .chain([Identity::Operator, Identity::Frontend("fe".into())])
            .collect();
        // Certificates of one layout differ in a few bytes only; more of
        // them than are remembered, issued by two authorities, asked twice
        // in turn: every answer is the one parsing gives.
        let certs: Vec<(Vec<u8>, Identity)> = ids
            .iter()
            .flat_map(|id| {
                [&ca, &other_ca].map(|a| (der(&a.issue(id).unwrap().cert_pem), id.clone()))
            })
            .collect();
        for _ in 0..2 {
            for (cert, id) in &certs {
                assert_eq!(identity_of_known(cert).as_ref(), Ok(id));
            }
        }
        let first = &certs[0].0;
        for (cert, id) in certs.iter().rev().take(5) {
            assert_eq!(identity_of_known(cert).as_ref(), Ok(id));
            assert_eq!(identity_of_known(first), Ok(Identity::Node(1)));
        }
        // A certificate that names nobody is refused each time.
        let ca_der = der(ca.cert_pem());
        for _ in 0..2 {
            assert_eq!(
                identity_of_known(&ca_der),
                Err(crate::identity::IdentityError::NoIdentity)
            );
        }
    }

    #[test]
    fn debug_output_hides_keys() {
        let (ca, key) = Authority::generate("t").unwrap();
        let issued = ca.issue(&Identity::Operator).unwrap();
        let shown = format!("{issued:?}{ca:?}");
        assert!(!shown.contains("PRIVATE"));
        assert!(key.contains("PRIVATE KEY"));
    }
}
