//! The witness's client: where it is, its CA, a connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};
use vault_fleet::identity::Identity as FleetIdentity;
use vault_fleet::tls::{TlsConnector, TlsIdentity, rustls_client_config};
use vault_proto::v1::witness_client::WitnessClient;

use super::WitnessArgs;

impl WitnessArgs {
    pub(super) fn ca(&self, fleet_dir: &Path) -> PathBuf {
        self.witness_ca
            .clone()
            .unwrap_or_else(|| fleet_dir.join("witness/tls/ca.pem"))
    }

    /// A client of the witness, presenting `identity` when given (the
    /// operator's, whose key signs in its token).
    pub(super) fn connect(
        &self,
        fleet_dir: &Path,
        identity: Option<&TlsIdentity>,
    ) -> anyhow::Result<WitnessClient<Channel>> {
        let ca_path = self.ca(fleet_dir);
        let tls = rustls_client_config(identity, &ca_path)
            .with_context(|| format!("the witness CA {}", ca_path.display()))?;
        let channel = TlsConnector::new(tls, &FleetIdentity::Witness.dns_name(), None)
            .map_err(anyhow::Error::msg)?
            .channel(&self.witness, |e: Endpoint| {
                e.connect_timeout(Duration::from_secs(3))
                    .timeout(Duration::from_secs(30))
            })?;
        Ok(WitnessClient::new(channel))
    }
}
