//! Adapter configuration: defaults that work locally, a TOML file, then environment overrides.

use kakehashi_proto::topology::TopologyConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

/// Everything the adapter service can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdapterConfig {
    /// NATS server URL (`KAKEHASHI_NATS_URL`).
    pub nats_url: String,
    /// gRPC listen address (`KAKEHASHI_GRPC_ADDR`).
    pub grpc_addr: SocketAddr,
    /// Name of this instance (`KAKEHASHI_INSTANCE`).
    pub instance: String,
    /// Streams and buckets (must match the registry's).
    pub topology: TopologyConfig,
    /// Largest `Event.data` accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Publishes awaiting their ack on one `PublishStream` before it stops reading (back-pressure).
    pub stream_window: usize,
    /// Department credentials: token → department id. Empty = development mode, where the
    /// event's `source` field is trusted (never use that outside a laptop).
    pub credentials: BTreeMap<String, String>,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50052)),
            instance: format!("adapter@{}", std::process::id()),
            topology: TopologyConfig::default(),
            max_payload_bytes: 512 * 1024,
            stream_window: 256,
            credentials: BTreeMap::new(),
        }
    }
}

/// Configuration that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// An environment variable has a bad value.
    #[error("environment variable {name}: {message}")]
    Env {
        /// Variable name.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl AdapterConfig {
    /// Defaults, then the file (if given), then `KAKEHASHI_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg: Self = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
                toml::from_str(&text)
                    .map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })?
            }
            None => Self::default(),
        };
        if let Ok(v) = std::env::var("KAKEHASHI_NATS_URL") {
            cfg.nats_url = v;
        }
        if let Ok(v) =
            std::env::var("KAKEHASHI_ADAPTER_GRPC_ADDR").or_else(|_| std::env::var("KAKEHASHI_GRPC_ADDR"))
        {
            cfg.grpc_addr = v.parse().map_err(|e| ConfigError::Env {
                name: "KAKEHASHI_GRPC_ADDR",
                message: format!("{e}: {v}"),
            })?;
        }
        if let Ok(v) = std::env::var("KAKEHASHI_INSTANCE") {
            cfg.instance = v;
        }
        Ok(cfg)
    }
}
