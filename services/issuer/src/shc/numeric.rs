//! The `shc:/` numeric form: every JWS character `c` becomes the two digits of `ord(c) - 45`, so
//! the QR code can hold the bulk in its dense numeric mode. Single QR only: chunked
//! `shc:/i/n/…` is deprecated by the spec and neither produced nor accepted.

/// The spec's limit for a JWS in a single version-22 QR code.
pub const MAX_SINGLE_QR_JWS_LEN: usize = 1195;

/// The URI scheme prefix of a health card QR code.
pub const SHC_PREFIX: &str = "shc:/";

/// A string that is not a valid single-QR `shc:/` numeric form, or a JWS that cannot become one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumericError {
    /// Does not start with `shc:/`.
    #[error("not a SMART Health Card: the text does not start with shc:/")]
    NotShc,
    /// Chunked `shc:/i/n/…` form (deprecated by the spec).
    #[error("chunked shc:/ QR codes are deprecated and not supported")]
    Chunked,
    /// Something other than ASCII digits after the prefix.
    #[error("shc:/ data contains a non-digit at position {0}")]
    NonDigit(usize),
    /// An odd number of digits.
    #[error("shc:/ data has an odd number of digits ({0})")]
    OddLength(usize),
    /// A digit pair that maps to no JWS character.
    #[error("shc:/ digit pair {value:02} at position {position} is not a JWS character")]
    BadPair {
        /// Digit offset of the pair.
        position: usize,
        /// The pair's value.
        value: u8,
    },
    /// No data after the prefix.
    #[error("shc:/ data is empty")]
    Empty,
    /// A JWS character outside base64url and `.`.
    #[error("character {0:?} cannot occur in a compact JWS")]
    NotJwsChar(char),
    /// A JWS too long for one QR code.
    #[error("JWS is {len} characters; a single QR code holds at most {max}")]
    TooLarge {
        /// The JWS length.
        len: usize,
        /// [`MAX_SINGLE_QR_JWS_LEN`].
        max: usize,
    },
}

fn is_jws_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
}

/// Encodes a compact JWS as `shc:/` digits; refuses anything over the single-QR limit.
pub fn encode(jws: &str) -> Result<String, NumericError> {
    if jws.len() > MAX_SINGLE_QR_JWS_LEN {
        return Err(NumericError::TooLarge { len: jws.len(), max: MAX_SINGLE_QR_JWS_LEN });
    }
    let mut out = String::with_capacity(SHC_PREFIX.len() + 2 * jws.len());
    out.push_str(SHC_PREFIX);
    for (i, b) in jws.bytes().enumerate() {
        if !is_jws_char(b) {
            // Report the whole character, not a UTF-8 byte of it.
            let c = jws.get(i..).and_then(|s| s.chars().next()).unwrap_or('\u{FFFD}');
            return Err(NumericError::NotJwsChar(c));
        }
        let v = b - 45;
        out.push(char::from(b'0' + v / 10));
        out.push(char::from(b'0' + v % 10));
    }
    Ok(out)
}

/// Decodes `shc:/` digits back to the JWS. The scheme is matched case-insensitively because some
/// QR scanners upper-case URIs.
pub fn decode(text: &str) -> Result<String, NumericError> {
    let text = text.trim();
    let digits = match text.get(..SHC_PREFIX.len()) {
        Some(p) if p.eq_ignore_ascii_case(SHC_PREFIX) => &text[SHC_PREFIX.len()..],
        _ => return Err(NumericError::NotShc),
    };
    if digits.contains('/') {
        return Err(NumericError::Chunked);
    }
    if digits.is_empty() {
        return Err(NumericError::Empty);
    }
    if let Some(pos) = digits.bytes().position(|b| !b.is_ascii_digit()) {
        return Err(NumericError::NonDigit(pos));
    }
    if digits.len() % 2 != 0 {
        return Err(NumericError::OddLength(digits.len()));
    }
    let mut jws = String::with_capacity(digits.len() / 2);
    for (i, pair) in digits.as_bytes().chunks_exact(2).enumerate() {
        let value = (pair[0] - b'0') * 10 + (pair[1] - b'0');
        let c = value + 45;
        if !is_jws_char(c) {
            return Err(NumericError::BadPair { position: i * 2, value });
        }
        jws.push(char::from(c));
    }
    Ok(jws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_by_offset_45() {
        // '-' is 45 → 00, 'z' is 122 → 77, '.' is 46 → 01.
        assert_eq!(encode("-z.").expect("ok"), "shc:/007701");
        assert_eq!(decode("shc:/007701").expect("ok"), "-z.");
        assert_eq!(decode("SHC:/007701").expect("ok"), "-z.");
    }

    #[test]
    fn decode_failures_are_typed() {
        assert_eq!(decode("hello"), Err(NumericError::NotShc));
        assert_eq!(decode("shc:/"), Err(NumericError::Empty));
        assert_eq!(decode("shc:/1/2/0077"), Err(NumericError::Chunked));
        assert_eq!(decode("shc:/007"), Err(NumericError::OddLength(3)));
        assert_eq!(decode("shc:/00a7"), Err(NumericError::NonDigit(2)));
        // 78 + 45 = 123 '{' is past 'z'; 02 + 45 = 47 '/' is not base64url.
        assert_eq!(decode("shc:/0078"), Err(NumericError::BadPair { position: 2, value: 78 }));
        assert_eq!(decode("shc:/02"), Err(NumericError::BadPair { position: 0, value: 2 }));
        assert_eq!(decode("shc:/99"), Err(NumericError::BadPair { position: 0, value: 99 }));
    }

    #[test]
    fn size_limit_is_the_spec_single_qr_limit() {
        assert!(encode(&"a".repeat(MAX_SINGLE_QR_JWS_LEN)).is_ok());
        assert_eq!(
            encode(&"a".repeat(MAX_SINGLE_QR_JWS_LEN + 1)),
            Err(NumericError::TooLarge { len: 1196, max: 1195 })
        );
        assert_eq!(encode("a b"), Err(NumericError::NotJwsChar(' ')));
        assert_eq!(encode("aé"), Err(NumericError::NotJwsChar('é')));
    }
}
