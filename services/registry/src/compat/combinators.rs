//! Reader-side `anyOf`, `oneOf` and `not`, and the disjointness prover they rely on.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::{json, Value};

use super::flatten::finite_values;
use super::instance::Verdict;
use super::node::{Group, Loc, Node};
use super::report::{Finding, IncompatibilityKind as Kind};
use super::types::{self, TypeSet};
use super::walker::Checker;

/// Schemas of one JSON type each, to split a writer by type.
fn type_schemas() -> &'static [(TypeSet, Value)] {
    static SCHEMAS: OnceLock<Vec<(TypeSet, Value)>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        ["null", "boolean", "object", "array", "string", "integer", "number"]
            .iter()
            .filter_map(|t| TypeSet::named(t).map(|set| (set, json!({ "type": t }))))
            .collect()
    })
}

/// The writer alternative split into one alternative per JSON type it allows (numbers as
/// `integer` when only integers are possible, else `number`).
fn split_by_type<'a>(alt: &[Node<'a>]) -> Vec<Vec<Node<'a>>> {
    let Some(first) = alt.first() else {
        return Vec::new();
    };
    let wt = types::of_conjunction(alt);
    let number = if wt.has(TypeSet::FRACTION) { TypeSet::NUMBER } else { TypeSet::INTEGER };
    type_schemas()
        .iter()
        .filter(|(t, _)| wt.has(*t) && (!TypeSet::NUMBER.has(*t) || *t == number))
        .map(|(_, schema)| {
            let mut piece = alt.to_vec();
            piece.push(first.at(schema, &[]));
            piece
        })
        .collect()
}

/// How deep the disjointness prover follows required properties into nested objects.
const MAX_DISJOINT_DEPTH: usize = 8;

impl<'a> Checker<'a> {
    /// Reader `anyOf`/`oneOf`: each writer alternative must fit one reader branch; for
    /// `oneOf` it must also provably fit no other branch (data matching two branches is
    /// rejected by `oneOf`).
    pub(crate) fn branches(&mut self, reader: &Node<'a>, key: &str, alt: &[Node<'a>], wloc: &Loc) {
        // The writer carries an identical combinator: its data already satisfies it.
        if alt.iter().any(|w| self.docs.keyword_equivalent(key, reader, w)) {
            return;
        }
        let branches = reader.sub_list(key);
        let best = match self.fit_branch(key, &branches, alt, wloc) {
            Ok(()) => return,
            Err(best) => best,
        };
        // A writer allowing several types may spread them over several branches
        // (`type: [string, integer]` against `anyOf: [string, integer]`): try type by type.
        let pieces = split_by_type(alt);
        if pieces.len() > 1 {
            let mut fits = true;
            let found = self.trial(|c| {
                fits = pieces.iter().all(|piece| c.fit_branch(key, &branches, piece, wloc).is_ok());
            });
            if fits {
                self.findings.extend(found); // Possible oneOf ambiguities of the pieces.
                return;
            }
        }
        match best {
            // A single-branch combinator is just its branch: report the precise problems.
            Some((_, found)) if branches.len() == 1 => self.findings.extend(found),
            best => {
                // Point at the closest branch's problem when that branch has the right type.
                let closest = best
                    .and_then(|((wrong_type, _), f)| f.into_iter().next().map(|first| (wrong_type, first)));
                let (rloc, wl, hint) = match closest {
                    Some((false, f)) => (f.reader, f.writer, format!(" (closest branch: {})", f.message)),
                    Some((true, f)) => {
                        (reader.loc.push(key), wloc.clone(), format!(" (closest branch: {})", f.message))
                    }
                    None => (reader.loc.push(key), wloc.clone(), String::new()),
                };
                let msg = format!(
                    "{} allows data that no branch of the `{key}` in {} accepts{hint}",
                    self.w(),
                    self.r()
                );
                self.report(Kind::NoMatchingBranch, rloc, wl, msg);
            }
        }
    }

    /// Finds a branch accepting the writer alternative `alt`; for `oneOf`, also reports
    /// branches it may match as well. On failure returns the closest branch's findings,
    /// scored: branches whose types overlap the writer's first (the problem is a detail,
    /// not "wrong type"), then fewest problems.
    #[allow(clippy::type_complexity)]
    fn fit_branch(
        &mut self,
        key: &str,
        branches: &[Node<'a>],
        alt: &[Node<'a>],
        wloc: &Loc,
    ) -> Result<(), Option<((bool, usize), Vec<Finding>)>> {
        let group = Self::flat(alt, wloc);
        let wt = types::of_conjunction(alt);
        let mut best: Option<((bool, usize), Vec<Finding>)> = None;
        for (i, b) in branches.iter().enumerate() {
            let found = self.trial(|c| c.accepts(b, &group));
            if !found.is_empty() {
                let bt = types::of_conjunction(&self.docs.flatten(std::slice::from_ref(b)).conj);
                let score = (wt.inter(bt).is_empty(), found.len());
                if best.as_ref().is_none_or(|(s, _)| score < *s) {
                    best = Some((score, found));
                }
                continue;
            }
            if key == "oneOf" {
                for (j, other) in branches.iter().enumerate() {
                    if j != i && !self.disjoint(alt, other, 0) {
                        let msg = format!(
                            "data allowed by {} fits branch {i} of the `oneOf` in {} and may also \
                             fit branch {j}, which `oneOf` rejects; the checker could not prove \
                             these branches mutually exclusive",
                            self.w(),
                            self.r()
                        );
                        self.report(Kind::OneOfAmbiguous, other.loc.clone(), wloc.clone(), msg);
                    }
                }
            }
            return Ok(());
        }
        Err(best)
    }

    /// Reader `not: N`: the writer must provably never produce data matching N. That holds
    /// when the writer itself says `not: X` with N ⊆ X, or when writer and N are disjoint.
    pub(crate) fn negation(&mut self, n: &Node<'a>, alt: &[Node<'a>], wloc: &Loc) {
        for w in alt {
            if let Some(x) = w.sub("not") {
                if self.trial(|c| c.accepts(&x, &Group::single(n.clone()))).is_empty() {
                    return;
                }
            }
        }
        if self.disjoint(alt, n, 0) {
            return;
        }
        let msg = format!(
            "{} rejects data matching its `not` schema, and the checker cannot prove that data \
             allowed by {} never matches it",
            self.r(),
            self.w()
        );
        self.report(Kind::NotUnproven, n.loc.clone(), wloc.clone(), msg);
    }

    /// Whether no instance satisfies both the flat conjunction `left` and `right`.
    /// Conservative: `false` means "not proven", not "overlapping".
    pub(crate) fn disjoint(&self, left: &[Node<'a>], right: &Node<'a>, depth: usize) -> bool {
        if depth > MAX_DISJOINT_DEPTH {
            return false;
        }
        let docs = self.docs;
        let rf = docs.flatten(std::slice::from_ref(right));
        if rf.empty {
            return true;
        }
        if !rf.unresolved.is_empty() || !rf.invalid.is_empty() {
            return false;
        }
        let (lt, rt) = (types::of_conjunction(left), types::of_conjunction(&rf.conj));
        let shared = lt.inter(rt);
        if shared.is_empty() {
            return true;
        }
        let invalid = |schemas: &[Node<'a>], v: &Value| {
            schemas.iter().any(|s| matches!(docs.validate(s, v, &|_| false), Verdict::Invalid(_)))
        };
        if let Some(vals) = finite_values(left) {
            if vals.iter().all(|v| invalid(std::slice::from_ref(right), v)) {
                return true;
            }
        }
        if let Some(vals) = finite_values(&rf.conj) {
            if vals.iter().all(|v| invalid(left, v)) {
                return true;
            }
        }
        if rf.disj.iter().any(|branches| branches.iter().all(|b| self.disjoint(left, b, depth + 1))) {
            return true;
        }
        // Discriminated objects: a property both sides require, with disjoint values.
        if shared == types::TypeSet::OBJECT {
            let required = |nodes: &[Node<'a>]| -> BTreeSet<&'a str> {
                nodes
                    .iter()
                    .filter_map(|n| n.get("required").and_then(Value::as_array))
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect()
            };
            let (lreq, rreq) = (required(left), required(&rf.conj));
            for name in lreq.intersection(&rreq) {
                let lprops: Vec<Node<'a>> =
                    left.iter().filter_map(|n| n.sub_named("properties", name)).collect();
                for rp in rf.conj.iter().filter_map(|n| n.sub_named("properties", name)) {
                    let Ok(alts) = docs.expand(&lprops) else {
                        continue;
                    };
                    if alts.iter().all(|a| self.disjoint(&a.nodes, &rp, depth + 1)) {
                        return true;
                    }
                }
            }
        }
        false
    }
}
