//! gRPC clients of the bus, connected on demand.

use crate::cli::Conn;
use crate::error::CtlError;
use kakehashi_proto::v1::{
    delivery_client::DeliveryClient, policies_client::PoliciesClient, publisher_client::PublisherClient,
    schema_registry_client::SchemaRegistryClient, subscriptions_client::SubscriptionsClient,
};
use tonic::transport::{Channel, Endpoint};

async fn channel(what: &'static str, endpoint: &str) -> Result<Channel, CtlError> {
    let e = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| CtlError::Usage(format!("bad {what} endpoint {endpoint}: {e}")))?;
    e.connect().await.map_err(|source| CtlError::Connect { what, endpoint: endpoint.to_string(), source })
}

/// SchemaRegistry client.
pub async fn registry(c: &Conn) -> Result<SchemaRegistryClient<Channel>, CtlError> {
    Ok(SchemaRegistryClient::new(channel("the registry", &c.registry).await?))
}

/// Policies client.
pub async fn policies(c: &Conn) -> Result<PoliciesClient<Channel>, CtlError> {
    Ok(PoliciesClient::new(channel("the registry", &c.registry).await?))
}

/// Subscriptions client.
pub async fn subscriptions(c: &Conn) -> Result<SubscriptionsClient<Channel>, CtlError> {
    Ok(SubscriptionsClient::new(channel("the registry", &c.registry).await?))
}

/// Delivery client.
pub async fn delivery(c: &Conn) -> Result<DeliveryClient<Channel>, CtlError> {
    Ok(DeliveryClient::new(channel("the registry", &c.registry).await?))
}

/// Publisher client.
pub async fn publisher(c: &Conn) -> Result<PublisherClient<Channel>, CtlError> {
    Ok(PublisherClient::new(channel("the adapter", &c.adapter).await?))
}
