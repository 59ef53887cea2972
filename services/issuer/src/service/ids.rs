//! Identifiers derived from the request id, so that handling one request twice (a redelivery
//! after a crash) produces the same certificate id and the same event id: the bus stores an
//! event id once (`Nats-Msg-Id` dedup), so the answer is published exactly once.
//!
//! Each id is a UUIDv8 (RFC 9562 §5.8, "custom"): the first 128 bits of SHA-256 over a label,
//! a zero byte and the request id, with the version and variant bits set. A canonical UUID, so
//! `kakehashi_proto::ids::is_valid_event_id` accepts it.

use sha2::{Digest, Sha256};

/// A UUIDv8 derived from `label` and `request_id`.
fn derived_uuid(label: &str, request_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"kakehashi-issuer/");
    h.update(label.as_bytes());
    h.update([0u8]);
    h.update(request_id.as_bytes());
    let digest = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // variant RFC 9562
    let hex = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The certificate id of the card issued for `request_id`.
pub fn certificate_id(request_id: &str) -> String {
    derived_uuid("certificate", request_id)
}

/// The id of the `health.vaccination.certificate.issued` event answering `request_id`.
pub fn issued_event_id(request_id: &str) -> String {
    derived_uuid("issued-event", request_id)
}

/// The id of the `health.vaccination.certificate.refused` event answering `request_id`.
pub fn refused_event_id(request_id: &str) -> String {
    derived_uuid("refused-event", request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_valid_event_ids() {
        let r = "0192f3a4-5b6c-7d8e-9f01-23456789abcd";
        assert_eq!(issued_event_id(r), issued_event_id(r));
        assert_ne!(issued_event_id(r), certificate_id(r));
        assert_ne!(issued_event_id(r), refused_event_id(r));
        assert_ne!(issued_event_id(r), issued_event_id("0192f3a4-5b6c-7d8e-9f01-23456789abce"));
        for id in [certificate_id(r), issued_event_id(r), refused_event_id(r)] {
            assert!(kakehashi_proto::ids::is_valid_event_id(&id), "{id}");
            assert_eq!(&id[14..15], "8", "version 8: {id}");
            assert!("89ab".contains(&id[19..20]), "RFC variant: {id}");
        }
    }
}
