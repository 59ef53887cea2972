//! `kakehashi nats config`: the generated NATS authorization (see [`crate::nats_config`]).

use crate::cli::NatsConfigArgs;
use crate::error::CtlError;
use crate::nats_config::{self, Plan};
use crate::output::emit;

/// Renders the accounts section and the credentials files.
pub fn config(json: bool, args: NatsConfigArgs) -> Result<(), CtlError> {
    let mut departments = args.departments;
    if let Some(path) = &args.departments_file {
        let text = crate::error::read(path)?;
        departments.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    let plan = Plan {
        departments,
        out: args.out,
        rotate: args.rotate,
        retire: args.retire,
        tls_names: args.tls_names,
        tls_verify_clients: args.tls_verify_clients,
    };
    let generated = nats_config::generate(&plan).map_err(|e| CtlError::Usage(e.to_string()))?;
    emit(
        json,
        serde_json::json!({
            "auth_conf": generated.auth_conf,
            "creds_dir": generated.creds_dir,
            "tls_conf": generated.tls.as_ref().map(|t| &t.tls_conf),
            "ca_file": generated.tls.as_ref().map(|t| &t.ca_file),
        }),
        || {
            let mut text = format!(
                "wrote {} (include it in the nats-server config, then `nats-server --signal reload`)\n\
                 credentials in {} (one per identity; hand each to its service or department only)",
                generated.auth_conf.display(),
                generated.creds_dir.display()
            );
            if let Some(tls) = &generated.tls {
                text.push_str(&format!(
                    "\nwrote {} (include it too); clients trust {} (KAKEHASHI_NATS_CA)",
                    tls.tls_conf.display(),
                    tls.ca_file.display()
                ));
            }
            text
        },
    );
    Ok(())
}
