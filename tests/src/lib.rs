//! Test harness: a real `nats-server` with JetStream per test (port chosen by the server, store in
//! a temp dir, killable and restartable), and the Kakehashi services started in-process on
//! `127.0.0.1:0`, over real sockets.

pub mod nats;
pub mod services;
pub mod wait;

pub use nats::NatsServer;
pub use services::{Adapter, Registry};
