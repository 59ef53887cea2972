//! Property tests: the numeric form round-trips every JWS string, and decoders never panic.

use proptest::prelude::*;

use crate::shc::numeric::{decode, encode, MAX_SINGLE_QR_JWS_LEN};
use crate::{IssuerKey, KeyRing, Verifier};

proptest! {
    #[test]
    fn numeric_round_trips_any_base64url_text(s in "[A-Za-z0-9_.-]{1,1195}") {
        let numeric = encode(&s).expect("encodable");
        prop_assert!(numeric.starts_with("shc:/"));
        prop_assert_eq!(numeric.len(), 5 + 2 * s.len());
        prop_assert!(numeric[5..].bytes().all(|b| b.is_ascii_digit()));
        prop_assert_eq!(decode(&numeric).expect("decodable"), s);
    }

    #[test]
    fn numeric_decode_never_panics(s in any::<String>()) {
        let _ = decode(&s);
        let _ = decode(&format!("shc:/{s}"));
    }

    #[test]
    fn numeric_decode_of_digit_strings_is_total(d in "[0-9]{0,400}") {
        // Any digit string either decodes to JWS characters that re-encode to it, or fails typed.
        if let Ok(jws) = decode(&format!("shc:/{d}")) {
            if jws.len() <= MAX_SINGLE_QR_JWS_LEN {
                prop_assert_eq!(encode(&jws).expect("re-encode"), format!("shc:/{d}"));
            }
        }
    }

    #[test]
    fn verify_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), png_magic in any::<bool>()) {
        let key = IssuerKey::generate();
        let v = Verifier::new(KeyRing::new(vec![key]).expect("ring").jwks());
        let mut input = if png_magic { b"\x89PNG\r\n\x1a\n".to_vec() } else { Vec::new() };
        input.extend_from_slice(&bytes);
        prop_assert!(v.verify_input(&input).is_err());
    }
}
