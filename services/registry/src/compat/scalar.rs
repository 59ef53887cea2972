//! `enum`/`const`, numeric bounds and `multipleOf`, and string keywords.

use std::cmp::Ordering;

use serde_json::{Number, Value};

use super::flatten::finite_values;
use super::node::{Loc, Node};
use super::report::IncompatibilityKind as Kind;
use super::types::TypeSet;
use super::values::{as_count, contains_value, is_multiple, num_cmp, show};
use super::walker::Checker;

/// One numeric bound: its value, whether it is exclusive, and the keyword it came from.
#[derive(Clone)]
struct Bound<'v> {
    value: &'v Number,
    exclusive: bool,
    keyword: &'static str,
}

/// Whether bound `w` (writer) is at least as tight as `r` (reader). `lower` picks direction.
fn tighter(w: &Bound<'_>, r: &Bound<'_>, lower: bool) -> bool {
    match num_cmp(w.value, r.value) {
        Some(Ordering::Equal) => w.exclusive || !r.exclusive,
        Some(o) => (o == Ordering::Greater) == lower,
        None => false,
    }
}

/// The bounds of one direction that a node declares (both keywords may be present).
fn bounds<'v>(node: &Node<'v>, lower: bool) -> Vec<Bound<'v>> {
    let (incl, excl) = if lower { ("minimum", "exclusiveMinimum") } else { ("maximum", "exclusiveMaximum") };
    let mut out = Vec::new();
    // Draft-04 spelled exclusivity as a boolean beside minimum/maximum.
    let draft4 = node.get(excl) == Some(&Value::Bool(true));
    if let Some(Value::Number(n)) = node.get(incl) {
        out.push(Bound { value: n, exclusive: draft4, keyword: incl });
    }
    if let Some(Value::Number(n)) = node.get(excl) {
        out.push(Bound { value: n, exclusive: true, keyword: excl });
    }
    out
}

impl<'a> Checker<'a> {
    /// Reader `enum`/`const`: every writer value must be listed.
    pub(crate) fn check_enum(&mut self, reader: &Node<'a>, alt: &[Node<'a>], wloc: &Loc, wt: TypeSet) {
        for key in ["enum", "const"] {
            let allowed: Vec<Value> = match (key, reader.get(key)) {
                ("enum", Some(Value::Array(vals))) => vals.clone(),
                ("const", Some(v)) => vec![v.clone()],
                _ => continue,
            };
            // A writer without enum is still finite if it only allows null and booleans.
            let domain = finite_values(alt).or_else(|| {
                wt.within(TypeSet::NULL.union(TypeSet::BOOLEAN)).then(|| {
                    [Value::Null, Value::Bool(true), Value::Bool(false)]
                        .into_iter()
                        .filter(|v| wt.has(TypeSet::of_value(v)))
                        .collect()
                })
            });
            let wl = alt
                .iter()
                .find_map(|n| n.sub("enum").or_else(|| n.sub("const")))
                .map_or(wloc.clone(), |n| n.loc);
            match domain {
                Some(vals) => {
                    let missing: Vec<String> =
                        vals.iter().filter(|v| !contains_value(&allowed, v)).map(show).collect();
                    if !missing.is_empty() {
                        let msg = format!(
                            "{} allows {}, which the `{key}` of {} does not list",
                            self.w(),
                            missing.join(", "),
                            self.r()
                        );
                        self.report(Kind::EnumNarrowed, reader.loc.push(key), wl, msg);
                    }
                }
                None => {
                    let msg = format!(
                        "{} restricts values with `{key}`, but {} does not restrict them to a fixed set",
                        self.r(),
                        self.w()
                    );
                    self.report(Kind::EnumNarrowed, reader.loc.push(key), wl, msg);
                }
            }
        }
    }

    /// Numeric bounds and `multipleOf`. `integer_only`: the writer's numbers are integers.
    pub(crate) fn check_number(
        &mut self,
        reader: &Node<'a>,
        alt: &[Node<'a>],
        wloc: &Loc,
        integer_only: bool,
    ) {
        for lower in [true, false] {
            let writer: Vec<Bound<'a>> = alt.iter().flat_map(|n| bounds(n, lower)).collect();
            for r in bounds(reader, lower) {
                if writer.iter().any(|w| tighter(w, &r, lower)) {
                    continue;
                }
                // The writer's tightest bound in this direction, for the message.
                let best = writer.iter().fold(None::<&Bound<'a>>, |acc, w| match acc {
                    Some(b) if tighter(b, w, lower) => Some(b),
                    _ => Some(w),
                });
                let kind = if lower { Kind::MinimumIncreased } else { Kind::MaximumDecreased };
                let rel = if lower { ">" } else { "<" };
                let show_bound =
                    |b: &Bound<'_>| format!("{}{} {}", rel, if b.exclusive { "" } else { "=" }, b.value);
                let (wl, before) = match best {
                    Some(b) => (
                        alt.iter()
                            .find(|n| n.get(b.keyword) == Some(&Value::Number(b.value.clone())))
                            .map_or(wloc.clone(), |n| n.loc.push(b.keyword)),
                        format!("only guarantees {}", show_bound(b)),
                    ),
                    None => (wloc.clone(), "has no such bound".to_owned()),
                };
                let msg = format!(
                    "{} requires numbers {} (`{}`), but {} {before}",
                    self.r(),
                    show_bound(&r),
                    r.keyword,
                    self.w()
                );
                self.report(kind, reader.loc.push(r.keyword), wl, msg);
            }
        }
        if let Some(Value::Number(m)) = reader.get("multipleOf") {
            let one = Number::from(1u8);
            let by_integers = integer_only && is_multiple(&one, m);
            let by_writer = alt
                .iter()
                .any(|n| matches!(n.get("multipleOf"), Some(Value::Number(wm)) if is_multiple(wm, m)));
            if !by_integers && !by_writer {
                let msg = format!(
                    "{} requires multiples of {m}, but {} allows numbers that are not",
                    self.r(),
                    self.w()
                );
                self.report(Kind::MultipleOfChanged, reader.loc.push("multipleOf"), wloc.clone(), msg);
            }
        }
    }

    /// `minLength`, `maxLength`, `pattern` and `format`.
    pub(crate) fn check_string(&mut self, reader: &Node<'a>, alt: &[Node<'a>], wloc: &Loc) {
        self.count_bounds(reader, alt, wloc, ["minLength", "maxLength"], None, None, "characters");
        for (key, kind) in [("pattern", Kind::PatternChanged), ("format", Kind::FormatChanged)] {
            let Some(rv) = reader.get(key) else { continue };
            if alt.iter().any(|n| n.get(key) == Some(rv)) {
                continue;
            }
            let (wl, was) = match alt.iter().find_map(|n| n.sub(key)) {
                Some(n) => (n.loc, format!("has {}", show(n.value))),
                None => (wloc.clone(), format!("has no `{key}`")),
            };
            let why = if key == "pattern" {
                "patterns are only compared for identity".to_owned()
            } else {
                format!("strings valid under {} need not have this format", self.w())
            };
            let msg = format!("{} requires `{key}` {}, but {} {was} ({why})", self.r(), show(rv), self.w());
            self.report(kind, reader.loc.push(key), wl, msg);
        }
    }

    /// A pair of count bounds (`minLength`/`maxLength`, `minItems`/`maxItems`,
    /// `minProperties`/`maxProperties`). `writer_min`/`writer_max` add bounds the writer
    /// implies in other ways (required properties, a closed tuple).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn count_bounds(
        &mut self,
        reader: &Node<'a>,
        alt: &[Node<'a>],
        wloc: &Loc,
        keys: [&'static str; 2],
        writer_min: Option<u64>,
        writer_max: Option<u64>,
        what: &str,
    ) {
        let kinds = match keys[0] {
            "minLength" => [Kind::MinLengthIncreased, Kind::MaxLengthDecreased],
            "minItems" => [Kind::MinItemsIncreased, Kind::MaxItemsDecreased],
            _ => [Kind::MinPropertiesIncreased, Kind::MaxPropertiesDecreased],
        };
        let declared = |key: &str| -> Vec<(u64, Loc)> {
            alt.iter().filter_map(|n| n.get(key).and_then(as_count).map(|c| (c, n.loc.push(key)))).collect()
        };
        let wmin = declared(keys[0]).into_iter().max_by_key(|(c, _)| *c);
        let wmax = declared(keys[1]).into_iter().min_by_key(|(c, _)| *c);
        let wmin_val = wmin.as_ref().map(|(c, _)| *c).max(writer_min);
        let wmax_val = match (wmax.as_ref().map(|(c, _)| *c), writer_max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(rmin) = reader.get(keys[0]).and_then(as_count) {
            if wmin_val.unwrap_or(0) < rmin {
                let msg = format!(
                    "{} requires at least {rmin} {what} (`{}`), but {} allows {}",
                    self.r(),
                    keys[0],
                    self.w(),
                    wmin_val.unwrap_or(0)
                );
                let wl = wmin.map_or(wloc.clone(), |(_, l)| l);
                self.report(kinds[0], reader.loc.push(keys[0]), wl, msg);
            }
        }
        if let Some(rmax) = reader.get(keys[1]).and_then(as_count) {
            if wmax_val.is_none_or(|w| w > rmax) {
                let allows = wmax_val.map_or("any number".to_owned(), |w| format!("up to {w}"));
                let msg = format!(
                    "{} allows at most {rmax} {what} (`{}`), but {} allows {allows}",
                    self.r(),
                    keys[1],
                    self.w()
                );
                let wl = wmax.map_or(wloc.clone(), |(_, l)| l);
                self.report(kinds[1], reader.loc.push(keys[1]), wl, msg);
            }
        }
    }
}
