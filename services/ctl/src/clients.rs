//! gRPC clients of the bus, connected on demand, each call carrying the department token; over
//! TLS for https:// endpoints (`--ca`), with a client certificate when given (`--cert`/`--key`).

use crate::cli::Conn;
use crate::error::CtlError;
use kakehashi_proto::v1::{
    dead_letters_client::DeadLettersClient, delivery_client::DeliveryClient, flows_client::FlowsClient,
    policies_client::PoliciesClient, publisher_client::PublisherClient,
    schema_registry_client::SchemaRegistryClient, subscriptions_client::SubscriptionsClient,
};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Adds `authorization: Bearer <token>` to every call when a token is configured.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel with the token interceptor.
pub type Authed = InterceptedService<Channel, Auth>;

/// TLS settings from `--ca`, `--cert` and `--key`, or none for a plaintext endpoint. Files are
/// read here so a missing one is a one-line error naming it, before any connection is tried.
pub fn tls_config(endpoint: &str, c: &Conn) -> Result<Option<ClientTlsConfig>, CtlError> {
    let https = endpoint.starts_with("https://");
    let asked = c.ca.is_some() || c.cert.is_some() || c.key.is_some();
    if !https {
        if asked {
            // tonic would silently talk plaintext to an http:// endpoint despite the TLS options.
            return Err(CtlError::Usage(format!(
                "--ca/--cert/--key need an https:// endpoint, not {endpoint}"
            )));
        }
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new();
    tls = match &c.ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read_file(ca)?)),
        None => tls.with_native_roots(),
    };
    match (&c.cert, &c.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(read_file(cert)?, read_file(key)?));
        }
        (None, None) => {}
        _ => return Err(CtlError::Usage("--cert and --key go together".into())),
    }
    Ok(Some(tls))
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, CtlError> {
    std::fs::read(path).map_err(|source| CtlError::Read { path: path.to_path_buf(), source })
}

async fn channel(what: &'static str, endpoint: &str, c: &Conn) -> Result<Authed, CtlError> {
    let mut e = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| CtlError::Usage(format!("bad {what} endpoint {endpoint}: {e}")))?;
    if let Some(tls) = tls_config(endpoint, c)? {
        e = e.tls_config(tls).map_err(|source| CtlError::Connect {
            what,
            endpoint: endpoint.to_string(),
            source,
        })?;
    }
    let channel = e.connect().await.map_err(|source| CtlError::Connect {
        what,
        endpoint: endpoint.to_string(),
        source,
    })?;
    let token = match &c.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| CtlError::Usage("the token is not valid header text".into()))?,
        ),
        None => None,
    };
    Ok(InterceptedService::new(channel, Auth(token)))
}

/// SchemaRegistry client.
pub async fn registry(c: &Conn) -> Result<SchemaRegistryClient<Authed>, CtlError> {
    Ok(SchemaRegistryClient::new(channel("the registry", &c.registry, c).await?))
}

/// Policies client.
pub async fn policies(c: &Conn) -> Result<PoliciesClient<Authed>, CtlError> {
    Ok(PoliciesClient::new(channel("the registry", &c.registry, c).await?))
}

/// Subscriptions client.
pub async fn subscriptions(c: &Conn) -> Result<SubscriptionsClient<Authed>, CtlError> {
    Ok(SubscriptionsClient::new(channel("the registry", &c.registry, c).await?))
}

/// Delivery client.
pub async fn delivery(c: &Conn) -> Result<DeliveryClient<Authed>, CtlError> {
    Ok(DeliveryClient::new(channel("the registry", &c.registry, c).await?))
}

/// Publisher client.
pub async fn publisher(c: &Conn) -> Result<PublisherClient<Authed>, CtlError> {
    Ok(PublisherClient::new(channel("the adapter", &c.adapter, c).await?))
}

/// DeadLetters client (redriving dead letters under the registry's identity and rules).
pub async fn dead_letters(c: &Conn) -> Result<DeadLettersClient<Authed>, CtlError> {
    Ok(DeadLettersClient::new(channel("the registry", &c.registry, c).await?))
}

/// Flows client.
pub async fn flows(c: &Conn) -> Result<FlowsClient<Authed>, CtlError> {
    Ok(FlowsClient::new(channel("the registry", &c.registry, c).await?))
}
