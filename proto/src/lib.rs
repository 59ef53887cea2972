//! Kakehashi contracts: the protobuf envelope and services (`kakehashi.v1`), plus what every
//! party on the bus must agree on byte for byte — identifier rules, NATS subject and stream
//! names, event ids, header names and the CloudEvents encodings. Nothing here opens a socket,
//! reads a file or keeps process state; that is `kakehashi-runtime` (`services/runtime`).
//!
//! Layout:
//! - [`v1`]: generated messages, clients and servers.
//! - [`subjects`]: the NATS subjects, streams and headers every service agrees on.
//! - [`ident`]: checks for department ids, event types, My Number and corporate numbers.
//! - [`formats`]: the JSON Schema formats asserted, and the unknown ones a schema uses.
//! - [`ids`]: new event ids (UUIDv7).
//! - [`strict_json`]: JSON read refusing duplicate keys and nesting past a limit.
//! - [`cloudevents`]: `Event` as a CloudEvent: NATS binary mode (`KH_EVENTS`), JSON and
//!   protobuf formats.

pub mod cloudevents;
pub mod formats;
pub mod ident;
pub mod ids;
pub mod strict_json;
pub mod subjects;

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

/// Media types of protobuf payloads (`Event.data_content_type`).
pub const PROTOBUF_CONTENT_TYPES: [&str; 2] = ["application/protobuf", "application/x-protobuf"];

/// Encoded `FileDescriptorSet` of all Kakehashi protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kakehashi_descriptor.bin"));
