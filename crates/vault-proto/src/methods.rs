//! The methods of our services by gRPC path, for metrics labels. A label
//! comes only from this fixed list: a caller that invents paths gets the
//! label `unknown`, so it cannot grow a node's metrics without bound.

/// Every method a node or the witness serves, as `Service/Method`.
pub const KNOWN: &[&str] = &[
    "Admin/Status",
    "Admin/Init",
    "Admin/AddLearner",
    "Admin/Promote",
    "Admin/RemoveNode",
    "Admin/TriggerSnapshot",
    "Admin/GetFleetKeys",
    "Admin/SetBundle",
    "Admin/Evidence",
    "Admin/Preload",
    "Admin/RotateKek",
    "Admin/DestroyKek",
    "Frontend/RegisterStart",
    "Frontend/RegisterFinish",
    "Frontend/RecoverStart",
    "Frontend/RecoverFinish",
    "Frontend/Status",
    "Frontend/Delete",
    "Frontend/GetFleetBundle",
    "Peer/AppendEntries",
    "Peer/Vote",
    "Peer/InstallSnapshot",
    "Peer/Forward",
    "Peer/ReadIndex",
    "Witness/Submit",
    "Witness/GetTreeHead",
    "Witness/GetTreeHeads",
    "Witness/GetEntries",
    "Witness/GetInclusionProof",
    "Witness/GetConsistencyProof",
    "Witness/GetPublicKey",
    "Health/Check",
    "Health/Watch",
];

/// The metrics label of a request path: `/vault.v1.Peer/AppendEntries`
/// is `Peer/AppendEntries`; anything not in [`KNOWN`] is `unknown`.
pub fn label(path: &str) -> &'static str {
    let short = path
        .trim_start_matches('/')
        .rsplit_once('.')
        .map_or(path, |(_, m)| m);
    let package_ok = path.starts_with("/vault.v1.") || path.starts_with("/grpc.health.v1.");
    KNOWN
        .iter()
        .find(|m| package_ok && **m == short)
        .copied()
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_protos_has_a_label_and_nothing_else_does() {
        let protos = [
            include_str!("../../../proto/vault/v1/admin.proto"),
            include_str!("../../../proto/vault/v1/frontend.proto"),
            include_str!("../../../proto/vault/v1/peer.proto"),
            include_str!("../../../proto/vault/v1/witness.proto"),
        ];
        let mut seen = 0;
        for text in protos {
            let mut service = "";
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.trim_end_matches('{').trim();
                } else if let Some(rest) = line.strip_prefix("rpc ") {
                    let method = rest.split('(').next().unwrap_or("").trim();
                    let path = format!("/vault.v1.{service}/{method}");
                    assert_eq!(label(&path), format!("{service}/{method}"), "{path}");
                    seen += 1;
                }
            }
        }
        assert_eq!(
            seen + 2,
            KNOWN.len(),
            "KNOWN lists exactly the protos' methods and health"
        );
        assert_eq!(label("/grpc.health.v1.Health/Check"), "Health/Check");
        for path in [
            "/vault.v1.Frontend/NoSuch",
            "/other.v1.Frontend/Status",
            "/x",
            "",
            "/vault.v1.Frontend/Status/extra",
        ] {
            assert_eq!(label(path), "unknown", "{path}");
        }
    }
}
