//! gRPC services of the registry.

pub mod flows;
pub mod schema_registry;
pub mod status;
pub mod subscriptions;
