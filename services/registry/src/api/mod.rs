//! gRPC services of the registry.

pub mod dead_letters;
pub mod flows;
pub mod schema_registry;
pub mod status;
pub mod subscriptions;
