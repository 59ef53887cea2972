//! Kakehashi contracts: the protobuf envelope and services (`kakehashi.v1`), plus small helpers
//! on them — identifier rules, NATS subject names, event ids and header names.
//!
//! Layout:
//! - [`v1`]: generated messages, clients and servers.
//! - [`subjects`]: the NATS subjects, streams and headers every service agrees on.
//! - [`ident`]: checks for department ids, event types, My Number and corporate numbers.
//! - [`formats`]: the JSON Schema formats asserted, and the unknown ones a schema uses.
//! - [`ids`]: new event ids (UUIDv7).
//! - [`cloudevents`]: `Event` as a CloudEvent: NATS binary mode (`KH_EVENTS`), JSON and
//!   protobuf formats.
//! - [`identity`], [`tls`]: who is calling (client certificate, then bearer token), and gRPC TLS.

pub mod audit;
pub mod cloudevents;
pub mod formats;
pub mod grpc;
pub mod http_server;
pub mod ident;
pub mod identity;
pub mod ids;
pub mod metrics;
pub mod nats_auth;
pub mod private_files;
pub mod process_metrics;
pub mod settings;
pub mod streams;
pub mod subjects;
pub mod telemetry;
pub mod tls;
pub mod topology;

/// Generated code, nested by protobuf package so that the paths prost writes between packages
/// (`super::super::io::cloudevents::v1`) resolve.
mod generated {
    pub mod kakehashi {
        pub mod v1 {
            #![allow(missing_docs, clippy::all)]
            tonic::include_proto!("kakehashi.v1");
        }
    }
    pub mod io {
        pub mod cloudevents {
            pub mod v1 {
                #![allow(missing_docs, clippy::all)]
                tonic::include_proto!("io.cloudevents.v1");
            }
        }
    }
}

/// Generated code for package `io.cloudevents.v1`: the CloudEvents protobuf format.
pub use generated::io::cloudevents::v1 as cloudevents_v1;
/// Generated code for package `kakehashi.v1`.
pub use generated::kakehashi::v1;

/// Encoded `FileDescriptorSet` of all Kakehashi protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kakehashi_descriptor.bin"));
