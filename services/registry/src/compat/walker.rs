//! The directional core: does the reader schema accept every instance the writer allows?
//!
//! The reader is walked keyword by keyword; each reader keyword is a constraint that the
//! writer must be shown to imply. Writer keywords the reader does not have only make the
//! writer narrower, so they never cause a problem. Anything the walk cannot prove becomes a
//! [`Finding`] saying why: the checker errs towards "incompatible", never towards "fine".

use std::collections::HashMap;

use serde_json::Value;

use super::flatten::{finite_values, ExpandError};
use super::instance::Verdict;
use super::node::{Group, Loc, Node};
use super::refs::Docs;
use super::report::{Finding, IncompatibilityKind as Kind, Roles};
use super::types::{self, TypeSet};
use super::values::show;

/// Deepest nesting of reader/writer pairs before the walk gives up (TooComplex).
const MAX_DEPTH: usize = 96;

/// State of one directional comparison.
pub(crate) struct Checker<'a> {
    /// All documents involved, for `$ref` resolution.
    pub docs: &'a Docs,
    /// How to name the two schemas in messages.
    pub roles: &'a Roles,
    /// Problems found so far.
    pub findings: Vec<Finding>,
    /// Reader/writer pairs being compared further up the stack, with the instance depth
    /// (`descent`) at which they were entered. Meeting a pair again deeper in the instance
    /// means a recursive schema, and assuming it compatible there is sound (co-induction:
    /// every JSON document is finite, so a counterexample shows up at a finite depth).
    /// Meeting it again at the same instance depth is a loop that never looks at data
    /// (`{"anyOf": [..., {"$ref": "#"}]}`), where that assumption would be unsound.
    active: HashMap<(usize, Vec<usize>, bool), usize>,
    /// Current nesting of `accepts` calls.
    depth: usize,
    /// How many property/item levels into the instance the walk currently is.
    descent: usize,
}

impl<'a> Checker<'a> {
    /// A fresh comparison.
    pub fn new(docs: &'a Docs, roles: &'a Roles) -> Self {
        Checker { docs, roles, findings: Vec::new(), active: HashMap::new(), depth: 0, descent: 0 }
    }

    /// Records a problem.
    pub fn report(&mut self, kind: Kind, reader: Loc, writer: Loc, message: String) {
        let message = format!("{message}{}", reader.external_note());
        self.findings.push(Finding { reader, writer, kind, message });
    }

    /// Runs `f` and returns what it found instead of keeping it (to try alternatives).
    pub fn trial(&mut self, f: impl FnOnce(&mut Self)) -> Vec<Finding> {
        let kept = std::mem::take(&mut self.findings);
        f(self);
        std::mem::replace(&mut self.findings, kept)
    }

    /// Reader name for messages.
    pub fn r(&self) -> &str {
        &self.roles.reader
    }

    /// Writer name for messages.
    pub fn w(&self) -> &str {
        &self.roles.writer
    }

    /// Checks that `reader` accepts every instance valid under all of `writer`'s nodes.
    pub fn accepts(&mut self, reader: &Node<'a>, writer: &Group<'a>) {
        if let [only] = writer.nodes.as_slice() {
            if self.docs.equivalent(reader, only) {
                return;
            }
        }
        if self.depth >= MAX_DEPTH {
            let msg = format!("schemas nest more than {MAX_DEPTH} levels deep; compatibility was not proven");
            self.report(Kind::TooComplex, reader.loc.clone(), writer.loc.clone(), msg);
            return;
        }
        let mut ids: Vec<usize> = writer.nodes.iter().map(Node::addr).collect();
        ids.sort_unstable();
        ids.dedup();
        let key = (reader.addr(), ids, writer.flat);
        if let Some(&entered) = self.active.get(&key) {
            if entered == self.descent {
                let msg = "the schema refers back to itself without descending into the data; \
                           compatibility was not proven"
                    .to_owned();
                self.report(Kind::TooComplex, reader.loc.clone(), writer.loc.clone(), msg);
            }
            return;
        }
        self.active.insert(key.clone(), self.descent);
        self.depth += 1;
        if writer.flat {
            self.accepts_alt(reader, &writer.nodes, &writer.loc);
        } else {
            match self.docs.expand(&writer.nodes) {
                Ok(alts) => {
                    for alt in alts {
                        let loc = alt.branch.unwrap_or_else(|| writer.loc.clone());
                        self.accepts_alt(reader, &alt.nodes, &loc);
                    }
                }
                Err(e) => self.expand_failed(e, reader),
            }
        }
        self.depth -= 1;
        self.active.remove(&key);
    }

    /// [`Checker::accepts`] for a property or item schema: one level deeper in the instance.
    pub fn accepts_inner(&mut self, reader: &Node<'a>, writer: &Group<'a>) {
        self.descent += 1;
        self.accepts(reader, writer);
        self.descent -= 1;
    }

    fn expand_failed(&mut self, e: ExpandError, reader: &Node<'a>) {
        let w = self.w().to_owned();
        let (kind, wloc, msg) = match e {
            ExpandError::Unresolved(loc, why) => (
                Kind::UnresolvedRef,
                loc,
                format!("cannot resolve a `$ref` in {w}: {why}; compatibility cannot be proven"),
            ),
            ExpandError::Invalid(loc) => (
                Kind::InvalidSchema,
                loc,
                format!("{w} has a value that is not a schema (expected an object or boolean)"),
            ),
            ExpandError::TooComplex(loc) => {
                (Kind::TooComplex, loc, format!("{w} combines too many anyOf/oneOf branches to compare"))
            }
        };
        self.report(kind, reader.loc.clone(), wloc, msg);
    }

    /// A flat writer alternative (see [`Group::flat`]).
    pub fn flat(alt: &[Node<'a>], loc: &Loc) -> Group<'a> {
        Group { nodes: alt.to_vec(), loc: loc.clone(), flat: true }
    }

    /// Compares the reader with one writer alternative.
    fn accepts_alt(&mut self, reader: &Node<'a>, alt: &[Node<'a>], wloc: &Loc) {
        if types::of_conjunction(alt).is_empty() {
            return; // The writer admits nothing here (e.g. `type: string` with `enum: [1]`).
        }
        let map = match reader.value {
            Value::Bool(true) => return,
            Value::Object(m) => m,
            Value::Bool(false) => {
                let msg = format!(
                    "{} is `false` here and accepts nothing, but {} allows data here",
                    self.r(),
                    self.w()
                );
                self.report(Kind::TypeNarrowed, reader.loc.clone(), wloc.clone(), msg);
                return;
            }
            _ => {
                let msg = format!("{} has a value that is not a schema here", self.r());
                self.report(Kind::InvalidSchema, reader.loc.clone(), wloc.clone(), msg);
                return;
            }
        };
        if let Some(values) = finite_values(alt) {
            if self.finite(reader, alt, wloc, &values) {
                return;
            }
        }
        if let Some(r) = map.get("$ref") {
            match r.as_str().map(|r| self.docs.resolve(reader, r)) {
                Some(Ok(target)) => self.accepts(&target, &Self::flat(alt, wloc)),
                Some(Err(why)) => {
                    let msg = format!(
                        "cannot resolve a `$ref` in {}: {why}; compatibility cannot be proven",
                        self.r()
                    );
                    self.report(Kind::UnresolvedRef, reader.loc.push("$ref"), wloc.clone(), msg);
                }
                None => {
                    let msg = format!("`$ref` in {} is not a string", self.r());
                    self.report(Kind::InvalidSchema, reader.loc.push("$ref"), wloc.clone(), msg);
                }
            }
        }
        if reader.ref_only() {
            return; // Legacy drafts ignore everything beside `$ref`.
        }
        for member in reader.sub_list("allOf") {
            self.accepts(&member, &Self::flat(alt, wloc));
        }
        for key in ["anyOf", "oneOf"] {
            if map.contains_key(key) {
                self.branches(reader, key, alt, wloc);
            }
        }
        if let Some(n) = reader.sub("not") {
            self.negation(&n, alt, wloc);
        }
        self.check_local(reader, alt, wloc);
    }

    /// Decides the comparison value by value when the writer allows finitely many values.
    /// Returns false (and reports nothing) when some value cannot be decided.
    fn finite(&mut self, reader: &Node<'a>, alt: &[Node<'a>], wloc: &Loc, values: &[Value]) -> bool {
        let docs = self.docs;
        // A reader keyword identical to one in the writer holds for every writer value.
        let skip =
            |key: &str| self_contained(key) && alt.iter().any(|w| docs.keyword_equivalent(key, reader, w));
        let mut failures = Vec::new();
        for v in values {
            let writer_rejects =
                alt.iter().any(|w| matches!(docs.validate(w, v, &|_| false), Verdict::Invalid(_)));
            if writer_rejects {
                continue;
            }
            match docs.validate(reader, v, &skip) {
                Verdict::Valid => {}
                Verdict::Invalid(f) => failures.push((v, f)),
                Verdict::Unknown(_) => return false,
            }
        }
        let wl = alt
            .iter()
            .find_map(|n| n.sub("enum").or_else(|| n.sub("const")))
            .map_or_else(|| wloc.clone(), |n| n.loc);
        for (v, f) in failures {
            let msg = format!(
                "{} allows the value {}, but {} rejects it: {}",
                self.w(),
                show(v),
                self.r(),
                f.detail
            );
            self.report(kind_for_keyword(&f.keyword), f.loc, wl.clone(), msg);
        }
        true
    }

    /// The reader's own keywords, grouped by the JSON type they constrain.
    fn check_local(&mut self, reader: &Node<'a>, alt: &[Node<'a>], wloc: &Loc) {
        let wt = types::of_conjunction(alt);
        let rt = types::declared(reader);
        let missing = wt.minus(rt);
        if !missing.is_empty() && reader.get("type").is_some() {
            let msg = format!(
                "{} allows {} here, but {} accepts only {}",
                self.w(),
                missing.describe(),
                self.r(),
                rt.describe()
            );
            let wl =
                alt.iter().find(|n| n.get("type").is_some()).map_or(wloc.clone(), |n| n.loc.push("type"));
            self.report(Kind::TypeNarrowed, reader.loc.push("type"), wl, msg);
        }
        let common = wt.inter(rt);
        self.check_enum(reader, alt, wloc, wt);
        if common.has(TypeSet::NUMBER) {
            self.check_number(reader, alt, wloc, common.inter(TypeSet::NUMBER) == TypeSet::INTEGER);
        }
        if common.has(TypeSet::STRING) {
            self.check_string(reader, alt, wloc);
        }
        if common.has(TypeSet::OBJECT) {
            self.check_object(reader, alt, wloc);
        }
        if common.has(TypeSet::ARRAY) {
            self.check_array(reader, alt, wloc);
        }
        self.check_opaque(reader, alt, wloc, common);
    }
}

/// Keywords whose meaning does not depend on sibling keywords, so an identical keyword in
/// the writer guarantees the reader's.
pub(crate) fn self_contained(key: &str) -> bool {
    matches!(
        key,
        "type"
            | "enum"
            | "const"
            | "pattern"
            | "format"
            | "multipleOf"
            | "minLength"
            | "maxLength"
            | "required"
            | "minProperties"
            | "maxProperties"
            | "minItems"
            | "maxItems"
            | "uniqueItems"
            | "properties"
            | "patternProperties"
            | "propertyNames"
            | "dependentRequired"
            | "dependentSchemas"
            | "dependencies"
            | "allOf"
            | "anyOf"
            | "oneOf"
            | "not"
            | "$ref"
    )
}

/// The kind to report when a specific writer value fails a reader keyword.
fn kind_for_keyword(keyword: &str) -> Kind {
    match keyword {
        "type" | "false" => Kind::TypeNarrowed,
        "minimum" | "exclusiveMinimum" => Kind::MinimumIncreased,
        "maximum" | "exclusiveMaximum" => Kind::MaximumDecreased,
        "multipleOf" => Kind::MultipleOfChanged,
        "minLength" => Kind::MinLengthIncreased,
        "maxLength" => Kind::MaxLengthDecreased,
        "pattern" => Kind::PatternChanged,
        "format" => Kind::FormatChanged,
        "required" | "dependentRequired" => Kind::RequiredAdded,
        "additionalProperties" | "unevaluatedProperties" => Kind::PropertyRemovedFromClosedModel,
        "minProperties" => Kind::MinPropertiesIncreased,
        "maxProperties" => Kind::MaxPropertiesDecreased,
        "minItems" => Kind::MinItemsIncreased,
        "maxItems" => Kind::MaxItemsDecreased,
        "uniqueItems" => Kind::UniqueItemsAdded,
        "contains" => Kind::ContainsAdded,
        "anyOf" | "noBranch" => Kind::NoMatchingBranch,
        "oneOf" => Kind::OneOfAmbiguous,
        "not" => Kind::NotUnproven,
        _ => Kind::EnumNarrowed,
    }
}
