//! The schema diff: two versions side by side (a line diff of their pretty-printed text), and
//! the list of structural changes (JSON pointers) each with its compatibility verdict — taken
//! from the registry's `CheckCompatibility` findings, never decided here.

use serde_json::Value;

/// Lines compared at most per side; beyond that the sides are shown unaligned (the table would
/// grow with the product of both lengths).
pub const MAX_LINES: usize = 3000;

/// One row of the side-by-side view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row<'a> {
    /// The same line on both sides.
    Same(&'a str),
    /// Only in the old version.
    Removed(&'a str),
    /// Only in the new version.
    Added(&'a str),
}

/// The rows of a line diff (longest common subsequence), or `None` when a side is longer than
/// [`MAX_LINES`].
pub fn lines<'a>(old: &'a str, new: &'a str) -> Option<Vec<Row<'a>>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len() > MAX_LINES || b.len() > MAX_LINES {
        return None;
    }
    // lcs[i][j]: common lines of a[i..] and b[j..], one flat table.
    let w = b.len() + 1;
    let mut lcs = vec![0u32; (a.len() + 1) * w];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * w + j] = if a[i] == b[j] {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j, mut rows) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            rows.push(Row::Same(a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i * w + j + 1] >= lcs[(i + 1) * w + j]) {
            rows.push(Row::Added(b[j]));
            j += 1;
        } else {
            rows.push(Row::Removed(a[i]));
            i += 1;
        }
    }
    Some(rows)
}

/// What changed at one place of the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// JSON pointer into the schemas.
    pub pointer: String,
    /// added, removed or changed.
    pub kind: &'static str,
    /// The old value (compact JSON), "" when added.
    pub old: String,
    /// The new value, "" when removed.
    pub new: String,
}

fn escape_token(t: &str) -> String {
    t.replace('~', "~0").replace('/', "~1")
}

/// The structural changes from `old` to `new`, deepest places first in document order.
pub fn changes(old: &Value, new: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk(old, new, String::new(), &mut out);
    out
}

fn walk(old: &Value, new: &Value, at: String, out: &mut Vec<Change>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{at}/{}", escape_token(k));
                match b.get(k) {
                    Some(w) => walk(v, w, p, out),
                    None => out.push(Change {
                        pointer: p,
                        kind: "removed",
                        old: v.to_string(),
                        new: String::new(),
                    }),
                }
            }
            for (k, w) in b {
                if !a.contains_key(k) {
                    let p = format!("{at}/{}", escape_token(k));
                    out.push(Change { pointer: p, kind: "added", old: String::new(), new: w.to_string() });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                walk(v, w, format!("{at}/{i}"), out);
            }
        }
        _ if old != new => out.push(Change {
            pointer: if at.is_empty() { "/".into() } else { at },
            kind: "changed",
            old: old.to_string(),
            new: new.to_string(),
        }),
        _ => {}
    }
}

/// Whether a finding at `finding` (a JSON pointer of the registry's compatibility check)
/// concerns the change at `change`: the same place, or one inside the other.
pub fn concerns(change: &str, finding: &str) -> bool {
    let norm = |p: &str| if p == "/" { String::new() } else { p.trim_end_matches('/').to_string() };
    let (c, f) = (norm(change), norm(finding));
    c == f || f.starts_with(&format!("{c}/")) || c.starts_with(&format!("{f}/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn line_diff_aligns_common_lines() {
        let rows = lines("a\nb\nc", "a\nc\nd").unwrap_or_default();
        assert_eq!(rows, vec![Row::Same("a"), Row::Removed("b"), Row::Same("c"), Row::Added("d")]);
        assert!(lines(&"x\n".repeat(MAX_LINES + 1), "y").is_none());
    }

    #[test]
    fn structural_changes_with_pointers() {
        let old =
            json!({"properties": {"a": {"type": "string"}, "b/c": {"type": "integer"}}, "required": ["a"]});
        let new = json!({"properties": {"a": {"type": "integer"}, "d": {}}, "required": ["a"]});
        let c = changes(&old, &new);
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(c.iter().any(|x| x.pointer == "/properties/a/type" && x.kind == "changed"));
        assert!(c.iter().any(|x| x.pointer == "/properties/b~1c" && x.kind == "removed"));
        assert!(c.iter().any(|x| x.pointer == "/properties/d" && x.kind == "added"));
    }

    #[test]
    fn findings_match_changes_at_or_around_them() {
        assert!(concerns("/properties/a/type", "/properties/a"));
        assert!(concerns("/properties/a", "/properties/a/type"));
        assert!(!concerns("/properties/ab", "/properties/a"));
        assert!(concerns("/", "/properties/x"));
    }
}
