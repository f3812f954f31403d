//! The witness's client: where it is, its CA, a connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use vault_fleet::identity::Identity as FleetIdentity;
use vault_proto::v1::witness_client::WitnessClient;

use super::WitnessArgs;

impl WitnessArgs {
    pub(super) fn ca(&self, fleet_dir: &Path) -> PathBuf {
        self.witness_ca
            .clone()
            .unwrap_or_else(|| fleet_dir.join("witness/tls/ca.pem"))
    }

    /// A client of the witness, presenting `identity` when given.
    pub(super) fn connect(
        &self,
        fleet_dir: &Path,
        identity: Option<&vault_fleet::tls::CertFiles>,
    ) -> anyhow::Result<WitnessClient<Channel>> {
        let ca_path = self.ca(fleet_dir);
        let ca = std::fs::read(&ca_path)
            .with_context(|| format!("read the witness CA {}", ca_path.display()))?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(FleetIdentity::Witness.dns_name());
        if let Some(id) = identity {
            let cert =
                std::fs::read(&id.cert).with_context(|| format!("read {}", id.cert.display()))?;
            let key =
                std::fs::read(&id.key).with_context(|| format!("read {}", id.key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let channel = Endpoint::from_shared(format!("https://{}", self.witness))?
            .tls_config(tls)?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        Ok(WitnessClient::new(channel))
    }
}
