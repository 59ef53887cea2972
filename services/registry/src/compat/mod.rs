//! JSON Schema compatibility checking for the schema registry, with Confluent Schema
//! Registry's semantics: a candidate schema is checked against earlier versions of its
//! subject according to a [`Mode`], and every problem comes back as an [`Incompatibility`]
//! with a JSON pointer into the candidate and a stable [`IncompatibilityKind`].
//!
//! # How it decides
//! Everything reduces to one directional question, [`check_reader_accepts_writer`]: is every
//! instance valid under the writer schema also valid under the reader schema? BACKWARD asks
//! it with the new schema as reader and an old one as writer; FORWARD the other way round.
//! The walk treats each reader keyword as a constraint the writer must be shown to imply;
//! whatever it cannot prove is reported, with the reason, rather than waved through. The
//! rules, construct by construct, are in `docs/compatibility.md`.
//!
//! # Layout
//! - `mode.rs`, `report.rs`: the public types.
//! - `walker.rs`: the directional walk and its dispatch; `combinators.rs` (`anyOf`, `oneOf`,
//!   `not`, disjointness), `scalar.rs` (`enum`, numbers, strings), `object.rs` with
//!   `object_model.rs`, `array.rs`, `opaque.rs` (identity-only keywords), `pii.rs`.
//! - `flatten.rs`: writer `allOf`/`$ref`/`anyOf`/`oneOf` into alternatives; `refs.rs`:
//!   `$ref` resolution and the [`RefResolver`]; `equiv.rs`: structural equivalence;
//!   `instance.rs`, `instance_obj.rs`: a three-valued validator for `enum`/`const` values;
//!   `pattern.rs`, `types.rs`, `values.rs`, `node.rs`: small building blocks.

mod array;
mod combinators;
mod equiv;
mod flatten;
mod instance;
mod instance_obj;
mod mode;
mod node;
mod object;
mod object_model;
mod opaque;
mod pattern;
mod pii;
pub mod protobuf;
mod refs;
mod report;
mod scalar;
mod types;
mod values;
mod walker;

#[cfg(test)]
mod tests;

use std::collections::HashSet;

use serde_json::Value;

pub use mode::{Mode, ParseModeError};
pub use refs::{NoExternalRefs, RefResolver};
pub use report::{Incompatibility, IncompatibilityKind};

use node::{Doc, Group, Node};
use refs::Docs;
use report::{Finding, Roles};
use walker::Checker;

/// The annotation marking personal data (see DESIGN.md, "Policy and privacy").
pub(crate) const PII_KEYWORD: &str = "x-kakehashi-pii";

/// Is every instance valid under `writer` also valid under `reader`?
///
/// This is the core directional check; an empty result means "yes, provably". Kinds are named
/// as if `reader` were the newer schema (`RequiredAdded`: the reader requires a property the
/// writer does not), and pointers point into `reader`. Changes to `x-kakehashi-pii` between
/// the two are reported too. `refs` resolves `$ref`s to other registered schemas.
pub fn check_reader_accepts_writer(
    reader: &Value,
    writer: &Value,
    refs: &dyn RefResolver,
) -> Vec<Incompatibility> {
    let roles = Roles::generic();
    let docs = Docs::load(&[reader, writer], refs);
    let mut findings = walk(&docs, reader, writer, &roles);
    findings.extend(pii_diff(&docs, reader, writer, &roles));
    dedup(findings.into_iter().map(|f| attribute(f, false, None)).collect())
}

/// Checks `candidate` against the registered versions `previous` (ordered oldest to newest,
/// deleted versions already left out) under `mode`. An empty result means compatible.
///
/// Non-transitive modes compare with the newest version only; transitive ones with all.
/// Each [`Incompatibility`] names the version it was found against, points into the
/// candidate, and is named from the candidate's point of view (a FORWARD problem where the
/// candidate dropped a required property is `RequiredRemoved`).
pub fn check(
    mode: Mode,
    candidate: &Value,
    previous: &[(u32, &Value)],
    refs: &dyn RefResolver,
) -> Vec<Incompatibility> {
    if mode == Mode::None {
        return Vec::new();
    }
    let against: &[(u32, &Value)] =
        if mode.is_transitive() { previous } else { previous.last().map_or(&[], std::slice::from_ref) };
    let mut out = Vec::new();
    for (version, old) in against {
        let docs = Docs::load(&[candidate, old], refs);
        let old_name = format!("version {version}");
        let new_name = "the new schema".to_owned();
        if mode.checks_backward() {
            let roles = Roles { reader: new_name.clone(), writer: old_name.clone() };
            for f in walk(&docs, candidate, old, &roles) {
                out.push(attribute(f, false, Some(*version)));
            }
        }
        if mode.checks_forward() {
            let roles = Roles { reader: old_name.clone(), writer: new_name.clone() };
            for f in walk(&docs, old, candidate, &roles) {
                out.push(attribute(f, true, Some(*version)));
            }
        }
        // The annotation diff is symmetric: run it once, with the candidate as "reader" so
        // its pointers land in the candidate.
        let roles = Roles { reader: new_name, writer: old_name };
        for f in pii_diff(&docs, candidate, old, &roles) {
            out.push(attribute(f, false, Some(*version)));
        }
    }
    dedup(out)
}

/// Runs the directional walk between two root documents.
fn walk(docs: &Docs, reader: &Value, writer: &Value, roles: &Roles) -> Vec<Finding> {
    let mut checker = Checker::new(docs, roles);
    let r = Node::root(Doc::root(reader));
    let w = Node::root(Doc::root(writer));
    checker.accepts(&r, &Group::single(w));
    checker.findings
}

fn pii_diff(docs: &Docs, reader: &Value, writer: &Value, roles: &Roles) -> Vec<Finding> {
    let r = Node::root(Doc::root(reader));
    let w = Node::root(Doc::root(writer));
    pii::diff(docs, &r, &w, roles)
}

/// Turns a finding into the public form. `candidate_is_writer`: the finding came from a
/// FORWARD walk, so the candidate is the writer and the kind is mirrored.
fn attribute(f: Finding, candidate_is_writer: bool, version: Option<u32>) -> Incompatibility {
    let (loc, kind) = if candidate_is_writer { (f.writer, f.kind.mirrored()) } else { (f.reader, f.kind) };
    Incompatibility { pointer: loc.pointer, kind, message: f.message, against_version: version }
}

/// Drops exact repeats (several writer alternatives often hit the same reader keyword).
fn dedup(items: Vec<Incompatibility>) -> Vec<Incompatibility> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert((i.pointer.clone(), i.kind, i.message.clone(), i.against_version)))
        .collect()
}
