//! One module per subcommand group.

pub mod audit;
pub mod cert;
pub mod dev;
pub mod dlq;
pub mod nats;
pub mod policy;
pub mod publish;
pub mod schema;
pub mod secrets;
pub mod sub;
pub mod trace;
