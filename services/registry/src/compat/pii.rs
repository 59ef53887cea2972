//! Changes to `x-kakehashi-pii`, found by a symmetric diff rather than by the directional
//! walk: the annotation decides how a value is pseudonymized at delivery, so adding,
//! removing or changing it matters even where validation is unaffected (a property removed
//! from an open model is still delivered, now unannotated, and would leak).
//!
//! Each schema is mapped to "data paths" (`/person/my_number`, `/items/[]`) with the set of
//! annotation values found for that path. A path is reported when the sets differ and data
//! can exist at that path under both schemas: a new annotated property in a model that was
//! closed is a plain addition, not a change of handling, while the same property added where
//! the old open model already let raw values through is one.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::node::{escape, Loc, Node};
use super::refs::Docs;
use super::report::{Finding, IncompatibilityKind as Kind, Roles};
use super::PII_KEYWORD;

/// Deepest data path followed.
const MAX_SEGMENTS: usize = 32;
/// Most data paths mapped per schema: a bound for schemas whose `$ref`s share subschemas
/// in a deep diamond (each path is mapped separately, so sharing multiplies paths).
const MAX_PATHS: usize = 4096;

/// What one schema says about one data path.
#[derive(Debug, Default)]
struct Entry {
    /// First schema location describing the path.
    loc: Loc,
    /// Location of the first annotation, if any.
    annotated: Option<Loc>,
    /// The annotation values, serialized.
    values: BTreeSet<String>,
    /// Some schema here rejects undeclared properties.
    closed: bool,
}

impl Entry {
    fn best_loc(&self) -> Loc {
        self.annotated.clone().unwrap_or_else(|| self.loc.clone())
    }
}

type PathMap = BTreeMap<String, Entry>;

/// Maps the data paths under `node`. `stack` holds the `$ref` targets being expanded: a
/// recursive definition is expanded once per path from the root, not forever. Both schemas
/// are cut at the same places, so their maps stay comparable.
fn collect<'a>(docs: &'a Docs, node: &Node<'a>, path: &str, out: &mut PathMap, stack: &mut Vec<usize>) {
    if path.matches('/').count() > MAX_SEGMENTS || out.len() >= MAX_PATHS {
        return;
    }
    let Some(map) = node.map() else { return };
    let entry =
        out.entry(path.to_owned()).or_insert_with(|| Entry { loc: node.loc.clone(), ..Entry::default() });
    let rejects = |k: &str| map.get(k) == Some(&Value::Bool(false));
    entry.closed |= rejects("additionalProperties") || rejects("unevaluatedProperties");
    if let Some(v) = map.get(PII_KEYWORD) {
        entry.values.insert(v.to_string());
        entry.annotated.get_or_insert_with(|| node.loc.push(PII_KEYWORD));
    }
    let target = map.get("$ref").and_then(Value::as_str).and_then(|r| docs.resolve(node, r).ok());
    if let Some(target) = target.filter(|t| !stack.contains(&t.addr())) {
        stack.push(target.addr());
        collect(docs, &target, path, out, stack);
        stack.pop();
    }
    let mut same_path: Vec<Node<'a>> = Vec::new();
    for key in ["allOf", "anyOf", "oneOf"] {
        same_path.extend(node.sub_list(key));
    }
    same_path.extend(["then", "else"].iter().filter_map(|k| node.sub(k)));
    same_path.extend(node.sub_map("dependentSchemas").into_iter().map(|(_, n)| n));
    for n in same_path {
        collect(docs, &n, path, out, stack);
    }
    let mut below: Vec<(String, Node<'a>)> = Vec::new();
    for (name, n) in node.sub_map("properties") {
        below.push((escape(name), n));
    }
    for (p, n) in node.sub_map("patternProperties") {
        below.push((format!("<{}>", escape(p)), n));
    }
    below.extend(node.sub("additionalProperties").map(|n| ("*".to_owned(), n)));
    below.extend(node.sub("unevaluatedProperties").map(|n| ("*".to_owned(), n)));
    let tuple = matches!(map.get("items"), Some(Value::Array(_)));
    let prefix_key = if tuple { "items" } else { "prefixItems" };
    for (i, n) in node.sub_list(prefix_key).into_iter().enumerate() {
        below.push((format!("[{i}]"), n));
    }
    let rest = if tuple { node.sub("additionalItems") } else { node.sub("items") };
    below.extend(rest.map(|n| ("[]".to_owned(), n)));
    for (seg, n) in below {
        collect(docs, &n, &format!("{path}/{seg}"), out, stack);
    }
}

/// The entry for `path`, or for its closest ancestor that the schema describes.
fn nearest<'m>(map: &'m PathMap, path: &str) -> Option<&'m Entry> {
    let mut p = path;
    loop {
        if let Some(e) = map.get(p) {
            return Some(e);
        }
        p = &p[..p.rfind('/')?];
    }
}

/// Whether data can exist at `path` under the schema mapped in `map`: the path is described,
/// or its closest described ancestor is an object that lets undeclared properties through.
fn reachable(map: &PathMap, path: &str) -> bool {
    if map.contains_key(path) {
        return true;
    }
    nearest(map, path).is_some_and(|e| !e.closed)
}

fn show(values: &BTreeSet<String>) -> String {
    if values.is_empty() {
        "(none)".to_owned()
    } else {
        values.iter().cloned().collect::<Vec<_>>().join(" / ")
    }
}

/// Reports every data path whose `x-kakehashi-pii` differs between the two schemas.
pub(crate) fn diff<'a>(docs: &'a Docs, reader: &Node<'a>, writer: &Node<'a>, roles: &Roles) -> Vec<Finding> {
    let (mut rmap, mut wmap) = (PathMap::new(), PathMap::new());
    collect(docs, reader, "", &mut rmap, &mut Vec::new());
    collect(docs, writer, "", &mut wmap, &mut Vec::new());
    let empty = BTreeSet::new();
    let paths: BTreeSet<&String> = rmap.keys().chain(wmap.keys()).collect();
    let mut out = Vec::new();
    for path in paths {
        let rv = rmap.get(path).map_or(&empty, |e| &e.values);
        let wv = wmap.get(path).map_or(&empty, |e| &e.values);
        if rv == wv || !reachable(&rmap, path) || !reachable(&wmap, path) {
            continue;
        }
        let loc_of = |m: &PathMap| nearest(m, path).map(Entry::best_loc).unwrap_or_default();
        let (rloc, wloc) = (loc_of(&rmap), loc_of(&wmap));
        let shown = if path.is_empty() { "(root)" } else { path.as_str() };
        let message = format!(
            "`{PII_KEYWORD}` for data at `{shown}` changes from {} in {} to {} in {}; this \
             changes how that value is pseudonymized at delivery{}",
            show(wv),
            roles.writer,
            show(rv),
            roles.reader,
            rloc.external_note()
        );
        out.push(Finding { reader: rloc, writer: wloc, kind: Kind::PiiAnnotationChanged, message });
    }
    out
}
