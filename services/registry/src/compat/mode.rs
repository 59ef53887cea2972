//! Compatibility modes, named as Confluent Schema Registry names them.

use std::fmt;
use std::str::FromStr;

/// How a candidate schema must relate to the versions already registered under its subject.
///
/// "Backward" means consumers using the *new* schema can read data written with the old one;
/// "forward" means consumers still on the old schema can read data written with the new one.
/// The `*Transitive` modes compare against every earlier (non-deleted) version instead of only
/// the latest. The textual form is the UPPER_SNAKE name (`BACKWARD_TRANSITIVE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// No check at all: any schema may follow any other.
    None,
    /// The new schema can read data written with the latest version (the registry default).
    #[default]
    Backward,
    /// The new schema can read data written with every earlier version.
    BackwardTransitive,
    /// Readers of the latest version can read data written with the new schema.
    Forward,
    /// Readers of every earlier version can read data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every earlier version.
    FullTransitive,
}

impl Mode {
    /// Every mode, in the order the registry documents them.
    pub const ALL: [Mode; 7] = [
        Mode::None,
        Mode::Backward,
        Mode::BackwardTransitive,
        Mode::Forward,
        Mode::ForwardTransitive,
        Mode::Full,
        Mode::FullTransitive,
    ];

    /// The UPPER_SNAKE name used on the wire and in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "NONE",
            Mode::Backward => "BACKWARD",
            Mode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Mode::Forward => "FORWARD",
            Mode::ForwardTransitive => "FORWARD_TRANSITIVE",
            Mode::Full => "FULL",
            Mode::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the new schema must read data written with the compared versions.
    pub fn checks_backward(self) -> bool {
        matches!(self, Mode::Backward | Mode::BackwardTransitive | Mode::Full | Mode::FullTransitive)
    }

    /// Whether the compared versions must read data written with the new schema.
    pub fn checks_forward(self) -> bool {
        matches!(self, Mode::Forward | Mode::ForwardTransitive | Mode::Full | Mode::FullTransitive)
    }

    /// Whether the new schema is compared with every earlier version, not only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(self, Mode::BackwardTransitive | Mode::ForwardTransitive | Mode::FullTransitive)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compatibility mode name that is not one of the seven known names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown compatibility mode `{input}`: expected one of NONE, BACKWARD, BACKWARD_TRANSITIVE, \
     FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
)]
pub struct ParseModeError {
    /// The text that was offered, kept so the caller can echo it back.
    pub input: String,
}

impl FromStr for Mode {
    type Err = ParseModeError;

    /// Parses the UPPER_SNAKE name. Case is not folded: configuration and API values are
    /// written exactly as Confluent spells them, so a lowercase name is more likely a typo
    /// for something else than a deliberate spelling.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| ParseModeError { input: s.to_owned() })
    }
}
