//! Secrets a deployment generates at run time and never commits: the metrics scrape token
//! (`kakehashi metrics token`) and the console's server certificate (`kakehashi tls server`).
//! Both keep what is already there, so re-running a setup step changes nothing.

use crate::error::CtlError;
use crate::grpc_tokens::{random_token, write_private};
use crate::pki::{Ca, Issued};
use std::path::{Path, PathBuf};

/// Subject of the CA `kakehashi tls server` makes.
const CA_NAME: &str = "kakehashi deployment CA";

/// Writes a new scrape token into `path` (mode 0600) unless it already holds a usable one;
/// returns whether it wrote. A file holding something unusable is an error, not overwritten.
pub fn metrics_token(path: &Path) -> Result<bool, CtlError> {
    if path.exists() {
        kakehashi_runtime::metrics::ScrapeToken::from_file(path)
            .map_err(|e| CtlError::BadFile { path: path.to_path_buf(), message: e.to_string() })?;
        return Ok(false);
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| CtlError::Usage(format!("cannot create {}: {e}", parent.display())))?;
    }
    let token = random_token()?;
    write_private(path, &format!("{token}\n"))?;
    Ok(true)
}

/// Keeps the pseudonym secret in `path` (at least 16 bytes once trimmed) or writes a new random
/// one (mode 0600); returns the secret. A file holding too short a secret is an error, not
/// overwritten: pseudonyms already handed out depend on it.
pub fn pseudonym_secret(path: &Path) -> Result<String, CtlError> {
    if path.exists() {
        let secret = crate::error::read(path)?.trim().to_string();
        if secret.len() < 16 {
            return Err(CtlError::BadFile {
                path: path.to_path_buf(),
                message: "a pseudonym secret must be at least 16 bytes".into(),
            });
        }
        return Ok(secret);
    }
    let secret = random_token()?;
    write_private(path, &format!("{secret}\n"))?;
    Ok(secret)
}

/// A server certificate `<out>/<file>.pem` (key `<file>-key.pem`) for `names`, issued by the CA
/// in `<out>/ca.pem` (made when missing). Returns the certificate's path and whether it wrote.
pub fn server_certificate(out: &Path, file: &str, names: &[String]) -> Result<(PathBuf, bool), CtlError> {
    if file.is_empty() || file.contains(['/', '\\']) || file == "ca" {
        return Err(CtlError::Usage(format!("--file {file:?}: a plain file name other than ca")));
    }
    let pki = |e: crate::pki::PkiError| CtlError::Usage(e.to_string());
    let cert = out.join(format!("{file}.pem"));
    if cert.exists() && out.join(format!("{file}-key.pem")).exists() {
        return Ok((cert, false));
    }
    let (ca_cert, ca_key) = (out.join("ca.pem"), out.join("ca-key.pem"));
    let ca = if ca_cert.exists() && ca_key.exists() {
        Ca::load(CA_NAME, &crate::error::read(&ca_cert)?, &crate::error::read(&ca_key)?).map_err(pki)?
    } else {
        let ca = Ca::generate(CA_NAME).map_err(pki)?;
        let issued: &Issued = ca.certificate();
        crate::pki::write_pem(&ca_cert, &issued.cert_pem, false).map_err(pki)?;
        crate::pki::write_pem(&ca_key, &issued.key_pem, true).map_err(pki)?;
        ca
    };
    ca.issue_server(names).map_err(pki)?.write(out, file).map_err(pki)?;
    Ok((cert, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_written_once_private_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("metrics-token");
        assert!(metrics_token(&path).expect("written"));
        let first = std::fs::read_to_string(&path).expect("read");
        assert_eq!(first.trim_end().len(), 64);
        kakehashi_runtime::metrics::ScrapeToken::from_file(&path).expect("usable");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(!metrics_token(&path).expect("kept"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), first);
        std::fs::write(&path, "short").expect("write");
        assert!(metrics_token(&path).is_err(), "an unusable file is not overwritten");
    }

    #[test]
    fn a_pseudonym_secret_is_random_private_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pseudonym-secret");
        let first = pseudonym_secret(&path).expect("written");
        assert_eq!(first.len(), 64);
        assert_ne!(first, pseudonym_secret(&dir.path().join("other")).expect("another"), "random");
        assert_eq!(pseudonym_secret(&path).expect("kept"), first);
        std::fs::write(&path, "short\n").expect("write");
        assert!(pseudonym_secret(&path).is_err(), "too short a secret is refused, not replaced");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "short\n");
    }

    #[test]
    fn a_server_certificate_is_issued_by_a_kept_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = vec!["console".to_string(), "127.0.0.1".to_string()];
        let (cert, written) = server_certificate(dir.path(), "console", &names).expect("issued");
        assert!(written && cert.exists() && dir.path().join("console-key.pem").exists());
        let ca = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca");
        assert!(!server_certificate(dir.path(), "console", &names).expect("kept").1);
        std::fs::remove_file(&cert).expect("rm");
        assert!(server_certificate(dir.path(), "console", &names).expect("reissued").1);
        assert_eq!(std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca"), ca, "same CA");
        assert!(server_certificate(dir.path(), "../x", &names).is_err());
    }
}
