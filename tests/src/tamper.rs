//! Playing an attacker below NATS on the audit trail, for the tests that show it is caught.

use async_nats::jetstream;
use kakehashi_runtime::audit::AuditRecord;
use std::time::Duration;

/// The pause between a tamper test's events, over the audit linger (5 ms by default): each
/// event's hops then start records of their own, so a record after a chain's start holds a
/// `delivered` hop for [`forge_a_delivered_hop`]. Without it, three quick events could all be
/// written as the chain's first record, and the forgery found nothing to forge.
pub const BETWEEN_EVENTS: Duration = Duration::from_millis(25);

/// Deletes the first record after a chain's start that holds a `delivered` hop (a batch record,
/// or a record of that hop alone) from `KH_AUDIT` and stores a copy with that hop's outcome
/// forged, keeping the old hash (which the next link's `prev_hash` names); the original record.
pub async fn forge_a_delivered_hop(js: &jetstream::Context, records: &[(u64, AuditRecord)]) -> AuditRecord {
    let holds_delivered =
        |r: &AuditRecord| r.hop == "delivered" || r.hops.iter().any(|h| h.hop == "delivered");
    let (victim_seq, victim) = records
        .iter()
        .find(|(_, r)| r.seq > 1 && holds_delivered(r))
        .cloned()
        .expect("a record holding a delivered hop");
    js.get_stream("KH_AUDIT").await.expect("stream").delete_message(victim_seq).await.expect("delete");
    let mut forged = victim.clone();
    match forged.hops.iter_mut().find(|h| h.hop == "delivered") {
        Some(hop) => hop.outcome = "forged".into(),
        None => forged.outcome = "forged".into(),
    }
    js.publish(kakehashi_proto::subjects::AUDIT_RECORDS, prost::Message::encode_to_vec(&forged).into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    victim
}
