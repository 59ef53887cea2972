//! Array keywords: `items`/`prefixItems` (and draft-07 tuple `items` with `additionalItems`),
//! `minItems`/`maxItems`, `uniqueItems` and `contains`.

use serde_json::Value;

use super::node::{Group, Loc, Node};
use super::report::IncompatibilityKind as Kind;
use super::values::as_count;
use super::walker::Checker;

/// One schema's item schemas: position-specific ones, then one for all later positions.
struct ItemsView<'a> {
    prefix: Vec<Node<'a>>,
    rest: Option<Node<'a>>,
}

impl<'a> ItemsView<'a> {
    fn new(node: &Node<'a>) -> Self {
        match node.get("items") {
            // Draft-07 tuple form.
            Some(Value::Array(_)) => {
                ItemsView { prefix: node.sub_list("items"), rest: node.sub("additionalItems") }
            }
            _ => ItemsView { prefix: node.sub_list("prefixItems"), rest: node.sub("items") },
        }
    }

    /// The schema for the item at `index`, if constrained.
    fn at(&self, index: usize) -> Option<Node<'a>> {
        self.prefix.get(index).cloned().or_else(|| self.rest.clone())
    }

    /// The length the tuple is closed at (`items: false` after the prefix).
    fn closed_at(&self) -> Option<u64> {
        self.rest.as_ref().filter(|r| r.is_false()).map(|_| self.prefix.len() as u64)
    }
}

impl<'a> Checker<'a> {
    /// All array keywords of `reader` against the writer alternative `alt`.
    pub(crate) fn check_array(&mut self, reader: &Node<'a>, alt: &[Node<'a>], wloc: &Loc) {
        let rv = ItemsView::new(reader);
        let wv: Vec<ItemsView<'a>> = alt.iter().map(ItemsView::new).collect();
        let closed = wv.iter().filter_map(ItemsView::closed_at).min();
        let declared_max = alt.iter().filter_map(|n| n.get("maxItems").and_then(as_count)).min();
        let wmax = match (closed, declared_max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wmin = alt.iter().filter_map(|n| n.get("minItems").and_then(as_count)).max().unwrap_or(0);
        // Positions past the longest prefix all behave alike, so one more index covers them.
        let last = wv.iter().map(|v| v.prefix.len()).chain([rv.prefix.len()]).max().unwrap_or(0);
        let writer_items = |i: usize| -> Option<Group<'a>> {
            if wmax.is_some_and(|m| i as u64 >= m) {
                return None;
            }
            let nodes: Vec<Node<'a>> = wv.iter().filter_map(|v| v.at(i)).collect();
            if nodes.iter().any(Node::is_false) {
                return None; // No writer array reaches this position.
            }
            let loc = nodes.first().map_or_else(|| wloc.clone(), |n| n.loc.clone());
            Some(Group::of(nodes, loc))
        };
        for i in 0..=last {
            let Some(group) = writer_items(i) else { break };
            let Some(item) = rv.at(i) else { continue };
            if item.is_false() {
                let msg = format!(
                    "{} allows no item at position {i}, but {} allows longer arrays",
                    self.r(),
                    self.w()
                );
                self.report(Kind::MaxItemsDecreased, item.loc.clone(), group.loc, msg);
                break;
            }
            self.accepts_inner(&item, &group);
        }
        self.count_bounds(reader, alt, wloc, ["minItems", "maxItems"], None, closed, "items");
        if reader.get("uniqueItems") == Some(&Value::Bool(true))
            && !alt.iter().any(|n| n.get("uniqueItems") == Some(&Value::Bool(true)))
            && wmax.is_none_or(|m| m > 1)
        {
            let msg = format!("{} requires unique items, but {} allows repeated ones", self.r(), self.w());
            self.report(Kind::UniqueItemsAdded, reader.loc.push("uniqueItems"), wloc.clone(), msg);
        }
        self.check_contains(reader, alt, wloc, wmin, last, &writer_items);
    }

    /// Reader `contains` (with `minContains`): guaranteed if the writer has a `contains` at
    /// least as strict, or if the writer has enough items and every item fits.
    fn check_contains(
        &mut self,
        reader: &Node<'a>,
        alt: &[Node<'a>],
        wloc: &Loc,
        wmin: u64,
        last: usize,
        writer_items: &dyn Fn(usize) -> Option<Group<'a>>,
    ) {
        let Some(c) = reader.sub("contains") else {
            return;
        };
        let rmin = reader.get("minContains").and_then(as_count).unwrap_or(1);
        if rmin == 0 {
            return; // `minContains: 0` makes `contains` always true.
        }
        let by_writer_contains = alt.iter().any(|w| {
            let wmin_contains = w.get("minContains").and_then(as_count).unwrap_or(1);
            w.sub("contains").is_some_and(|wc| {
                wmin_contains >= rmin && self.trial(|ch| ch.accepts_inner(&c, &Group::single(wc))).is_empty()
            })
        });
        let every_item_fits = wmin >= rmin
            && (0..=last).all(|i| match writer_items(i) {
                Some(g) => self.trial(|ch| ch.accepts_inner(&c, &g)).is_empty(),
                None => true,
            });
        if !by_writer_contains && !every_item_fits {
            let msg = format!(
                "{} requires at least {rmin} item(s) matching its `contains`, which {} does not guarantee",
                self.r(),
                self.w()
            );
            self.report(Kind::ContainsAdded, c.loc.clone(), wloc.clone(), msg);
        }
    }
}
