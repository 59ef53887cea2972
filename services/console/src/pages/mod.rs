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

/// Seconds in a span like `30s`, `15m`, `2h`, `1d` (the CLI's `--since` spans).
pub fn span_secs(s: &str) -> Option<i64> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(per)
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
}
