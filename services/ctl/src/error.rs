//! The CLI's errors, each printed as one clear line by `main`.

use std::path::PathBuf;
use tonic_types::StatusExt;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A service could not be reached.
    #[error("cannot reach {what} at {endpoint}: {source}")]
    Connect {
        /// Which service.
        what: &'static str,
        /// Where.
        endpoint: String,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call was refused; the message includes every detail the server gave.
    #[error("{0}")]
    Rpc(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{path}: {message}")]
    BadFile {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// NATS failed.
    #[error("NATS: {0}")]
    Nats(String),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A service of the dev bus failed.
    #[error("dev bus: {0}")]
    Dev(String),
    /// `cert verify`: the card failed a check, or could not be checked.
    #[error("{message}")]
    Cert {
        /// The process exit code of this failure (`commands::cert::exit`).
        exit_code: u8,
        /// One line naming the check.
        message: String,
    },
}

impl CtlError {
    /// The process exit code: 1, or the code of a `cert verify` failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Cert { exit_code, .. } => *exit_code,
            _ => 1,
        }
    }
}

impl From<tonic::Status> for CtlError {
    fn from(s: tonic::Status) -> Self {
        let mut line = format!("{:?}: {}", s.code(), s.message());
        if let Some(bad) = s.get_details_bad_request() {
            for v in bad.field_violations {
                line.push_str(&format!(
                    "\n  {} — {}",
                    if v.field.is_empty() { "/" } else { &v.field },
                    v.description
                ));
            }
        }
        CtlError::Rpc(line)
    }
}

/// Reads a file, naming it in the error.
pub fn read(path: &std::path::Path) -> Result<String, CtlError> {
    std::fs::read_to_string(path).map_err(|source| CtlError::Read { path: path.to_path_buf(), source })
}
