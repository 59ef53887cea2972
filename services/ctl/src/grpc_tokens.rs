//! gRPC bearer tokens, one per department, in one file of `department = "token"` lines (mode
//! 0600). The services read the same file (`credentials_file`), each department is handed its
//! own line. Written by `kakehashi grpc tokens` and by `kakehashi dev`; existing tokens are
//! kept, so adding a department never logs anyone out.

use crate::error::CtlError;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// 32 random bytes from the kernel, hex-encoded: a bearer token nobody can guess (also the
/// metrics scrape token and the demo's pseudonym secret).
pub(crate) fn random_token() -> Result<String, CtlError> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| CtlError::Usage(format!("cannot read /dev/urandom for a token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a file only its owner can read (it holds secrets), replacing it atomically.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), CtlError> {
    kakehashi_runtime::private_files::write_atomic(path, text.as_bytes(), true)
        .map_err(|e| CtlError::Usage(format!("cannot write {}: {e}", path.display())))
}

/// The tokens (department → token) in `path`: kept when present, one added for every
/// department that has none.
pub fn ensure(path: &Path, departments: &BTreeSet<String>) -> Result<BTreeMap<String, String>, CtlError> {
    for d in departments {
        if !kakehashi_proto::ident::is_valid_department_id(d) {
            return Err(CtlError::Usage(format!("{d:?} is not a department id ([a-z0-9-]+)")));
        }
    }
    let mut tokens = match kakehashi_runtime::settings::read_token_file(path) {
        Ok(t) => t,
        Err(_) if !path.exists() => BTreeMap::new(),
        Err(e) => return Err(CtlError::BadFile { path: path.to_path_buf(), message: e.to_string() }),
    };
    let before = tokens.len();
    for d in departments {
        if !tokens.contains_key(d) {
            tokens.insert(d.clone(), random_token()?);
        }
    }
    if tokens.len() != before || !path.exists() {
        let mut text = String::from(
            "# gRPC bearer tokens, one per department: secrets. The services read this file\n\
             # (credentials_file); hand each department only its own line. Delete a line and\n\
             # re-run `kakehashi grpc tokens` to replace that department's token.\n",
        );
        for (d, t) in &tokens {
            text.push_str(&format!("{d} = \"{t}\"\n"));
        }
        write_private(path, &text)?;
    }
    Ok(tokens)
}
