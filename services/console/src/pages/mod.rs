//! One module per page. Each handler takes the logged-in context (or redirects to the login
//! page), calls the registry as that department, and renders HTML.

pub mod dead_letters;
pub mod flows;
pub mod login;
pub mod schemas;
pub mod subscriptions;
pub mod trace;

/// A protobuf timestamp `secs` seconds before now.
pub fn ago(secs: i64) -> prost_types::Timestamp {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    prost_types::Timestamp { seconds: now - secs.max(0), nanos: 0 }
}

/// The longest span accepted: from the epoch back to 0001-01-01, so `ago` of any accepted
/// span is still a valid protobuf `Timestamp` (the registry refuses earlier ones).
const MAX_SPAN_SECS: i64 = 62_135_596_800;

/// Seconds in a span like `30s`, `15m`, `2h`, `1d` (the CLI's `--since` spans); `None` when
/// it is not one, or longer than [`MAX_SPAN_SECS`].
pub fn span_secs(s: &str) -> Option<i64> {
    // The unit is the last character, which a query parameter may make multi-byte.
    let (at, unit) = s.char_indices().last()?;
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let n: i64 = s.get(..at)?.parse().ok().filter(|n| *n > 0)?;
    n.checked_mul(per).filter(|secs| *secs <= MAX_SPAN_SECS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans() {
        assert_eq!(super::span_secs("15m"), Some(900));
        assert_eq!(super::span_secs("2h"), Some(7200));
        assert_eq!(super::span_secs("x"), None);
        assert_eq!(super::span_secs(""), None);
        assert_eq!(super::span_secs("-5m"), None);
        assert_eq!(super::span_secs("99999999999999999d"), None);
    }

    #[test]
    fn spans_never_panic_on_odd_input() {
        // A multi-byte last character is not a unit (and must not be sliced through).
        assert_eq!(super::span_secs("1日"), None);
        assert_eq!(super::span_secs("日"), None);
        assert_eq!(super::span_secs("日d"), None);
        // Fits in an i64 once multiplied, yet reaches back before year 1: refused.
        assert_eq!(super::span_secs("99999999999999d"), None);
        assert_eq!(super::span_secs("9223372036854775807s"), None);
        assert_eq!(super::span_secs("719162d"), Some(super::MAX_SPAN_SECS));
        assert_eq!(super::span_secs("719163d"), None);
    }
}
