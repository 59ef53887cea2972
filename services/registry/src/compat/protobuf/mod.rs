//! Protobuf compatibility: a candidate payload message is compared with earlier versions'
//! payload messages, on `prost_reflect` descriptors, at the wire **and** the canonical JSON
//! level (readers may take either form). The rules, and where they differ from Confluent's and
//! Buf's, are in `docs/compatibility.md` ("Protobuf schemas").
//!
//! Two kinds of rule:
//! - **symmetric** ones hold whichever side reads (a field number reused, a type changed
//!   outside its wire group, a cardinality or JSON name change, a removal without `reserved`,
//!   the payload's package or name, the My Number annotation), checked once per version
//!   whenever the mode checks any direction;
//! - **directional** ones depend on who reads: the reader tracks presence the writer did not
//!   (`optional` added), the reader has a field in a `oneof` the writer did not, a new field
//!   takes a number the other version reserved. BACKWARD asks them with the candidate as the
//!   reader (new code reads old data), FORWARD with the candidate as the writer.
//!
//! Each problem is an [`Incompatibility`] whose `pointer` is a path `file.proto:Message.field`
//! into the candidate (the closest existing message when the field is gone).

#[cfg(test)]
mod tests;

use super::{Incompatibility, IncompatibilityKind as K, Mode};
use prost_reflect::{Cardinality, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use std::collections::HashSet;

/// Checks the candidate payload message against earlier versions' (oldest first, deleted ones
/// left out) under `mode`. Empty = compatible.
pub fn check(
    mode: Mode,
    candidate: &MessageDescriptor,
    previous: &[(u32, MessageDescriptor)],
) -> Vec<Incompatibility> {
    if mode == Mode::None {
        return Vec::new();
    }
    let against: &[(u32, MessageDescriptor)] =
        if mode.is_transitive() { previous } else { previous.last().map_or(&[], std::slice::from_ref) };
    let mut out = Vec::new();
    for (version, old) in against {
        let mut c = Comparison { version: *version, out: &mut out, seen: HashSet::new() };
        c.root(old, candidate, mode.checks_backward(), mode.checks_forward());
    }
    let mut seen = HashSet::new();
    out.retain(|i| seen.insert((i.pointer.clone(), i.kind, i.against_version)));
    out
}

/// One candidate-against-one-version comparison.
struct Comparison<'a> {
    version: u32,
    out: &'a mut Vec<Incompatibility>,
    /// Message pairs (old, new) already compared: schemas may be recursive.
    seen: HashSet<(String, String)>,
}

/// `file.proto:Message.Nested` for a message of the candidate.
fn message_path(m: &MessageDescriptor) -> String {
    let name = m.full_name();
    let local = name.strip_prefix(&format!("{}.", m.package_name())).unwrap_or(name).to_string();
    format!("{}:{local}", m.parent_file().name())
}

fn field_path(f: &FieldDescriptor) -> String {
    format!("{}.{}", message_path(f.parent_message()), f.name())
}

impl Comparison<'_> {
    fn report(&mut self, pointer: String, kind: K, message: String) {
        self.out.push(Incompatibility { pointer, kind, message, against_version: Some(self.version) });
    }

    fn root(&mut self, old: &MessageDescriptor, new: &MessageDescriptor, backward: bool, forward: bool) {
        let v = self.version;
        if old.package_name() != new.package_name() {
            self.report(
                message_path(new),
                K::PackageChanged,
                format!(
                    "the payload message's package is {:?}, version {v}'s was {:?}",
                    new.package_name(),
                    old.package_name()
                ),
            );
        }
        if old.name() != new.name() {
            self.report(
                message_path(new),
                K::PayloadMessageRenamed,
                format!("the payload message is {}, version {v}'s was {}", new.name(), old.name()),
            );
        }
        self.message(old, new, backward, forward);
    }

    /// Compares two messages found at the same place (the payload, or the same field).
    fn message(&mut self, old: &MessageDescriptor, new: &MessageDescriptor, backward: bool, forward: bool) {
        if !self.seen.insert((old.full_name().to_string(), new.full_name().to_string())) {
            return;
        }
        let v = self.version;
        for o in old.fields() {
            match new.get_field(o.number()) {
                None if reserved(new, o.number()) => {}
                None => self.report(
                    format!("{}.{}", message_path(new), o.name()),
                    K::FieldRemovedNotReserved,
                    format!(
                        "field {} = {} of version {v} was removed without `reserved {};` (a later field could reuse the number)",
                        o.name(),
                        o.number(),
                        o.number()
                    ),
                ),
                Some(n) => self.field(&o, &n, backward, forward),
            }
        }
        if backward {
            // New code may read old data written before the number was retired.
            for n in new.fields() {
                if old.get_field(n.number()).is_none() && reserved(old, n.number()) {
                    self.report(
                        field_path(&n),
                        K::FieldNumberReused,
                        format!(
                            "field {} takes number {}, which version {v} reserved (data from before it was retired may carry another field there)",
                            n.name(),
                            n.number()
                        ),
                    );
                }
            }
        }
    }

    fn field(&mut self, o: &FieldDescriptor, n: &FieldDescriptor, backward: bool, forward: bool) {
        let (v, path) = (self.version, field_path(n));
        if o.name() != n.name() {
            self.report(
                path.clone(),
                K::FieldNumberReused,
                format!(
                    "number {} is field {} here and {} in version {v} (renamed or reused: the JSON form and the meaning change)",
                    n.number(),
                    n.name(),
                    o.name()
                ),
            );
        } else if o.json_name() != n.json_name() {
            self.report(
                path.clone(),
                K::JsonNameChanged,
                format!("JSON name {:?} was {:?} in version {v}", n.json_name(), o.json_name()),
            );
        }
        if cardinality(o) != cardinality(n) {
            self.report(
                path.clone(),
                K::FieldCardinalityChanged,
                format!("field is {} here and {} in version {v}", cardinality(n), cardinality(o)),
            );
        }
        self.kind(o, n, &path, backward, forward);
        if crate::protobuf::is_my_number(o) != crate::protobuf::is_my_number(n) {
            self.report(
                path.clone(),
                K::PiiAnnotationChanged,
                format!(
                    "the (kakehashi.v1.my_number) option is {} here and {} in version {v} (pseudonymisation at delivery changes)",
                    crate::protobuf::is_my_number(n),
                    crate::protobuf::is_my_number(o)
                ),
            );
        }
        // Directional rules: (reader, writer) for each direction the mode checks.
        let mut directions = Vec::new();
        if backward {
            directions.push((n, o, "the new schema".to_string(), format!("version {v}")));
        }
        if forward {
            directions.push((o, n, format!("version {v}"), "the new schema".to_string()));
        }
        for (reader, writer, rname, wname) in directions {
            let singular_scalar =
                |f: &FieldDescriptor| !f.is_list() && !f.is_map() && !matches!(f.kind(), Kind::Message(_));
            if singular_scalar(reader)
                && singular_scalar(writer)
                && reader.supports_presence()
                && !writer.supports_presence()
            {
                self.report(
                    path.clone(),
                    K::FieldPresenceChanged,
                    format!(
                        "{rname} tracks presence of this field (optional) and {wname} does not: a zero written by {wname} is read as absent"
                    ),
                );
            }
            let reader_oneof = real_oneof(reader);
            if let Some(ro) = reader_oneof {
                if real_oneof(writer).as_deref() != Some(ro.as_str()) {
                    self.report(
                        path.clone(),
                        K::FieldOneofChanged,
                        format!(
                            "{rname} has this field in oneof {ro} and {wname} did not: data setting it and another member loses one of them"
                        ),
                    );
                }
            }
        }
    }

    fn kind(&mut self, o: &FieldDescriptor, n: &FieldDescriptor, path: &str, backward: bool, forward: bool) {
        let v = self.version;
        let (ok, nk) = (o.kind(), n.kind());
        if wire_group(&ok) != wire_group(&nk) {
            self.report(
                path.to_string(),
                K::FieldTypeChanged,
                format!(
                    "type {} was {} in version {v} (not wire-compatible)",
                    kind_name(&nk),
                    kind_name(&ok)
                ),
            );
            return;
        }
        match (&ok, &nk) {
            (Kind::Message(om), Kind::Message(nm)) => {
                if om.full_name() != nm.full_name() && !(om.is_map_entry() && nm.is_map_entry()) {
                    self.report(
                        path.to_string(),
                        K::FieldTypeChanged,
                        format!("message type {} was {} in version {v}", nm.full_name(), om.full_name()),
                    );
                } else {
                    let (om, nm) = (om.clone(), nm.clone());
                    self.message(&om, &nm, backward, forward);
                }
            }
            (Kind::Enum(oe), Kind::Enum(ne)) => {
                if oe.full_name() != ne.full_name() {
                    self.report(
                        path.to_string(),
                        K::FieldTypeChanged,
                        format!("enum type {} was {} in version {v}", ne.full_name(), oe.full_name()),
                    );
                } else {
                    let (oe, ne) = (oe.clone(), ne.clone());
                    self.enumeration(&oe, &ne);
                }
            }
            _ if json_class(&ok) != json_class(&nk) => self.report(
                path.to_string(),
                K::FieldJsonTypeChanged,
                format!(
                    "type {} was {} in version {v}: the same on the wire, but JSON writes a {} where it wrote a {}",
                    kind_name(&nk),
                    kind_name(&ok),
                    json_class(&nk),
                    json_class(&ok)
                ),
            ),
            _ => {}
        }
    }

    fn enumeration(&mut self, old: &EnumDescriptor, new: &EnumDescriptor) {
        if !self.seen.insert((old.full_name().to_string(), new.full_name().to_string())) {
            return;
        }
        let v = self.version;
        let local = |e: &EnumDescriptor| {
            let name = e.full_name();
            let l = name.strip_prefix(&format!("{}.", e.package_name())).unwrap_or(name).to_string();
            format!("{}:{l}", e.parent_file().name())
        };
        for ov in old.values() {
            match new.get_value(ov.number()) {
                None if new.reserved_ranges().any(|r| r.contains(&ov.number())) => {}
                None => self.report(
                    format!("{}.{}", local(new), ov.name()),
                    K::EnumValueRemovedNotReserved,
                    format!(
                        "enum value {} = {} of version {v} was removed without `reserved {};`",
                        ov.name(),
                        ov.number(),
                        ov.number()
                    ),
                ),
                Some(nv) if nv.name() != ov.name() => self.report(
                    format!("{}.{}", local(new), nv.name()),
                    K::EnumValueRenamed,
                    format!(
                        "enum number {} is {} here and {} in version {v} (JSON writes the name)",
                        ov.number(),
                        nv.name(),
                        ov.name()
                    ),
                ),
                Some(_) => {}
            }
        }
    }
}

/// Whether `number` is in one of the message's `reserved` ranges.
fn reserved(m: &MessageDescriptor, number: u32) -> bool {
    m.reserved_ranges().any(|r| r.contains(&number))
}

/// The field's oneof, unless it is the synthetic one of a proto3 `optional`.
fn real_oneof(f: &FieldDescriptor) -> Option<String> {
    f.containing_oneof().filter(|o| !o.is_synthetic()).map(|o| o.name().to_string())
}

fn cardinality(f: &FieldDescriptor) -> &'static str {
    if f.is_map() {
        "a map"
    } else if f.is_list() {
        "repeated"
    } else if f.cardinality() == Cardinality::Required {
        "required"
    } else {
        "singular"
    }
}

/// Wire-compatible groups: values of one group decode as each other (with truncation or sign
/// reinterpretation, as protobuf's own guide allows). Enums are varints like `int32`.
fn wire_group(k: &Kind) -> u8 {
    match k {
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Bool | Kind::Enum(_) => 1,
        Kind::Sint32 | Kind::Sint64 => 2,
        Kind::Fixed32 | Kind::Sfixed32 => 3,
        Kind::Fixed64 | Kind::Sfixed64 => 4,
        Kind::Double => 5,
        Kind::Float => 6,
        // string and bytes share a wire type, but JSON writes bytes as base64 and a reader of
        // `string` refuses bytes that are not UTF-8: not compatible (docs/compatibility.md).
        Kind::String => 7,
        Kind::Bytes => 8,
        Kind::Message(_) => 9,
    }
}

/// What canonical proto3 JSON writes for a type.
fn json_class(k: &Kind) -> &'static str {
    match k {
        Kind::Bool => "boolean",
        Kind::Enum(_) => "enum name",
        Kind::String => "string",
        Kind::Bytes => "base64 string",
        Kind::Message(_) => "object",
        Kind::Double | Kind::Float => "number",
        _ => "integer",
    }
}

fn kind_name(k: &Kind) -> String {
    match k {
        Kind::Message(m) => m.full_name().to_string(),
        Kind::Enum(e) => e.full_name().to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}
