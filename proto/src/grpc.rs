//! What every Kakehashi gRPC server serves besides its own services: server reflection (v1 and
//! v1alpha, advertising only the services that server really serves) for stock tools; and the
//! largest message its services decode.

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

/// Default of `max_request_bytes`: the largest gRPC message a server reads (16 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Room for the rest of a request (envelope fields, protobuf framing) around its largest field.
pub const REQUEST_MARGIN_BYTES: usize = 64 * 1024;

/// The decoding limit of a server's services: `max_request_bytes`, raised when lower to the
/// largest configured field limit plus [`REQUEST_MARGIN_BYTES`]. Up to it a request reaches the
/// service, whose own limit answers (`RESOURCE_EXHAUSTED` naming its configuration key), never
/// tonic's 4 MiB default; beyond it the transport refuses it unread (`OUT_OF_RANGE`).
pub fn max_decoding_bytes(max_request_bytes: usize, largest_field_limit: usize) -> usize {
    max_request_bytes.max(largest_field_limit.saturating_add(REQUEST_MARGIN_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoding_limit_is_the_bound_unless_a_configured_limit_needs_more() {
        assert_eq!(max_decoding_bytes(DEFAULT_MAX_REQUEST_BYTES, 512 * 1024), DEFAULT_MAX_REQUEST_BYTES);
        assert_eq!(max_decoding_bytes(1024, 512 * 1024), 512 * 1024 + REQUEST_MARGIN_BYTES);
        assert_eq!(max_decoding_bytes(0, usize::MAX), usize::MAX, "no overflow");
    }
}
