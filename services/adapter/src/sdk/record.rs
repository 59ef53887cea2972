//! Records that become events: the one trait a department implements.

use crate::legacy::ids::event_id;
use kakehashi_proto::v1::Event;

/// A department record that is published as an event of a standard type.
///
/// The event id is derived from (source, type, [`key`](Self::key),
/// [`version`](Self::version)): publishing the same version twice — a re-run, a retry after a
/// crash — gives the same id, and the bus drops the repeat. A new version of the record (e.g.
/// a corrected row with a later update time) is a new event.
pub trait ToEvent {
    /// The standard event type, e.g. `health.vaccination.recorded`.
    fn event_type(&self) -> &str;

    /// The record's key, the same for every version of the record (the department's own
    /// record number — never a My Number). It becomes the event's subject, and events with the
    /// same key reach subscribers in the order they were published.
    fn key(&self) -> String;

    /// The record's version, e.g. its last-update timestamp.
    fn version(&self) -> String;

    /// The payload, as the event type's schema describes it.
    fn payload(&self) -> serde_json::Value;

    /// A schema version to pin; 0 (the default) means the latest at validation time.
    fn schema_version(&self) -> u32 {
        0
    }
}

/// The event for `record` published by `source` (time and content type are filled in when
/// it is published).
pub fn to_event<R: ToEvent + ?Sized>(source: &str, record: &R) -> Event {
    let event_type = record.event_type().to_string();
    let key = record.key();
    Event {
        id: event_id(source, &event_type, &key, &record.version()),
        source: source.to_string(),
        r#type: event_type,
        subject: key,
        data_content_type: "application/json".into(),
        data: record.payload().to_string().into_bytes(),
        schema_version: record.schema_version(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dose {
        resident: &'static str,
        dose: u32,
        updated: &'static str,
    }

    impl ToEvent for Dose {
        fn event_type(&self) -> &str {
            "health.vaccination.recorded"
        }
        fn key(&self) -> String {
            format!("{}|{}", self.resident, self.dose)
        }
        fn version(&self) -> String {
            self.updated.into()
        }
        fn payload(&self) -> serde_json::Value {
            serde_json::json!({"vaccination": {"dose_number": self.dose}})
        }
    }

    #[test]
    fn same_version_gives_the_same_id_and_a_new_version_a_new_one() {
        let a = to_event("city-shibuya", &Dose { resident: "A1", dose: 1, updated: "2024-10-31" });
        let again = to_event("city-shibuya", &Dose { resident: "A1", dose: 1, updated: "2024-10-31" });
        let corrected = to_event("city-shibuya", &Dose { resident: "A1", dose: 1, updated: "2024-11-02" });
        assert_eq!(a.id, again.id);
        assert_ne!(a.id, corrected.id);
        assert_eq!(a.id, event_id("city-shibuya", "health.vaccination.recorded", "A1|1", "2024-10-31"));
        assert_eq!((a.subject.as_str(), a.source.as_str()), ("A1|1", "city-shibuya"));
        assert!(kakehashi_proto::ids::is_valid_event_id(&a.id));
    }
}
