//! Metrics every Kakehashi process exports the same way: what it is (build info), whether it
//! reaches NATS, and how its audit writer keeps up. Registered through [`crate::metrics`]; the
//! values are read at scrape time, so nothing here costs anything between scrapes.

use crate::audit::AuditWriter;
use crate::metrics::Registry;

/// Registers `kakehashi_build_info`, `kakehashi_nats_connected` and the `kakehashi_audit_*`
/// gauges of `service` (e.g. `registry`) in `registry`.
pub fn register(registry: &Registry, service: &'static str, nats: async_nats::Client, audit: AuditWriter) {
    registry
        .gauge(
            "kakehashi_build_info",
            "Always 1; the labels name the service and its version.",
            &["service", "version"],
        )
        .with(&[service, env!("CARGO_PKG_VERSION")])
        .set(1.0);
    registry.gauge_fn(
        "kakehashi_nats_connected",
        "1 while the process's NATS connection is up, 0 while it is disconnected or reconnecting.",
        &[],
        move || {
            let up = matches!(nats.connection_state(), async_nats::connection::State::Connected);
            vec![(Vec::new(), if up { 1.0 } else { 0.0 })]
        },
    );
    let queue = audit.clone();
    registry.gauge_fn(
        "kakehashi_audit_queue_records",
        "Audit records waiting to be written (hops wait when the queue is full).",
        &[],
        move || vec![(Vec::new(), queue.queued() as f64)],
    );
    let capacity = audit.clone();
    registry.gauge_fn(
        "kakehashi_audit_queue_capacity",
        "Audit records the queue holds at most (topology.audit_queue).",
        &[],
        move || vec![(Vec::new(), capacity.queue_capacity() as f64)],
    );
    registry.gauge_fn(
        "kakehashi_audit_anchored_timestamp_seconds",
        "Unix time when the anchored audit chain head last matched the stored chain (0 = not yet).",
        &[],
        move || vec![(Vec::new(), audit.anchored_at_us() as f64 / 1e6)],
    );
}
