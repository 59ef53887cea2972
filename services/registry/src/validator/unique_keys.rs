//! Payloads are parsed refusing an object that names a key twice. RFC 8259 leaves duplicate
//! names to each reader: a `serde_json::Value` keeps the last, other parsers keep the first, so
//! a payload could be validated on one value and read by a department as another. I-JSON
//! (RFC 7493) forbids them, and so does the bus.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Parses a JSON document as `serde_json::from_slice` would, failing on a duplicate key (the
/// error gives its position).
pub fn parse(data: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Unique>(data).map(|u| u.0)
}

/// A `Value` whose objects had no duplicate keys.
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json's own `Value` does (JSON text has no NaN or infinity).
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match object.entry(key) {
                serde_json::map::Entry::Occupied(_) => {
                    // The key is not quoted: dead-letter messages never quote the payload.
                    return Err(de::Error::custom("duplicate key: an object names one key twice"));
                }
                serde_json::map::Entry::Vacant(slot) => {
                    let Unique(value) = map.next_value()?;
                    slot.insert(value);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    #[test]
    fn a_key_named_twice_is_refused_at_any_depth() {
        for doc in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"p": {"my_number": "123456789018", "my_number": "111111111118"}}"#,
            r#"[{"x": [1, {"k": true, "k": false}]}]"#,
            // Escapes decode to the same name.
            r#"{"my_number": "1", "my\u005fnumber": "2"}"#,
        ] {
            let e = parse(doc.as_bytes()).expect_err(doc);
            assert!(e.to_string().contains("duplicate key"), "{doc}: {e}");
            assert!(e.line() > 0 && e.column() > 0, "{doc}: the position is given");
        }
    }

    #[test]
    fn the_same_key_in_different_objects_is_fine() {
        let doc = r#"{"a": {"k": 1}, "b": {"k": 2}, "c": [{"k": 3}, {"k": 4}]}"#;
        assert_eq!(parse(doc.as_bytes()).expect("valid"), serde_json::from_str::<Value>(doc).expect("json"));
    }

    #[test]
    fn errors_stay_serde_json_errors() {
        assert!(parse(b"{\"a\": ").is_err());
        assert!(parse(b"\xff").is_err());
        assert!(parse(b"1 2").is_err());
        assert_eq!(parse(b" 1.5e3 ").expect("number"), json!(1500.0));
    }

    /// JSON values without duplicate keys (serde_json's maps cannot hold any).
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Without duplicates it reads exactly what serde_json reads.
        #[test]
        fn agrees_with_serde_json_on_documents_without_duplicates(v in value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.expect("serialise");
            let expected: Value = serde_json::from_slice(&text).expect("parse");
            prop_assert_eq!(parse(&text).expect("unique keys"), expected);
        }

        /// Arbitrary bytes: an error or the same value as serde_json, never a panic; and
        /// never a value serde_json would refuse.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(v) = parse(&bytes) {
                prop_assert_eq!(Some(v), serde_json::from_slice::<Value>(&bytes).ok());
            }
        }
    }
}
