//! Kakehashi's shared runtime: the parts every service runs with, as opposed to the contracts
//! in `kakehashi-proto`. Everything here does I/O or keeps process state.
//!
//! Layout:
//! - [`settings`]: typed configuration files with environment overrides.
//! - [`identity`], [`tls`]: who is calling (client certificate, then bearer token), and gRPC TLS.
//! - [`nats_auth`]: how a process authenticates to NATS (credentials file, TLS).
//! - [`topology`]: the JetStream streams and KV buckets, created idempotently at start.
//! - [`streams`]: reading a stream for operators without touching its consumers.
//! - [`direct_get`]: reading a stream by batch direct get alone (the operator's identity).
//! - [`pub_acks`]: JetStream publish acknowledgements read off a subscription of one's own.
//! - [`audit`]: the audit trail's writer (hash chains, anchored heads) and verifier.
//! - [`telemetry`]: logs, OTLP span export and W3C context propagation.
//! - [`metrics`], [`process_metrics`]: the Prometheus registry, the `/metrics` endpoint and the
//!   metrics every process exports.
//! - [`grpc`]: what every gRPC server serves besides its services (reflection, spans, counts).
//! - [`http_server`]: the HTTP/1 accept-and-serve loop of the HTTP endpoints.
//! - [`private_files`]: atomic writes of files holding secrets.

pub mod audit;
pub mod direct_get;
pub mod grpc;
pub mod grpc_limits;
pub mod http_server;
pub mod identity;
pub mod metrics;
pub mod nats_auth;
pub mod private_files;
pub mod process_metrics;
pub mod pub_acks;
pub mod settings;
pub mod streams;
pub mod telemetry;
pub mod tls;
pub mod topology;
