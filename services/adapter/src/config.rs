//! Adapter configuration: defaults that work locally, a TOML file, then environment overrides.

use kakehashi_runtime::nats_auth::NatsAuthConfig;
use kakehashi_runtime::settings;
pub use kakehashi_runtime::settings::ConfigError;
use kakehashi_runtime::topology::TopologyConfig;
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
    /// NATS identity (credentials file) and TLS; the adapter's identity is `adapter`.
    pub nats_auth: NatsAuthConfig,
    /// gRPC listen address (`KAKEHASHI_GRPC_ADDR`).
    pub grpc_addr: SocketAddr,
    /// Name of this instance (`KAKEHASHI_INSTANCE`).
    pub instance: String,
    /// Prometheus metrics address (`KAKEHASHI_METRICS_ADDR`); none = no metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// File holding the bearer token scrapers must present (`KAKEHASHI_METRICS_TOKEN_FILE`;
    /// written by `kakehashi metrics token`). Required when `metrics_addr` is not a loopback
    /// address: the service refuses to start otherwise.
    pub metrics_token_file: Option<std::path::PathBuf>,
    /// Streams and buckets (must match the registry's).
    pub topology: TopologyConfig,
    /// Largest `Event.data` accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Largest gRPC request read, in bytes (raised to `max_payload_bytes` plus 64 KiB if lower);
    /// larger ones get `OUT_OF_RANGE` from the transport.
    pub max_request_bytes: usize,
    /// Publishes awaiting their ack on one `PublishStream` before it stops reading (back-pressure).
    pub stream_window: usize,
    /// Deepest nesting of arrays and objects in a `PublishCloudEvent` JSON document (`[]` and
    /// `{}` are one level); deeper ones get `INVALID_ARGUMENT` naming the limit. 1 to 126: a
    /// larger value is refused at load, as serde_json's own recursion limit (128) would answer
    /// before ours.
    #[serde(deserialize_with = "json_depth")]
    pub max_json_depth: usize,
    /// Department credentials: token → department id. Empty = development mode, where the
    /// event's `source` field is trusted (never use that outside a laptop).
    pub credentials: BTreeMap<String, String>,
    /// A file of `department = "token"` lines added to `credentials`
    /// (`KAKEHASHI_CREDENTIALS_FILE`; written by `kakehashi grpc tokens`).
    pub credentials_file: Option<std::path::PathBuf>,
    /// TLS of the gRPC server (`KAKEHASHI_GRPC_TLS_*`); none = plaintext. With a client CA, a
    /// verified client certificate identifies the publishing department.
    pub grpc_tls: Option<kakehashi_runtime::tls::GrpcTls>,
    /// HTTP/2 limits of the gRPC listener.
    pub grpc_server: kakehashi_runtime::grpc_limits::GrpcServerLimits,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_auth: NatsAuthConfig::default(),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50052)),
            instance: kakehashi_runtime::settings::default_instance("adapter"),
            metrics_addr: None,
            metrics_token_file: None,
            topology: TopologyConfig::default(),
            max_payload_bytes: 512 * 1024,
            max_request_bytes: kakehashi_runtime::grpc::DEFAULT_MAX_REQUEST_BYTES,
            stream_window: 256,
            max_json_depth: 64,
            credentials: BTreeMap::new(),
            credentials_file: None,
            grpc_tls: None,
            grpc_server: Default::default(),
        }
    }
}

/// `max_json_depth`, refused when serde_json's recursion limit would answer before ours.
fn json_depth<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let depth = usize::deserialize(deserializer)?;
    settings::json_depth("max_json_depth", depth).map_err(serde::de::Error::custom)
}

impl AdapterConfig {
    /// Defaults, then the file (if given), then `KAKEHASHI_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg: Self = settings::from_file(file)?;
        settings::env_string("KAKEHASHI_NATS_URL", &mut cfg.nats_url);
        cfg.nats_auth.apply_env();
        settings::merge_token_file(&mut cfg.credentials_file, &mut cfg.credentials)?;
        settings::env_parse("KAKEHASHI_GRPC_ADDR", &mut cfg.grpc_addr)?;
        // The adapter's own variable wins, so one environment can configure both services.
        settings::env_parse("KAKEHASHI_ADAPTER_GRPC_ADDR", &mut cfg.grpc_addr)?;
        settings::env_string("KAKEHASHI_INSTANCE", &mut cfg.instance);
        kakehashi_runtime::tls::GrpcTls::apply_env(&mut cfg.grpc_tls)?;
        if std::env::var("KAKEHASHI_METRICS_ADDR").is_ok() {
            let mut addr = SocketAddr::from(([127, 0, 0, 1], 9465));
            settings::env_parse("KAKEHASHI_METRICS_ADDR", &mut addr)?;
            cfg.metrics_addr = Some(addr);
        }
        if let Ok(v) = std::env::var("KAKEHASHI_METRICS_TOKEN_FILE") {
            cfg.metrics_token_file = Some(v.into());
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_json_depth_outside_1_to_126_is_refused_at_load_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("adapter.toml");
        for (depth, ok) in [(0, false), (1, true), (126, true), (127, false), (10_000, false)] {
            std::fs::write(&config, format!("max_json_depth = {depth}\n")).expect("write config");
            match AdapterConfig::load(Some(&config)) {
                Ok(loaded) => assert!(ok && loaded.max_json_depth == depth, "{depth} is accepted as given"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(!ok && e.contains("max_json_depth") && e.contains("1 to 126"), "{depth}: {e}");
                }
            }
        }
        assert_eq!(AdapterConfig::default().max_json_depth, 64);
    }
}
