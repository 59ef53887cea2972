//! Deterministic event ids for imported records.
//!
//! An id is a name-based UUID in the RFC 9562 version 8 layout: SHA-256 over the record's
//! identity, truncated to 128 bits, with the version and variant bits set (RFC 9562 Appendix
//! B.2 shows the same construction). The same (source, event type, key, version) always gives
//! the same id, so importing a file twice — or re-publishing after a crash between publish and
//! checkpoint — produces ids the bus's deduplication drops.

use sha2::{Digest, Sha256};

/// Separates this id space from any other use of SHA-256 over similar strings.
const DOMAIN: &[u8] = b"kakehashi/legacy-event-id/v1";

/// The deterministic id of an imported record, as a canonical lowercase UUID string.
pub fn event_id(source: &str, event_type: &str, key: &str, version: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(DOMAIN);
    for part in [source, event_type, key, version] {
        // Length-prefixing makes the encoding unambiguous: ("ab", "c") and ("a", "bc")
        // would otherwise hash the same bytes.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0F) | 0x80; // version 8
    bytes[8] = (bytes[8] & 0x3F) | 0x80; // variant 0b10 (RFC 9562)
    format_uuid(&bytes)
}

/// Lowercase hex of SHA-256 over `data`, used for content digests and file fingerprints.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0F)]));
    }
    out
}

fn format_uuid(bytes: &[u8; 16]) -> String {
    let h = hex(bytes);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_give_the_same_id() {
        let a = event_id("city-shibuya", "health.vaccination.recorded", "A001|1", "2024-01-01");
        let b = event_id("city-shibuya", "health.vaccination.recorded", "A001|1", "2024-01-01");
        assert_eq!(a, b);
    }

    #[test]
    fn changing_any_input_changes_the_id() {
        let base = event_id("s", "t.x", "k", "v");
        assert_ne!(base, event_id("s2", "t.x", "k", "v"));
        assert_ne!(base, event_id("s", "t.y", "k", "v"));
        assert_ne!(base, event_id("s", "t.x", "k2", "v"));
        assert_ne!(base, event_id("s", "t.x", "k", "v2"));
    }

    #[test]
    fn moving_text_between_parts_changes_the_id() {
        assert_ne!(event_id("ab", "c", "", ""), event_id("a", "bc", "", ""));
        assert_ne!(event_id("s", "t", "k|", "v"), event_id("s", "t", "k", "|v"));
    }

    #[test]
    fn id_is_a_canonical_version_8_uuid() {
        let id = event_id("s", "t", "k", "v");
        assert_eq!(id.len(), 36);
        let dashes: Vec<usize> = id.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23]);
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(&id[14..15], "8", "version nibble");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "variant bits");
    }

    #[test]
    fn sha256_hex_matches_the_known_digest_of_abc() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
