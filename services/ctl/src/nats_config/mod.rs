//! `kakehashi nats config`: renders the nats-server authorization section and one credentials
//! file per service and per department from the department list, so nobody hand-edits
//! permission lists.
//!
//! Output directory layout:
//! - `auth.conf`: the `accounts { … }` section; a server configuration `include`s it.
//! - `creds/<service>.creds`, `creds/dept-<id>.creds`: one identity each (mode 0600).
//! - `creds/<name>.creds.previous`: the key being rotated out, still accepted until retired.
//! - with TLS: `tls/ca.pem` (clients trust it), `tls/server.pem`, `tls/server-key.pem`, and
//!   `tls.conf`, the server's `tls { … }` section (clients must then use TLS).
//!
//! Re-running keeps every existing key, so adding a department never logs anyone else out.

pub mod permissions;
pub mod render;

use kakehashi_proto::ident;
use kakehashi_runtime::nats_auth::Credentials;
use permissions::Service;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What to generate.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Departments that connect to NATS directly (SDK, `ingest`).
    pub departments: Vec<String>,
    /// Output directory.
    pub out: PathBuf,
    /// Identities whose key is replaced; the old one stays accepted until retired.
    pub rotate: Vec<String>,
    /// Identities whose previous (rotated-out) key is no longer accepted.
    pub retire: Vec<String>,
    /// Host names and IP addresses of the NATS servers; non-empty = generate a CA and a
    /// server certificate for them (kept when present) and a `tls.conf` requiring TLS.
    pub tls_names: Vec<String>,
    /// With TLS: the server also requires a client certificate from the same CA, and every
    /// identity gets one (`tls/clients/<identity>.pem`).
    pub tls_verify_clients: bool,
}

/// Why the configuration could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum NatsConfigError {
    /// A department id is not one NATS token of `[a-z0-9-]`.
    #[error("department {0:?} is not a department id ([a-z0-9-]+)")]
    BadDepartment(String),
    /// `--rotate`/`--retire` names no identity of this configuration.
    #[error("no identity {0:?} to rotate or retire (services: registry, adapter, operator, admin; departments: dept-<id>)")]
    UnknownIdentity(String),
    /// A file could not be written or read.
    #[error("{path}: {message}")]
    File {
        /// File.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The accounts section.
    pub auth_conf: PathBuf,
    /// The credentials directory.
    pub creds_dir: PathBuf,
    /// With TLS: the `tls { … }` section and the CA certificate clients trust.
    pub tls: Option<GeneratedTls>,
}

/// The TLS part of a generated configuration.
#[derive(Debug, Clone)]
pub struct GeneratedTls {
    /// The server's `tls { … }` section (include it beside `auth.conf`).
    pub tls_conf: PathBuf,
    /// The CA certificate (PEM) every client must trust (`KAKEHASHI_NATS_CA`).
    pub ca_file: PathBuf,
    /// With client verification: where `<identity>.pem` and `<identity>-key.pem` are.
    pub clients: Option<PathBuf>,
}

impl GeneratedTls {
    /// An identity's client certificate and key, when the server verifies clients.
    pub fn client_cert(&self, identity: &str) -> Option<(PathBuf, PathBuf)> {
        let dir = self.clients.as_ref()?;
        Some((dir.join(format!("{identity}.pem")), dir.join(format!("{identity}-key.pem"))))
    }
}

impl Generated {
    /// The credentials file of a service.
    pub fn service(&self, service: Service) -> PathBuf {
        self.creds_dir.join(format!("{}.creds", service.name()))
    }

    /// The credentials file of a department.
    pub fn department(&self, id: &str) -> PathBuf {
        self.creds_dir.join(format!("{}.creds", department_identity(id)))
    }
}

/// A department's identity name.
pub fn department_identity(id: &str) -> String {
    format!("dept-{id}")
}

/// Writes the accounts section and the credentials files.
pub fn generate(plan: &Plan) -> Result<Generated, NatsConfigError> {
    let departments: BTreeSet<&str> =
        plan.departments.iter().map(|d| d.trim()).filter(|d| !d.is_empty()).collect();
    for d in &departments {
        if !ident::is_valid_department_id(d) {
            return Err(NatsConfigError::BadDepartment(d.to_string()));
        }
    }
    let known: BTreeSet<String> = Service::ALL
        .iter()
        .map(|s| s.name().to_string())
        .chain(departments.iter().map(|d| department_identity(d)))
        .collect();
    for name in plan.rotate.iter().chain(&plan.retire) {
        if !known.contains(name) {
            return Err(NatsConfigError::UnknownIdentity(name.clone()));
        }
    }
    let creds_dir = plan.out.join("creds");
    std::fs::create_dir_all(&creds_dir).map_err(|e| file_err(&creds_dir, e))?;
    let keys = |identity: &str, inbox: String| -> Result<Vec<String>, NatsConfigError> {
        identity_keys(
            &creds_dir,
            identity,
            inbox,
            plan.rotate.iter().any(|r| r == identity),
            plan.retire.iter().any(|r| r == identity),
        )
    };
    let (mut services, mut operators) = (Vec::new(), Vec::new());
    for s in Service::ALL {
        let user = render::User {
            identity: s.name(),
            public_keys: keys(s.name(), s.inbox_prefix())?,
            permissions: s.permissions(),
        };
        if s.account() == render::OPERATOR_ACCOUNT {
            operators.push(user);
        } else {
            services.push(user);
        }
    }
    let mut accounts = Vec::new();
    let names: Vec<String> = departments.iter().map(|d| department_identity(d)).collect();
    for (d, name) in departments.iter().zip(&names) {
        accounts.push(render::DepartmentAccount {
            id: d,
            user: render::User {
                identity: name,
                public_keys: keys(name, permissions::department_inbox_prefix(d))?,
                permissions: permissions::department(d),
            },
        });
    }
    let auth_conf = plan.out.join("auth.conf");
    write_private(&auth_conf, &render::accounts(&services, &operators, &accounts))?;
    let tls = if plan.tls_names.is_empty() {
        None
    } else {
        let identities: Vec<String> =
            Service::ALL.iter().map(|s| s.name().to_string()).chain(names.iter().cloned()).collect();
        Some(server_tls(&plan.out, &plan.tls_names, plan.tls_verify_clients, &identities)?)
    };
    Ok(Generated { auth_conf, creds_dir, tls })
}

/// The CA's subject; also how a kept CA key is turned back into an issuer.
const CA_NAME: &str = "Kakehashi NATS CA";

/// A CA and a server certificate for `names` (kept when already there), the server's TLS
/// section, and with `verify_clients` a client certificate per identity (CN = identity) that
/// the server then requires. Paths in the section are absolute: nats-server reads them
/// relative to its working directory.
fn server_tls(
    out: &Path,
    names: &[String],
    verify_clients: bool,
    identities: &[String],
) -> Result<GeneratedTls, NatsConfigError> {
    let dir = out.join("tls");
    std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
    let dir = dir.canonicalize().map_err(|e| file_err(&dir, e))?;
    let pki = |e: crate::pki::PkiError| NatsConfigError::File { path: dir.clone(), message: e.to_string() };
    let (ca_file, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let (cert, key) = (dir.join("server.pem"), dir.join("server-key.pem"));
    let ca = if ca_file.exists() && cert.exists() && key.exists() {
        // Kept: issuing client certificates later needs the CA's key, kept only for that.
        match (verify_clients, std::fs::read_to_string(&ca_key)) {
            (false, _) => None,
            (true, Ok(key_pem)) => {
                let cert_pem = std::fs::read_to_string(&ca_file).map_err(|e| file_err(&ca_file, e))?;
                Some(crate::pki::Ca::load(CA_NAME, &cert_pem, &key_pem).map_err(pki)?)
            }
            (true, Err(_)) => {
                return Err(NatsConfigError::File {
                    path: ca_key,
                    message: "client certificates need the CA's key, which this CA did not keep: delete the tls folder to make a new CA".into(),
                })
            }
        }
    } else {
        let ca = crate::pki::Ca::generate(CA_NAME).map_err(pki)?;
        crate::pki::write_pem(&ca_file, &ca.certificate().cert_pem, false).map_err(pki)?;
        if verify_clients {
            crate::pki::write_pem(&ca_key, &ca.certificate().key_pem, true).map_err(pki)?;
        }
        ca.issue_server(names).map_err(pki)?.write(&dir, "server").map_err(pki)?;
        Some(ca)
    };
    let clients = dir.join("clients");
    if let (true, Some(ca)) = (verify_clients, &ca) {
        std::fs::create_dir_all(&clients).map_err(|e| file_err(&clients, e))?;
        for identity in identities {
            if !clients.join(format!("{identity}.pem")).exists() {
                ca.issue_client(identity, &[]).map_err(pki)?.write(&clients, identity).map_err(pki)?;
            }
        }
    }
    let tls_conf = out.join("tls.conf");
    let verify = if verify_clients {
        format!("  ca_file: {}\n  verify: true\n", render::quote(&ca_file.display().to_string()))
    } else {
        String::new()
    };
    let text = format!(
        "# Generated by `kakehashi nats config --tls-name …`: clients must use TLS and trust {ca}.\n\
         tls {{\n  cert_file: {}\n  key_file: {}\n{verify}  timeout: 2\n}}\n",
        render::quote(&cert.display().to_string()),
        render::quote(&key.display().to_string()),
        ca = ca_file.display(),
    );
    write_private(&tls_conf, &text)?;
    Ok(GeneratedTls { tls_conf, ca_file, clients: verify_clients.then_some(clients) })
}

/// The public keys to accept for `identity`: its current key (created when missing or rotated)
/// and, during a rotation, the previous one.
fn identity_keys(
    dir: &Path,
    identity: &str,
    inbox_prefix: String,
    rotate: bool,
    retire: bool,
) -> Result<Vec<String>, NatsConfigError> {
    let current = dir.join(format!("{identity}.creds"));
    let previous = dir.join(format!("{identity}.creds.previous"));
    if rotate && current.exists() {
        std::fs::rename(&current, &previous).map_err(|e| file_err(&current, e))?;
    }
    if retire {
        match std::fs::remove_file(&previous) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_err(&previous, e)),
        }
    }
    if !current.exists() {
        let pair = nkeys::KeyPair::new_user();
        let seed = pair
            .seed()
            .map_err(|e| NatsConfigError::File { path: current.clone(), message: e.to_string() })?;
        let text = format!(
            "# Kakehashi NATS credentials of identity {identity}: a secret; keep it private.\n\
             identity = {}\nnkey_seed = {}\ninbox_prefix = {}\n",
            render::quote(identity),
            render::quote(&seed),
            render::quote(&inbox_prefix)
        );
        write_private(&current, &text)?;
    }
    let mut out = vec![public_key(&current)?];
    if previous.exists() {
        out.push(public_key(&previous)?);
    }
    Ok(out)
}

fn public_key(path: &Path) -> Result<String, NatsConfigError> {
    let creds = Credentials::load(path)
        .map_err(|e| NatsConfigError::File { path: path.to_path_buf(), message: e.to_string() })?;
    let pair = nkeys::KeyPair::from_seed(&creds.nkey_seed).map_err(|_| NatsConfigError::File {
        path: path.to_path_buf(),
        message: "the nkey seed is not valid".into(),
    })?;
    Ok(pair.public_key())
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> NatsConfigError {
    NatsConfigError::File { path: path.to_path_buf(), message: e.to_string() }
}

/// Writes a file only its owner can read (credentials, and the config naming who may do what).
fn write_private(path: &Path, text: &str) -> Result<(), NatsConfigError> {
    kakehashi_runtime::private_files::write_atomic(path, text.as_bytes(), true).map_err(|e| file_err(path, e))
}
