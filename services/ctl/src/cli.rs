//! The command line: global connection options and every subcommand.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// kakehashi — Kakehashi's command line for integrators and operators.
#[derive(Debug, Parser)]
#[command(name = "kakehashi", version, about)]
pub struct Cli {
    /// Connection options.
    #[command(flatten)]
    pub conn: Conn,
    /// Print JSON instead of text meant for people.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the bus is.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// Registry gRPC endpoint.
    #[arg(long, global = true, env = "KAKEHASHI_REGISTRY", default_value = "http://127.0.0.1:50051")]
    pub registry: String,
    /// Adapter gRPC endpoint.
    #[arg(long, global = true, env = "KAKEHASHI_ADAPTER", default_value = "http://127.0.0.1:50052")]
    pub adapter: String,
    /// NATS URL (dead letters, dev).
    #[arg(long, global = true, env = "KAKEHASHI_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// NATS credentials file of the identity to connect as (operator commands: `dlq`, `audit`).
    #[arg(long, global = true, env = "KAKEHASHI_NATS_CREDENTIALS")]
    pub nats_credentials: Option<PathBuf>,
    /// CA certificate (PEM) of a NATS server that requires TLS.
    #[arg(long, global = true, env = "KAKEHASHI_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// Department token sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "KAKEHASHI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that the registry's and adapter's TLS certificates chain to (for
    /// https:// endpoints; without it the system's roots are trusted). For `cert verify`: a CA
    /// trusted in addition to the system's roots when fetching the issuer's keys.
    #[arg(long, global = true, env = "KAKEHASHI_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to https:// endpoints; with mutual TLS it names the
    /// department. Needs --key.
    #[arg(long, global = true, env = "KAKEHASHI_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "KAKEHASHI_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl Conn {
    /// Endpoints with every optional setting unset (for programs driving the CLI's code).
    pub fn new(registry: impl Into<String>, adapter: impl Into<String>, nats: impl Into<String>) -> Self {
        use clap::Parser as _;
        // Clap's defaults, so a field added later is never left out here.
        let mut conn = Cli::parse_from(["kakehashi", "audit", "verify"]).conn;
        conn.registry = registry.into();
        conn.adapter = adapter.into();
        conn.nats = nats.into();
        conn
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole bus locally, authenticated: its own secured nats-server on --nats-listen,
    /// registry, adapter, the schema catalogue and the demo policies.
    Dev(DevArgs),
    /// Manage schemas.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Manage who may publish and read which types.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage subscriptions and watch deliveries.
    #[command(subcommand)]
    Sub(SubCommand),
    /// Inspect dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Publish one event through the adapter.
    Publish(PublishArgs),
    /// Show where an event went, hop by hop (or find events by source, type and time).
    Trace(TraceArgs),
    /// Check the audit trail's hash chains.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// NATS server configuration: identities, permissions, credentials.
    #[command(subcommand)]
    Nats(NatsCommand),
    /// gRPC credentials of the departments.
    #[command(subcommand)]
    Grpc(GrpcCommand),
    /// The bearer token of the services' /metrics endpoints.
    #[command(subcommand)]
    Metrics(MetricsCommand),
    /// TLS certificates for the HTTPS endpoints of a deployment (the console).
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Vaccination certificates (SMART Health Cards): verify one, no bus needed.
    #[command(subcommand)]
    Cert(CertCommand),
}

/// `kakehashi cert`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Verify a SMART Health Card: signature, key, validity period, revocation; print the
    /// holder and doses and VALID, or the check that failed (exit code below).
    #[command(after_help = CERT_VERIFY_EXIT_CODES)]
    Verify(CertVerifyArgs),
}

/// The exit codes of `kakehashi cert verify` (`commands::cert::exit`).
pub const CERT_VERIFY_EXIT_CODES: &str = "\
Exit codes:
   0  valid
   1  other error (a file cannot be read, a bad --jwks/--crl file, ...)
   2  usage error
  10  not a SMART Health Card (not shc:/, JWS, card file or PNG; QR code holds something else)
  11  unreadable image (not a PNG, corrupt) or no readable QR code in it
  12  malformed card (JWS, header, payload or FHIR Bundle)
  13  bad signature: tampered, or not signed by the key it names
  14  unknown key: the signing key is not in the issuer's key set
  15  wrong issuer: iss is not https, or not --issuer
  16  not yet valid (nbf in the future)
  17  expired
  18  revoked
  19  cannot check: the key set or revocation list could not be fetched, or is stale";

/// `kakehashi cert verify`.
#[derive(Debug, Args)]
pub struct CertVerifyArgs {
    /// The card: a PNG image of its QR code, a `.smart-health-card` file, a text file holding
    /// `shc:/…` or a JWS, a literal `shc:/…` string, or `-` for standard input.
    pub input: String,
    /// The issuer's JWK Set, from a file: verify offline, nothing is fetched. Without it the
    /// key set is fetched from `<iss>/.well-known/jwks.json` (https only; the system's roots
    /// and --ca are trusted).
    #[arg(long)]
    pub jwks: Option<PathBuf>,
    /// The signing key's revocation list (`{"kid","method":"rid","ctr","rids"}`). Without it,
    /// and without --jwks, `<iss>/.well-known/crl/<kid>.json` is fetched when the key has
    /// `crlVersion`.
    #[arg(long)]
    pub crl: Option<PathBuf>,
    /// Accept only cards whose `iss` is exactly this URL (checked before anything is fetched).
    #[arg(long)]
    pub issuer: Option<String>,
    /// Verify as of this time, seconds since the epoch, instead of the system clock.
    #[arg(long, value_name = "UNIX")]
    pub now: Option<i64>,
}

/// `kakehashi grpc`.
#[derive(Debug, Subcommand)]
pub enum GrpcCommand {
    /// Write (or complete) a file of `department = "token"` lines: one bearer token per
    /// department; the services read it with `credentials_file`. Existing tokens are kept.
    Tokens(GrpcTokensArgs),
}

/// `kakehashi grpc tokens`.
#[derive(Debug, Args)]
pub struct GrpcTokensArgs {
    /// Departments, comma-separated (the administrators among them too).
    #[arg(long, value_delimiter = ',', required = true)]
    pub departments: Vec<String>,
    /// The token file.
    #[arg(long)]
    pub out: PathBuf,
}

/// `kakehashi metrics`.
#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// Write a scrape token (64 random hex digits, mode 0600) into a file, unless the file
    /// already holds one: the services read it with `metrics_token_file`, Prometheus with
    /// `authorization.credentials_file`.
    Token(MetricsTokenArgs),
}

/// `kakehashi metrics token`.
#[derive(Debug, Args)]
pub struct MetricsTokenArgs {
    /// The token file.
    #[arg(long)]
    pub out: PathBuf,
}

/// `kakehashi tls`.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Write a CA (`ca.pem`, `ca-key.pem`) and a server certificate for the given names
    /// (`<file>.pem`, `<file>-key.pem`, keys mode 0600) into a directory. Existing files are kept.
    Server(TlsServerArgs),
}

/// `kakehashi tls server`.
#[derive(Debug, Args)]
pub struct TlsServerArgs {
    /// A DNS name or IP address the server is reached by (repeat it).
    #[arg(long = "name", required = true)]
    pub names: Vec<String>,
    /// File name of the certificate and key, without `.pem`.
    #[arg(long, default_value = "server")]
    pub file: String,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// `kakehashi nats`.
#[derive(Debug, Subcommand)]
pub enum NatsCommand {
    /// Render the nats-server accounts section and one credentials file per service and per
    /// department (existing keys are kept).
    Config(NatsConfigArgs),
}

/// `kakehashi nats config`.
#[derive(Debug, Args)]
pub struct NatsConfigArgs {
    /// Departments that connect to NATS directly (SDK, `ingest`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub departments: Vec<String>,
    /// A file with more department ids, one per line (`#` starts a comment).
    #[arg(long)]
    pub departments_file: Option<PathBuf>,
    /// Output directory (`auth.conf`, `creds/`).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace this identity's key; the old key stays accepted until `--retire`.
    #[arg(long)]
    pub rotate: Vec<String>,
    /// Stop accepting this identity's previous key.
    #[arg(long)]
    pub retire: Vec<String>,
    /// Require TLS: a host name or IP of the NATS servers for their certificate (repeat it);
    /// a CA and a server certificate are generated into `<out>/tls/` when missing.
    #[arg(long = "tls-name")]
    pub tls_names: Vec<String>,
    /// With --tls-name: the server also requires a client certificate from its CA; one is
    /// written per identity into `<out>/tls/clients/`.
    #[arg(long, requires = "tls_names")]
    pub tls_verify_clients: bool,
}

/// `kakehashi trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Event id; omit to search with --source/--type/--since.
    pub event_id: Option<String>,
    /// Publishing department.
    #[arg(long)]
    pub source: Option<String>,
    /// Event type.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// RFC 3339 time (2026-11-27T10:00:00+09:00) or a span back from now (30s, 15m, 2h, 1d).
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Most events listed when searching.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

/// `kakehashi audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify every actor's hash chain in KH_AUDIT and name the first broken link.
    Verify {
        /// How long KH_AUDIT keeps records (the registry's `topology.audit_max_age_secs`):
        /// older ones may be gone by expiry; 0 = nothing expires.
        #[arg(long, default_value_t = kakehashi_runtime::topology::TopologyConfig::default().audit_max_age_secs)]
        max_age_secs: u64,
    },
}

/// `kakehashi dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the dev bus keeps its nats-server configuration and store, and the generated
    /// development credentials (`nats-auth/creds/`, `tokens.toml`).
    #[arg(long, default_value = ".kakehashi")]
    pub data_dir: PathBuf,
    /// Where the dev bus's own nats-server listens (not 4222, so a system nats-server there is
    /// never used by mistake).
    #[arg(long, default_value = "127.0.0.1:14222")]
    pub nats_listen: std::net::SocketAddr,
    /// The schema catalogue to load.
    #[arg(long, default_value = "schemas")]
    pub schemas: PathBuf,
    /// The policies to load.
    #[arg(long, default_value = "deploy/demo/policies.toml")]
    pub policies: PathBuf,
    /// Show events flowing: one valid (delivered) and one invalid (dead-lettered, with why).
    #[arg(long)]
    pub demo: bool,
    /// Stop after the demo instead of serving until Ctrl-C.
    #[arg(long, requires = "demo")]
    pub exit_after_demo: bool,
    /// Where the registry serves Prometheus metrics.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics: std::net::SocketAddr,
}

/// `kakehashi schema …`.
#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Register a schema under a subject: a JSON Schema file, or `.proto` files with
    /// `--type protobuf --message <full name>`.
    Register {
        /// Subject (event type).
        subject: String,
        /// The schema.
        #[command(flatten)]
        source: SchemaSource,
    },
    /// Show a version (latest by default) or a schema by global id.
    Get {
        /// Subject.
        subject: String,
        /// Version (0 = latest).
        #[arg(long, default_value_t = 0)]
        version: u32,
        /// Look up by global id instead.
        #[arg(long)]
        id: Option<u64>,
    },
    /// List subjects.
    List {
        /// Include soft-deleted ones.
        #[arg(long)]
        include_deleted: bool,
    },
    /// List a subject's versions.
    Versions {
        /// Subject.
        subject: String,
        /// Include soft-deleted ones.
        #[arg(long)]
        include_deleted: bool,
    },
    /// Check a candidate schema's compatibility with a subject, with the reasons.
    Check {
        /// Subject.
        subject: String,
        /// The candidate.
        #[command(flatten)]
        source: SchemaSource,
        /// Only against this version (0 = as the mode requires).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Get or set compatibility modes.
    #[command(subcommand)]
    Compat(CompatCommand),
    /// Validate a payload file against a subject (dry run).
    Validate {
        /// Subject.
        subject: String,
        /// Payload file: JSON, or protobuf bytes for a protobuf subject.
        file: PathBuf,
        /// Version (0 = latest).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Delete a version (soft unless --permanent).
    Delete {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
        /// Remove for good (after a soft delete).
        #[arg(long)]
        permanent: bool,
    },
    /// Print the JSON Schema of a protobuf subject's canonical JSON form (for JSON-only tools).
    DeriveJson {
        /// Subject (a PROTOBUF one).
        subject: String,
        /// Version (0 = latest).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Load a whole catalogue directory (`<subject>/<version>.json` or `.proto`) in dependency order.
    Load {
        /// Catalogue directory.
        dir: PathBuf,
    },
}

/// A schema given on the command line: one JSON Schema file, or `.proto` files.
#[derive(Debug, clap::Args)]
pub struct SchemaSource {
    /// The JSON Schema file, or the `.proto` files.
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Schema type: json or protobuf.
    #[arg(long = "type", default_value = "json", value_parser = ["json", "protobuf"])]
    pub schema_type: String,
    /// Protobuf: the fully-qualified name of the payload message.
    #[arg(long)]
    pub message: Option<String>,
    /// Protobuf: a registered protobuf version whose files are imported (repeatable).
    #[arg(long = "ref", value_name = "SUBJECT/VERSION")]
    pub references: Vec<String>,
    /// Protobuf: files are named (as imports spell them) relative to this directory; default:
    /// their file names.
    #[arg(long)]
    pub proto_root: Option<PathBuf>,
    /// Protobuf: accept payloads carrying fields the schema does not declare.
    #[arg(long)]
    pub allow_unknown_fields: bool,
}

/// `kakehashi schema compat …`.
#[derive(Debug, Subcommand)]
pub enum CompatCommand {
    /// Show the effective mode (global when no subject).
    Get {
        /// Subject.
        subject: Option<String>,
    },
    /// Set a mode (global when no subject).
    Set {
        /// NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE.
        mode: String,
        /// Subject.
        subject: Option<String>,
    },
}

/// `kakehashi policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create or replace the policy of a type pattern.
    Put {
        /// Type pattern.
        pattern: String,
        /// Departments that may publish (comma-separated).
        #[arg(long, value_delimiter = ',')]
        producers: Vec<String>,
        /// Departments that may read (comma-separated).
        #[arg(long, value_delimiter = ',')]
        readers: Vec<String>,
        /// Readers that get personal identifiers raw (comma-separated).
        #[arg(long, value_delimiter = ',')]
        raw_pii_readers: Vec<String>,
    },
    /// List policies.
    List,
    /// Delete the policy of a pattern.
    Delete {
        /// Type pattern.
        pattern: String,
    },
    /// Load policies from a TOML file (`[[policy]]` tables).
    Load {
        /// File.
        file: PathBuf,
    },
}

/// `kakehashi sub …`.
#[derive(Debug, Subcommand)]
pub enum SubCommand {
    /// Create a durable subscription.
    Create {
        /// Reading department.
        department: String,
        /// Name.
        name: String,
        /// Event type pattern.
        pattern: String,
        /// Start with all retained events, not only new ones.
        #[arg(long)]
        from_start: bool,
        /// Form of protobuf-typed payloads: application/json or application/protobuf
        /// (default: as published).
        #[arg(long, default_value = "")]
        content_type: String,
    },
    /// List subscriptions.
    List {
        /// Only this department's.
        department: Option<String>,
    },
    /// Delete a subscription.
    Delete {
        /// Department.
        department: String,
        /// Name.
        name: String,
    },
    /// Print deliveries as they arrive, acking each (Ctrl-C to stop).
    Tail {
        /// Department.
        department: String,
        /// Name.
        name: String,
        /// Stop after this many.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// `kakehashi dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters.
    List {
        /// Only this reason.
        #[arg(long)]
        reason: Option<String>,
        /// Only this source department.
        #[arg(long)]
        source: Option<String>,
        /// Only this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
    },
    /// Show one dead letter (by KH_DLQ sequence).
    Show {
        /// Sequence.
        seq: u64,
    },
    /// Put dead letters back into ingress (after a schema or policy fix) and report each outcome.
    ///
    /// The registry does the redrive (its `DeadLetters` API, at --registry): the --token (or
    /// --cert) decides which letters may go back — an administrator's all, a department's only
    /// those of events it published — and the registry writes an audit record naming the caller.
    /// The NATS operator credentials only read: the letters the filters select, and each
    /// outcome from the audit trail. A sequence that is missing, or that the caller may not
    /// see, is reported as `not found` (not an error); letters are redriven in batches of up
    /// to 1000 before their outcomes are followed.
    Replay {
        /// KH_DLQ sequences to replay; or use the filters.
        seqs: Vec<u64>,
        /// Every letter with this reason.
        #[arg(long)]
        reason: Option<String>,
        /// Every letter from this source department.
        #[arg(long)]
        source: Option<String>,
        /// Every letter of this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Seconds to wait for each replayed event's outcome.
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
}

/// `kakehashi publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Event type.
    pub event_type: String,
    /// JSON payload file.
    pub file: PathBuf,
    /// Source department (with credentials enforced, it must be the token's department).
    #[arg(long)]
    pub source: String,
    /// Record key.
    #[arg(long, default_value = "")]
    pub subject: String,
}
