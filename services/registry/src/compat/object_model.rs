//! How the reader and the writer each treat property names, distilled from `properties`,
//! `patternProperties`, `additionalProperties` and `unevaluatedProperties`.
//!
//! Regexes are only understood when they are anchored literals (see `pattern.rs`), so every
//! question "does name N match pattern P" may be unknown. The writer side then *drops* the
//! constraint (a writer with fewer constraints allows more, so that is safe); the reader side
//! keeps it and reports PatternPropertiesUnproven if it is not met.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::Value;

use super::node::{Loc, Node};
use super::pattern;
use super::refs::Docs;

/// The schema for property names a node does not declare, and which names escape it.
#[derive(Debug, Clone)]
pub(crate) struct Extra<'a> {
    /// `additionalProperties` or `unevaluatedProperties`.
    pub schema: Node<'a>,
    /// Names that are not subject to it.
    pub exempt_names: BTreeSet<&'a str>,
    /// Patterns whose matches are not subject to it.
    pub exempt_patterns: Vec<&'a str>,
}

impl<'a> Extra<'a> {
    /// Whether the schema applies to `name`: `Some(true)`/`Some(false)` when known.
    pub fn applies_to(&self, name: &str) -> Option<bool> {
        if self.exempt_names.contains(name) {
            return Some(false);
        }
        let hits: Vec<Option<bool>> =
            self.exempt_patterns.iter().map(|p| pattern::matches(p, name)).collect();
        if hits.contains(&Some(true)) {
            Some(false)
        } else if hits.contains(&None) {
            None
        } else {
            Some(true)
        }
    }
}

/// One object schema's view of its property names.
#[derive(Debug, Clone)]
pub(crate) struct ObjectView<'a> {
    /// The schema node.
    pub node: Node<'a>,
    /// `properties`.
    pub props: BTreeMap<&'a str, Node<'a>>,
    /// `patternProperties`.
    pub patterns: Vec<(&'a str, Node<'a>)>,
    /// Constraint on undeclared names, if any.
    pub extra: Option<Extra<'a>>,
}

/// Names and patterns collected while looking for what a node's subschemas evaluate.
#[derive(Default)]
struct Evaluated<'a> {
    names: BTreeSet<&'a str>,
    patterns: Vec<&'a str>,
    /// Some subschema has `additionalProperties`, which evaluates every property.
    everything: bool,
}

impl<'a> ObjectView<'a> {
    /// The view of `node`. `reader` selects how `unevaluatedProperties` is approximated:
    /// the reader counts only properties *certainly* evaluated (own keywords, `allOf`,
    /// `$ref`), the writer every property *possibly* evaluated (also `anyOf`/`oneOf`
    /// branches, `then`/`else`, `dependentSchemas`). Both err on the safe side.
    pub fn new(docs: &'a Docs, node: &Node<'a>, reader: bool) -> Self {
        let props: BTreeMap<&'a str, Node<'a>> = node.sub_map("properties").into_iter().collect();
        let patterns = node.sub_map("patternProperties");
        let extra = if let Some(schema) = node.sub("additionalProperties") {
            Some(Extra {
                schema,
                exempt_names: props.keys().copied().collect(),
                exempt_patterns: patterns.iter().map(|(p, _)| *p).collect(),
            })
        } else if let Some(schema) = node.sub("unevaluatedProperties") {
            let mut ev = Evaluated::default();
            collect_evaluated(docs, node, reader, &mut ev, &mut HashSet::new());
            (!ev.everything).then_some(Extra { schema, exempt_names: ev.names, exempt_patterns: ev.patterns })
        } else {
            None
        };
        // `additionalProperties: true` (or `{}`) constrains nothing.
        let extra = extra.filter(|x| !is_trivially_true(x.schema.value));
        ObjectView { node: node.clone(), props, patterns, extra }
    }
}

/// `true`, or an object schema without assertions.
pub(crate) fn is_trivially_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Object(m) => m.keys().all(|k| super::equiv::is_annotation(k)),
        _ => false,
    }
}

fn collect_evaluated<'a>(
    docs: &'a Docs,
    node: &Node<'a>,
    certain: bool,
    ev: &mut Evaluated<'a>,
    seen: &mut HashSet<usize>,
) {
    if !seen.insert(node.addr()) || node.map().is_none() {
        return;
    }
    ev.names.extend(node.sub_map("properties").into_iter().map(|(n, _)| n));
    ev.patterns.extend(node.sub_map("patternProperties").into_iter().map(|(p, _)| p));
    ev.everything |= node.get("additionalProperties").is_some();
    let mut next = node.sub_list("allOf");
    if let Some(target) = node.get("$ref").and_then(Value::as_str).and_then(|r| docs.resolve(node, r).ok()) {
        next.push(target);
    }
    if !certain {
        next.extend(node.sub_list("anyOf"));
        next.extend(node.sub_list("oneOf"));
        next.extend(["if", "then", "else"].iter().filter_map(|k| node.sub(k)));
        next.extend(node.sub_map("dependentSchemas").into_iter().map(|(_, n)| n));
    }
    for n in next {
        collect_evaluated(docs, &n, certain, ev, seen);
    }
}

/// Which undeclared names a writer class stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameClass<'a> {
    /// Names matching this pattern of the writer.
    Pattern(&'a str),
    /// Names matching none of the writer's patterns.
    Other,
}

/// The writer's property constraints over all nodes of one alternative.
pub(crate) struct WriterObject<'a> {
    /// One view per node of the alternative.
    pub views: Vec<ObjectView<'a>>,
    /// Every name any node declares or may evaluate.
    pub names: BTreeSet<&'a str>,
    /// Names some node requires.
    pub required: BTreeSet<&'a str>,
    /// The first node with `patternProperties`: its patterns define the name classes.
    pub owner: Option<usize>,
    /// Fallback location.
    pub loc: Loc,
}

impl<'a> WriterObject<'a> {
    /// Builds the writer's view of the alternative `alt`.
    pub fn new(docs: &'a Docs, alt: &[Node<'a>], loc: &Loc) -> Self {
        let views: Vec<ObjectView<'a>> = alt.iter().map(|n| ObjectView::new(docs, n, false)).collect();
        let mut names = BTreeSet::new();
        for v in &views {
            names.extend(v.props.keys().copied());
            if let Some(x) = &v.extra {
                names.extend(x.exempt_names.iter().copied());
            }
        }
        let required = alt
            .iter()
            .filter_map(|n| n.get("required").and_then(Value::as_array))
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let owner = views.iter().position(|v| !v.patterns.is_empty());
        WriterObject { views, names, required, owner, loc: loc.clone() }
    }

    /// The constraints that certainly apply to the value of property `name`, and where to
    /// point for it. Constraints whose applicability is unknown are left out (safe for a
    /// writer). A `false` among them means the writer never has this property.
    pub fn for_name(&self, name: &str) -> (Vec<Node<'a>>, Loc) {
        let mut out = Vec::new();
        let mut loc = None;
        for v in &self.views {
            if let Some(s) = v.props.get(name) {
                loc.get_or_insert_with(|| s.loc.clone());
                out.push(s.clone());
            }
            for (p, s) in &v.patterns {
                if pattern::matches(p, name) == Some(true) {
                    out.push(s.clone());
                }
            }
            if let Some(x) = &v.extra {
                if x.applies_to(name) == Some(true) {
                    out.push(x.schema.clone());
                }
            }
        }
        let loc = loc.or_else(|| out.first().map(|n| n.loc.clone())).unwrap_or_else(|| self.loc.clone());
        (out, loc)
    }

    /// The classes of names the writer declares nowhere, each with its constraints.
    pub fn classes(&self) -> Vec<(NameClass<'a>, Vec<Node<'a>>, Loc)> {
        let mut classes = Vec::new();
        let owner = self.owner.and_then(|i| self.views.get(i));
        match owner {
            Some(o) => {
                for (p, s) in &o.patterns {
                    classes.push((NameClass::Pattern(p), vec![s.clone()], s.loc.clone()));
                }
                let mut other = Vec::new();
                if let Some(x) = &o.extra {
                    let own: Vec<&str> = o.patterns.iter().map(|(p, _)| *p).collect();
                    if x.exempt_patterns.iter().all(|p| own.contains(p)) {
                        other.push(x.schema.clone());
                    }
                }
                let loc = other.first().map_or_else(|| o.node.loc.clone(), |n| n.loc.clone());
                classes.push((NameClass::Other, other, loc));
            }
            None => classes.push((NameClass::Other, Vec::new(), self.loc.clone())),
        }
        // Extras of nodes without patterns apply to every undeclared name.
        for (i, v) in self.views.iter().enumerate() {
            if Some(i) == self.owner || !v.patterns.is_empty() {
                continue;
            }
            if let Some(x) = v.extra.as_ref().filter(|x| x.exempt_patterns.is_empty()) {
                for (_, nodes, loc) in classes.iter_mut() {
                    if nodes.is_empty() {
                        *loc = x.schema.loc.clone();
                    }
                    nodes.push(x.schema.clone());
                }
            }
        }
        classes
    }

    /// The most properties an instance can have, when the writer's model is closed.
    pub fn max_count(&self, known: &BTreeSet<&str>) -> Option<u64> {
        let open = self.classes().iter().any(|(_, nodes, _)| !nodes.iter().any(Node::is_false));
        if open {
            return None;
        }
        let possible = known.iter().filter(|n| !self.for_name(n).0.iter().any(Node::is_false)).count();
        Some(possible as u64)
    }
}
