//! `kakehashi policy …`.

use crate::cli::{Conn, PolicyCommand};
use crate::clients;
use crate::error::{read, CtlError};
use crate::output::emit;
use kakehashi_proto::v1::{DeletePolicyRequest, ListPoliciesRequest, Policy};
use serde::Deserialize;
use serde_json::json;
use std::path::Path;

/// A policies file: `[[policy]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    policy: Vec<PolicyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyEntry {
    type_pattern: String,
    #[serde(default)]
    producers: Vec<String>,
    #[serde(default)]
    readers: Vec<String>,
    #[serde(default)]
    raw_pii_readers: Vec<String>,
}

fn describe(p: &Policy) -> String {
    format!(
        "{}\n  producers: {}\n  readers: {}\n  raw personal data: {}",
        p.type_pattern,
        p.producers.join(", "),
        p.readers.join(", "),
        if p.raw_pii_readers.is_empty() { "nobody".to_string() } else { p.raw_pii_readers.join(", ") }
    )
}

fn to_json(p: &Policy) -> serde_json::Value {
    json!({"type_pattern": p.type_pattern, "producers": p.producers, "readers": p.readers, "raw_pii_readers": p.raw_pii_readers})
}

fn read_file(file: &Path) -> Result<PolicyFile, CtlError> {
    let text = read(file)?;
    toml::from_str(&text).map_err(|e| CtlError::BadFile { path: file.to_path_buf(), message: e.to_string() })
}

/// The department ids a policies file names (producers, readers, raw-PII readers).
pub fn departments_in_file(file: &Path) -> Result<std::collections::BTreeSet<String>, CtlError> {
    Ok(read_file(file)?
        .policy
        .into_iter()
        .flat_map(|p| p.producers.into_iter().chain(p.readers).chain(p.raw_pii_readers))
        .collect())
}

/// Loads a policies file through the API; returns how many were stored.
pub async fn load_file(conn: &Conn, file: &Path) -> Result<usize, CtlError> {
    let parsed = read_file(file)?;
    let mut c = clients::policies(conn).await?;
    for p in &parsed.policy {
        c.put_policy(Policy {
            type_pattern: p.type_pattern.clone(),
            producers: p.producers.clone(),
            readers: p.readers.clone(),
            raw_pii_readers: p.raw_pii_readers.clone(),
        })
        .await?;
    }
    Ok(parsed.policy.len())
}

/// Runs a policy subcommand.
pub async fn run(conn: &Conn, json_mode: bool, cmd: PolicyCommand) -> Result<(), CtlError> {
    match cmd {
        PolicyCommand::Put { pattern, producers, readers, raw_pii_readers } => {
            let mut c = clients::policies(conn).await?;
            let p = c
                .put_policy(Policy { type_pattern: pattern, producers, readers, raw_pii_readers })
                .await?
                .into_inner();
            emit(json_mode, to_json(&p), || format!("stored {}", describe(&p)));
        }
        PolicyCommand::List => {
            let mut c = clients::policies(conn).await?;
            let r = c.list_policies(ListPoliciesRequest {}).await?.into_inner();
            emit(json_mode, json!(r.policies.iter().map(to_json).collect::<Vec<_>>()), || {
                r.policies.iter().map(describe).collect::<Vec<_>>().join("\n")
            });
        }
        PolicyCommand::Delete { pattern } => {
            let mut c = clients::policies(conn).await?;
            c.delete_policy(DeletePolicyRequest { type_pattern: pattern.clone() }).await?;
            emit(json_mode, json!({"deleted": pattern}), || format!("deleted the policy of {pattern}"));
        }
        PolicyCommand::Load { file } => {
            let n = load_file(conn, &file).await?;
            emit(json_mode, json!({"loaded": n}), || format!("loaded {n} policies from {}", file.display()));
        }
    }
    Ok(())
}
