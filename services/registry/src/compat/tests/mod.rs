//! Unit tests, one file per construct group. Each test names the situation and the verdict.

use serde_json::Value;

use super::{check, check_reader_accepts_writer, Incompatibility, IncompatibilityKind, Mode, NoExternalRefs};

mod annotations;
mod arrays;
mod combinators;
mod modes;
mod objects;
mod refs;
mod scalars;
mod soundness;
mod types;

/// BACKWARD check of `new` against the single earlier version `old`.
fn backward(old: Value, new: Value) -> Vec<Incompatibility> {
    check(Mode::Backward, &new, &[(1, &old)], &NoExternalRefs)
}

/// FORWARD check of `new` against the single earlier version `old`.
fn forward(old: Value, new: Value) -> Vec<Incompatibility> {
    check(Mode::Forward, &new, &[(1, &old)], &NoExternalRefs)
}

/// Direct directional check.
fn reads(reader: Value, writer: Value) -> Vec<Incompatibility> {
    check_reader_accepts_writer(&reader, &writer, &NoExternalRefs)
}

#[track_caller]
fn assert_compatible(found: &[Incompatibility]) {
    assert!(found.is_empty(), "expected compatible, found:\n{}", render(found));
}

/// Asserts a finding of `kind` at `pointer`.
#[track_caller]
fn assert_has(found: &[Incompatibility], kind: IncompatibilityKind, pointer: &str) {
    assert!(
        found.iter().any(|i| i.kind == kind && i.pointer == pointer),
        "expected {kind} at `{pointer}`, found:\n{}",
        render(found)
    );
}

/// Asserts that the only findings are of `kind` (at least one).
#[track_caller]
fn assert_only(found: &[Incompatibility], kind: IncompatibilityKind) {
    assert!(
        !found.is_empty() && found.iter().all(|i| i.kind == kind),
        "expected only {kind}, found:\n{}",
        render(found)
    );
}

fn render(found: &[Incompatibility]) -> String {
    if found.is_empty() {
        return "  (nothing)".to_owned();
    }
    found.iter().map(|i| format!("  {i}\n")).collect()
}
