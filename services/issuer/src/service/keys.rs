//! The issuer's keys on disk: the signing keys (a directory, sorted by file name, the last one
//! signs, all are published), the per-issuer secret of the revocation ids, and one revocation
//! list per key.
//!
//! ```text
//! <key_dir>/<UTC time>.pem       signing keys (PKCS#8 PEM or private JWK), mode 0600
//! <data_dir>/rid-secret          64 hex digits, mode 0600
//! <data_dir>/crl/<kid>.json      revocation list of each key ({"kid","method":"rid","ctr","rids"})
//! ```
//!
//! Revocation lists are read when they are served, so a revocation (`kakehashi-issuer revoke`)
//! takes effect without a restart; a key's `crlVersion` in the JWK Set is its list's `ctr`.

use crate::{derive_rid, IssuerKey, KeyError, KeyRing, RevocationList};
use kakehashi_runtime::private_files::{create_dir, write_atomic};
use p256::elliptic_curve::zeroize::Zeroizing;
use std::path::{Path, PathBuf};

/// Key material that cannot be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// A key file.
    #[error("{path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: KeyError,
    },
    /// Other file I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file with unexpected content.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A `kid` that is not one of the issuer's keys.
    #[error("no key with kid {0:?} in the key directory")]
    UnknownKid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyStoreError + '_ {
    move |source| KeyStoreError::Io { path: path.to_path_buf(), source }
}

/// The issuer's keys, rid secret and revocation lists.
#[derive(Debug)]
pub struct KeyStore {
    ring: KeyRing,
    crl_dir: PathBuf,
    rid_secret: Zeroizing<Vec<u8>>,
}

/// Key files of a directory, sorted by name (PEM and JSON only; hidden files skipped).
fn key_files(key_dir: &Path) -> Result<Vec<PathBuf>, KeyStoreError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(key_dir).map_err(io(key_dir))? {
        let path = entry.map_err(io(key_dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !name.starts_with('.') && (name.ends_with(".pem") || name.ends_with(".json")) && path.is_file() {
            files.push(path);
        }
    }
    // By name without the extension, so `<t>-1.pem` (a second key within one second) sorts
    // after `<t>.pem`.
    files.sort_by_key(|p| p.file_stem().map(|s| s.to_os_string()));
    Ok(files)
}

/// Generates a new signing key in `key_dir` whose file name sorts after every existing one
/// (UTC time to the second), so it signs from the next start on: a rotation.
pub fn generate_key(key_dir: &Path) -> Result<(PathBuf, IssuerKey), KeyStoreError> {
    create_dir(key_dir, true).map_err(io(key_dir))?;
    let now = time::OffsetDateTime::now_utc();
    let mut name = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    // Never sort before the newest existing key, whatever the clock says.
    if let Some(last) = key_files(key_dir)?.last() {
        let last = last.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if last >= name {
            name = format!("{last}-1");
        }
    }
    let path = key_dir.join(format!("{name}.pem"));
    let (key, _) = IssuerKey::load_or_generate(&path)
        .map_err(|source| KeyStoreError::Key { path: path.clone(), source })?;
    Ok((path, key))
}

impl KeyStore {
    /// Loads every key of `key_dir` (generating the first on first start), the rid secret of
    /// `data_dir` (generated likewise) and makes sure every key has a revocation list.
    pub fn open(key_dir: &Path, data_dir: &Path) -> Result<Self, KeyStoreError> {
        create_dir(data_dir, true).map_err(io(data_dir))?;
        create_dir(key_dir, true).map_err(io(key_dir))?;
        let mut files = key_files(key_dir)?;
        if files.is_empty() {
            let (path, key) = generate_key(key_dir)?;
            tracing::info!(kid = key.kid(), path = %path.display(), "generated the first signing key");
            files.push(path);
        }
        let mut keys = Vec::new();
        for path in &files {
            keys.push(
                IssuerKey::load(path).map_err(|source| KeyStoreError::Key { path: path.clone(), source })?,
            );
        }
        let ring =
            KeyRing::new(keys).map_err(|source| KeyStoreError::Key { path: key_dir.into(), source })?;

        let rid_secret = load_or_create_secret(&data_dir.join("rid-secret"))?;
        let crl_dir = data_dir.join("crl");
        create_dir(&crl_dir, false).map_err(io(&crl_dir))?;
        let store = Self { ring, crl_dir, rid_secret };
        for key in store.ring.keys() {
            let path = store.crl_path(key.kid());
            if !path.exists() {
                // ctr 1 and crlVersion 1: the key supports revocation from its first card on.
                let list = RevocationList { ctr: 1, ..RevocationList::new(key.kid()) };
                write_atomic(&path, list.to_json().as_bytes(), false).map_err(io(&path))?;
            }
        }
        Ok(store)
    }

    /// The key that signs new cards.
    pub fn current(&self) -> &IssuerKey {
        self.ring.current()
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> &[IssuerKey] {
        self.ring.keys()
    }

    /// The card's `rid` for a holder pseudonym.
    pub fn rid(&self, pseudonym: &str) -> String {
        derive_rid(&self.rid_secret, pseudonym)
    }

    fn crl_path(&self, kid: &str) -> PathBuf {
        self.crl_dir.join(format!("{kid}.json"))
    }

    /// A key's revocation list as stored.
    pub fn revocation_list(&self, kid: &str) -> Result<RevocationList, KeyStoreError> {
        if self.ring.keys().iter().all(|k| k.kid() != kid) {
            return Err(KeyStoreError::UnknownKid(kid.to_string()));
        }
        let path = self.crl_path(kid);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        RevocationList::from_json(&text).map_err(|e| KeyStoreError::Invalid { path, message: e.to_string() })
    }

    /// The JWK Set to serve: every key, each with `crlVersion` = its list's `ctr`.
    pub fn jwks_json(&self) -> Result<String, KeyStoreError> {
        let mut jwks = self.ring.jwks();
        for jwk in &mut jwks.keys {
            jwk.crl_version = Some(self.revocation_list(&jwk.kid)?.ctr);
        }
        Ok(jwks.to_json())
    }

    /// Revokes `rid` in the list of `kid` (all its cards, or those with `nbf` up to
    /// `issued_until`), raising the list's `ctr`.
    pub fn revoke(
        &self,
        kid: &str,
        rid: &str,
        issued_until: Option<i64>,
    ) -> Result<RevocationList, KeyStoreError> {
        let mut list = self.revocation_list(kid)?;
        let path = self.crl_path(kid);
        list.revoke(rid, issued_until)
            .map_err(|e| KeyStoreError::Invalid { path: path.clone(), message: e.to_string() })?;
        write_atomic(&path, list.to_json().as_bytes(), false).map_err(io(&path))?;
        Ok(list)
    }
}

/// 32 random bytes kept hex-encoded in `path` (mode 0600), created on first use.
fn load_or_create_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
    if path.exists() {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io(path))?);
        let bytes = hex::decode(text.trim())
            .map_err(|_| KeyStoreError::Invalid { path: path.to_path_buf(), message: "not hex".into() })?;
        if bytes.len() < 16 {
            return Err(KeyStoreError::Invalid {
                path: path.to_path_buf(),
                message: "the secret must be at least 16 bytes".into(),
            });
        }
        return Ok(Zeroizing::new(bytes));
    }
    use rand_core::RngCore as _;
    let mut bytes = Zeroizing::new(vec![0u8; 32]);
    rand_core::OsRng.fill_bytes(&mut bytes);
    let text = Zeroizing::new(hex::encode(&*bytes));
    write_atomic(path, text.as_bytes(), true).map_err(io(path))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_generates_private_files_and_rotation_adds_a_newer_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("keys");
        let first = KeyStore::open(&keys, dir.path()).expect("open");
        let kid1 = first.current().kid().to_string();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for f in key_files(&keys).expect("files").into_iter().chain([dir.path().join("rid-secret")]) {
                let mode = std::fs::metadata(&f).expect("meta").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", f.display());
            }
        }
        let rid = first.rid("kh1:0123456789abcdef0123456789abcdef");
        generate_key(&keys).expect("rotate");
        let second = KeyStore::open(&keys, dir.path()).expect("reopen");
        assert_eq!(second.keys().len(), 2);
        assert_ne!(second.current().kid(), kid1, "the new key signs");
        assert_eq!(second.rid("kh1:0123456789abcdef0123456789abcdef"), rid, "same secret");
        let jwks = crate::Jwks::from_json(&second.jwks_json().expect("jwks")).expect("parse");
        assert_eq!(jwks.keys.len(), 2);
        assert!(jwks.keys.iter().all(|k| k.crl_version == Some(1)));
        let list = second.revoke(&kid1, &rid, None).expect("revoke");
        assert_eq!(list.ctr, 2);
        assert_eq!(second.revocation_list(&kid1).expect("list").rids, vec![rid]);
        assert!(matches!(second.revocation_list("nope"), Err(KeyStoreError::UnknownKid(_))));
    }
}
