//! The registry's gRPC APIs, called as the logged-in department, so the registry — not the
//! console — decides what each page may show. A token login's requests carry that department's
//! token; a certificate login's go over a second channel on which the console presents its own
//! client certificate, a delegate of the registry, and name the department in
//! `x-kakehashi-on-behalf-of` (the registry refuses that header from anyone not configured as a
//! delegate, and a delegate without it has no rights).

use crate::session::{Credential, Login};
use kakehashi_proto::v1::{
    dead_letters_client::DeadLettersClient, flows_client::FlowsClient, policies_client::PoliciesClient,
    schema_registry_client::SchemaRegistryClient, subscriptions_client::SubscriptionsClient,
};
use kakehashi_runtime::identity::ON_BEHALF_OF;
use std::path::Path;
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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
    /// A CA, certificate or key file could not be read.
    #[error("registry TLS file {path}: {source}")]
    Ca {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Lazily connected channels to the registry (they reconnect by themselves): one for token
/// logins, and one presenting the console's own certificate for certificate logins.
#[derive(Clone, Debug)]
pub struct Registry {
    channel: Channel,
    delegate: Option<Channel>,
    /// Largest answer read (`max_registry_response_bytes`), set on every client rather than
    /// left to tonic's default.
    max_response_bytes: usize,
}

/// The console's own client certificate and key files (PEM).
#[derive(Clone, Copy, Debug)]
pub struct ClientIdentity<'a> {
    /// Certificate chain.
    pub cert: &'a Path,
    /// Private key.
    pub key: &'a Path,
}

fn read(path: &Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|source| RegistryError::Ca { path: path.display().to_string(), source })
}

impl Registry {
    /// Channels to `url` (TLS for `https://`, trusting `ca` or the system's roots; with
    /// `identity`, a second channel presenting it); nothing is connected until the first call,
    /// so the console starts while the registry is down. Answers over `max_response_bytes`
    /// fail with `OUT_OF_RANGE`.
    pub fn new(
        url: &str,
        ca: Option<&Path>,
        identity: Option<ClientIdentity<'_>>,
        timeout: Duration,
        max_response_bytes: usize,
    ) -> Result<Self, RegistryError> {
        let endpoint_err = |source| RegistryError::Endpoint { url: url.to_string(), source };
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(endpoint_err)?
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5));
        if !url.starts_with("https://") {
            return Ok(Self { channel: endpoint.connect_lazy(), delegate: None, max_response_bytes });
        }
        let tls = match ca {
            Some(path) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(path)?)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        let delegate = match identity {
            Some(id) => {
                let tls = tls.clone().identity(Identity::from_pem(read(id.cert)?, read(id.key)?));
                Some(endpoint.clone().tls_config(tls).map_err(endpoint_err)?.connect_lazy())
            }
            None => None,
        };
        let channel = endpoint.tls_config(tls).map_err(endpoint_err)?.connect_lazy();
        Ok(Self { channel, delegate, max_response_bytes })
    }

    /// Whether certificate logins can be served (the console has its own registry identity).
    pub fn delegates(&self) -> bool {
        self.delegate.is_some()
    }

    /// The clients of `login`'s department.
    pub fn as_login(&self, login: &Login) -> As {
        match &login.credential {
            Credential::Token(token) => self.with_token(token),
            Credential::Certificate(_) => self.on_behalf_of(&login.department),
        }
    }

    /// The clients of the department `token` is (a token that cannot be a header value is sent
    /// without one, which the registry answers UNAUTHENTICATED).
    pub fn with_token(&self, token: &str) -> As {
        let header = MetadataValue::try_from(format!("Bearer {token}")).ok().map(|v| ("authorization", v));
        As { channel: self.channel.clone(), header: AddHeader(header), max: self.max_response_bytes }
    }

    /// The clients of `department`, through the console's delegate identity. Without one (or
    /// for a department id that cannot be a header value) the calls carry no credential and
    /// the registry refuses them.
    pub fn on_behalf_of(&self, department: &str) -> As {
        let header = AsciiMetadataValue::try_from(department).ok().map(|v| (ON_BEHALF_OF, v));
        let channel = self.delegate.clone().unwrap_or_else(|| self.channel.clone());
        As {
            channel,
            header: AddHeader(header.filter(|_| self.delegate.is_some())),
            max: self.max_response_bytes,
        }
    }
}

/// Adds the credential header of a login to every request.
#[derive(Clone, Debug)]
pub struct AddHeader(Option<(&'static str, AsciiMetadataValue)>);

impl tonic::service::Interceptor for AddHeader {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some((name, value)) = &self.0 {
            request.metadata_mut().insert(*name, value.clone());
        }
        Ok(request)
    }
}

/// A client channel that speaks as one department.
pub type Client = InterceptedService<Channel, AddHeader>;

/// The registry's clients for one department.
#[derive(Clone, Debug)]
pub struct As {
    channel: Channel,
    header: AddHeader,
    /// Largest answer read.
    max: usize,
}

impl As {
    fn client(&self) -> Client {
        InterceptedService::new(self.channel.clone(), self.header.clone())
    }

    /// Schema registry client.
    pub fn schemas(&self) -> SchemaRegistryClient<Client> {
        SchemaRegistryClient::new(self.client()).max_decoding_message_size(self.max)
    }

    /// Flows (trace, find, summary) client.
    pub fn flows(&self) -> FlowsClient<Client> {
        FlowsClient::new(self.client()).max_decoding_message_size(self.max)
    }

    /// Dead letters client.
    pub fn dead_letters(&self) -> DeadLettersClient<Client> {
        DeadLettersClient::new(self.client()).max_decoding_message_size(self.max)
    }

    /// Subscriptions client.
    pub fn subscriptions(&self) -> SubscriptionsClient<Client> {
        SubscriptionsClient::new(self.client()).max_decoding_message_size(self.max)
    }

    /// Policies (and WhoAmI) client.
    pub fn policies(&self) -> PoliciesClient<Client> {
        PoliciesClient::new(self.client()).max_decoding_message_size(self.max)
    }
}
