//! The issuer as a client of the bus, through the public gRPC interfaces only, like any
//! department: `Subscriptions.CreateSubscription` and `Delivery.Subscribe` on the registry,
//! `Publisher.Publish` on the adapter, each call with the department's bearer token.

use super::config::IssuerConfig;
use kakehashi_proto::v1::{
    delivery_client::DeliveryClient, publisher_client::PublisherClient, subscribe_request,
    subscriptions_client::SubscriptionsClient, AckDeliveries, CreateSubscriptionRequest, Event,
    EventDelivery, NackDelivery, OpenSubscription, PublishAck, SubscribeRequest, Subscription,
};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The bus cannot be reached as configured.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Bad endpoint, token or TLS file.
    #[error("{0}")]
    Config(String),
    /// A call failed.
    #[error("{what}: {status}")]
    Call {
        /// Which call.
        what: String,
        /// The gRPC status.
        status: tonic::Status,
    },
}

/// Adds `authorization: Bearer <token>` to every call when a token is configured.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Auth>;

/// Connections to the registry and the adapter (lazy: a service down at start is retried).
#[derive(Clone)]
pub struct Bus {
    department: String,
    registry: Channel,
    adapter: Channel,
    auth: Auth,
}

/// The department's token: `token`, else its line in `token_file`, else none.
pub fn resolve_token(cfg: &IssuerConfig) -> Result<Option<String>, BusError> {
    if let Some(t) = &cfg.token {
        return Ok(Some(t.0.clone()));
    }
    let Some(path) = &cfg.token_file else { return Ok(None) };
    let tokens =
        kakehashi_runtime::settings::read_token_file(path).map_err(|e| BusError::Config(e.to_string()))?;
    tokens.get(&cfg.department).cloned().map(Some).ok_or_else(|| {
        BusError::Config(format!("{} has no token for department {}", path.display(), cfg.department))
    })
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, BusError> {
    std::fs::read(path).map_err(|e| BusError::Config(format!("{}: {e}", path.display())))
}

fn channel(what: &str, url: &str, cfg: &IssuerConfig) -> Result<Channel, BusError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| BusError::Config(format!("bad {what} endpoint {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        let section = cfg.grpc_tls.clone().unwrap_or_default();
        if let Some(ca) = &section.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&section.cert_file, &section.key_file) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => return Err(BusError::Config("grpc_tls.cert_file and key_file go together".into())),
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| BusError::Config(format!("TLS towards {what} {url}: {e}")))?;
    } else if cfg.grpc_tls.is_some() {
        return Err(BusError::Config(format!("grpc_tls needs an https:// {what} endpoint, not {url}")));
    }
    Ok(endpoint.connect_lazy())
}

/// One open Subscribe stream: send acks and nacks on `tx`, read deliveries from `stream`.
pub struct Stream {
    tx: tokio::sync::mpsc::Sender<SubscribeRequest>,
    /// The deliveries.
    pub stream: tonic::Streaming<EventDelivery>,
}

impl Stream {
    /// Acks one delivery (after its effect is durable).
    pub async fn ack(&self, delivery_id: u64) {
        let r = subscribe_request::Request::Ack(AckDeliveries { delivery_ids: vec![delivery_id] });
        // A closed stream shows up on the read side; the delivery then comes again.
        let _ = self.tx.send(SubscribeRequest { request: Some(r) }).await;
    }

    /// Nacks one delivery, to come again after `delay`.
    pub async fn nack(&self, delivery_id: u64, delay: Duration) {
        let delay = prost_duration(delay);
        let r = subscribe_request::Request::Nack(NackDelivery { delivery_id, delay });
        let _ = self.tx.send(SubscribeRequest { request: Some(r) }).await;
    }
}

fn prost_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

impl Bus {
    /// Prepares the connections (nothing is dialled until the first call).
    pub fn new(cfg: &IssuerConfig) -> Result<Self, BusError> {
        let token = match resolve_token(cfg)? {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| BusError::Config("the token is not valid header text".into()))?,
            ),
            None => None,
        };
        Ok(Self {
            department: cfg.department.clone(),
            registry: channel("registry", &cfg.registry_url, cfg)?,
            adapter: channel("adapter", &cfg.adapter_url, cfg)?,
            auth: Auth(token),
        })
    }

    fn authed(&self, channel: &Channel) -> Authed {
        InterceptedService::new(channel.clone(), self.auth.clone())
    }

    /// Creates (or confirms) the department's durable subscription `name` on `type_pattern`,
    /// delivering from the start of what `KH_EVENTS` retains.
    pub async fn ensure_subscription(&self, name: &str, type_pattern: &str) -> Result<(), BusError> {
        let mut c = SubscriptionsClient::new(self.authed(&self.registry));
        c.create_subscription(CreateSubscriptionRequest {
            subscription: Some(Subscription {
                department: self.department.clone(),
                name: name.into(),
                type_pattern: type_pattern.into(),
                deliver_all: true,
                ..Default::default()
            }),
        })
        .await
        .map_err(|status| BusError::Call { what: format!("create subscription {name}"), status })?;
        Ok(())
    }

    /// Opens a Subscribe stream on the department's subscription `name`.
    pub async fn open(&self, name: &str, max_in_flight: u32) -> Result<Stream, BusError> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let open = OpenSubscription {
            subscription: name.into(),
            department: self.department.clone(),
            max_in_flight,
        };
        let _ = tx.send(SubscribeRequest { request: Some(subscribe_request::Request::Open(open)) }).await;
        let stream = DeliveryClient::new(self.authed(&self.registry))
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|status| BusError::Call { what: format!("subscribe {name}"), status })?
            .into_inner();
        Ok(Stream { tx, stream })
    }

    /// Publishes one event through the adapter (source = the department).
    pub async fn publish(&self, mut event: Event) -> Result<PublishAck, BusError> {
        event.source = self.department.clone();
        let what = format!("publish {} {}", event.r#type, event.id);
        PublisherClient::new(self.authed(&self.adapter))
            .publish(event)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| BusError::Call { what, status })
    }
}
