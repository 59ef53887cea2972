//! Turning a writer schema into "alternatives": lists of constraints that all hold.
//!
//! `allOf` members and `$ref` targets join the list (every instance satisfies them all).
//! `anyOf`/`oneOf` split it: data valid under the writer is valid under at least one branch,
//! so "the reader accepts every writer alternative" implies "the reader accepts the writer".
//! Treating `oneOf` like `anyOf` here only enlarges the writer, which is safe.

use std::collections::HashSet;

use serde_json::Value;

use super::node::{Loc, Node};
use super::refs::Docs;
use super::values::contains_value;

/// Most alternatives one writer may expand to before the checker gives up (TooComplex).
pub(crate) const MAX_ALTERNATIVES: usize = 128;
/// How deeply branches may nest inside branches during expansion.
const MAX_NESTING: usize = 16;

/// A writer conjunction with `allOf` and `$ref` folded in and the disjunctions set aside.
#[derive(Debug, Default)]
pub(crate) struct Flat<'a> {
    /// Object schemas whose own keywords all apply (their combinators are in the fields below).
    pub conj: Vec<Node<'a>>,
    /// Each entry is one `anyOf`/`oneOf`: at least one of its branches applies.
    pub disj: Vec<Vec<Node<'a>>>,
    /// Set when a `false` (or `not: {}`) is among the constraints: nothing is valid.
    pub empty: bool,
    /// References that could not be followed, with the reason.
    pub unresolved: Vec<(Loc, String)>,
    /// Values that are not schemas at all.
    pub invalid: Vec<Loc>,
}

/// One writer alternative: constraints that all hold, and where its branch is.
#[derive(Debug, Clone)]
pub(crate) struct Alt<'a> {
    /// The constraints (read for their own keywords only).
    pub nodes: Vec<Node<'a>>,
    /// The `anyOf`/`oneOf` branch this alternative came from, if any: a better place to
    /// point at than the schema holding the combinator.
    pub branch: Option<Loc>,
}

/// Why a writer could not be expanded.
#[derive(Debug)]
pub(crate) enum ExpandError {
    /// A `$ref` could not be followed.
    Unresolved(Loc, String),
    /// A value where a schema was expected.
    Invalid(Loc),
    /// Too many alternatives or too deep a nesting of branches.
    TooComplex(Loc),
}

impl Docs {
    /// Folds `allOf` and `$ref` of `nodes` into one conjunction.
    pub fn flatten<'a>(&'a self, nodes: &[Node<'a>]) -> Flat<'a> {
        let mut flat = Flat::default();
        let mut seen = HashSet::new();
        for n in nodes {
            self.flatten_into(n, &mut flat, &mut seen);
        }
        flat
    }

    fn flatten_into<'a>(&'a self, node: &Node<'a>, flat: &mut Flat<'a>, seen: &mut HashSet<usize>) {
        // A schema that reaches itself through allOf/$ref adds nothing the second time.
        if !seen.insert(node.addr()) {
            return;
        }
        let map = match node.value {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                flat.empty = true;
                return;
            }
            Value::Object(map) => map,
            _ => {
                flat.invalid.push(node.loc.clone());
                return;
            }
        };
        if node.ref_only() {
            // Legacy drafts: the `$ref` target is the whole schema.
            if let Some(Value::String(r)) = map.get("$ref") {
                match self.resolve(node, r) {
                    Ok(target) => self.flatten_into(&target, flat, seen),
                    Err(why) => flat.unresolved.push((node.loc.push("$ref"), why)),
                }
            }
            return;
        }
        flat.conj.push(node.clone());
        if matches!(map.get("not"), Some(Value::Bool(true)))
            || matches!(map.get("not"), Some(Value::Object(m)) if m.is_empty())
        {
            flat.empty = true;
        }
        if let Some(Value::String(r)) = map.get("$ref") {
            match self.resolve(node, r) {
                Ok(target) => self.flatten_into(&target, flat, seen),
                Err(why) => flat.unresolved.push((node.loc.push("$ref"), why)),
            }
        }
        for member in node.sub_list("allOf") {
            self.flatten_into(&member, flat, seen);
        }
        for key in ["anyOf", "oneOf"] {
            if node.get(key).is_some() {
                flat.disj.push(node.sub_list(key));
            }
        }
    }

    /// Expands writer constraints into alternatives (each a flat conjunction). An empty result
    /// means the writer admits no data at all.
    pub fn expand<'a>(&'a self, nodes: &[Node<'a>]) -> Result<Vec<Alt<'a>>, ExpandError> {
        self.expand_nested(nodes, 0)
    }

    fn expand_nested<'a>(&'a self, nodes: &[Node<'a>], nesting: usize) -> Result<Vec<Alt<'a>>, ExpandError> {
        let here = || nodes.first().map(|n| n.loc.clone()).unwrap_or_default();
        if nesting > MAX_NESTING {
            return Err(ExpandError::TooComplex(here()));
        }
        let flat = self.flatten(nodes);
        if let Some((loc, why)) = flat.unresolved.into_iter().next() {
            return Err(ExpandError::Unresolved(loc, why));
        }
        if let Some(loc) = flat.invalid.into_iter().next() {
            return Err(ExpandError::Invalid(loc));
        }
        if flat.empty {
            return Ok(Vec::new());
        }
        let mut alts = vec![Alt { nodes: flat.conj, branch: None }];
        for branches in flat.disj {
            let mut next = Vec::new();
            for branch in &branches {
                for sub in self.expand_nested(std::slice::from_ref(branch), nesting + 1)? {
                    let loc = sub.branch.clone().unwrap_or_else(|| branch.loc.clone());
                    for alt in &alts {
                        let mut nodes = alt.nodes.clone();
                        nodes.extend(sub.nodes.iter().cloned());
                        next.push(Alt { nodes, branch: Some(loc.clone()) });
                        if next.len() > MAX_ALTERNATIVES {
                            return Err(ExpandError::TooComplex(here()));
                        }
                    }
                }
            }
            alts = next;
        }
        Ok(alts)
    }
}

/// The finite set of values a flat conjunction allows, if some member has `enum` or `const`:
/// the values of the first such member that every other `enum`/`const` also lists.
pub(crate) fn finite_values(conj: &[Node<'_>]) -> Option<Vec<Value>> {
    let sets: Vec<Vec<Value>> = conj
        .iter()
        .filter_map(|n| {
            let mut vals: Option<Vec<Value>> = None;
            if let Some(Value::Array(e)) = n.get("enum") {
                vals = Some(e.clone());
            }
            if let Some(c) = n.get("const") {
                vals = Some(match vals {
                    Some(e) if !contains_value(&e, c) => Vec::new(),
                    _ => vec![c.clone()],
                });
            }
            vals
        })
        .collect();
    let (first, rest) = sets.split_first()?;
    Some(first.iter().filter(|v| rest.iter().all(|s| contains_value(s, v))).cloned().collect())
}
