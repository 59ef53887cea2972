//! A schema catalogue on disk (`<dir>/<subject>/<version>.json`, or `<version>.proto` for a
//! protobuf subject; examples under `<subject>/examples/`), ordered so every schema comes after
//! the schemas it `$ref`s or imports.
//!
//! A catalogue `.proto` names its payload message in a `// payload: <full name>` line, is
//! registered as the file `<subject>/<version>.proto`, and imports another catalogue protobuf
//! subject by that name (`import "common.person.pb/1.proto";`), which becomes a reference.

use crate::error::CtlError;
use kakehashi_registry::store::record::external_refs;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One schema file of the catalogue.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Subject (the folder name).
    pub subject: String,
    /// Version (the file name).
    pub version: u32,
    /// The file.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// Schemas it references, as (subject, version).
    pub refs: Vec<(String, u32)>,
    /// Protobuf: the payload message's full name (`None` for a JSON Schema).
    pub protobuf: Option<String>,
}

/// The name a catalogue `.proto` is registered (and imported) under.
pub fn proto_file_name(subject: &str, version: u32) -> String {
    format!("{subject}/{version}.proto")
}

/// The payload message (`// payload: <name>`) and the catalogue imports of a `.proto` file.
fn proto_header(path: &Path, text: &str) -> Result<(String, Vec<(String, u32)>), CtlError> {
    let mut message = None;
    let mut refs = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("// payload:") {
            message = Some(m.trim().to_string());
        }
        let import = line.strip_prefix("import").map(str::trim).and_then(|l| l.strip_suffix(';'));
        if let Some(name) = import.map(|l| l.trim().trim_matches('"')) {
            let parsed = name.strip_suffix(".proto").and_then(|n| n.rsplit_once('/'));
            if let Some((subject, version)) = parsed {
                if let (true, Ok(version)) =
                    (kakehashi_proto::ident::is_valid_event_type(subject), version.parse())
                {
                    refs.push((subject.to_string(), version));
                }
            }
        }
    }
    let message = message.ok_or_else(|| CtlError::BadFile {
        path: path.to_path_buf(),
        message: "a catalogue .proto names its payload message in a `// payload: <full name>` line".into(),
    })?;
    refs.sort();
    refs.dedup();
    Ok((message, refs))
}

/// One example payload and what its name says it should do.
#[derive(Debug, Clone)]
pub struct Example {
    /// Subject it belongs to.
    pub subject: String,
    /// The file.
    pub path: PathBuf,
    /// `valid-*` (true) or `invalid-*` (false).
    pub should_validate: bool,
}

/// Reads every schema of the catalogue, in dependency order.
pub fn read(dir: &Path) -> Result<Vec<Entry>, CtlError> {
    let mut entries = BTreeMap::new();
    let subjects =
        std::fs::read_dir(dir).map_err(|source| CtlError::Read { path: dir.to_path_buf(), source })?;
    for sub in subjects.flatten() {
        if !sub.path().is_dir() {
            continue;
        }
        let subject = sub.file_name().to_string_lossy().to_string();
        let files =
            std::fs::read_dir(sub.path()).map_err(|source| CtlError::Read { path: sub.path(), source })?;
        for f in files.flatten() {
            let path = f.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let (stem, is_proto) = match (name.strip_suffix(".json"), name.strip_suffix(".proto")) {
                (Some(stem), _) => (stem, false),
                (_, Some(stem)) => (stem, true),
                _ => continue,
            };
            let Ok(version) = stem.parse::<u32>() else { continue };
            let text = crate::error::read(&path)?;
            let (refs, protobuf) = if is_proto {
                let (message, refs) = proto_header(&path, &text)?;
                (refs, Some(message))
            } else {
                let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                    CtlError::BadFile { path: path.clone(), message: format!("not JSON: {e}") }
                })?;
                (external_refs(&value), None)
            };
            entries.insert(
                (subject.clone(), version),
                Entry { subject: subject.clone(), version, path, text, refs, protobuf },
            );
        }
    }
    order(entries)
}

/// Kahn's algorithm; references outside the catalogue are assumed to be registered already.
fn order(mut entries: BTreeMap<(String, u32), Entry>) -> Result<Vec<Entry>, CtlError> {
    let mut done: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut out = Vec::with_capacity(entries.len());
    while !entries.is_empty() {
        let ready: Vec<(String, u32)> = entries
            .iter()
            .filter(|(_, e)| {
                e.refs.iter().all(|r| done.contains(r) || !entries.contains_key(r))
                    // Versions of one subject go in order.
                    && (e.version == 1 || !entries.contains_key(&(e.subject.clone(), e.version - 1)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if ready.is_empty() {
            let stuck: Vec<String> = entries.keys().map(|(s, v)| format!("{s}/{v}")).collect();
            return Err(CtlError::Usage(format!("reference cycle among {}", stuck.join(", "))));
        }
        for k in ready {
            if let Some(e) = entries.remove(&k) {
                done.insert(k);
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// Every example payload under `<dir>/<subject>/examples/`.
pub fn examples(dir: &Path) -> Result<Vec<Example>, CtlError> {
    let mut out = Vec::new();
    let subjects =
        std::fs::read_dir(dir).map_err(|source| CtlError::Read { path: dir.to_path_buf(), source })?;
    for sub in subjects.flatten() {
        let ex_dir = sub.path().join("examples");
        let Ok(files) = std::fs::read_dir(&ex_dir) else { continue };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            let should_validate = if name.starts_with("valid-") {
                true
            } else if name.starts_with("invalid-") {
                false
            } else {
                continue;
            };
            out.push(Example {
                subject: sub.file_name().to_string_lossy().to_string(),
                path: f.path(),
                should_validate,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
