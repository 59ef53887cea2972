//! Test harness: a real `nats-server` with JetStream per test (port chosen by the server, store in
//! a temp dir, killable and restartable), the Kakehashi services started in-process on
//! `127.0.0.1:0` over real sockets, or the registry as a child process that can be SIGKILLed.
//!
//! Layout:
//! - [`nats`]: the nats-server child.
//! - [`cluster`]: three nats-server children forming a JetStream cluster on loopback (killable
//!   and restartable node by node, leaders locatable).
//! - [`services`]: registry and adapter in-process.
//! - [`process`]: the registry as an OS process (`kh-registry` binary of this crate).
//! - [`bus`]: what a department or operator does: schemas, policies, subscriptions, publishing,
//!   dead letters, stream contents.
//! - [`collect`]: a reconnecting subscriber that counts deliveries by event id.
//! - [`interop`]: third-party clients (Python gRPC, nats-py, jwcrypto) running `tests/interop/`.
//! - [`otlp`]: an OTLP/gRPC trace receiver that keeps the spans it is sent.
//! - [`wait`]: polling for a condition under a timeout.
//! - [`tamper`]: forging the audit trail below NATS, for the tests that catch it.
//! - [`console`]: the web console in-process; [`webdriver`]: headless chromium driving it.
//! - [`bench`]: what the benchmarks share: workload, setup, pipelined publishing, raw relay, `/proc`.

pub mod bench;
pub mod bus;
pub mod cluster;
pub mod collect;
pub mod console;
pub mod interop;
pub mod lossy_link;
pub mod nats;
pub mod otlp;
pub mod process;
pub mod services;
pub mod tamper;
pub mod wait;
pub mod webdriver;

pub use cluster::NatsCluster;
pub use nats::NatsServer;
pub use process::RegistryProcess;
pub use services::{Adapter, Registry};
