//! Payloads are parsed refusing an object that names a key twice. RFC 8259 leaves duplicate
//! names to each reader: a `serde_json::Value` keeps the last, other parsers keep the first, so
//! a payload could be validated on one value and read by a department as another. I-JSON
//! (RFC 7493) forbids them, and so does the bus.
//!
//! The nesting of arrays and objects is counted too, against a limit of the caller's (the
//! registry's and the adapter's `limits.max_json_depth`), so a deep document is refused as such
//! and never by serde_json's built-in recursion limit.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::cell::Cell;
use std::fmt;

/// The largest nesting limit that is ours to answer: serde_json refuses the 128th nested array
/// or object itself (its recursion limit) before any visitor sees it, so a payload one level
/// deeper than a limit of 127 would get serde_json's message instead of ours.
pub const MAX_DEPTH_CEILING: usize = 126;

/// Parses a JSON document as `serde_json::from_slice` would, failing on a duplicate key (the
/// error gives its position). Nesting is left to serde_json's recursion limit.
pub fn parse(data: &[u8]) -> Result<Value, serde_json::Error> {
    read(data, usize::MAX, &Cell::new(false))
}

/// Why [`parse_within`] refused a document.
#[derive(Debug)]
pub enum ParseError {
    /// Not JSON, or an object names a key twice (the error gives its position).
    Json(serde_json::Error),
    /// Arrays and objects nest more than `max_depth` levels deep.
    TooDeep {
        /// The limit.
        max_depth: usize,
    },
}

/// [`parse`], refusing a document whose arrays and objects nest more than `max_depth` levels
/// deep (`[]` and `{}` are one level, a scalar none); `max_depth` is at most
/// [`MAX_DEPTH_CEILING`].
pub fn parse_within(data: &[u8], max_depth: usize) -> Result<Value, ParseError> {
    let too_deep = Cell::new(false);
    match read(data, max_depth, &too_deep) {
        Ok(value) => Ok(value),
        // Whatever serde_json made of our error (it adds a position), the flag says it is ours.
        Err(_) if too_deep.get() => Err(ParseError::TooDeep { max_depth }),
        Err(e) => Err(ParseError::Json(e)),
    }
}

/// `serde_json::from_slice`, through the seed.
fn read(data: &[u8], max_depth: usize, too_deep: &Cell<bool>) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(data);
    let value = Unique { depth: 0, max_depth, too_deep }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Reads a `Value` whose objects have no duplicate keys, at `depth` arrays and objects deep.
#[derive(Clone, Copy)]
struct Unique<'a> {
    depth: usize,
    max_depth: usize,
    /// Set when the document nests deeper than `max_depth`.
    too_deep: &'a Cell<bool>,
}

impl Unique<'_> {
    /// The seed of the items or values of an array or object read at this seed's depth, or an
    /// error when that array or object is one level too deep.
    fn enter<E: de::Error>(self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > self.max_depth {
            self.too_deep.set(true);
            return Err(E::custom(format_args!("nests deeper than {} levels", self.max_depth)));
        }
        Ok(Self { depth, ..self })
    }
}

impl<'de> DeserializeSeed<'de> for Unique<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique<'_> {
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
        let inner = self.enter()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match object.entry(key) {
                serde_json::map::Entry::Occupied(_) => {
                    // The key is not quoted: dead-letter messages never quote the payload.
                    return Err(de::Error::custom("duplicate key: an object names one key twice"));
                }
                serde_json::map::Entry::Vacant(slot) => {
                    let value = map.next_value_seed(inner)?;
                    slot.insert(value);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, parse_within, ParseError, MAX_DEPTH_CEILING};
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

    /// `depth` arrays and objects, alternating, around a string.
    fn nested(depth: usize) -> String {
        let mut doc = r#""my number 123456789018""#.to_string();
        for level in 0..depth {
            doc = if level % 2 == 0 { format!("[{doc}]") } else { format!(r#"{{"k": {doc}}}"#) };
        }
        doc
    }

    /// How many arrays and objects deep `v` nests.
    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn nesting_exactly_at_the_limit_passes_and_one_level_deeper_is_refused_as_too_deep() {
        for limit in [1, 2, 5, 64] {
            let at = nested(limit);
            assert_eq!(
                parse_within(at.as_bytes(), limit).expect("at the limit"),
                serde_json::from_str::<Value>(&at).expect("json")
            );
            let deeper = nested(limit + 1);
            match parse_within(deeper.as_bytes(), limit) {
                Err(ParseError::TooDeep { max_depth }) => assert_eq!(max_depth, limit),
                other => panic!("{limit}: {other:?}"),
            }
        }
        assert_eq!(parse_within(b"7", 1).expect("a scalar is no level"), json!(7));
        assert_eq!(parse_within(b"[]", 1).expect("[] is one level"), json!([]));
        assert!(matches!(parse_within(b"[{}]", 1), Err(ParseError::TooDeep { .. })));
        // A document deeper than the limit yet broken further on: refused as too deep where it
        // gets too deep, whatever follows.
        assert!(matches!(parse_within(b"[[[[", 2), Err(ParseError::TooDeep { max_depth: 2 })));
        // Other errors stay serde_json's, duplicates included.
        assert!(matches!(parse_within(br#"{"a": 1, "a": 2}"#, 4), Err(ParseError::Json(_))));
        assert!(matches!(parse_within(b"[[", 4), Err(ParseError::Json(_))));
    }

    #[test]
    fn at_the_ceiling_one_level_deeper_is_still_ours_to_refuse_not_serde_jsons() {
        let at = nested(MAX_DEPTH_CEILING);
        assert!(parse_within(at.as_bytes(), MAX_DEPTH_CEILING).is_ok());
        let deeper = nested(MAX_DEPTH_CEILING + 1);
        assert!(matches!(
            parse_within(deeper.as_bytes(), MAX_DEPTH_CEILING),
            Err(ParseError::TooDeep { max_depth: MAX_DEPTH_CEILING })
        ));
        // Why the ceiling is not 127: serde_json refuses 128 levels before any visitor sees them.
        let e = parse(nested(MAX_DEPTH_CEILING + 2).as_bytes()).expect_err("serde_json's own limit");
        assert!(e.to_string().contains("recursion limit"), "{e}");
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

        /// Within the limit it reads what `parse` reads; a level less and it is too deep.
        #[test]
        fn parse_within_counts_the_depth_of_every_document(v in value()) {
            let text = serde_json::to_vec(&v).expect("serialise");
            let d = depth(&v);
            // Against serde_json's reading of the text, not `v`: a float need not survive the
            // trip through text exactly (serde_json without `float_roundtrip`).
            let expected: Value = serde_json::from_slice(&text).expect("parse");
            prop_assert_eq!(parse_within(&text, d.max(1)).expect("within its depth"), expected);
            if d >= 1 {
                let refused = matches!(parse_within(&text, d - 1), Err(ParseError::TooDeep { max_depth }) if max_depth == d - 1);
                prop_assert!(refused, "depth {} under a limit of {}", d, d - 1);
            }
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
