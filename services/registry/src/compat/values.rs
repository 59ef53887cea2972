//! Helpers on JSON values: numeric comparison and equality with JSON Schema's notion of
//! equality (`1` equals `1.0`), and reading keyword values as counts or bounds.

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// Compares two JSON numbers by value. Integers are compared exactly; anything else through
/// `f64` (precise enough for schema bounds, which are written by people).
pub(crate) fn num_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// Whether a JSON number is mathematically an integer (`2.0` is; JSON Schema agrees).
pub(crate) fn is_integer(n: &Number) -> bool {
    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

/// JSON Schema equality: numbers by value, objects regardless of key order.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Whether `values` contains `v` under [`json_eq`].
pub(crate) fn contains_value(values: &[Value], v: &Value) -> bool {
    values.iter().any(|x| json_eq(x, v))
}

/// A keyword value read as a non-negative count (`minLength`, `maxItems`, ...). `2.0` counts.
pub(crate) fn as_count(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < u64::MAX as f64).map(|f| f as u64)
        }),
        _ => None,
    }
}

/// Whether `x` is an integer multiple of `m` (both positive per the spec). Exact for
/// integers; otherwise a relative tolerance absorbs binary rounding (`0.3 / 0.1`).
pub(crate) fn is_multiple(x: &Number, m: &Number) -> bool {
    if let (Some(a), Some(b)) = (x.as_i64(), m.as_i64()) {
        return b != 0 && a % b == 0;
    }
    match (x.as_f64(), m.as_f64()) {
        (Some(a), Some(b)) if b != 0.0 => {
            let q = a / b;
            q.is_finite() && (q - q.round()).abs() <= 1e-9 * q.abs().max(1.0)
        }
        _ => false,
    }
}

/// A short rendering of a value for messages, cut so a huge `const` cannot flood a report.
pub(crate) fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}...")
    } else {
        s
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    #[test]
    fn integer_and_float_spellings_are_equal() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(json_eq(&json!({"a": [1, 2]}), &json!({"a": [1.0, 2]})));
        assert!(!json_eq(&json!(1), &json!("1")));
    }

    #[test]
    fn decimal_multiples_tolerate_rounding() {
        let n = |v: f64| Number::from_f64(v).expect("finite");
        assert!(is_multiple(&n(0.3), &n(0.1)));
        assert!(!is_multiple(&n(0.35), &n(0.1)));
        assert!(is_multiple(&Number::from(10), &Number::from(5)));
    }
}
