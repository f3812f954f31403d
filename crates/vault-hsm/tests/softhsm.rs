//! The HSM conformance suite, run against SoftHSM2 through the real PKCS#11
//! module, plus the ceremony and the error cases of opening an HSM.
//!
//! The binary re-runs itself with `SOFTHSM2_CONF` pointing at a private,
//! temporary token directory (removed afterwards), provisions the tokens the
//! tests need, and runs every check as a named test. Without SoftHSM2 it
//! fails and says how to install it; it never skips.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};
use vault_hsm::ceremony::{self, CeremonyError, ImportOptions};
use vault_hsm::conformance::{self, CheckResult};
use vault_hsm::provision::{self, InitRequest, ProvisionError};
use vault_hsm::softhsm::{self, SoftHsmDir};
use vault_hsm::{
    Hsm, HsmConfig, HsmError, KeyRole, OpenError, PinSource, Pkcs11Hsm, SecretBytes, TokenKey,
};

const SO_PIN: &str = "so-pin-7f3a91";
const USER_PIN: &str = "user-pin-52c8e0";

fn main() -> ExitCode {
    softhsm::run_with_private_softhsm(run)
}

struct Tokens {
    module: PathBuf,
    pin_file: PathBuf,
    a: Arc<Pkcs11Hsm>,
    b: Arc<Pkcs11Hsm>,
}

fn secret(s: &str) -> SecretBytes {
    SecretBytes::new(s.as_bytes().to_vec())
}

fn config(module: &Path, label: &str, pin_file: &Path) -> HsmConfig {
    HsmConfig {
        module: module.to_owned(),
        token_label: label.to_owned(),
        pin: PinSource::File(pin_file.to_owned()),
        sessions: 4,
    }
}

fn init(module: &Path, label: &str, generate_kek: bool) -> Result<(), ProvisionError> {
    provision::init_token(&InitRequest {
        module,
        label,
        so_pin: &secret(SO_PIN),
        user_pin: &secret(USER_PIN),
        generate_kek,
    })
    .map(|_| ())
}

/// A founding token `a` with a KEK, and `b` that receives it by ceremony.
fn provision_tokens(dir: &SoftHsmDir) -> Result<Tokens, String> {
    use std::os::unix::fs::PermissionsExt;
    let module = softhsm::find_module().map_err(|e| e.to_string())?;
    eprintln!(
        "HSM conformance suite: PKCS#11 module {}, SoftHSM config {}",
        module.display(),
        dir.conf().display()
    );
    let pin_file = dir.root().join("user.pin");
    std::fs::write(&pin_file, USER_PIN).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    init(&module, "node-a", true).map_err(|e| format!("init node-a: {e}"))?;
    init(&module, "node-b", false).map_err(|e| format!("init node-b: {e}"))?;
    ceremony_between(&module, "node-a", "node-b", ImportOptions::default())
        .map_err(|e| format!("ceremony a -> b: {e}"))?;
    let open = |label| {
        Pkcs11Hsm::open(&config(&module, label, &pin_file))
            .map(Arc::new)
            .map_err(|e| format!("open {label}: {e}"))
    };
    Ok(Tokens {
        a: open("node-a")?,
        b: open("node-b")?,
        module,
        pin_file,
    })
}

fn ceremony_between(
    module: &Path,
    from: &str,
    to: &str,
    options: ImportOptions,
) -> Result<(), CeremonyError> {
    let transport = ceremony::export_transport_key(module, to)?;
    let wrapped =
        ceremony::wrap_keks_for(module, from, &secret(SO_PIN), &secret(USER_PIN), &transport)?;
    ceremony::import_keks(module, to, &secret(USER_PIN), &wrapped, options)?;
    Ok(())
}

fn trial(name: impl Into<String>, f: impl FnOnce() -> CheckResult + Send + 'static) -> Trial {
    Trial::test(name, move || f().map_err(Failed::from))
}

fn run(dir: &SoftHsmDir) -> ExitCode {
    let args = Arguments::from_args();
    let tokens = match provision_tokens(dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot set up the SoftHSM tokens: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut trials = Vec::new();
    for (which, hsm) in [("a", &tokens.a), ("b", &tokens.b)] {
        for (name, check) in conformance::single_hsm_checks::<Pkcs11Hsm>() {
            let hsm = Arc::clone(hsm);
            trials.push(trial(
                format!("conformance::node_{which}::{name}"),
                move || check(&hsm),
            ));
        }
    }
    let (a, b) = (Arc::clone(&tokens.a), Arc::clone(&tokens.b));
    trials.push(trial(
        "ceremony::b_unseals_what_a_sealed_and_back",
        move || conformance::cross_unseal(&*a, &*b),
    ));
    let a = Arc::clone(&tokens.a);
    trials.push(trial("concurrency::64_tasks_seal_and_unseal", move || {
        conformance::concurrent_seal_unseal(a, 64)
    }));
    let (a, b) = (Arc::clone(&tokens.a), Arc::clone(&tokens.b));
    trials.push(trial(
        "ceremony::received_kek_is_a_sensitive_terminal_copy",
        move || received_kek_attributes(&a, &b),
    ));
    let module = tokens.module.clone();
    trials.push(trial(
        "ceremony::kek_refuses_untrusted_wrapping_key",
        move || untrusted_wrap_refused(&module),
    ));
    let module = tokens.module.clone();
    trials.push(trial(
        "ceremony::wrapped_keks_only_open_at_their_recipient",
        move || wrong_recipient_refused(&module),
    ));
    let (module, pin_file) = (tokens.module.clone(), tokens.pin_file.clone());
    trials.push(trial("ceremony::rewrappable_copy_can_send_on", move || {
        rewrappable_chain(&module, &pin_file)
    }));
    let (module, pin_file) = (tokens.module.clone(), tokens.pin_file.clone());
    trials.push(trial("errors::wrong_pin_is_named", move || {
        wrong_pin(&module, &pin_file, dir_of(&pin_file))
    }));
    let pin_file = tokens.pin_file.clone();
    trials.push(trial("errors::missing_module_is_named", move || {
        missing_module(&pin_file)
    }));
    let (module, pin_file) = (tokens.module.clone(), tokens.pin_file.clone());
    trials.push(trial("errors::missing_token_label_is_named", move || {
        missing_label(&module, &pin_file)
    }));
    let (module, pin_file) = (tokens.module.clone(), tokens.pin_file.clone());
    trials.push(trial("errors::missing_pin_file_is_named", move || {
        missing_pin_file(&module, &pin_file)
    }));
    let module = tokens.module.clone();
    trials.push(trial(
        "errors::existing_label_is_not_overwritten",
        move || match init(&module, "node-a", true) {
            Err(ProvisionError::TokenExists { label }) if label == "node-a" => Ok(()),
            other => Err(format!("re-init of node-a gave {other:?}")),
        },
    ));
    let (module, pin_file) = (tokens.module.clone(), tokens.pin_file.clone());
    trials.push(trial(
        "keys::the_tls_key_signs_in_the_token_for_rustls",
        move || tls_key_signs(&module, &pin_file),
    ));
    let (module, pin_file) = (tokens.module.clone(), tokens.pin_file.clone());
    trials.push(trial(
        "keys::ca_keys_are_made_on_demand_and_sign",
        move || ca_keys(&module, &pin_file),
    ));
    let (module, pin_file) = (tokens.module.clone(), tokens.pin_file.clone());
    trials.push(trial(
        "checkpoint::round_trips_and_refuses_a_value_it_did_not_write",
        move || checkpoint_round_trip(&module, &pin_file),
    ));
    let (module, pin_file) = (tokens.module.clone(), tokens.pin_file.clone());
    trials.push(trial(
        "rotation::a_new_version_reaches_peers_and_destroying_the_old_shreds",
        move || kek_rotation(&module, &pin_file),
    ));
    let a = Arc::clone(&tokens.a);
    trials.push(trial("secrets::debug_output_is_redacted", move || {
        let shown = format!("{a:?}");
        if shown.contains(USER_PIN) {
            return Err(format!("Debug shows the PIN: {shown}"));
        }
        let plain = a
            .unseal(
                conformance::AAD,
                &a.seal(conformance::AAD, b"K-material")
                    .map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
        let shown = format!("{plain:?}");
        if shown.contains("K-material") {
            return Err(format!("Debug shows plaintext: {shown}"));
        }
        Ok(())
    }));
    libtest_mimic::run(&args, trials).exit_code()
}

fn dir_of(p: &Path) -> PathBuf {
    p.parent().map(Path::to_owned).unwrap_or_default()
}

fn received_kek_attributes(a: &Pkcs11Hsm, b: &Pkcs11Hsm) -> CheckResult {
    let ra = a.key_report().map_err(|e| e.to_string())?;
    let rb = b.key_report().map_err(|e| e.to_string())?;
    let kek = |r: &vault_hsm::KeyReport| r.keys.iter().find(|k| k.role == "kek").cloned();
    let (ka, kb) = (
        kek(&ra).ok_or("a has no KEK")?,
        kek(&rb).ok_or("b has no KEK")?,
    );
    if ka.check_value != kb.check_value {
        return Err(format!(
            "check values differ: {:?} vs {:?}",
            ka.check_value, kb.check_value
        ));
    }
    if ka.local != Some(true) || ka.extractable != Some(true) || ka.wrap_with_trusted != Some(true)
    {
        return Err(format!(
            "founding KEK should be local and wrappable under trusted keys only: {ka:?}"
        ));
    }
    if kb.sensitive != Some(true) || kb.extractable != Some(false) || kb.local != Some(false) {
        return Err(format!(
            "received KEK should be sensitive, unextractable, not local: {kb:?}"
        ));
    }
    if ra.token.serial == rb.token.serial {
        return Err("two tokens report one serial".into());
    }
    Ok(())
}

fn untrusted_wrap_refused(module: &Path) -> CheckResult {
    let transport = ceremony::export_transport_key(module, "node-b").map_err(|e| e.to_string())?;
    match ceremony::testing::wrap_under_untrusted_key(
        module,
        "node-a",
        &secret(USER_PIN),
        &transport,
    ) {
        Err(CeremonyError::Provision(ProvisionError::Device(d))) => {
            eprintln!("  untrusted wrap refused as expected: {d}");
            Ok(())
        }
        Err(other) => Err(format!("expected the token to refuse, got {other}")),
        Ok(_) => Err("the KEK was wrapped under a key the security officer never trusted".into()),
    }
}

// The security officer cannot log in while this process holds user sessions
// on a token, so every ceremony test founds its own tokens rather than
// sending from node-a, which the conformance checks keep open.
fn wrong_recipient_refused(module: &Path) -> CheckResult {
    init(module, "node-g", true).map_err(|e| e.to_string())?;
    init(module, "node-h", false).map_err(|e| e.to_string())?;
    let transport = ceremony::export_transport_key(module, "node-h").map_err(|e| e.to_string())?;
    let wrapped = ceremony::wrap_keks_for(
        module,
        "node-g",
        &secret(SO_PIN),
        &secret(USER_PIN),
        &transport,
    )
    .map_err(|e| e.to_string())?;
    match ceremony::import_keks(
        module,
        "node-g",
        &secret(USER_PIN),
        &wrapped,
        ImportOptions::default(),
    ) {
        Err(CeremonyError::WrongRecipient { .. }) => {}
        other => return Err(format!("import at the wrong token gave {other:?}")),
    }
    match ceremony::import_keks(
        module,
        "node-h",
        &secret(USER_PIN),
        &wrapped,
        ImportOptions::default(),
    ) {
        Ok(added) if added.len() == 1 => {}
        other => return Err(format!("import at the recipient gave {other:?}")),
    }
    // A repeat finds the same KEK already there and adds nothing.
    match ceremony::import_keks(
        module,
        "node-h",
        &secret(USER_PIN),
        &wrapped,
        ImportOptions::default(),
    ) {
        Ok(added) if added.is_empty() => Ok(()),
        other => Err(format!("repeat import gave {other:?}")),
    }
}

fn rewrappable_chain(module: &Path, pin_file: &Path) -> CheckResult {
    init(module, "node-f", true).map_err(|e| e.to_string())?;
    init(module, "node-c", false).map_err(|e| e.to_string())?;
    init(module, "node-d", false).map_err(|e| e.to_string())?;
    ceremony_between(
        module,
        "node-f",
        "node-c",
        ImportOptions { rewrappable: true },
    )
    .map_err(|e| format!("f -> c: {e}"))?;
    ceremony_between(module, "node-c", "node-d", ImportOptions::default())
        .map_err(|e| format!("c -> d: {e}"))?;
    let c = Pkcs11Hsm::open(&config(module, "node-c", pin_file)).map_err(|e| e.to_string())?;
    let d = Pkcs11Hsm::open(&config(module, "node-d", pin_file)).map_err(|e| e.to_string())?;
    conformance::cross_unseal(&c, &d)?;
    // d's copy is terminal: it cannot send the KEK on.
    init(module, "node-e", false).map_err(|e| e.to_string())?;
    match ceremony_between(module, "node-d", "node-e", ImportOptions::default()) {
        Err(_) => Ok(()),
        Ok(()) => Err("a terminal copy of the KEK was wrapped again".into()),
    }
}

fn wrong_pin(module: &Path, pin_file: &Path, dir: PathBuf) -> CheckResult {
    use std::os::unix::fs::PermissionsExt;
    let bad = dir.join("wrong.pin");
    std::fs::write(&bad, "not-the-pin").map_err(|e| e.to_string())?;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    let _ = pin_file;
    // Login state is per process and token, so use a token nobody here is
    // logged in to.
    init(module, "node-pin", false).map_err(|e| e.to_string())?;
    match Pkcs11Hsm::open(&config(module, "node-pin", &bad)) {
        Err(e @ OpenError::WrongPin { .. }) => {
            let msg = e.to_string();
            if !msg.contains("node-pin") || msg.contains("not-the-pin") {
                return Err(format!(
                    "message should name the token and hide the PIN: {msg}"
                ));
            }
            Ok(())
        }
        other => Err(format!("wrong PIN gave {other:?}")),
    }
}

fn missing_module(pin_file: &Path) -> CheckResult {
    let module = Path::new("/nonexistent/libpkcs11-missing.so");
    match Pkcs11Hsm::open(&config(module, "node-a", pin_file)) {
        Err(e @ OpenError::ModuleNotFound { .. })
            if e.to_string().contains("/nonexistent/libpkcs11-missing.so") =>
        {
            Ok(())
        }
        other => Err(format!("missing module gave {other:?}")),
    }
}

fn missing_label(module: &Path, pin_file: &Path) -> CheckResult {
    match Pkcs11Hsm::open(&config(module, "no-such-token", pin_file)) {
        Err(e @ OpenError::TokenNotFound { .. }) => {
            let msg = e.to_string();
            if msg.contains("no-such-token") && msg.contains("node-a") {
                Ok(())
            } else {
                Err(format!(
                    "message should name the label and the tokens present: {msg}"
                ))
            }
        }
        other => Err(format!("missing label gave {other:?}")),
    }
}

fn missing_pin_file(module: &Path, pin_file: &Path) -> CheckResult {
    let missing = dir_of(pin_file).join("absent.pin");
    match Pkcs11Hsm::open(&config(module, "node-a", &missing)) {
        Err(e @ OpenError::Pin(_)) if e.to_string().contains("absent.pin") => Ok(()),
        other => Err(format!("missing PIN file gave {other:?}")),
    }
}

fn read_pin(pin_file: &Path) -> Result<SecretBytes, String> {
    vault_hsm::read_pin_file(pin_file).map_err(|e| e.to_string())
}

/// The node's TLS key (made with its token) signs through PKCS#11: what it
/// returns verifies under its public key, for the raw and DER forms and for
/// rustls's signer; a message it did not sign does not verify.
fn tls_key_signs(module: &Path, pin_file: &Path) -> CheckResult {
    use p256::ecdsa::signature::Verifier;
    let key = Arc::new(
        TokenKey::open(module, "node-a", &read_pin(pin_file)?).map_err(|e| e.to_string())?,
    );
    let public = p256::ecdsa::VerifyingKey::from_sec1_bytes(&key.public_key().0)
        .map_err(|e| format!("public key: {e}"))?;
    let spki = key.public_key_spki_der();
    if !spki.ends_with(&key.public_key().0) || spki.len() != 91 {
        return Err(format!(
            "SPKI of {} bytes does not wrap the point",
            spki.len()
        ));
    }
    let message = b"TLS 1.3, server CertificateVerify";
    let raw = key.sign(message).map_err(|e| e.to_string())?;
    let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|e| e.to_string())?;
    public
        .verify(message, &sig)
        .map_err(|e| format!("raw signature: {e}"))?;
    if public.verify(b"another message", &sig).is_ok() {
        return Err("a signature verified for a message it was not made over".into());
    }
    let signer = key
        .rustls()
        .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
        .ok_or("rustls: no signer for ECDSA P-256 SHA-256")?;
    let der = signer.sign(message).map_err(|e| e.to_string())?;
    let sig = p256::ecdsa::DerSignature::try_from(der.as_slice()).map_err(|e| e.to_string())?;
    public
        .verify(message, &sig)
        .map_err(|e| format!("rustls signature: {e}"))?;
    if key
        .rustls()
        .choose_scheme(&[rustls::SignatureScheme::ED25519])
        .is_some()
    {
        return Err("the P-256 key offered to sign Ed25519".into());
    }
    if format!("{key:?}").contains("session") {
        return Err(format!("Debug shows internals: {key:?}"));
    }
    Ok(())
}

/// A token made before CA keys lived in it gets them on demand, once; they
/// sign, and they are not the TLS key.
fn ca_keys(module: &Path, pin_file: &Path) -> CheckResult {
    use p256::ecdsa::signature::Verifier;
    let pin = read_pin(pin_file)?;
    if TokenKey::open_role(module, "node-b", &pin, KeyRole::FleetCa("test")).is_ok() {
        return Err("node-b has a fleet CA key it was never given".into());
    }
    let made = provision::ensure_signing_key(module, "node-b", &pin, KeyRole::FleetCa("test"))
        .map_err(|e| e.to_string())?;
    let again = provision::ensure_signing_key(module, "node-b", &pin, KeyRole::FleetCa("test"))
        .map_err(|e| e.to_string())?;
    if !made || again {
        return Err(format!("made {made}, then made again {again}"));
    }
    let ca = TokenKey::open_role(module, "node-b", &pin, KeyRole::FleetCa("test"))
        .map_err(|e| e.to_string())?;
    let tls = TokenKey::open(module, "node-b", &pin).map_err(|e| e.to_string())?;
    if ca.public_key().0 == tls.public_key().0 {
        return Err("the CA key is the TLS key".into());
    }
    let der = ca.sign_der(b"tbs").map_err(|e| e.to_string())?;
    let public = p256::ecdsa::VerifyingKey::from_sec1_bytes(&ca.public_key().0)
        .map_err(|e| e.to_string())?;
    let sig = p256::ecdsa::DerSignature::try_from(der.as_slice()).map_err(|e| e.to_string())?;
    public.verify(b"tbs", &sig).map_err(|e| e.to_string())
}

/// Overwrites the value of the data object labelled `object` on token
/// `label` with `value`, as anyone holding the user PIN and the token could
/// (the test's stand-in for a tampered or copied checkpoint).
fn overwrite_data_object(
    module: &Path,
    label: &str,
    pin: &str,
    object: &str,
    value: Vec<u8>,
) -> Result<Vec<u8>, String> {
    put_data_object(module, label, pin, object, value, true)
}

/// Creates a data object labelled `object` holding `value` on token
/// `label`, first destroying the one there when `replace` (there must be
/// exactly one); returns the value of the first object found.
fn put_data_object(
    module: &Path,
    label: &str,
    pin: &str,
    object: &str,
    value: Vec<u8>,
    replace: bool,
) -> Result<Vec<u8>, String> {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let ctx = Pkcs11::new(module).map_err(|e| e.to_string())?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => return Err(e.to_string()),
    }
    let slot = ctx
        .get_slots_with_initialized_token()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.label().trim_end() == label)
        })
        .ok_or("no such token")?;
    let session = ctx.open_rw_session(slot).map_err(|e| e.to_string())?;
    match session.login(UserType::User, Some(&AuthPin::new(pin.into()))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => return Err(e.to_string()),
    }
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(object.as_bytes().to_vec()),
        ])
        .map_err(|e| e.to_string())?;
    let handle = *found.first().ok_or("no checkpoint object")?;
    if replace && found.len() != 1 {
        return Err(format!("{} checkpoint objects", found.len()));
    }
    let old = session
        .get_attributes(handle, &[AttributeType::Value])
        .map_err(|e| e.to_string())?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .unwrap_or_default();
    // SoftHSM does not let a data object's value change: replace it.
    if replace {
        session.destroy_object(handle).map_err(|e| e.to_string())?;
    }
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(object.as_bytes().to_vec()),
            Attribute::Value(value),
        ])
        .map_err(|e| e.to_string())?;
    Ok(old)
}

/// The checkpoint reads back what was written, across stores; a value
/// with one bit flipped, or one copied from another token, is an error
/// (never "no checkpoint"); the key it is authenticated under is sensitive
/// and was made on the token.
fn checkpoint_round_trip(module: &Path, pin_file: &Path) -> CheckResult {
    use vault_hsm::CheckpointStore;
    let pin = read_pin(pin_file)?;
    let a = CheckpointStore::open(module, "node-a", &pin).map_err(|e| e.to_string())?;
    // A node token is born with its checkpoint (provisioned with its TLS
    // key): a token without one later lost it.
    if a.read().map_err(|e| e.to_string())?.as_deref() != Some(vault_hsm::checkpoint::BORN) {
        return Err("a freshly provisioned node token does not hold the born checkpoint".into());
    }
    a.write(b"mark one").map_err(|e| e.to_string())?;
    a.write(b"mark two, longer").map_err(|e| e.to_string())?;
    let again = CheckpointStore::open(module, "node-a", &pin).map_err(|e| e.to_string())?;
    let read = again.read().map_err(|e| e.to_string())?;
    if read.as_deref() != Some(b"mark two, longer".as_slice()) {
        return Err(format!("read back {read:?}"));
    }
    // One bit flipped in the stored payload.
    let good = overwrite_data_object(module, "node-a", USER_PIN, "bkv-checkpoint", Vec::new())?;
    let mut flipped = good.clone();
    flipped[22] ^= 1; // in the payload
    overwrite_data_object(module, "node-a", USER_PIN, "bkv-checkpoint", flipped)?;
    match again.read() {
        Err(e) if e.to_string().contains("does not authenticate") => {}
        other => return Err(format!("a flipped bit read as {other:?}")),
    }
    // node-a's value put on node-b: authenticated under another key and
    // another token label.
    let b = CheckpointStore::open(module, "node-b", &pin).map_err(|e| e.to_string())?;
    b.write(b"b's own").map_err(|e| e.to_string())?;
    overwrite_data_object(module, "node-b", USER_PIN, "bkv-checkpoint", good.clone())?;
    match b.read() {
        Err(e) if e.to_string().contains("does not authenticate") => {}
        other => return Err(format!("a value from another token read as {other:?}")),
    }
    overwrite_data_object(module, "node-a", USER_PIN, "bkv-checkpoint", good.clone())?;
    if again.read().map_err(|e| e.to_string())?.as_deref() != Some(b"mark two, longer".as_slice()) {
        return Err("the restored value does not read".into());
    }
    // A crash between creating the new object and destroying the old one
    // leaves both: the newer wins, and the next write removes the older.
    again.write(b"mark three").map_err(|e| e.to_string())?;
    put_data_object(module, "node-a", USER_PIN, "bkv-checkpoint", good, false)?;
    let fresh = CheckpointStore::open(module, "node-a", &pin).map_err(|e| e.to_string())?;
    if fresh.read().map_err(|e| e.to_string())?.as_deref() != Some(b"mark three".as_slice()) {
        return Err("an older leftover object won over the newer one".into());
    }
    fresh.write(b"mark four").map_err(|e| e.to_string())?;
    let left = overwrite_data_object(module, "node-a", USER_PIN, "bkv-checkpoint", Vec::new())
        .map_err(|e| format!("after a write: {e}"))?;
    overwrite_data_object(module, "node-a", USER_PIN, "bkv-checkpoint", left)?;
    if fresh.read().map_err(|e| e.to_string())?.as_deref() != Some(b"mark four".as_slice()) {
        return Err("mark four does not read".into());
    }
    let report = provision::report(module, "node-a", &pin).map_err(|e| e.to_string())?;
    let mac = report
        .keys
        .iter()
        .find(|k| k.role == "checkpoint-mac")
        .ok_or("the key report lists no checkpoint key")?;
    if mac.sensitive != Some(true) || mac.extractable != Some(false) || mac.local != Some(true) {
        return Err(format!("checkpoint key attributes are {mac:?}"));
    }
    Ok(())
}

/// KEK rotation on two tokens of their own: a new version on the founder,
/// sealing under a chosen version, the peer learning the new version from a
/// ceremony run while it is open, and the old version destroyed: what it
/// sealed opens nowhere any more, and the last version cannot go.
fn kek_rotation(module: &Path, pin_file: &Path) -> CheckResult {
    use vault_hsm::KekVersion;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    init(module, "rot-a", true).map_err(|x| e(&x))?;
    init(module, "rot-b", false).map_err(|x| e(&x))?;
    ceremony_between(module, "rot-a", "rot-b", ImportOptions::default()).map_err(|x| e(&x))?;
    let a = Pkcs11Hsm::open(&config(module, "rot-a", pin_file)).map_err(|x| e(&x))?;
    let b = Pkcs11Hsm::open(&config(module, "rot-b", pin_file)).map_err(|x| e(&x))?;
    let old = a.seal(b"aad", b"sealed under v1").map_err(|x| e(&x))?;
    let made = provision::new_kek(module, "rot-a", &secret(USER_PIN)).map_err(|x| e(&x))?;
    if made != KekVersion(2) {
        return Err(format!("new_kek made {made:?}"));
    }
    // The open HSM finds the new version on its token.
    let new = a
        .seal_under(KekVersion(2), b"aad", b"sealed under v2")
        .map_err(|x| format!("seal under v2 on the founder: {x}"))?;
    if a.seal_under(KekVersion(7), b"aad", b"x").is_ok() {
        return Err("sealed under a version nobody holds".into());
    }
    match b.unseal(b"aad", &new) {
        Err(HsmError::UnknownKekVersion(2)) => {}
        other => return Err(format!("the peer opened v2 before the ceremony: {other:?}")),
    }
    // The SO cannot log in to rot-a while this process holds user
    // sessions there (the ceremony runs in vaultctl, never in a node).
    drop(a);
    // Kept, as a careless operator might keep it: it carries v1 and v2.
    let transport = ceremony::export_transport_key(module, "rot-b").map_err(|x| e(&x))?;
    let kept = ceremony::wrap_keks_for(
        module,
        "rot-a",
        &secret(SO_PIN),
        &secret(USER_PIN),
        &transport,
    )
    .map_err(|x| e(&x))?;
    ceremony::import_keks(
        module,
        "rot-b",
        &secret(USER_PIN),
        &kept,
        ImportOptions::default(),
    )
    .map_err(|x| e(&x))?;
    let a = Pkcs11Hsm::open(&config(module, "rot-a", pin_file)).map_err(|x| e(&x))?;
    let plain = b
        .unseal(b"aad", &new)
        .map_err(|x| format!("the peer after the ceremony: {x}"))?;
    if plain.expose() != b"sealed under v2" {
        return Err("v2 blob opened to other bytes".into());
    }
    for (name, hsm) in [("rot-a", &a), ("rot-b", &b)] {
        hsm.destroy_kek(KekVersion(1))
            .map_err(|x| format!("destroy v1 on {name}: {x}"))?;
        match hsm.unseal(b"aad", &old) {
            Err(HsmError::UnknownKekVersion(1)) => {}
            other => {
                return Err(format!(
                    "{name} opened a v1 blob after destroying v1: {other:?}"
                ));
            }
        }
        if hsm.destroy_kek(KekVersion(2)).is_ok() {
            return Err(format!("{name} destroyed its last KEK"));
        }
        if hsm.refresh_keks().map_err(|x| e(&x))? != vec![KekVersion(2)] {
            return Err(format!("{name} holds {:?}", hsm.kek_versions()));
        }
    }
    // A PIN holder needs none of this crate's checks (and can delete the
    // token's record of the destroyed version): with the transport private
    // key the kept file was wrapped for, v1 would come back.
    let v1 = kept
        .keks
        .iter()
        .find(|k| k.version == 1)
        .ok_or("the kept file has no v1")?;
    if ceremony::testing::unwrap_raw(module, "rot-b", &secret(USER_PIN), v1).is_ok() {
        return Err(
            "a PIN holder unwrapped destroyed KEK v1 from a kept ceremony file: the transport key survived the destroy"
                .into(),
        );
    }
    // Through this crate the kept file is refused as well; a rerun of the
    // destroy keeps the new transport key, which receives a new ceremony.
    match ceremony::import_keks(
        module,
        "rot-b",
        &secret(USER_PIN),
        &kept,
        ImportOptions::default(),
    ) {
        Err(CeremonyError::Destroyed(1) | CeremonyError::WrongRecipient { .. }) => {}
        other => {
            return Err(format!(
                "re-importing a kept file after destroying v1: {other:?}"
            ));
        }
    }
    let replaced = ceremony::export_transport_key(module, "rot-b").map_err(|x| e(&x))?;
    b.destroy_kek(KekVersion(1))
        .map_err(|x| format!("destroy v1 again on rot-b: {x}"))?;
    let after_rerun = ceremony::export_transport_key(module, "rot-b").map_err(|x| e(&x))?;
    if replaced.fingerprint() == transport.fingerprint()
        || after_rerun.fingerprint() != replaced.fingerprint()
    {
        return Err("the transport key was not replaced once by the destroy".into());
    }
    drop(a);
    let fresh = ceremony::wrap_keks_for(
        module,
        "rot-a",
        &secret(SO_PIN),
        &secret(USER_PIN),
        &replaced,
    )
    .map_err(|x| e(&x))?;
    ceremony::import_keks(
        module,
        "rot-b",
        &secret(USER_PIN),
        &fresh,
        ImportOptions::default(),
    )
    .map_err(|x| format!("a ceremony to the new transport key: {x}"))?;
    if b.refresh_keks().map_err(|x| e(&x))? != vec![KekVersion(2)] {
        return Err(format!(
            "rot-b holds {:?} after the re-import",
            b.kek_versions()
        ));
    }
    // A fresh session on the token (a restarted node) finds no v1 either.
    let again = Pkcs11Hsm::open(&config(module, "rot-b", pin_file)).map_err(|x| e(&x))?;
    match again.unseal(b"aad", &old) {
        Err(HsmError::UnknownKekVersion(1)) => Ok(()),
        other => Err(format!("a reopened token opened a v1 blob: {other:?}")),
    }
}
