//! `vaultctl pki …`: the fleet's certificates, issued with the CA keys on
//! the operator token (`bkv-fleet-ca`, `bkv-frontend-ca`).
//!
//! No fleet private key is a file: node and operator TLS keys live in their
//! tokens (their certificates name the public keys exported next to them)
//! and both CA keys live in the operator token, so every command here runs
//! with that token (a SoftHSM operator token is used by re-running this
//! command in its directory, as `vaultctl cluster` does).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use vault_fleet::config::Fleet;
use vault_fleet::identity::Identity;
use vault_fleet::pki::{self, CaKey, CaKeys, RemoteKey, files};
use vault_hsm::{KeyRole, TokenKey};

use crate::cluster_cmd::{FleetArgs, in_operator_token};

/// `vaultctl pki …`
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the fleet CA and frontend CA certificates (their keys are on
    /// the operator token, generated there if missing), a certificate for
    /// every node of the fleet file and for the operator (for the TLS
    /// public keys exported from their tokens: `pki/node-N.pub.pem`,
    /// `pki/operator.pub.pem`) and frontend client certificates, in the
    /// directory of the fleet file's `tls.fleet_ca`. Current files are
    /// kept, so this also issues certificates for nodes added later; a
    /// certificate whose key or CA changed is issued anew; key files of
    /// the older layout (`fleet-ca.key`, `node-N.key`, …) are deleted.
    Init {
        #[command(flatten)]
        fleet: FleetArgs,
        /// A frontend to issue a client certificate for (repeatable).
        #[arg(long = "frontend", default_value = "local")]
        frontends: Vec<String>,
        /// Re-issue a node's or the operator's certificate whose exported
        /// public key changed (its token was made again). Without it a
        /// changed key is refused: a `.pub.pem` swapped on its way must not
        /// get the node's name. Compare the printed fingerprint with
        /// `vaultctl hsm tls-key` on the node first.
        #[arg(long)]
        replace: bool,
        /// Make new CA keys on the operator token although CA certificates
        /// exist (a new PKI: every certificate is issued anew). Without it,
        /// an operator token lacking this fleet's CA keys is an error (the
        /// wrong token, most likely).
        #[arg(long)]
        new_ca: bool,
    },
    /// Issue one certificate: for a public key whose private half is
    /// elsewhere (`--public-key`, any identity), or with a new key file
    /// (`--new-key`, frontends only: fleet identities keep their keys in
    /// tokens).
    Issue {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Whom it names: `node-N`, `operator` or `frontend-NAME`.
        #[arg(long, value_parser = parse_identity)]
        identity: Identity,
        /// The public key to certify (PEM SubjectPublicKeyInfo, e.g. from
        /// `vaultctl hsm tls-key --out`).
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "new_key",
            required_unless_present = "new_key"
        )]
        public_key: Option<PathBuf>,
        /// Generate a key pair and write its private key here (mode 600).
        #[arg(long, value_name = "FILE")]
        new_key: Option<PathBuf>,
        /// Where to write the certificate (PEM).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn parse_identity(s: &str) -> Result<Identity, String> {
    let named = match s {
        "operator" => Some(Identity::Operator),
        _ => s
            .strip_prefix("node-")
            .and_then(|n| n.parse::<u64>().ok())
            .map(Identity::Node)
            .or_else(|| {
                s.strip_prefix("frontend-")
                    .map(|n| Identity::Frontend(n.to_owned()))
            }),
    };
    // Exactly the names certificates carry: what the nodes' caller check
    // parses back (lowercase, no leading zeros or signs).
    let canonical = |id: &Identity| match id {
        Identity::Node(n) => format!("node-{n}"),
        Identity::Frontend(f) => format!("frontend-{f}"),
        Identity::Operator => "operator".to_owned(),
        Identity::Witness => String::new(),
    };
    named
        .filter(|id| {
            canonical(id) == s
                && !matches!(id, Identity::Node(0))
                && Identity::from_dns_name(&id.dns_name()).as_ref() == Some(id)
        })
        .ok_or_else(|| {
            format!("{s:?} is not an identity: use node-N, operator or frontend-NAME (lowercase letters, digits, '-')")
        })
}

impl PkiCommand {
    fn fleet_args(&self) -> &FleetArgs {
        match self {
            PkiCommand::Init { fleet, .. } | PkiCommand::Issue { fleet, .. } => fleet,
        }
    }
}

/// Runs a `pki` command.
pub fn run_pki(cmd: PkiCommand) -> anyhow::Result<ExitCode> {
    let fleet = cmd.fleet_args().load()?;
    if let Some(code) = in_operator_token(&fleet)? {
        return Ok(code);
    }
    match cmd {
        PkiCommand::Init {
            frontends,
            replace,
            new_ca,
            ..
        } => issue_certificates(&fleet, frontends, replace, new_ca)?,
        PkiCommand::Issue {
            identity,
            public_key,
            new_key,
            out,
            ..
        } => issue_one(&fleet, &identity, public_key, new_key, &out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the operator token's key of `role` (this process must use the
/// token's SoftHSM directory: [`in_operator_token`]). With `ensure`, a key
/// the token lacks is generated there first.
pub(crate) fn operator_key(
    fleet: &Fleet,
    role: KeyRole<'_>,
    ensure: bool,
) -> anyhow::Result<TokenKey> {
    let token = &fleet.tls.operator.token;
    let module = match &token.module {
        vault_fleet::config::HsmModule::SoftHsm => vault_hsm::softhsm::find_module()?,
        vault_fleet::config::HsmModule::Path(p) => p.clone(),
    };
    let pin = vault_hsm::read_pin_file(&token.pin_file)?;
    if ensure && vault_hsm::provision::ensure_signing_key(&module, &token.token_label, &pin, role)?
    {
        eprintln!(
            "generated the key {:?} on the operator token {:?}",
            role.label(),
            token.token_label
        );
    }
    TokenKey::open_role(&module, &token.token_label, &pin, role)
        .with_context(|| format!("open the operator token {:?}", token.token_label))
}

/// A CA key on the operator token, as the PKI signs with it.
struct CaOnToken(TokenKey, Vec<u8>);

impl RemoteKey for CaOnToken {
    fn public_point(&self) -> &[u8] {
        &self.1
    }

    fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.0.sign_der(message).map_err(|e| e.to_string())
    }
}

/// This fleet's two CA keys on the operator token. They are made there
/// when the fleet has no CA certificate yet, when a fleet of the older
/// layout still has its CA key file (moving to the token), or with
/// `new_ca`; otherwise a token without them is the wrong token.
fn ca_keys(fleet: &Fleet, new_ca: bool) -> anyhow::Result<CaKeys> {
    let fleet_id = fleet.fleet_id.as_str();
    let dir = pki_dir(fleet)?;
    let may_make = new_ca
        || !fleet.tls.fleet_ca.exists()
        || files::LEGACY_KEYS.iter().any(|f| dir.join(f).exists());
    let open = |role| -> anyhow::Result<CaKey> {
        let key = match operator_key(fleet, role, may_make) {
            Ok(key) => key,
            Err(e) if !may_make => {
                return Err(e.context(format!(
                    "{} exists but the operator token has no CA key for fleet {fleet_id:?}: is this the right token? (`--new-ca` starts a new PKI)",
                    fleet.tls.fleet_ca.display()
                )));
            }
            Err(e) => return Err(e),
        };
        let point = key.public_key().0.clone();
        Ok(CaKey::Remote(Arc::new(CaOnToken(key, point))))
    };
    Ok(CaKeys {
        fleet: open(KeyRole::FleetCa(fleet_id))?,
        frontend: open(KeyRole::FrontendCa(fleet_id))?,
    })
}

fn pki_dir(f: &Fleet) -> anyhow::Result<PathBuf> {
    Ok(f.tls
        .fleet_ca
        .parent()
        .ok_or_else(|| anyhow!("tls.fleet_ca has no directory"))?
        .to_owned())
}

/// Issues every certificate `f` names (CAs, nodes, operator) and one per
/// frontend, in the directory of `tls.fleet_ca`, keeping what is current;
/// checks that the fleet file's paths name what was issued.
fn issue_certificates(
    f: &Fleet,
    frontends: Vec<String>,
    replace: bool,
    new_ca: bool,
) -> anyhow::Result<()> {
    let dir = pki_dir(f)?;
    let plan = pki::Plan {
        nodes: f.nodes.keys().copied().collect(),
        frontends,
    };
    let outcome = pki::ensure(&dir, &plan, &ca_keys(f, new_ca)?, replace)?;
    for expected in [&f.tls.frontend_ca, &f.tls.operator.cert] {
        if !expected.exists() {
            bail!(
                "{} does not exist: the fleet file's tls paths must name files in {} as `vaultctl pki init` lays them out",
                expected.display(),
                dir.display()
            );
        }
    }
    for n in f.nodes.values() {
        if !n.tls.cert.exists() {
            bail!(
                "node {}: {} does not exist (expected in {})",
                n.id,
                n.tls.cert.display(),
                dir.display()
            );
        }
    }
    if outcome.written.is_empty() {
        eprintln!("all certificates are current in {}", dir.display());
    }
    for w in outcome.written {
        eprintln!("wrote {}", w.display());
    }
    for (who, fp) in outcome.certified {
        eprintln!("certified {who}'s token key, fingerprint sha256:{fp}");
    }
    for r in outcome.removed {
        eprintln!(
            "deleted {} (a private key file of the older layout; the key is in a token now)",
            r.display()
        );
    }
    Ok(())
}

fn issue_one(
    f: &Fleet,
    identity: &Identity,
    public_key: Option<PathBuf>,
    new_key: Option<PathBuf>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let dir = pki_dir(f)?;
    let fleet_id = f.fleet_id.as_str();
    let (cert_file, role) = match identity {
        Identity::Frontend(_) => (&f.tls.frontend_ca, KeyRole::FrontendCa(fleet_id)),
        Identity::Node(_) | Identity::Operator => (&f.tls.fleet_ca, KeyRole::FleetCa(fleet_id)),
        Identity::Witness => bail!("the witness has a CA of its own (`vaultctl fleet witness`)"),
    };
    let key = operator_key(f, role, false)?;
    let point = key.public_key().0.clone();
    let cert_pem = std::fs::read_to_string(cert_file).with_context(|| {
        format!(
            "read {} (make it with `vaultctl pki init`)",
            cert_file.display()
        )
    })?;
    let ca = pki::Authority::with_key(&cert_pem, CaKey::Remote(Arc::new(CaOnToken(key, point))))?;
    match (public_key, new_key) {
        (Some(path), None) => {
            let spki = pki::read_public_key(&path)?;
            let pem = ca.issue_for_key(identity, &spki)?;
            pki::write_file(out, pem.as_bytes(), 0o644)?;
            eprintln!(
                "certified {identity}'s key, fingerprint sha256:{}",
                pki::fingerprint(&spki)
            );
        }
        (None, Some(key_out)) => {
            if !matches!(identity, Identity::Frontend(_)) {
                bail!(
                    "{identity}'s key belongs in a token: export its public key (`vaultctl hsm tls-key --out`) and pass --public-key"
                );
            }
            let issued = ca.issue(identity)?;
            pki::write_file(&key_out, issued.key_pem.as_bytes(), 0o600)?;
            pki::write_file(out, issued.cert_pem.as_bytes(), 0o644)?;
        }
        _ => bail!("give exactly one of --public-key and --new-key"),
    }
    eprintln!(
        "issued a certificate for {identity} in {} (CA in {})",
        out.display(),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_the_names_certificates_carry_and_nothing_looser() {
        assert_eq!(parse_identity("node-7"), Ok(Identity::Node(7)));
        assert_eq!(parse_identity("operator"), Ok(Identity::Operator));
        assert_eq!(
            parse_identity("frontend-web-1"),
            Ok(Identity::Frontend("web-1".into()))
        );
        for bad in [
            "node-0",
            "node-01",
            "node-+1",
            "node-",
            "node-x",
            "frontend-",
            "frontend-Web1",
            "frontend-a.b",
            "witness",
            "Operator",
            "",
        ] {
            assert!(parse_identity(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
