//! Schema positions: [`Loc`] (a printable location), [`Doc`] (which document a schema lives in,
//! for resolving its local `$ref`s) and [`Node`] (a schema value together with both).

use serde_json::{Map, Value};

/// Escapes one JSON-pointer segment (RFC 6901: `~` becomes `~0`, `/` becomes `~1`).
pub(crate) fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Where a schema node sits, as reported to users.
///
/// `pointer` is always a pointer into the root document of its side (the schema being
/// registered or an earlier version). A node reached through a `$ref` to another registered
/// schema cannot be pointed at inside the root, so `pointer` freezes at that `$ref` and
/// `external` records the referenced document and the position inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Loc {
    /// JSON pointer into the root document of this side.
    pub pointer: String,
    /// `(uri, pointer)` inside an externally referenced document, if we crossed into one.
    pub external: Option<(String, String)>,
}

impl Loc {
    /// The location one segment (an object key or array index) further down.
    pub fn push(&self, segment: &str) -> Loc {
        let mut next = self.clone();
        let seg = escape(segment);
        match &mut next.external {
            Some((_, inner)) => {
                inner.push('/');
                inner.push_str(&seg);
            }
            None => {
                next.pointer.push('/');
                next.pointer.push_str(&seg);
            }
        }
        next
    }

    /// The location several segments further down.
    pub fn path(&self, segments: &[&str]) -> Loc {
        segments.iter().fold(self.clone(), |loc, s| loc.push(s))
    }

    /// A suffix for messages that names the position inside an external document, if any.
    pub fn external_note(&self) -> String {
        match &self.external {
            Some((uri, inner)) => format!(" (in {uri}#{inner})"),
            None => String::new(),
        }
    }
}

/// The document a node belongs to, needed to resolve the node's local `$ref`s.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Doc<'a> {
    /// The whole document.
    pub root: &'a Value,
    /// Base URI for relative references: the root's `$id`, or the URI an external document
    /// was fetched under.
    pub base: Option<&'a str>,
    /// Set for documents fetched through the [`super::RefResolver`]: their URI.
    pub external: Option<&'a str>,
    /// The JSON Schema draft the document declares, which decides its keyword vocabulary.
    pub dialect: Dialect,
}

impl<'a> Doc<'a> {
    /// A root document (the candidate or a previous version).
    pub fn root(root: &'a Value) -> Self {
        Doc {
            root,
            base: root.get("$id").and_then(Value::as_str),
            external: None,
            dialect: Dialect::of(root),
        }
    }
}

/// JSON Schema drafts, oldest first. Validators ignore keywords a draft does not define,
/// so the checker must too: a writer constraint that is not really enforced would make the
/// writer look narrower than it is (unsound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Dialect {
    Draft4,
    Draft6,
    Draft7,
    Draft2019,
    Draft2020,
}

impl Dialect {
    /// The dialect a document's `$schema` declares; 2020-12 when absent, as in the
    /// registry's validator.
    pub fn of(root: &Value) -> Dialect {
        let uri = root.get("$schema").and_then(Value::as_str).unwrap_or("");
        if uri.contains("draft-04") || uri.contains("draft-03") {
            Dialect::Draft4
        } else if uri.contains("draft-06") {
            Dialect::Draft6
        } else if uri.contains("draft-07") {
            Dialect::Draft7
        } else if uri.contains("2019-09") {
            Dialect::Draft2019
        } else {
            Dialect::Draft2020
        }
    }

    /// Whether `key` is not a keyword of this dialect (and so has no effect).
    pub fn hides(self, key: &str) -> bool {
        let since = match key {
            "const" | "contains" | "propertyNames" => Dialect::Draft6,
            "if" | "then" | "else" => Dialect::Draft7,
            "unevaluatedProperties"
            | "unevaluatedItems"
            | "dependentRequired"
            | "dependentSchemas"
            | "minContains"
            | "maxContains" => Dialect::Draft2019,
            "prefixItems" => Dialect::Draft2020,
            // 2020-12 replaced it with `items` after `prefixItems`.
            "additionalItems" => return self == Dialect::Draft2020,
            _ => return false,
        };
        self < since
    }
}

impl Node<'_> {
    /// Whether this node's keywords other than `$ref` are ignored (drafts up to 07, where
    /// `$ref` replaces the whole schema object).
    pub fn ref_only(&self) -> bool {
        self.doc.dialect <= Dialect::Draft7 && matches!(self.get("$ref"), Some(Value::String(_)))
    }

    /// Whether `key` has no effect in this node's dialect (absent counts too).
    pub fn hides(&self, key: &str) -> bool {
        self.get(key).is_none()
    }
}

/// A schema value, the document it lives in, and where it is.
#[derive(Debug, Clone)]
pub(crate) struct Node<'a> {
    /// The schema itself (an object or a boolean when well formed).
    pub value: &'a Value,
    /// Its document, for local references.
    pub doc: Doc<'a>,
    /// Its printable location.
    pub loc: Loc,
}

impl<'a> Node<'a> {
    /// The root node of a document.
    pub fn root(doc: Doc<'a>) -> Self {
        Node { value: doc.root, doc, loc: Loc::default() }
    }

    /// A keyword of this schema, if it is an object schema that has it and the keyword
    /// exists in the document's dialect.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        if self.doc.dialect.hides(key) {
            return None;
        }
        let value = self.value.get(key)?;
        // Draft-04's exclusiveMinimum/Maximum are booleans modifying minimum/maximum; from
        // draft-06 on they are numbers. The other spelling is not a keyword of the dialect.
        if key.starts_with("exclusiveM") && value.is_boolean() != (self.doc.dialect == Dialect::Draft4) {
            return None;
        }
        Some(value)
    }

    /// The keyword map, if this is an object schema.
    pub fn map(&self) -> Option<&'a Map<String, Value>> {
        self.value.as_object()
    }

    /// A node for a value found under this one at `segments` (used for subschemas).
    pub fn at(&self, value: &'a Value, segments: &[&str]) -> Node<'a> {
        Node { value, doc: self.doc, loc: self.loc.path(segments) }
    }

    /// The subschema at `key` (e.g. `not`, `additionalProperties`), if present.
    pub fn sub(&self, key: &str) -> Option<Node<'a>> {
        self.get(key).map(|v| self.at(v, &[key]))
    }

    /// The subschema at `key/name` (e.g. `properties/zip`), if present.
    pub fn sub_named(&self, key: &str, name: &str) -> Option<Node<'a>> {
        self.get(key).and_then(|m| m.get(name)).map(|v| self.at(v, &[key, name]))
    }

    /// The subschemas of an array-valued keyword (`allOf`, `prefixItems`, ...).
    pub fn sub_list(&self, key: &str) -> Vec<Node<'a>> {
        match self.get(key) {
            Some(Value::Array(items)) => {
                items.iter().enumerate().map(|(i, v)| self.at(v, &[key, &i.to_string()])).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The `(name, subschema)` pairs of a map-valued keyword (`properties`, ...).
    pub fn sub_map(&self, key: &str) -> Vec<(&'a str, Node<'a>)> {
        match self.get(key) {
            Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.as_str(), self.at(v, &[key, k]))).collect(),
            _ => Vec::new(),
        }
    }

    /// Identity of the underlying value, for cycle detection. Stable because every document
    /// is borrowed, unmoved, for the whole comparison.
    pub fn addr(&self) -> usize {
        self.value as *const Value as usize
    }

    /// Whether the schema is the boolean `false` (matches nothing).
    pub fn is_false(&self) -> bool {
        matches!(self.value, Value::Bool(false))
    }
}

/// The writer side of a comparison: data valid under ALL of `nodes` (a conjunction).
///
/// Conjunctions arise from `allOf`, from `$ref` with sibling keywords, and from the several
/// constraints that apply to one property (its `properties` entry and matching
/// `patternProperties`, possibly in several `allOf` members).
#[derive(Debug, Clone)]
pub(crate) struct Group<'a> {
    /// The constraints; an empty list means "any value".
    pub nodes: Vec<Node<'a>>,
    /// Where to point when reporting a problem on the writer side.
    pub loc: Loc,
    /// Set when `nodes` is already one expanded alternative (see `flatten.rs`): the nodes are
    /// then read for their own keywords only, and their combinators are not expanded again.
    pub flat: bool,
}

impl<'a> Group<'a> {
    /// A group of one schema.
    pub fn single(node: Node<'a>) -> Self {
        let loc = node.loc.clone();
        Group { nodes: vec![node], loc, flat: false }
    }

    /// A conjunction of several constraints, reported at `loc`.
    pub fn of(nodes: Vec<Node<'a>>, loc: Loc) -> Self {
        Group { nodes, loc, flat: false }
    }
}
