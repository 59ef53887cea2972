//! The HTTP/2 limits of a gRPC listener (`[grpc_server]` in each service's configuration):
//! set from our configuration, not left to tonic's and h2's defaults, so an operator can see and
//! change what one client connection may hold open and how a dead peer is noticed.

use serde::Deserialize;
use std::time::Duration;
use tonic::transport::Server;

/// The `[grpc_server]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcServerLimits {
    /// Calls (HTTP/2 streams) one client connection may have open at once, Subscribe streams
    /// included; a client's call beyond it waits until one of its calls ends
    /// (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Ping a connection after this many seconds without frames, so a peer that vanished (a
    /// network partition, a killed host) is noticed and its Subscribe streams end; 0: never.
    pub keepalive_interval_secs: u64,
    /// Close the connection when such a ping is not answered within this many seconds.
    pub keepalive_timeout_secs: u64,
    /// Largest header block (metadata) a client may send, in bytes; a larger one is refused by
    /// the HTTP/2 layer (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list_bytes: u32,
    /// Streams a client may open and reset before the server has accepted them (the HTTP/2
    /// "rapid reset" defence); beyond it the connection is closed.
    pub max_pending_accept_reset_streams: usize,
}

impl Default for GrpcServerLimits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 20,
            max_header_list_bytes: 16 * 1024,
            max_pending_accept_reset_streams: 20,
        }
    }
}

impl GrpcServerLimits {
    /// Why these limits cannot serve (a zero that would refuse every call), naming the key.
    pub fn check(&self) -> Result<(), String> {
        let zero = [
            ("grpc_server.max_concurrent_streams", self.max_concurrent_streams == 0),
            ("grpc_server.keepalive_timeout_secs", self.keepalive_timeout_secs == 0),
            ("grpc_server.max_header_list_bytes", self.max_header_list_bytes == 0),
        ];
        match zero.iter().find(|(_, z)| *z) {
            Some((key, _)) => Err(format!("{key} = 0 would refuse every call: it must be at least 1")),
            None => Ok(()),
        }
    }

    /// `server` with these limits.
    pub fn apply(&self, server: Server) -> Server {
        let interval =
            (self.keepalive_interval_secs > 0).then(|| Duration::from_secs(self.keepalive_interval_secs));
        server
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_keepalive_interval(interval)
            .http2_keepalive_timeout(Some(Duration::from_secs(self.keepalive_timeout_secs)))
            .http2_max_header_list_size(self.max_header_list_bytes)
            .http2_max_pending_accept_reset_streams(Some(self.max_pending_accept_reset_streams))
    }
}

#[cfg(test)]
mod tests {
    use super::GrpcServerLimits;

    #[test]
    fn a_zero_that_would_refuse_every_call_is_refused_naming_its_key() {
        assert_eq!(GrpcServerLimits::default().check(), Ok(()));
        let zero = GrpcServerLimits { max_concurrent_streams: 0, ..Default::default() };
        assert!(zero.check().is_err_and(|e| e.contains("grpc_server.max_concurrent_streams")));
        let never = GrpcServerLimits { keepalive_interval_secs: 0, ..Default::default() };
        assert_eq!(never.check(), Ok(()), "no keepalive pings is a choice, not an error");
    }
}
