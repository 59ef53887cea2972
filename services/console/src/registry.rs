//! The registry's gRPC APIs, called as the logged-in department: every request carries that
//! department's token, so the registry — not the console — decides what each page may show.

use kakehashi_proto::v1::{
    dead_letters_client::DeadLettersClient, flows_client::FlowsClient, policies_client::PoliciesClient,
    schema_registry_client::SchemaRegistryClient, subscriptions_client::SubscriptionsClient,
};
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Why the registry connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The endpoint is not a URL tonic accepts.
    #[error("registry endpoint {url}: {source}")]
    Endpoint {
        /// The configured URL.
        url: String,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The CA file could not be read.
    #[error("registry CA {path}: {source}")]
    Ca {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A lazily connected channel to the registry (reconnects by itself).
#[derive(Clone, Debug)]
pub struct Registry {
    channel: Channel,
}

impl Registry {
    /// A channel to `url` (TLS for `https://`, trusting `ca` or the system's roots); nothing is
    /// connected until the first call, so the console starts while the registry is down.
    pub fn new(url: &str, ca: Option<&std::path::Path>, timeout: Duration) -> Result<Self, RegistryError> {
        let endpoint_err = |source| RegistryError::Endpoint { url: url.to_string(), source };
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(endpoint_err)?
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5));
        if url.starts_with("https://") {
            let tls = match ca {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .map_err(|source| RegistryError::Ca { path: path.display().to_string(), source })?;
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(endpoint_err)?;
        }
        Ok(Self { channel: endpoint.connect_lazy() })
    }

    /// Schema registry client.
    pub fn schemas(&self) -> SchemaRegistryClient<Channel> {
        SchemaRegistryClient::new(self.channel.clone())
    }

    /// Flows (trace, find, summary) client.
    pub fn flows(&self) -> FlowsClient<Channel> {
        FlowsClient::new(self.channel.clone())
    }

    /// Dead letters client.
    pub fn dead_letters(&self) -> DeadLettersClient<Channel> {
        DeadLettersClient::new(self.channel.clone())
    }

    /// Subscriptions client.
    pub fn subscriptions(&self) -> SubscriptionsClient<Channel> {
        SubscriptionsClient::new(self.channel.clone())
    }

    /// Policies (and WhoAmI) client.
    pub fn policies(&self) -> PoliciesClient<Channel> {
        PoliciesClient::new(self.channel.clone())
    }
}

/// `message` as a request carrying `authorization: Bearer <token>`. A token that cannot be a
/// header value is sent without one, which the registry answers UNAUTHENTICATED.
pub fn as_user<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}")) {
        r.metadata_mut().insert("authorization", v);
    }
    r
}
