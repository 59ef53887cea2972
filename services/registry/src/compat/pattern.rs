//! Just enough regular-expression understanding to decide the easy cases without a regex
//! engine: patterns that are a literal, optionally anchored (`^x-`, `_id$`, `^kind$`).
//! Anything else is "unknown", and callers treat unknown conservatively.

/// A pattern reduced to a literal with anchors.
#[derive(Debug, PartialEq, Eq)]
struct Literal {
    start: bool,
    end: bool,
    text: String,
}

/// Parses `pattern` if it is a possibly anchored literal. Escaped metacharacters (`\.`) count
/// as literals; a trailing `.*` is the same as no end anchor.
fn literal(pattern: &str) -> Option<Literal> {
    let mut rest = pattern;
    let start = rest.starts_with('^');
    if start {
        rest = &rest[1..];
    }
    let mut end = false;
    if let Some(r) = rest.strip_suffix(".*") {
        rest = r;
    } else if let Some(r) = rest.strip_suffix('$') {
        // `\$` is a literal dollar, not an anchor.
        if !r.ends_with('\\') {
            rest = r;
            end = true;
        }
    }
    let mut text = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let escaped = chars.next()?;
                if escaped.is_ascii_alphanumeric() {
                    // `\d`, `\w`, `\b`, ...: classes and assertions, not literals.
                    return None;
                }
                text.push(escaped);
            }
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                return None;
            }
            _ => text.push(c),
        }
    }
    Some(Literal { start, end, text })
}

/// Whether `name` matches `pattern` (ECMA-262 semantics: unanchored search), when decidable.
pub(crate) fn matches(pattern: &str, name: &str) -> Option<bool> {
    let lit = literal(pattern)?;
    Some(match (lit.start, lit.end) {
        (true, true) => name == lit.text,
        (true, false) => name.starts_with(&lit.text),
        (false, true) => name.ends_with(&lit.text),
        (false, false) => name.contains(&lit.text),
    })
}

/// Whether no string can match both patterns (true only when provable).
pub(crate) fn disjoint(a: &str, b: &str) -> bool {
    let (Some(x), Some(y)) = (literal(a), literal(b)) else {
        return false;
    };
    match (x.start, y.start) {
        // Two prefixes conflict when neither extends the other.
        (true, true) => {
            let conflict = !x.text.starts_with(&y.text) && !y.text.starts_with(&x.text);
            let exact_mismatch = x.end && y.end && x.text != y.text;
            let exact_vs_prefix = (x.end && !y.end && !x.text.starts_with(&y.text))
                || (y.end && !x.end && !y.text.starts_with(&x.text));
            conflict || exact_mismatch || exact_vs_prefix
        }
        _ => false,
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn anchored_literals_are_decided() {
        assert_eq!(matches("^x-", "x-trace"), Some(true));
        assert_eq!(matches("^x-", "name"), Some(false));
        assert_eq!(matches("_id$", "person_id"), Some(true));
        assert_eq!(matches("^kind$", "kinds"), Some(false));
        assert_eq!(matches("^x\\.y", "x.y1"), Some(true));
        assert_eq!(matches("^x-.*", "x-a"), Some(true));
    }

    #[test]
    fn patterns_with_classes_or_quantifiers_are_unknown() {
        assert_eq!(matches("^[a-z]+$", "abc"), None);
        assert_eq!(matches("^\\d{3}$", "123"), None);
        assert_eq!(matches("a|b", "a"), None);
    }

    #[test]
    fn conflicting_prefixes_are_disjoint() {
        assert!(disjoint("^s_", "^n_"));
        assert!(!disjoint("^s_", "^s_x"));
        assert!(!disjoint("^s_", "[a-z]"));
        assert!(disjoint("^a$", "^b"));
    }
}
