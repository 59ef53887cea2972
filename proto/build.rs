//! Generates Rust code for `kakehashi/v1/*.proto` with protox (pure Rust: no system `protoc`),
//! and writes the encoded descriptor set that gRPC server reflection serves.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "kakehashi/v1/event.proto",
    "kakehashi/v1/registry.proto",
    "kakehashi/v1/publisher.proto",
    "kakehashi/v1/delivery.proto",
    "kakehashi/v1/subscriptions.proto",
    "kakehashi/v1/flows.proto",
    "kakehashi/v1/dead_letters.proto",
    "kakehashi/v1/audit.proto",
    "io/cloudevents/v1/cloudevents.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=kakehashi");
    println!("cargo:rerun-if-changed=io");
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("kakehashi_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
