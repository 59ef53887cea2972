//! TEMPORARY interface stub, replaced by the real checker before commit.
use serde_json::Value;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}
impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "NONE" => Mode::None,
            "BACKWARD" => Mode::Backward,
            "BACKWARD_TRANSITIVE" => Mode::BackwardTransitive,
            "FORWARD" => Mode::Forward,
            "FORWARD_TRANSITIVE" => Mode::ForwardTransitive,
            "FULL" => Mode::Full,
            "FULL_TRANSITIVE" => Mode::FullTransitive,
            _ => return Err(s.into()),
        })
    }
}
impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::None => "NONE",
            Mode::Backward => "BACKWARD",
            Mode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Mode::Forward => "FORWARD",
            Mode::ForwardTransitive => "FORWARD_TRANSITIVE",
            Mode::Full => "FULL",
            Mode::FullTransitive => "FULL_TRANSITIVE",
        })
    }
}
#[derive(Debug, Clone)]
pub struct Incompatibility {
    pub pointer: String,
    pub kind: String,
    pub message: String,
    pub against_version: Option<u32>,
}
pub trait RefResolver {
    fn resolve(&self, uri: &str) -> Option<Value>;
}
pub fn check(
    mode: Mode,
    _c: &Value,
    previous: &[(u32, &Value)],
    _r: &dyn RefResolver,
) -> Vec<Incompatibility> {
    if mode == Mode::None || previous.is_empty() {
        return vec![];
    }
    vec![Incompatibility {
        pointer: String::new(),
        kind: "unsupported".into(),
        message: "checker not yet available".into(),
        against_version: previous.last().map(|p| p.0),
    }]
}
