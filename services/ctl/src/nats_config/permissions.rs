//! What each NATS identity may publish and subscribe to: the permission table of
//! `docs/security.md`, as data. Services live in the bus account (`KAKEHASHI`), which owns the
//! streams; each department is an account of its own that imports only `kh.in.<dept>.>`, so it
//! cannot reach the bus's JetStream API, its streams or any other identity's inbox at all.

use kakehashi_proto::subjects::{
    self, BUCKET_CONFIG, BUCKET_SCHEMAS, STREAM_AUDIT, STREAM_DLQ, STREAM_EVENTS, STREAM_INGRESS,
};

/// Allow and deny lists for one identity (NATS subject wildcards).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to.
    pub publish_allow: Vec<String>,
    /// Subjects it may never publish to, even where an allow matches.
    pub publish_deny: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe_allow: Vec<String>,
}

/// The services of the bus, each with its own identity in the bus account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The registry: validator, delivery, schema and config store.
    Registry,
    /// The adapter: publishes for departments authenticated over gRPC.
    Adapter,
    /// The CLI's operator mode: reading dead letters and the audit trail (`dlq`, `audit verify`;
    /// `dlq replay` redrives through the registry's gRPC API, not with this identity).
    Operator,
    /// Break-glass administration (stream settings, the audit stream); never used by a service.
    Admin,
}

impl Service {
    /// Every service identity.
    pub const ALL: [Service; 4] = [Service::Registry, Service::Adapter, Service::Operator, Service::Admin];

    /// The identity's name (credentials file `<name>.creds`).
    pub fn name(self) -> &'static str {
        match self {
            Service::Registry => "registry",
            Service::Adapter => "adapter",
            Service::Operator => "operator",
            Service::Admin => "admin",
        }
    }

    /// The NATS account the identity lives in: the bus account, or for the operator an account
    /// of its own that imports only direct gets of what it reads.
    pub fn account(self) -> &'static str {
        match self {
            Service::Operator => super::render::OPERATOR_ACCOUNT,
            _ => super::render::BUS_ACCOUNT,
        }
    }

    /// The identity's reply-inbox prefix (unique per identity inside the bus account).
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX.{}", self.name())
    }

    /// What the identity may do.
    pub fn permissions(self) -> Permissions {
        let kv_schemas = format!("KV_{BUCKET_SCHEMAS}");
        let kv_config = format!("KV_{BUCKET_CONFIG}");
        let mut p =
            Permissions { subscribe_allow: vec![format!("{}.>", self.inbox_prefix())], ..Default::default() };
        let publish = &mut p.publish_allow;
        match self {
            Service::Registry => {
                publish.extend(strings(&["kh.ev.>", "kh.dlq.>", subjects::AUDIT_RECORDS]));
                // Redriving a dead letter (`DeadLetters` API) puts its raw bytes back on its
                // source's ingress, for a caller the gRPC layer proved may.
                publish.push("kh.in.*.>".into());
                publish.push(format!("$KV.{BUCKET_SCHEMAS}.>"));
                publish.push(format!("$KV.{BUCKET_CONFIG}.>"));
                publish.extend(topology_setup());
                // Repartitioning KH_INGRESS (only ever done while it is empty).
                publish.push(format!("$JS.API.STREAM.UPDATE.{STREAM_INGRESS}"));
                for s in [STREAM_INGRESS, STREAM_EVENTS, STREAM_DLQ, STREAM_AUDIT, &kv_schemas, &kv_config] {
                    publish.extend(read_stream(s));
                }
                for s in [STREAM_INGRESS, STREAM_EVENTS] {
                    publish.extend(durable_consumers(s));
                }
                // Deleting a subscription deletes its consumer; nothing else is deleted.
                publish.push(format!("$JS.API.CONSUMER.DELETE.{STREAM_EVENTS}.*"));
            }
            Service::Adapter => {
                // Any department's ingress: the adapter publishes for the caller its gRPC
                // credentials proved, never for a claimed source.
                publish.extend(strings(&["kh.in.*.>", subjects::AUDIT_RECORDS]));
                publish.push(format!("$KV.{BUCKET_CONFIG}.{}>", kakehashi_runtime::audit::HEAD_PREFIX));
                publish.extend(topology_setup());
                // Schema versions by direct get only: no consumers at all, so the adapter has
                // no way to point a consumer's deliver subject into a stream (nats-server
                // does not check deliver subjects against their creator's permissions).
                publish.push(schema_reads());
            }
            Service::Operator => {
                // Reads only, by direct get, from an account of its own (`operator_reads`): no
                // ingress, no consumer, and every answer lands in its own account whatever
                // reply subject it names. `dlq replay` asks the registry's `DeadLetters` API,
                // which checks who may redrive what.
                publish.extend(operator_reads());
            }
            Service::Admin => {
                publish.extend(strings(&["$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "kh.>"]));
                p.subscribe_allow = strings(&[">"]);
            }
        }
        if self != Service::Admin {
            // The audit trail is append-only for everyone but the administrator (the stream
            // also denies deletes and purges); spelled out so no later allow can open it.
            p.publish_deny = ["STREAM.DELETE", "STREAM.PURGE", "STREAM.UPDATE", "STREAM.MSG.DELETE"]
                .iter()
                .map(|op| format!("$JS.API.{op}.{STREAM_AUDIT}"))
                .collect();
        }
        p
    }
}

/// Read-only access to single schema versions (JetStream direct get of `KV_KH_SCHEMAS`),
/// exported by the bus account to every department: no consumer, no stream API, nothing
/// else of the bucket. Schemas are the bus's public contracts.
pub fn schema_reads() -> String {
    format!("$JS.API.DIRECT.GET.KV_{BUCKET_SCHEMAS}.>")
}

/// What the operator's account imports from the bus account, and all its identity may
/// publish: batch direct gets of the dead letters, the audit trail and the chain heads. The
/// JetStream API proper cannot be imported (nats-server answers it for the requesting account),
/// and nothing else is needed.
pub fn operator_reads() -> Vec<String> {
    [STREAM_DLQ, STREAM_AUDIT, &format!("KV_{BUCKET_CONFIG}")]
        .iter()
        .flat_map(|s| [format!("$JS.API.DIRECT.GET.{s}"), format!("$JS.API.DIRECT.GET.{s}.>")])
        .collect()
}

/// A department's permissions inside its own account: publish its ingress (answered by the
/// bus through the import), read schema versions, read its own replies.
pub fn department(id: &str) -> Permissions {
    Permissions {
        publish_allow: vec![format!("kh.in.{id}.>"), schema_reads()],
        publish_deny: Vec::new(),
        subscribe_allow: vec![format!("{}.>", department_inbox_prefix(id))],
    }
}

/// A department identity's reply-inbox prefix.
pub fn department_inbox_prefix(id: &str) -> String {
    format!("_INBOX.{id}")
}

/// Creating the bus's streams when missing (create never changes an existing stream) and
/// reading account limits.
fn topology_setup() -> Vec<String> {
    let mut v = strings(&["$JS.API.INFO", "$JS.API.STREAM.INFO.*"]);
    let kv_schemas = format!("KV_{BUCKET_SCHEMAS}");
    let kv_config = format!("KV_{BUCKET_CONFIG}");
    for s in [STREAM_INGRESS, STREAM_EVENTS, STREAM_DLQ, STREAM_AUDIT, &kv_schemas, &kv_config] {
        v.push(format!("$JS.API.STREAM.CREATE.{s}"));
    }
    v
}

/// Reading a stream: direct and API gets, ordered (ephemeral) consumers and their flow control
/// (stream info comes with [`topology_setup`] or the operator's own list).
fn read_stream(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.*"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.*"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
        format!("$JS.ACK.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// Durable pull consumers on a stream (the validator, subscriptions).
fn durable_consumers(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*"),
        format!("$JS.API.CONSUMER.NAMES.{stream}"),
        format!("$JS.API.CONSUMER.LIST.{stream}"),
        format!("$JS.API.CONSUMER.UNPIN.{stream}.*"),
        format!("$JS.API.CONSUMER.RESET.{stream}.*"),
    ]
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The permission table of `docs/security.md`, rendered from the same data the generator uses
/// (a test keeps the document equal to it). `<dept>` stands for any department id.
pub fn markdown_table() -> String {
    let code = |v: &[String]| {
        if v.is_empty() {
            "—".to_string()
        } else {
            v.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join("<br>")
        }
    };
    let mut out = String::from(
        "| identity | account | may publish | never publishes | may subscribe |\n|---|---|---|---|---|\n",
    );
    for s in Service::ALL {
        let p = s.permissions();
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} | {} |\n",
            s.name(),
            s.account(),
            code(&p.publish_allow),
            code(&p.publish_deny),
            code(&p.subscribe_allow)
        ));
    }
    let p = department("<dept>");
    out.push_str(&format!(
        "| `dept-<dept>` | `DEPT_<dept>` | {} | {} | {} |\n",
        code(&p.publish_allow),
        code(&p.publish_deny),
        code(&p.subscribe_allow)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_security_md_shows_the_permissions_the_generator_writes() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/security.md"))
            .expect("docs/security.md");
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/security.md is out of date; replace its permission table with:\n\n{table}"
        );
    }

    #[test]
    fn only_the_registry_and_the_adapter_may_publish_onto_ingress() {
        for s in Service::ALL {
            let ingress =
                s.permissions().publish_allow.iter().any(|a| a.starts_with("kh.in.") || a == "kh.>");
            let expected = matches!(s, Service::Registry | Service::Adapter | Service::Admin);
            assert_eq!(ingress, expected, "{s:?}");
        }
        let operator = Service::Operator.permissions();
        assert!(operator.publish_allow.iter().all(|a| a.starts_with("$JS.API.DIRECT.GET.")), "{operator:?}");
        assert_eq!(Service::Operator.account(), "KAKEHASHI_OPERATORS");
    }

    #[test]
    fn a_department_may_publish_only_its_own_ingress_and_read_only_its_inbox() {
        let p = department("city-x");
        assert_eq!(p.publish_allow, ["kh.in.city-x.>", "$JS.API.DIRECT.GET.KV_KH_SCHEMAS.>"]);
        assert_eq!(p.subscribe_allow, ["_INBOX.city-x.>"]);
    }

    fn a_update_of_ingress(allow: &[String]) -> bool {
        allow.iter().any(|a| a == "$JS.API.STREAM.UPDATE.KH_INGRESS")
    }

    #[test]
    fn only_the_admin_may_touch_the_audit_stream_and_no_service_may_update_it() {
        for s in [Service::Registry, Service::Adapter, Service::Operator] {
            let p = s.permissions();
            assert!(p.publish_deny.iter().any(|d| d == "$JS.API.STREAM.MSG.DELETE.KH_AUDIT"), "{s:?}");
            // The one update a service may make: the registry repartitions an empty KH_INGRESS.
            let allowed_update = s == Service::Registry && a_update_of_ingress(&p.publish_allow);
            let updates = p.publish_allow.iter().filter(|a| a.contains("UPDATE")).count();
            assert_eq!(updates, usize::from(allowed_update), "{s:?}");
            assert!(!p.publish_allow.iter().any(|a| a == ">"), "{s:?}");
            assert_eq!(p.subscribe_allow, [format!("_INBOX.{}.>", s.name())]);
        }
    }
}
