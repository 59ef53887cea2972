//! What every Kakehashi binary does with its configuration and its lifetime: defaults, then a
//! TOML file, then `KAKEHASHI_*` environment variables; `--config FILE` or `KAKEHASHI_CONFIG`;
//! and a shutdown future for Ctrl-C and SIGTERM.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Configuration that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for the service's configuration.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// An environment variable has a bad value.
    #[error("environment variable {name}: {message}")]
    Env {
        /// Variable name.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The file's configuration, or the defaults when there is no file.
pub fn from_file<T: DeserializeOwned + Default>(file: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = file else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })
}

/// A JSON nesting limit read from `key`: 1 to
/// [`MAX_DEPTH_CEILING`](kakehashi_proto::strict_json::MAX_DEPTH_CEILING), else the error says
/// why, naming the key (past the ceiling serde_json's own recursion limit would answer first).
pub fn json_depth(key: &str, depth: usize) -> Result<usize, String> {
    let ceiling = kakehashi_proto::strict_json::MAX_DEPTH_CEILING;
    if (1..=ceiling).contains(&depth) {
        return Ok(depth);
    }
    Err(format!(
        "{key} = {depth} is out of range: it must be 1 to {ceiling} (the JSON parser stops at 128 levels on its own, before our limit could answer)"
    ))
}

/// Overrides `target` with the variable `name` when it is set.
pub fn env_string(name: &'static str, target: &mut String) {
    if let Ok(v) = std::env::var(name) {
        *target = v;
    }
}

/// Overrides `target` with the parsed variable `name` when it is set; a bad value is an error.
pub fn env_parse<T: FromStr>(name: &'static str, target: &mut T) -> Result<(), ConfigError>
where
    T::Err: std::fmt::Display,
{
    if let Ok(v) = std::env::var(name) {
        *target = v.parse().map_err(|e| ConfigError::Env { name, message: format!("{e}: {v}") })?;
    }
    Ok(())
}

/// Reads a gRPC token file of `department = "token"` lines (as `kakehashi grpc tokens`
/// writes it). Errors never quote the file's content, which is secret.
pub fn read_token_file(path: &Path) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    let tokens: std::collections::BTreeMap<String, String> =
        toml::from_str(&text).map_err(|_| ConfigError::Env {
            name: "credentials_file",
            message: format!("{} is not `department = \"token\"` lines", path.display()),
        })?;
    if let Some(d) = tokens.keys().find(|d| !kakehashi_proto::ident::is_valid_department_id(d)) {
        return Err(ConfigError::Env {
            name: "credentials_file",
            message: format!("{}: {d:?} is not a department id", path.display()),
        });
    }
    Ok(tokens)
}

/// Adds the tokens of `KAKEHASHI_CREDENTIALS_FILE` (or `file`) to `credentials` (token →
/// department, the services' form).
pub fn merge_token_file(
    file: &mut Option<PathBuf>,
    credentials: &mut std::collections::BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    if let Some(v) = std::env::var_os("KAKEHASHI_CREDENTIALS_FILE").filter(|v| !v.is_empty()) {
        *file = Some(PathBuf::from(v));
    }
    if let Some(path) = file {
        for (department, token) in read_token_file(path)? {
            credentials.insert(token, department);
        }
    }
    Ok(())
}

/// `--config FILE` from the arguments, else `KAKEHASHI_CONFIG`.
pub fn config_path() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--config" {
            return args.next().map(PathBuf::from);
        }
    }
    std::env::var_os("KAKEHASHI_CONFIG").map(PathBuf::from)
}

/// `<role>@<host>:<pid>`: tells instances apart in audit records and dead letters.
pub fn default_instance(role: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!("{role}@{host}:{}", std::process::id())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            return;
        }
    }
    let _ = ctrl_c.await;
}
