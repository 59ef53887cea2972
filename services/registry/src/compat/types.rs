//! JSON types as a small set, with `integer` as a subset of `number`.

use serde_json::Value;

use super::node::Node;
use super::values::{as_count, is_integer};

/// A set of JSON types. `number` is stored as two disjoint parts, integers and non-integers,
/// so that "integer ⊂ number" is plain set inclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TypeSet(u8);

impl TypeSet {
    pub const NULL: TypeSet = TypeSet(1);
    pub const BOOLEAN: TypeSet = TypeSet(1 << 1);
    pub const OBJECT: TypeSet = TypeSet(1 << 2);
    pub const ARRAY: TypeSet = TypeSet(1 << 3);
    pub const STRING: TypeSet = TypeSet(1 << 4);
    /// Integers (`1`, `2.0`).
    pub const INTEGER: TypeSet = TypeSet(1 << 5);
    /// Numbers that are not integers (`1.5`).
    pub const FRACTION: TypeSet = TypeSet(1 << 6);
    pub const NUMBER: TypeSet = TypeSet(Self::INTEGER.0 | Self::FRACTION.0);
    pub const EMPTY: TypeSet = TypeSet(0);
    pub const ALL: TypeSet = TypeSet(0x7f);

    pub fn union(self, o: TypeSet) -> TypeSet {
        TypeSet(self.0 | o.0)
    }
    pub fn inter(self, o: TypeSet) -> TypeSet {
        TypeSet(self.0 & o.0)
    }
    pub fn minus(self, o: TypeSet) -> TypeSet {
        TypeSet(self.0 & !o.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn has(self, o: TypeSet) -> bool {
        self.0 & o.0 != 0
    }
    pub fn within(self, o: TypeSet) -> bool {
        self.minus(o).is_empty()
    }

    /// The type named by a `type` keyword entry.
    pub fn named(name: &str) -> Option<TypeSet> {
        Some(match name {
            "null" => Self::NULL,
            "boolean" => Self::BOOLEAN,
            "object" => Self::OBJECT,
            "array" => Self::ARRAY,
            "string" => Self::STRING,
            "integer" => Self::INTEGER,
            "number" => Self::NUMBER,
            _ => return None,
        })
    }

    /// The type of one JSON value.
    pub fn of_value(v: &Value) -> TypeSet {
        match v {
            Value::Null => Self::NULL,
            Value::Bool(_) => Self::BOOLEAN,
            Value::Object(_) => Self::OBJECT,
            Value::Array(_) => Self::ARRAY,
            Value::String(_) => Self::STRING,
            Value::Number(n) if is_integer(n) => Self::INTEGER,
            Value::Number(_) => Self::FRACTION,
        }
    }

    /// Readable list for messages (`integer, string`).
    pub fn describe(self) -> String {
        let names = [
            (Self::NULL, "null"),
            (Self::BOOLEAN, "boolean"),
            (Self::OBJECT, "object"),
            (Self::ARRAY, "array"),
            (Self::STRING, "string"),
        ];
        let mut out: Vec<&str> = names.iter().filter(|(t, _)| self.has(*t)).map(|(_, n)| *n).collect();
        if self.has(Self::FRACTION) {
            out.push("number");
        } else if self.has(Self::INTEGER) {
            out.push("integer");
        }
        if out.is_empty() {
            "nothing".to_owned()
        } else {
            out.join(", ")
        }
    }
}

/// The types allowed by one node's own `type` keyword (everything when absent or malformed,
/// which keeps the reader side permissive and the writer side unconstrained — both safe).
pub(crate) fn declared(node: &Node<'_>) -> TypeSet {
    match node.get("type") {
        Some(Value::String(s)) => TypeSet::named(s).unwrap_or(TypeSet::ALL),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .filter_map(TypeSet::named)
            .fold(TypeSet::EMPTY, TypeSet::union),
        _ => TypeSet::ALL,
    }
}

/// The types a conjunction of writer constraints can produce: the intersection of each
/// node's `type`, narrowed by `enum`/`const` values, and by an integral `multipleOf`
/// (which rules out fractions).
pub(crate) fn of_conjunction(nodes: &[Node<'_>]) -> TypeSet {
    nodes.iter().fold(TypeSet::ALL, |acc, n| {
        let mut t = declared(n);
        if let Some(Value::Array(vals)) = n.get("enum") {
            t = t.inter(vals.iter().map(TypeSet::of_value).fold(TypeSet::EMPTY, TypeSet::union));
        }
        if let Some(v) = n.get("const") {
            t = t.inter(TypeSet::of_value(v));
        }
        if n.get("multipleOf").and_then(as_count).is_some_and(|m| m >= 1) {
            t = t.minus(TypeSet::FRACTION);
        }
        acc.inter(t)
    })
}
