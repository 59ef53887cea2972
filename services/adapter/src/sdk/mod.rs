//! The adapter SDK: what a department needs to put its own records on the bus in a few lines.
//!
//! 1. Implement [`ToEvent`] for the record type: its event type, key, version and payload.
//! 2. Connect with [`Bus::builder`]`(nats_url, department).connect()`.
//! 3. [`Bus::publish_record`] one record, or send many through a [`Pipeline`] — publishes are
//!    retried with backoff ([`Retry`]) and each returns an [`Ack`] with the `KH_INGRESS`
//!    sequence and whether the bus already had the event (`duplicate`).
//!
//! Event ids derive from (department, type, key, version) ([`crate::legacy::ids::event_id`]),
//! so re-running an adapter over the same records delivers nothing twice. Events of a type
//! with no registered schema are refused before sending (`unknown_type`).
//!
//! A worked example is `docs/adapters.md` and `services/adapter/examples/department_adapter.rs`.
//! The legacy file import (`kakehashi-adapter ingest`) is built on the same [`Pipeline`].
//!
//! Layout: [`bus`] (connect, single publishes, errors), [`pipeline`] (windowed, in-order
//! publishing with retries), [`record`] (the [`ToEvent`] trait), [`retry`] (the policy),
//! [`seen`] (for subscribers: skipping marked repeats of events already processed).

pub mod bus;
pub mod pipeline;
pub mod record;
pub mod retry;
pub mod seen;

pub use bus::{Ack, Bus, BusBuilder, ConnectError, PublishError};
pub use pipeline::Pipeline;
pub use record::{to_event, ToEvent};
pub use retry::Retry;
pub use seen::SeenEvents;
