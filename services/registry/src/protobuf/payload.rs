//! Protobuf payloads against a registered message: decode (`DynamicMessage::decode`), refuse
//! unknown fields unless the version allows them, check My Numbers' check digits, and replace
//! My Numbers by a reader's pseudonym at delivery. Paths are JSON-pointer-like, built from field
//! names (`/person/my_number`, `/children/0/name`), with `#<number>` for an unknown field.
//! Messages never quote payload values.

use crate::store::record::ProtobufSchema;
use kakehashi_proto::v1::FieldViolation;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage as _, Value};
use std::collections::HashSet;

use super::compile::ProtoError;

/// How deep nested messages are walked (decoding itself is bounded by prost's recursion limit).
const MAX_DEPTH: usize = 100;

/// A protobuf version, ready to check payloads.
#[derive(Debug, Clone)]
pub struct ProtoSchema {
    /// The payload message.
    pub message: MessageDescriptor,
    /// Whether fields the version does not declare are accepted.
    pub allow_unknown_fields: bool,
    /// Full names of the fields marked `(kakehashi.v1.my_number)`, computed once.
    my_numbers: HashSet<String>,
}

/// Why a protobuf payload is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtoRejected {
    /// One line, naming the failing paths.
    pub message: String,
    /// One violation per failing path.
    pub violations: Vec<FieldViolation>,
}

impl ProtoRejected {
    /// A rejection for these field violations, its message listing each as `pointer: message`.
    pub(crate) fn of(violations: Vec<FieldViolation>) -> Self {
        let message = violations
            .iter()
            .map(|v| format!("{}: {}", if v.pointer.is_empty() { "/" } else { &v.pointer }, v.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self { message, violations }
    }
}

impl ProtoSchema {
    /// Loads a stored protobuf version.
    pub fn from_record(p: &ProtobufSchema) -> Result<Self, ProtoError> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&p.descriptor_set)
            .map_err(|e| ProtoError::Descriptor(format!("not base64: {e}")))?;
        let message = super::compile::load(&bytes, &p.message)?;
        Ok(Self::new(message, p.allow_unknown_fields))
    }

    /// A schema over an already compiled message.
    pub fn new(message: MessageDescriptor, allow_unknown_fields: bool) -> Self {
        let my_numbers = message
            .parent_pool()
            .all_messages()
            .flat_map(|m| m.fields().collect::<Vec<_>>())
            .filter(super::is_my_number)
            .map(|f| f.full_name().to_string())
            .collect();
        Self { message, allow_unknown_fields, my_numbers }
    }

    /// Whether any field of the schema holds a My Number.
    pub fn has_my_numbers(&self) -> bool {
        !self.my_numbers.is_empty()
    }

    /// Whether `field` carries `(kakehashi.v1.my_number)` (the JSON path asks, see [`super::json`]).
    pub fn holds_my_number(&self, field: &prost_reflect::FieldDescriptor) -> bool {
        self.my_numbers.contains(field.full_name())
    }

    /// Decodes and checks a payload; at most `max` violations.
    pub fn check(&self, data: &[u8], max: usize) -> Result<DynamicMessage, ProtoRejected> {
        let msg = DynamicMessage::decode(self.message.clone(), data).map_err(|e| {
            let (_, detail) = decode_error_path(&e.to_string());
            // prost-reflect's errors do not say where: find the field by walking the wire.
            let pointer = locate_failure(&self.message, data, &mut String::new(), 0).unwrap_or_default();
            let message = format!("payload does not decode as {}: {detail}", self.message.full_name());
            ProtoRejected {
                violations: vec![FieldViolation {
                    pointer,
                    schema_pointer: self.message.full_name().to_string(),
                    message: message.clone(),
                }],
                message,
            }
        })?;
        let mut violations = Vec::new();
        self.walk(&msg, &mut String::new(), &mut violations, max.max(1), 0);
        if violations.is_empty() {
            return Ok(msg);
        }
        Err(ProtoRejected::of(violations))
    }

    fn walk(
        &self,
        msg: &DynamicMessage,
        path: &mut String,
        out: &mut Vec<FieldViolation>,
        max: usize,
        depth: usize,
    ) {
        if depth > MAX_DEPTH || out.len() >= max {
            return;
        }
        if !self.allow_unknown_fields {
            for u in msg.unknown_fields() {
                if out.len() >= max {
                    return;
                }
                out.push(FieldViolation {
                    pointer: format!("{path}/#{}", u.number()),
                    schema_pointer: msg.descriptor().full_name().to_string(),
                    message: format!(
                        "unknown field number {} (not declared by {}; this version does not allow unknown fields)",
                        u.number(),
                        msg.descriptor().full_name()
                    ),
                });
            }
        }
        for (field, value) in msg.fields() {
            let len = path.len();
            path.push('/');
            path.push_str(field.name());
            let my_number = self.my_numbers.contains(field.full_name());
            match value {
                Value::Message(m) => self.walk(m, path, out, max, depth + 1),
                Value::List(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let l = path.len();
                        path.push_str(&format!("/{i}"));
                        match item {
                            Value::Message(m) => self.walk(m, path, out, max, depth + 1),
                            Value::String(s) if my_number => bad_my_number(s, path, &field, out),
                            _ => {}
                        }
                        path.truncate(l);
                    }
                }
                Value::Map(entries) => {
                    for (key, item) in entries {
                        if let Value::Message(m) = item {
                            let l = path.len();
                            path.push_str(&format!("/{}", map_key(key)));
                            self.walk(m, path, out, max, depth + 1);
                            path.truncate(l);
                        }
                    }
                }
                Value::String(s) if my_number => bad_my_number(s, path, &field, out),
                _ => {}
            }
            path.truncate(len);
        }
    }

    /// The payload with every My Number replaced by `department`'s pseudonym; `None` when
    /// there is nothing to replace (the bytes then pass through untouched).
    pub fn pseudonymise(
        &self,
        data: &[u8],
        secret: &[u8],
        department: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        if self.my_numbers.is_empty() {
            return Ok(None);
        }
        let mut msg = DynamicMessage::decode(self.message.clone(), data)
            .map_err(|e| format!("stored protobuf payload does not decode: {e}"))?;
        let replaced = self.replace(&mut msg, secret, department, 0);
        Ok((replaced > 0).then(|| msg.encode_to_vec()))
    }

    fn replace(&self, msg: &mut DynamicMessage, secret: &[u8], department: &str, depth: usize) -> usize {
        if depth > MAX_DEPTH {
            return 0;
        }
        let mut n = 0;
        for (field, value) in msg.fields_mut() {
            let my_number = self.my_numbers.contains(field.full_name());
            n += match value {
                Value::String(s) if my_number && !s.is_empty() => {
                    *s = crate::pii::pseudonym(secret, department, s);
                    1
                }
                Value::Message(m) => self.replace(m, secret, department, depth + 1),
                Value::List(items) => items
                    .iter_mut()
                    .map(|item| match item {
                        Value::String(s) if my_number && !s.is_empty() => {
                            *s = crate::pii::pseudonym(secret, department, s);
                            1
                        }
                        Value::Message(m) => self.replace(m, secret, department, depth + 1),
                        _ => 0,
                    })
                    .sum(),
                Value::Map(entries) => entries
                    .values_mut()
                    .map(|item| match item {
                        Value::Message(m) => self.replace(m, secret, department, depth + 1),
                        _ => 0,
                    })
                    .sum(),
                _ => 0,
            };
        }
        n
    }
}

pub(super) fn bad_my_number(
    s: &str,
    path: &str,
    field: &prost_reflect::FieldDescriptor,
    out: &mut Vec<FieldViolation>,
) {
    if !s.is_empty() && !kakehashi_proto::ident::is_valid_my_number(s) {
        out.push(FieldViolation {
            pointer: path.to_string(),
            schema_pointer: field.full_name().to_string(),
            // Never the value: it may be (nearly) a real My Number.
            message: "not a valid My Number (12 digits with a correct check digit)".into(),
        });
    }
}

fn map_key(key: &prost_reflect::MapKey) -> String {
    use prost_reflect::MapKey as K;
    match key {
        K::Bool(b) => b.to_string(),
        K::I32(v) => v.to_string(),
        K::I64(v) => v.to_string(),
        K::U32(v) => v.to_string(),
        K::U64(v) => v.to_string(),
        K::String(s) => s.replace('~', "~0").replace('/', "~1"),
    }
}

/// Every check the bus applies to a protobuf payload once its schema is resolved: the size
/// limit, decoding, unknown fields, My Number check digits. The validator and the dry run
/// (`SchemaRegistry/ValidatePayload`) both call this.
pub fn check_payload(
    data: &[u8],
    schema: &ProtoSchema,
    limits: crate::validator::CheckLimits,
) -> Result<(), crate::validator::PayloadRejected> {
    checked(data, limits, |max| schema.check(data, max))
}

/// The size limit, then `check` (given `limits.max_violations`), as a validator rejection: the
/// one shape of every protobuf subject's payload check, binary or proto3 JSON.
pub(crate) fn checked<T>(
    data: &[u8],
    limits: crate::validator::CheckLimits,
    check: impl FnOnce(usize) -> Result<T, ProtoRejected>,
) -> Result<(), crate::validator::PayloadRejected> {
    use crate::validator::{reason::Reason, PayloadRejected};
    crate::validator::check_size(data, limits)?;
    check(limits.max_violations).map(drop).map_err(|r| PayloadRejected {
        reason: Reason::SchemaViolation,
        message: r.message,
        violations: r.violations,
    })
}

/// The path of the first field whose bytes do not decode (a wire-level walk mirroring what the
/// decoder checks: tags, lengths, wire types of known fields, UTF-8 of strings, nested messages).
fn locate_failure(
    desc: &MessageDescriptor,
    mut buf: &[u8],
    path: &mut String,
    depth: usize,
) -> Option<String> {
    use prost::encoding::{decode_varint, WireType};
    use prost_reflect::Kind;
    if depth > MAX_DEPTH {
        return Some(path.clone());
    }
    while !buf.is_empty() {
        let Ok(key) = decode_varint(&mut buf) else { return Some(path.clone()) };
        let (number, wire) = ((key >> 3) as u32, key & 7);
        let field = desc.get_field(number);
        let at = match &field {
            Some(f) => format!("{path}/{}", f.name()),
            None => format!("{path}/#{number}"),
        };
        if number == 0 {
            return Some(at);
        }
        if let Some(f) = &field {
            let expected = f.kind().wire_type() as u64;
            let packed = f.is_list() && wire == WireType::LengthDelimited as u64;
            if wire != expected && !packed && !f.is_map() {
                return Some(at);
            }
        }
        match wire {
            0 => {
                if decode_varint(&mut buf).is_err() {
                    return Some(at);
                }
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if buf.len() < n {
                    return Some(at);
                }
                buf = &buf[n..];
            }
            2 => {
                let Ok(len) = decode_varint(&mut buf) else { return Some(at) };
                let Some(data) = usize::try_from(len).ok().and_then(|len| buf.get(..len)) else {
                    return Some(at);
                };
                buf = &buf[data.len()..];
                if let Some(f) = &field {
                    match f.kind() {
                        Kind::Message(m) => {
                            let mut inner = at.clone();
                            if let Some(p) = locate_failure(&m, data, &mut inner, depth + 1) {
                                return Some(p);
                            }
                        }
                        Kind::String if std::str::from_utf8(data).is_err() => return Some(at),
                        _ => {}
                    }
                }
            }
            // Groups (deprecated) and invalid wire types: the decoder stops here too.
            _ => return Some(at),
        }
    }
    None
}

/// prost's decode errors read `failed to decode Protobuf message: Msg.field: Inner.sub: why`:
/// the `Msg.field` frames become `/field/sub`, the rest is the reason.
fn decode_error_path(text: &str) -> (String, String) {
    let rest = text.strip_prefix("failed to decode Protobuf message: ").unwrap_or(text);
    let mut pointer = String::new();
    let mut parts = rest.split(": ").peekable();
    let mut detail = Vec::new();
    while let Some(part) = parts.next() {
        let frame = part.rsplit_once('.').filter(|(m, f)| {
            parts.peek().is_some()
                && !m.is_empty()
                && !f.is_empty()
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        });
        match frame {
            Some((_, field)) if detail.is_empty() => {
                pointer.push('/');
                pointer.push_str(field);
            }
            _ => detail.push(part),
        }
    }
    (pointer, detail.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::ProtoFile;
    use std::collections::BTreeMap;

    const SOURCE: &str = r#"syntax = "proto3";
package t;
import "kakehashi/v1/options.proto";
message Person { string my_number = 1 [(kakehashi.v1.my_number) = true]; string name = 2; }
message Rec { Person person = 1; repeated Person children = 2; string note = 3; int32 doses = 4;
  repeated string other_numbers = 5 [(kakehashi.v1.my_number) = true]; }
"#;

    fn schema(allow_unknown: bool) -> ProtoSchema {
        let files = [ProtoFile { name: "t.proto".into(), source: SOURCE.into() }];
        let c = super::super::compile(&files, &BTreeMap::new(), "t.Rec").expect("compiles");
        ProtoSchema::new(c.message, allow_unknown)
    }

    fn rec(my_number: &str) -> DynamicMessage {
        let s = schema(false);
        let pool = s.message.parent_pool().clone();
        let person_desc = pool.get_message_by_name("t.Person").expect("Person");
        let mut person = DynamicMessage::new(person_desc);
        person.set_field_by_name("my_number", Value::String(my_number.into()));
        person.set_field_by_name("name", Value::String("山田".into()));
        let mut r = DynamicMessage::new(s.message.clone());
        r.set_field_by_name("person", Value::Message(person.clone()));
        r.set_field_by_name("children", Value::List(vec![Value::Message(person)]));
        r.set_field_by_name("note", Value::String(my_number.into()));
        r.set_field_by_name("other_numbers", Value::List(vec![Value::String(my_number.into())]));
        r
    }

    #[test]
    fn valid_payload_decodes() {
        let bytes = rec("123456789018").encode_to_vec();
        assert!(schema(false).check(&bytes, 10).is_ok());
    }

    #[test]
    fn bad_bytes_are_refused_with_a_message() {
        let e = schema(false).check(&[0xff, 0xff, 0xff], 10).expect_err("refused");
        assert_eq!(e.violations.len(), 1);
        assert!(e.message.contains("does not decode"), "{}", e.message);
    }

    #[test]
    fn invalid_utf8_in_a_nested_string_names_the_field() {
        // Rec.person (1, LEN) { Person.name (2, LEN) = 0xff }
        let bytes = [0x0a, 0x03, 0x12, 0x01, 0xff];
        let e = schema(false).check(&bytes, 10).expect_err("refused");
        assert_eq!(e.violations[0].pointer, "/person/name", "{e:?}");
    }

    #[test]
    fn unknown_fields_refused_by_default_allowed_when_the_version_says_so() {
        let mut bytes = rec("123456789018").encode_to_vec();
        bytes.extend([9 << 3, 0x01]); // field 9, varint, value 1
        let e = schema(false).check(&bytes, 10).expect_err("refused");
        assert_eq!(e.violations[0].pointer, "/#9");
        assert!(schema(true).check(&bytes, 10).is_ok());
    }

    #[test]
    fn a_bad_my_number_check_digit_is_refused_without_quoting_it() {
        let e = schema(false).check(&rec("123456789012").encode_to_vec(), 10).expect_err("refused");
        let pointers: Vec<&str> = e.violations.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(pointers, ["/person/my_number", "/children/0/my_number", "/other_numbers/0"]);
        assert!(!e.message.contains("123456789012"));
    }

    #[test]
    fn my_numbers_are_pseudonymised_and_nothing_else() {
        let s = schema(false);
        let bytes = rec("123456789018").encode_to_vec();
        let out = s.pseudonymise(&bytes, b"k", "mhlw").expect("decodes").expect("replaced");
        let got = DynamicMessage::decode(s.message.clone(), out.as_slice()).expect("re-encoded");
        let person = got.get_field_by_name("person").expect("person").as_message().cloned().expect("msg");
        let token = crate::pii::pseudonym(b"k", "mhlw", "123456789018");
        assert_eq!(person.get_field_by_name("my_number").expect("f").as_str(), Some(token.as_str()));
        assert_eq!(got.get_field_by_name("note").expect("f").as_str(), Some("123456789018"));
        let empty = DynamicMessage::new(s.message.clone()).encode_to_vec();
        assert_eq!(s.pseudonymise(&empty, b"k", "mhlw"), Ok(None), "nothing to replace: bytes untouched");
    }

    #[test]
    fn decode_error_paths() {
        let (p, d) = decode_error_path("failed to decode Protobuf message: Rec.person: Person.name: invalid string value: data is not UTF-8 encoded");
        assert_eq!(p, "/person/name");
        assert_eq!(d, "invalid string value: data is not UTF-8 encoded");
        let (p, d) = decode_error_path("failed to decode Protobuf message: buffer underflow");
        assert_eq!((p.as_str(), d.as_str()), ("", "buffer underflow"));
    }
}
