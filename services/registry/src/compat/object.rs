//! Object keywords: properties under open and closed content models, `patternProperties`,
//! `additionalProperties`/`unevaluatedProperties`, `required`, `minProperties`/`maxProperties`.
//!
//! The rules follow from one question per property name: can the writer produce this name,
//! and if so, does every value it allows there satisfy everything the reader applies to it?

use std::collections::BTreeSet;

use serde_json::Value;

use super::node::{Group, Loc, Node};
use super::object_model::{NameClass, ObjectView, WriterObject};
use super::pattern;
use super::report::{Finding, IncompatibilityKind as Kind};
use super::walker::Checker;

/// The first finding's message, to explain a summarizing finding.
fn first_reason(found: &[Finding]) -> String {
    found.first().map(|f| format!(": {}", f.message)).unwrap_or_default()
}

impl<'a> Checker<'a> {
    /// All object keywords of `reader` against the writer alternative `alt`.
    pub(crate) fn check_object(&mut self, reader: &Node<'a>, alt: &[Node<'a>], wloc: &Loc) {
        let r = ObjectView::new(self.docs, reader, true);
        let w = WriterObject::new(self.docs, alt, wloc);
        let mut known: BTreeSet<&'a str> = w.names.clone();
        known.extend(r.props.keys().copied());
        if let Some(x) = &r.extra {
            known.extend(x.exempt_names.iter().copied());
        }
        for name in &known {
            self.check_name(&r, &w, name);
        }
        for class in w.classes() {
            self.check_class(&r, &w, class);
        }
        self.check_required(reader, &w);
        let wmin = Some(w.required.len() as u64);
        let wmax = w.max_count(&known);
        self.count_bounds(reader, alt, wloc, ["minProperties", "maxProperties"], wmin, wmax, "properties");
    }

    /// One property name that the reader or the writer declares.
    fn check_name(&mut self, r: &ObjectView<'a>, w: &WriterObject<'a>, name: &str) {
        let (wc, wl) = w.for_name(name);
        if wc.iter().any(Node::is_false) {
            return; // The writer never produces this property.
        }
        let group = Group::of(wc.clone(), wl.clone());
        if let Some(rp) = r.props.get(name) {
            if wc.is_empty() {
                // The writer's open model lets old data carry this name with any value.
                let found = self.trial(|c| c.accepts_inner(rp, &group));
                if !found.is_empty() {
                    let msg = format!(
                        "{} declares property `{name}`, but {} does not and its open content model \
                         allows any value there{}",
                        self.r(),
                        self.w(),
                        first_reason(&found)
                    );
                    self.report(Kind::PropertyAddedToOpenModel, rp.loc.clone(), wl.clone(), msg);
                }
            } else {
                self.accepts_inner(rp, &group);
            }
        }
        for (p, s) in &r.patterns {
            match pattern::matches(p, name) {
                Some(false) => {}
                Some(true) => self.accepts_inner(s, &group),
                None => {
                    let found = self.trial(|c| c.accepts_inner(s, &group));
                    if !found.is_empty() {
                        let msg = format!(
                            "cannot tell whether property `{name}` matches pattern `{p}` of {}; \
                             if it does, values {} allows are rejected{}",
                            self.r(),
                            self.w(),
                            first_reason(&found)
                        );
                        self.report(Kind::PatternPropertiesUnproven, s.loc.clone(), wl.clone(), msg);
                    }
                }
            }
        }
        let Some(x) = &r.extra else { return };
        let applies = x.applies_to(name);
        if applies == Some(false) {
            return;
        }
        let found = self.trial(|c| c.accepts_inner(&x.schema, &group));
        if found.is_empty() {
            return;
        }
        let (kind, msg) = match (applies, x.schema.is_false()) {
            (None, _) => (
                Kind::PatternPropertiesUnproven,
                format!(
                    "{} may contain property `{name}`, which {} restricts unless it matches one of \
                     its patterns, and the checker cannot tell whether it does{}",
                    self.w(),
                    self.r(),
                    first_reason(&found)
                ),
            ),
            (_, true) => (
                Kind::PropertyRemovedFromClosedModel,
                format!(
                    "{} allows property `{name}`, but {} does not declare it and rejects \
                     undeclared properties",
                    self.w(),
                    self.r()
                ),
            ),
            (_, false) => (
                Kind::AdditionalPropertiesNarrowed,
                format!(
                    "property `{name}` of {} is undeclared in {}, whose schema for undeclared \
                     properties rejects some of its values{}",
                    self.w(),
                    self.r(),
                    first_reason(&found)
                ),
            ),
        };
        self.report(kind, x.schema.loc.clone(), wl, msg);
    }

    /// Names the writer declares nowhere (its open part, or its `patternProperties`).
    fn check_class(
        &mut self,
        r: &ObjectView<'a>,
        w: &WriterObject<'a>,
        class: (NameClass<'a>, Vec<Node<'a>>, Loc),
    ) {
        let (class, wc, wl) = class;
        if wc.iter().any(Node::is_false) {
            return;
        }
        let label = match &class {
            NameClass::Pattern(p) => format!("properties matching `{p}`"),
            NameClass::Other => "undeclared properties".to_owned(),
        };
        let group = Group::of(wc, wl.clone());
        let owner_patterns: Vec<&str> = w
            .owner
            .and_then(|i| w.views.get(i))
            .map(|v| v.patterns.iter().map(|(p, _)| *p).collect())
            .unwrap_or_default();
        for (p, s) in &r.patterns {
            // Some(true): the reader pattern certainly applies to (some of) these names.
            let certain = match &class {
                NameClass::Pattern(wp) if wp == p => Some(true),
                NameClass::Pattern(wp) if pattern::disjoint(wp, p) => continue,
                NameClass::Pattern(_) => None,
                NameClass::Other if owner_patterns.contains(p) => continue,
                NameClass::Other if w.owner.is_some() => None,
                NameClass::Other => Some(true),
            };
            if matches!(&class, NameClass::Pattern(wp) if wp == p) {
                // The same pattern on both sides: compare the two schemas directly.
                self.accepts_inner(s, &group);
                continue;
            }
            let found = self.trial(|c| c.accepts_inner(s, &group));
            if found.is_empty() {
                continue;
            }
            let (kind, doubt) = match certain {
                Some(_) => (Kind::AdditionalPropertiesNarrowed, ""),
                None => (Kind::PatternPropertiesUnproven, " (the checker cannot compare the two patterns)"),
            };
            let msg = format!(
                "{} allows {label} with values that pattern `{p}` of {} rejects{doubt}{}",
                self.w(),
                self.r(),
                first_reason(&found)
            );
            self.report(kind, s.loc.clone(), wl.clone(), msg);
        }
        let Some(x) = &r.extra else { return };
        if let NameClass::Pattern(wp) = &class {
            if x.exempt_patterns.contains(wp) {
                return;
            }
        }
        let found = self.trial(|c| c.accepts_inner(&x.schema, &group));
        if found.is_empty() {
            return;
        }
        let msg = if x.schema.is_false() {
            format!("{} allows {label}, but {} rejects undeclared properties", self.w(), self.r())
        } else {
            format!(
                "{} allows {label} with values that the schema for undeclared properties in {} \
                 rejects{}",
                self.w(),
                self.r(),
                first_reason(&found)
            )
        };
        self.report(Kind::AdditionalPropertiesNarrowed, x.schema.loc.clone(), wl, msg);
    }

    /// Reader `required`: the writer must require the same names.
    fn check_required(&mut self, reader: &Node<'a>, w: &WriterObject<'a>) {
        let Some(Value::Array(names)) = reader.get("required") else {
            return;
        };
        for (i, name) in names.iter().enumerate() {
            let Some(name) = name.as_str() else { continue };
            if w.required.contains(name) {
                continue;
            }
            let wl = w
                .views
                .iter()
                .find_map(|v| v.props.get(name).map(|n| n.loc.clone()))
                .unwrap_or_else(|| w.loc.clone());
            let msg = format!(
                "{} requires property `{name}`, but {} does not, so data written with it may lack `{name}`",
                self.r(),
                self.w()
            );
            self.report(Kind::RequiredAdded, reader.loc.path(&["required", &i.to_string()]), wl, msg);
        }
    }
}
