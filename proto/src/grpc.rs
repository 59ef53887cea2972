//! What every Kakehashi gRPC server serves besides its own services: server reflection (v1 and
//! v1alpha, advertising only the services that server really serves) for stock tools.

use tonic_reflection::server::{v1, v1alpha, Builder, Error};

const HEALTH: &str = "grpc.health.v1.Health";

fn builder(services: &[&str], reflection: &str) -> Builder<'static> {
    let mut b = Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(HEALTH)
        .with_service_name(reflection);
    for s in services {
        b = b.with_service_name(*s);
    }
    b
}

/// Reflection v1 listing `services` (fully qualified names), health and itself.
pub fn reflection_v1(
    services: &[&str],
) -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, Error> {
    builder(services, "grpc.reflection.v1.ServerReflection").build_v1()
}

/// Reflection v1alpha (what older grpcurl and grpcio clients speak), listing the same.
pub fn reflection_v1alpha(
    services: &[&str],
) -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, Error> {
    builder(services, "grpc.reflection.v1alpha.ServerReflection").build_v1alpha()
}
