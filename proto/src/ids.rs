//! Event ids: UUIDv7, so ids sort by creation time and carry no meaning beyond it.

/// A new random, time-ordered event id (UUIDv7, canonical lowercase form).
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Whether `id` is acceptable as an event id: a canonical UUID or a 26-character ULID.
pub fn is_valid_event_id(id: &str) -> bool {
    if id.len() == 26 {
        // Crockford base32, as ULIDs are written.
        return id.bytes().all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)));
    }
    id.len() == 36 && uuid::Uuid::parse_str(id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_valid_and_distinct() {
        let a = new_event_id();
        let b = new_event_id();
        assert!(is_valid_event_id(&a));
        assert_ne!(a, b);
    }

    #[test]
    fn ulid_accepted_and_garbage_refused() {
        assert!(is_valid_event_id("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(!is_valid_event_id("01ARZ3NDEKTSV4RRFFQ69G5FAI"));
        assert!(!is_valid_event_id("hello"));
        assert!(!is_valid_event_id("kh.in.x"));
    }
}
