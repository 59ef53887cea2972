//! Connecting to the bus as a department, and publishing single events with retries.

use super::pipeline::Pipeline;
use super::record::ToEvent;
use super::retry::Retry;
use crate::schemas::SchemaIndex;
use async_nats::jetstream::{self, context};
use kakehashi_proto::v1::Event;
use kakehashi_proto::{ident, subjects};
use kakehashi_runtime::nats_auth::NatsAuthConfig;
use kakehashi_runtime::topology::{self, TopologyConfig, TopologyError};
use std::time::Duration;

/// The bus's confirmation of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The event id (the `Nats-Msg-Id`).
    pub event_id: String,
    /// The stream that stored it (`KH_INGRESS`).
    pub stream: String,
    /// Its stream sequence; for a duplicate, the sequence of the original.
    pub sequence: u64,
    /// The bus already had an event with this id (inside the dedup window): nothing new will
    /// be delivered.
    pub duplicate: bool,
}

impl Ack {
    pub(super) fn new(event_id: &str, ack: jetstream::publish::PublishAck) -> Self {
        Self {
            event_id: event_id.to_string(),
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        }
    }
}

/// Why an event was not published.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The event cannot be accepted as it is; retrying will not help.
    #[error("refused ({reason}): {message}")]
    Refused {
        /// Stable reason code: `invalid_type`, `invalid_id`, `payload_too_large`,
        /// `payload_not_json`, `unsupported_content_type`, `unknown_type`, `schema_violation`,
        /// `refused_by_stream`.
        reason: &'static str,
        /// What is wrong; never a payload value.
        message: String,
    },
    /// The bus did not confirm the event before the retry policy gave up.
    #[error("bus unavailable: not confirmed after {attempts} attempts over {elapsed:?}: {message}")]
    Unavailable {
        /// The last error.
        message: String,
        /// Sends tried.
        attempts: u32,
        /// Time from the first failure to giving up.
        elapsed: Duration,
    },
}

impl PublishError {
    /// Stable reason code (`bus_unavailable` for [`PublishError::Unavailable`]).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused { reason, .. } => reason,
            Self::Unavailable { .. } => "bus_unavailable",
        }
    }
}

/// How a failed publish is handled.
pub(crate) enum Failure {
    /// Worth retrying: no confirmation, no responders, connection trouble, JetStream busy.
    Transient,
    /// The server refused this message; retrying will not help.
    Refused(PublishError),
}

/// Sorts a client publish error into transient or final.
pub(crate) fn classify(error: &context::PublishError) -> Failure {
    use context::PublishErrorKind as Kind;
    match error.kind() {
        Kind::MaxPayloadExceeded => Failure::Refused(PublishError::Refused {
            reason: "payload_too_large",
            message: format!("the message is larger than the server accepts: {error}"),
        }),
        Kind::WrongLastMessageId | Kind::WrongLastSequence => Failure::Refused(PublishError::Refused {
            reason: "refused_by_stream",
            message: error.to_string(),
        }),
        Kind::Other => {
            let api = std::error::Error::source(error).and_then(|s| s.downcast_ref::<jetstream::Error>());
            match api {
                // JetStream answered with an error about this message (e.g. over the stream's
                // maximum message size) — except "temporarily unavailable", which passes.
                Some(e)
                    if e.code() != 503 && e.error_code() != jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE =>
                {
                    Failure::Refused(PublishError::Refused {
                        reason: "refused_by_stream",
                        message: e.to_string(),
                    })
                }
                _ => Failure::Transient,
            }
        }
        Kind::StreamNotFound | Kind::TimedOut | Kind::BrokenPipe | Kind::MaxAckPending => Failure::Transient,
    }
}

/// Why [`BusBuilder::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The department id is not one NATS token.
    #[error("source {0:?} is not a department id ([a-z0-9-]+)")]
    InvalidSource(String),
    /// NATS unreachable.
    #[error("cannot connect to NATS at {url}: {source}")]
    Nats {
        /// URL tried.
        url: String,
        /// Cause.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The credentials or TLS files cannot be used.
    #[error("NATS credentials: {0}")]
    Auth(String),
    /// The streams could not be created or opened.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The schema bucket could not be read.
    #[error("schemas: {0}")]
    Schemas(String),
}

/// Settings for [`Bus`]; start with [`Bus::builder`].
#[derive(Clone, Debug)]
pub struct BusBuilder {
    nats_url: String,
    source: String,
    name: Option<String>,
    retry: Retry,
    ack_timeout: Duration,
    max_payload_bytes: usize,
    check_types: bool,
    topology: Option<TopologyConfig>,
    wait_for_server: bool,
    nats_auth: NatsAuthConfig,
}

impl BusBuilder {
    /// Connects as this department's NATS identity (`kakehashi nats config` writes the file).
    /// A department identity may only publish its own ingress and read single schema versions:
    /// it cannot create streams, so this also turns off [`Self::topology`], and types are
    /// checked with on-demand reads ([`SchemaIndex::open_direct`]).
    pub fn credentials(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.nats_auth.credentials = Some(path.into());
        self.topology = None;
        self
    }

    /// Identity and TLS settings as a whole (see [`Self::credentials`]).
    pub fn nats_auth(mut self, auth: NatsAuthConfig) -> Self {
        if auth.credentials.is_some() {
            self.topology = None;
        }
        self.nats_auth = auth;
        self
    }

    /// Connection name shown by the NATS server (default `adapter-<source>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Retry policy for unconfirmed publishes (default: backoff from 100 ms to 5 s, give up
    /// after 60 s).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// How long one publish waits for its confirmation before it counts as failed (5 s).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Largest payload sent (default 512 KiB, the bus's default limit).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Whether events of a type with no registered schema are refused before sending
    /// (default `true`; they would be dead-lettered `unknown_type` otherwise).
    pub fn check_types(mut self, check: bool) -> Self {
        self.check_types = check;
        self
    }

    /// Creates the bus's streams and buckets if missing, with these settings (default: the
    /// standard topology). `None` only opens what exists.
    pub fn topology(mut self, topology: Option<TopologyConfig>) -> Self {
        self.topology = topology;
        self
    }

    /// Whether [`Self::connect`] keeps trying until the server answers (`true`, for a
    /// long-running adapter started before the bus) or fails at once when it does not
    /// (`false`, the default, for a command that should report the problem).
    pub fn wait_for_server(mut self, wait: bool) -> Self {
        self.wait_for_server = wait;
        self
    }

    /// Connects and prepares to publish. Once connected, the client reconnects by itself.
    pub async fn connect(self) -> Result<Bus, ConnectError> {
        if !ident::is_valid_department_id(&self.source) {
            return Err(ConnectError::InvalidSource(self.source));
        }
        let name = self.name.clone().unwrap_or_else(|| format!("adapter-{}", self.source));
        let mut options = self
            .nats_auth
            .options(&name)
            .map_err(|e| ConnectError::Auth(e.to_string()))?
            .connection_timeout(Duration::from_secs(5));
        if self.wait_for_server {
            options = options.retry_on_initial_connect();
        }
        let client = options
            .connect(&self.nats_url)
            .await
            .map_err(|source| ConnectError::Nats { url: self.nats_url.clone(), source })?;
        let mut js = jetstream::new(client);
        js.set_timeout(self.ack_timeout);
        let source = self.source.clone();
        Bus::from_jetstream(js, &source, self).await
    }
}

/// A department's connection to the bus: builds events from records and publishes them.
#[derive(Clone)]
pub struct Bus {
    js: jetstream::Context,
    source: String,
    retry: Retry,
    max_payload_bytes: usize,
    schemas: Option<SchemaIndex>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("source", &self.source).field("retry", &self.retry).finish()
    }
}

impl Bus {
    /// Settings for publishing as department `source` through the NATS server at `nats_url`.
    pub fn builder(nats_url: impl Into<String>, source: impl Into<String>) -> BusBuilder {
        BusBuilder {
            nats_url: nats_url.into(),
            source: source.into(),
            name: None,
            retry: Retry::default(),
            ack_timeout: Duration::from_secs(5),
            max_payload_bytes: 512 * 1024,
            check_types: true,
            topology: Some(TopologyConfig::default()),
            wait_for_server: false,
            nats_auth: NatsAuthConfig::default(),
        }
    }

    /// A bus over an existing JetStream context, with `settings` from a builder (its URL and
    /// name are not used).
    pub async fn from_jetstream(
        js: jetstream::Context,
        source: &str,
        settings: BusBuilder,
    ) -> Result<Self, ConnectError> {
        if !ident::is_valid_department_id(source) {
            return Err(ConnectError::InvalidSource(source.to_string()));
        }
        if let Some(t) = &settings.topology {
            topology::ensure(&js, t).await?;
        }
        let schemas = if !settings.check_types {
            None
        } else if settings.nats_auth.credentials.is_some() {
            // A department identity: no stream API, only direct reads of schema versions.
            Some(SchemaIndex::open_direct(js.client()))
        } else {
            Some(SchemaIndex::open(&js).await.map_err(ConnectError::Schemas)?)
        };
        Ok(Self {
            js,
            source: source.to_string(),
            retry: settings.retry,
            max_payload_bytes: settings.max_payload_bytes,
            schemas,
        })
    }

    /// The department this bus publishes as.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The underlying JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The registered schemas, when type checking is on.
    pub fn schemas(&self) -> Option<&SchemaIndex> {
        self.schemas.as_ref()
    }

    /// The subject an event of this type and record key is published on by this department.
    pub fn subject(&self, event_type: &str, key: &str) -> String {
        subjects::ingress(&self.source, event_type, key)
    }

    /// The event for a record: its id derives from (source, type, key, version), so
    /// publishing the same version of a record again is dropped by the bus as a duplicate.
    pub fn event<R: ToEvent + ?Sized>(&self, record: &R) -> Event {
        super::record::to_event(&self.source, record)
    }

    /// Publishes one event and waits for the confirmation, retrying transient failures.
    pub async fn publish(&self, event: Event) -> Result<Ack, PublishError> {
        let mut one = self.pipeline(1);
        one.send(event).await;
        match one.next().await {
            Some(result) => result,
            None => Err(PublishError::Unavailable {
                message: "no result".into(),
                attempts: 0,
                elapsed: Duration::ZERO,
            }),
        }
    }

    /// Publishes a record as an event (see [`Self::event`]).
    pub async fn publish_record<R: ToEvent + ?Sized>(&self, record: &R) -> Result<Ack, PublishError> {
        self.publish(self.event(record)).await
    }

    /// A pipeline keeping up to `window` publishes unconfirmed, for bulk publishing.
    pub fn pipeline(&self, window: usize) -> Pipeline {
        Pipeline::new(
            self.js.clone(),
            self.source.clone(),
            self.max_payload_bytes,
            self.schemas.clone(),
            self.retry,
            window,
        )
    }
}
