//! Issuing a fleet's certificates (rcgen, ECDSA P-256).
//!
//! Two authorities: the **fleet CA** issues node certificates (server and
//! client of the peer API) and the operator's certificate; the **frontend
//! CA** issues frontend client certificates. A node trusts the fleet CA on
//! its peer address and the frontend CA on its frontend address, so a
//! frontend certificate can never speak Raft and a node certificate can
//! never call the frontend API.
//!
//! Both CA keys live in the operator's token ([`CaKey::Remote`]: `vaultctl`
//! signs through PKCS#11), node and operator keys in their own tokens: no
//! fleet private key is a file, so a copy of a fleet directory can neither
//! be a node nor mint one. Only frontend keys are files (frontends are
//! outside the fleet's HSMs; a frontend is an adversary the protocol
//! already withstands).
//!
//! [`ensure`] lays the files out in one directory and creates only what is
//! missing or stale, so re-running it keeps what is current. Key files are
//! written with mode 0600, through a temporary file and a rename.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm, SigningKey,
};

use crate::identity::Identity;

/// A P-256 signing key held elsewhere (an HSM): what a CA needs of it.
pub trait RemoteKey: Send + Sync {
    /// The public key, SEC1 uncompressed (65 bytes).
    fn public_point(&self) -> &[u8];
    /// ECDSA P-256 with SHA-256 over `message`, DER-encoded.
    fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// The key a CA signs with.
#[derive(Clone)]
pub enum CaKey {
    /// An rcgen key pair in memory (the witness's own CA, unit tests).
    File(Arc<KeyPair>),
    /// A key that never leaves its token.
    Remote(Arc<dyn RemoteKey>),
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaKey::File(_) => "CaKey::File(..)",
            CaKey::Remote(_) => "CaKey::Remote(..)",
        })
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::File(k) => k.der_bytes(),
            CaKey::Remote(k) => k.public_point(),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            CaKey::File(k) => k.algorithm(),
            CaKey::Remote(_) => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::File(k) => k.sign(msg),
            CaKey::Remote(k) => k.sign_der(msg).map_err(|e| {
                tracing::error!(error = %e, "the CA key refused to sign");
                rcgen::Error::RemoteKeyError
            }),
        }
    }
}

/// A certificate authority that can issue fleet certificates.
pub struct Authority {
    issuer: Issuer<'static, CaKey>,
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
    /// Generates a new self-signed CA named `common_name` with a key in
    /// memory. Returns the CA and its key in PEM (to be stored by the
    /// caller).
    pub fn generate(common_name: &str) -> Result<(Authority, String), PkiError> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        Ok((
            Authority::self_signed(common_name, CaKey::File(Arc::new(key)))?,
            key_pem,
        ))
    }

    /// A new self-signed CA certificate named `common_name` for `key`.
    pub fn self_signed(common_name: &str, key: CaKey) -> Result<Authority, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Authority {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// Loads a CA from its certificate and key file.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        Authority::with_key(cert_pem, CaKey::File(Arc::new(key)))
    }

    /// A CA from its certificate and the key it names.
    pub fn with_key(cert_pem: &str, key: CaKey) -> Result<Authority, PkiError> {
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

    /// Issues a certificate naming `identity` (see [`crate::identity`])
    /// for a fresh key pair, returned with it.
    pub fn issue(&self, identity: &Identity) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let cert = self.params(identity)?.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate naming `identity` for a public key whose
    /// private half is elsewhere (a node's or the operator's HSM):
    /// `spki_der` is its DER SubjectPublicKeyInfo. Returns the PEM.
    pub fn issue_for_key(&self, identity: &Identity, spki_der: &[u8]) -> Result<String, PkiError> {
        let public = rcgen::SubjectPublicKeyInfo::from_der(spki_der)?;
        Ok(self
            .params(identity)?
            .signed_by(&public, &self.issuer)?
            .pem())
    }

    fn params(&self, identity: &Identity) -> Result<CertificateParams, PkiError> {
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
        Ok(params)
    }
}

/// File names inside a PKI directory.
pub mod files {
    /// The fleet CA certificate (its key is `bkv-fleet-ca` on the operator
    /// token).
    pub const FLEET_CA: &str = "fleet-ca.pem";
    /// The frontend CA certificate (its key is `bkv-frontend-ca` on the
    /// operator token).
    pub const FRONTEND_CA: &str = "frontend-ca.pem";
    /// The operator's certificate.
    pub const OPERATOR: &str = "operator.pem";
    /// The operator's TLS public key, exported from its token (the
    /// private half never leaves it).
    pub const OPERATOR_PUBLIC: &str = "operator.pub.pem";
    /// Key files that fleets provisioned before keys moved into the HSMs
    /// had, and that [`super::ensure`] deletes.
    pub const LEGACY_KEYS: [&str; 3] = ["fleet-ca.key", "frontend-ca.key", "operator.key"];

    /// Node `id`'s certificate and its TLS public key, exported from its
    /// HSM (the private half never leaves it).
    pub fn node(id: u64) -> (String, String) {
        (format!("node-{id}.pem"), format!("node-{id}.pub.pem"))
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

/// The two CA keys (on the operator token).
#[derive(Debug, Clone)]
pub struct CaKeys {
    /// Signs node and operator certificates.
    pub fleet: CaKey,
    /// Signs frontend certificates.
    pub frontend: CaKey,
}

/// What [`ensure`] changed.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Certificates (and frontend keys) written.
    pub written: Vec<PathBuf>,
    /// Private key files of an older layout that were deleted.
    pub removed: Vec<PathBuf>,
    /// Each newly certified token key: whose, and the SHA-256 of its
    /// SubjectPublicKeyInfo (to compare with `vaultctl hsm tls-key` on the
    /// node, out of band).
    pub certified: Vec<(Identity, String)>,
}

/// The SHA-256 of a DER SubjectPublicKeyInfo, hex: a key's fingerprint.
pub fn fingerprint(spki_der: &[u8]) -> String {
    use sha2::Digest;
    hex_encode(&sha2::Sha256::digest(spki_der))
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates in `dir` every CA certificate and certificate of `plan` that is
/// missing or stale; returns what it wrote and removed.
///
/// A CA certificate is stale when it does not name the CA key on the
/// operator token (the token was made again); a node or operator
/// certificate when it does not name the public key exported next to it
/// (`node-N.pub.pem`, `operator.pub.pem`, from `vaultctl hsm tls-key`) or
/// was not signed by the current fleet CA; a frontend certificate when
/// the frontend CA did not sign it. Node and operator private keys are
/// never files; frontend certificates come with a key file (frontends are
/// outside the fleet's HSMs). Key files of the older layout
/// ([`files::LEGACY_KEYS`], `node-N.key`) are deleted: they are secrets
/// nothing reads any more.
///
/// With `replace` false, a current certificate (signed by the current CA)
/// that names another key than the exported one is an error rather than
/// re-issued: a `.pub.pem` swapped on its way from the node must not get
/// the node's name. Two identities with one key are always an error.
pub fn ensure(dir: &Path, plan: &Plan, cas: &CaKeys, replace: bool) -> Result<Outcome, PkiError> {
    create_dir(dir)?;
    let mut out = Outcome::default();
    let fleet_ca = ensure_ca(dir, files::FLEET_CA, "vault fleet CA", &cas.fleet, &mut out)?;
    let front_ca = ensure_ca(
        dir,
        files::FRONTEND_CA,
        "vault frontend CA",
        &cas.frontend,
        &mut out,
    )?;
    let mut hsm_keyed = vec![(
        Identity::Operator,
        files::OPERATOR.to_owned(),
        files::OPERATOR_PUBLIC.to_owned(),
    )];
    for &id in &plan.nodes {
        let (c, k) = files::node(id);
        hsm_keyed.push((Identity::Node(id), c, k));
    }
    let mut seen: Vec<(Vec<u8>, Identity)> = Vec::new();
    for (identity, cert, public) in hsm_keyed {
        let spki = read_public_key(&dir.join(&public))?;
        if let Some((_, other)) = seen.iter().find(|(k, _)| *k == spki) {
            return Err(refused(
                &dir.join(&public),
                format!(
                    "{identity} and {other} would share one key (fingerprint {}): each token exports its own; copy the right file",
                    fingerprint(&spki)
                ),
            ));
        }
        seen.push((spki.clone(), identity.clone()));
        if let Ok(existing) = fs::read(dir.join(&cert))
            && issued_by(&existing, cas.fleet.der_bytes())
        {
            if cert_names_key(&existing, &spki) {
                continue;
            }
            if !replace {
                return Err(refused(
                    &dir.join(&public),
                    format!(
                        "{} certifies {identity} for another key than this file's (fingerprint {}); if {identity}'s token was made again, compare the fingerprint with `vaultctl hsm tls-key` on it and pass --replace",
                        cert,
                        fingerprint(&spki)
                    ),
                ));
            }
        }
        let pem = fleet_ca.issue_for_key(&identity, &spki)?;
        write_file(&dir.join(&cert), pem.as_bytes(), 0o644)?;
        out.written.push(dir.join(cert));
        out.certified.push((identity, fingerprint(&spki)));
    }
    for name in &plan.frontends {
        let (cert, key) = files::frontend(name);
        if dir.join(&key).exists()
            && let Ok(existing) = fs::read(dir.join(&cert))
            && issued_by(&existing, cas.frontend.der_bytes())
        {
            continue;
        }
        let issued = front_ca.issue(&Identity::Frontend(name.clone()))?;
        write_file(&dir.join(&key), issued.key_pem.as_bytes(), 0o600)?;
        write_file(&dir.join(&cert), issued.cert_pem.as_bytes(), 0o644)?;
        out.written.push(dir.join(cert));
    }
    // Node keys of the older layout, of every node ever (removed ones too).
    let node_keys: Vec<String> = fs::read_dir(dir)
        .map_err(|source| PkiError::Io {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("node-")
                .and_then(|r| r.strip_suffix(".key"))
                .is_some_and(|id| id.parse::<u64>().is_ok())
        })
        .collect();
    let legacy = files::LEGACY_KEYS
        .iter()
        .map(|f| (*f).to_owned())
        .chain(node_keys);
    for name in legacy {
        let path = dir.join(name);
        if path.exists() {
            fs::remove_file(&path).map_err(|source| PkiError::Io {
                path: path.clone(),
                source,
            })?;
            out.removed.push(path);
        }
    }
    Ok(out)
}

/// A new P-256 key pair in memory: its private key (PEM, secret) and its
/// DER SubjectPublicKeyInfo. For holders outside the fleet's tokens (and
/// tests that speak for a fleet identity with a certificate of their own).
pub fn new_key_pair() -> Result<(String, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.subject_public_key_info()))
}

fn refused(path: &Path, why: String) -> PkiError {
    PkiError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    }
}

/// Whether the PEM certificate `cert_pem` carries a valid ECDSA P-256
/// SHA-256 signature by the key whose SEC1 point is `ca_point`.
pub fn issued_by(cert_pem: &[u8], ca_point: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Some(der) = pem_body(cert_pem) else {
        return false;
    };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return false;
    };
    let (Ok(key), Ok(sig)) = (
        p256::ecdsa::VerifyingKey::from_sec1_bytes(ca_point),
        p256::ecdsa::DerSignature::try_from(cert.signature_value.data.as_ref()),
    ) else {
        return false;
    };
    key.verify(cert.tbs_certificate.as_ref(), &sig).is_ok()
}

/// The DER inside a one-object PEM text.
fn pem_body(pem: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64_decode(&body)
}

/// The DER SubjectPublicKeyInfo in a `PUBLIC KEY` PEM file.
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, PkiError> {
    let text = fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(
            source.kind(),
            format!(
                "{source} (the TLS public key exported from the token: `vaultctl hsm tls-key --out {}`, which `vaultctl fleet provision` runs)",
                path.display()
            ),
        ),
    })?;
    pem_body(text.as_bytes())
        .filter(|_| text.contains("-----BEGIN PUBLIC KEY-----"))
        .ok_or_else(|| PkiError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a PEM public key"),
        })
}

/// Writes `spki_der` as a `PUBLIC KEY` PEM file at `path` (mode 644).
pub fn write_public_key(path: &Path, spki_der: &[u8]) -> Result<(), PkiError> {
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    let b64 = base64_encode(spki_der);
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    write_file(path, pem.as_bytes(), 0o644)
}

/// Whether the PEM certificate `cert_pem` is for the public key `spki`.
fn cert_names_key(cert_pem: &[u8], spki: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    pem_body(cert_pem)
        .and_then(|der| {
            X509Certificate::from_der(&der)
                .ok()
                .map(|(_, c)| c.public_key().raw == spki)
        })
        .unwrap_or(false)
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
}

fn ensure_ca(
    dir: &Path,
    cert: &str,
    name: &str,
    key: &CaKey,
    out: &mut Outcome,
) -> Result<Authority, PkiError> {
    let cert_path = dir.join(cert);
    if let Ok(existing) = fs::read(&cert_path)
        && cert_names_key(&existing, &key.subject_public_key_info())
    {
        return Authority::with_key(&String::from_utf8_lossy(&existing), key.clone());
    }
    let ca = Authority::self_signed(name, key.clone())?;
    write_file(&cert_path, ca.cert_pem().as_bytes(), 0o644)?;
    out.written.push(cert_path);
    Ok(ca)
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
        pem_body(pem.as_bytes()).expect("PEM")
    }

    /// A P-256 public key as the token would export it (SPKI DER).
    fn exported_key(dir: &Path, file: &str) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        use rcgen::PublicKeyData;
        let spki = key.subject_public_key_info();
        write_public_key(&dir.join(file), &spki).unwrap();
        spki
    }

    fn ca_key() -> CaKey {
        CaKey::File(Arc::new(KeyPair::generate().unwrap()))
    }

    #[test]
    fn ensure_issues_named_certs_for_the_exported_keys_and_no_fleet_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan {
            nodes: vec![1, 2],
            frontends: vec!["local".into()],
        };
        let mut cas = CaKeys {
            fleet: ca_key(),
            frontend: ca_key(),
        };
        // Without the exported public keys there is nothing to certify.
        assert!(ensure(dir.path(), &plan, &cas, false).is_err());
        let op_key = exported_key(dir.path(), files::OPERATOR_PUBLIC);
        exported_key(dir.path(), "node-1.pub.pem");
        let node2_key = exported_key(dir.path(), "node-2.pub.pem");
        // Key files of the older layout are secrets nothing reads: gone.
        for legacy in ["fleet-ca.key", "node-1.key", "operator.key"] {
            fs::write(dir.path().join(legacy), "old").unwrap();
        }
        let first = ensure(dir.path(), &plan, &cas, false).unwrap();
        // The two CA certificates were made by the failed run and are kept.
        assert_eq!(first.written.len(), 1 + 2 + 1);
        assert_eq!(first.removed.len(), 3);
        let again = ensure(dir.path(), &plan, &cas, false).unwrap();
        assert!(
            again.written.is_empty() && again.removed.is_empty(),
            "a second run must keep what exists"
        );

        let node2 = fs::read_to_string(dir.path().join("node-2.pem")).unwrap();
        assert_eq!(identity_of(&der(&node2)).unwrap(), Identity::Node(2));
        assert!(cert_names_key(node2.as_bytes(), &node2_key));
        assert!(issued_by(node2.as_bytes(), cas.fleet.der_bytes()));
        assert!(!issued_by(node2.as_bytes(), cas.frontend.der_bytes()));
        let op = fs::read_to_string(dir.path().join(files::OPERATOR)).unwrap();
        assert_eq!(identity_of(&der(&op)).unwrap(), Identity::Operator);
        assert!(cert_names_key(op.as_bytes(), &op_key));
        let fe = fs::read_to_string(dir.path().join("frontend-local.pem")).unwrap();
        assert_eq!(
            identity_of(&der(&fe)).unwrap(),
            Identity::Frontend("local".into())
        );
        assert!(issued_by(fe.as_bytes(), cas.frontend.der_bytes()));
        assert_eq!(mode_of(&dir.path().join("frontend-local.key")), 0o600);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".key"))
            .collect();
        left.sort();
        assert_eq!(left, ["frontend-local.key"], "the only key file left");

        // A token made again (a new key): its certificate is issued anew,
        // but only when the operator says so (a swapped file must not get
        // node 2's name by a re-run).
        let renewed = exported_key(dir.path(), "node-2.pub.pem");
        let err = ensure(dir.path(), &plan, &cas, false).unwrap_err();
        assert!(err.to_string().contains("--replace"), "{err}");
        assert!(cert_names_key(
            fs::read_to_string(dir.path().join("node-2.pem"))
                .unwrap()
                .as_bytes(),
            &node2_key
        ));
        let third = ensure(dir.path(), &plan, &cas, true).unwrap();
        assert_eq!(third.certified.len(), 1);
        assert_eq!(third.certified[0].1, fingerprint(&renewed));
        assert_eq!(third.written, vec![dir.path().join("node-2.pem")]);
        let node2 = fs::read_to_string(dir.path().join("node-2.pem")).unwrap();
        assert!(cert_names_key(node2.as_bytes(), &renewed));
        let ca = fs::read_to_string(dir.path().join(files::FLEET_CA)).unwrap();
        assert_eq!(
            identity_of(&der(&ca)),
            Err(crate::identity::IdentityError::NoIdentity)
        );

        // One key exported for two nodes (a copy mistake) is refused.
        fs::copy(
            dir.path().join("node-2.pub.pem"),
            dir.path().join("node-1.pub.pem"),
        )
        .unwrap();
        let err = ensure(dir.path(), &plan, &cas, true).unwrap_err();
        assert!(err.to_string().contains("share one key"), "{err}");
        exported_key(dir.path(), "node-1.pub.pem");
        ensure(dir.path(), &plan, &cas, true).unwrap();

        // An operator token made again (new CA keys): every certificate the
        // old CA signed is issued anew, under a new CA certificate.
        cas.fleet = ca_key();
        let fourth = ensure(dir.path(), &plan, &cas, false).unwrap();
        let mut names: Vec<String> = fourth
            .written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["fleet-ca.pem", "node-1.pem", "node-2.pem", "operator.pem"]
        );
        let node1 = fs::read_to_string(dir.path().join("node-1.pem")).unwrap();
        assert!(issued_by(node1.as_bytes(), cas.fleet.der_bytes()));
    }

    #[test]
    fn a_remote_ca_key_signs_certificates_that_verify() {
        struct Remote(p256::ecdsa::SigningKey, Vec<u8>);
        impl RemoteKey for Remote {
            fn public_point(&self) -> &[u8] {
                &self.1
            }
            fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, String> {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::Signature = self.0.sign(message);
                Ok(sig.to_der().as_bytes().to_vec())
            }
        }
        let sk = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let point = sk
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let key = CaKey::Remote(Arc::new(Remote(sk, point.clone())));
        let ca = Authority::self_signed("remote", key.clone()).unwrap();
        assert!(issued_by(ca.cert_pem().as_bytes(), &point));
        let issued = ca.issue(&Identity::Node(3)).unwrap();
        assert!(issued_by(issued.cert_pem.as_bytes(), &point));
        let again = Authority::with_key(ca.cert_pem(), key).unwrap();
        let other = again.issue(&Identity::Operator).unwrap();
        assert!(issued_by(other.cert_pem.as_bytes(), &point));
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
