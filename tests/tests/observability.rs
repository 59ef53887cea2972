//! The dashboards and alerts under `deploy/observability/` against the bus they describe:
//! - the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`),
//!   and every alert has a case that fires and one that does not;
//! - the Grafana dashboard has the structure Grafana needs (a JSON Schema of the fields we rely
//!   on) and every panel queries something;
//! - every metric any dashboard or alert expression names is in a scrape of a running bus (real
//!   nats-server, registry and adapter, after a valid and an invalid event went through), and
//!   the scrape types counters as counters named `…_total`.
//!
//! promtool comes from Debian's `prometheus` package, installed by
//! `deploy/scripts/ensure-tools.sh --with-interop-clients` (what `deploy/test.sh` runs).

use kakehashi_proto::v1::{publisher_client::PublisherClient, Event};
use kakehashi_tests::bus::Flow;
use kakehashi_tests::services::{adapter_config, registry_config, scrape_metrics};
use kakehashi_tests::{Adapter, NatsServer, Registry};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TYPE: &str = "observability.check.done";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: TYPE, producers: &["city-x"], reader: "mhlw", subscription: "dash" };

fn observability_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs promtool in the rules directory; fails the test with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    promtool_in(&observability_dir().join("prometheus"), args)
}

/// Runs promtool in `dir`; fails the test with its output unless it succeeds.
fn promtool_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!(
            "promtool not runnable ({e}): install it with `bash deploy/scripts/ensure-tools.sh \
             --with-interop-clients` (Debian package prometheus)"
        )
    });
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} failed:\n{said}", args.join(" "));
    said
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // promtool also checks that the scrape token file exists: check a copy whose
    // credentials_file points at a real (test) token, beside a copy of the rules.
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("kakehashi-metrics-token");
    assert!(kakehashi_ctl::commands::secrets::metrics_token(&token).expect("kakehashi metrics token"));
    let prometheus = observability_dir().join("prometheus");
    let text = read(&prometheus.join("prometheus.yml"));
    assert!(text.contains(SCRAPE_TOKEN_FILE), "prometheus.yml reads the token from {SCRAPE_TOKEN_FILE}");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        text.replace(SCRAPE_TOKEN_FILE, &token.display().to_string()),
    )
    .expect("write prometheus.yml");
    std::fs::copy(prometheus.join("alerts.yml"), dir.path().join("alerts.yml")).expect("copy alerts.yml");
    let config = promtool_in(dir.path(), &["check", "config", "prometheus.yml"]);
    assert!(config.contains("SUCCESS"), "{config}");
}

/// Where deploy/observability/prometheus/prometheus.yml reads the scrape token.
const SCRAPE_TOKEN_FILE: &str = "/etc/prometheus/kakehashi-metrics-token";

/// The `- job_name:` blocks of a Prometheus configuration's `scrape_configs`, comments dropped.
fn scrape_jobs(config: &str) -> Vec<String> {
    let mut jobs: Vec<String> = Vec::new();
    let mut inside = false;
    for line in config.lines().filter(|l| !l.trim_start().starts_with('#')) {
        if line.starts_with("scrape_configs:") {
            inside = true;
        } else if inside && !line.starts_with(' ') && !line.trim().is_empty() {
            inside = false;
        } else if inside && line.trim_start().starts_with("- job_name:") {
            jobs.push(format!("{line}\n"));
        } else if let (true, Some(job)) = (inside, jobs.last_mut()) {
            job.push_str(line);
            job.push('\n');
        }
    }
    jobs
}

#[test]
fn every_scrape_job_sends_the_bearer_token() {
    let config = read(&observability_dir().join("prometheus/prometheus.yml"));
    let jobs = scrape_jobs(&config);
    assert_eq!(jobs.len(), 2, "the registry's and the adapter's jobs: {jobs:?}");
    for job in &jobs {
        for needle in ["authorization:", "type: Bearer", &format!("credentials_file: {SCRAPE_TOKEN_FILE}")] {
            assert!(job.contains(needle), "scrape job without `{needle}`:\n{job}");
        }
    }
    // The check sees a job that sends no token.
    let open = config.replacen("    authorization:\n      type: Bearer\n", "    # no token\n", 1);
    assert!(scrape_jobs(&open).iter().any(|j| !j.contains("type: Bearer")));
}

/// Every deployment file turns the metrics endpoint on: the example files on loopback (a host's
/// own Prometheus), compose and Kubernetes on the service network behind the scrape token. The
/// services refuse a network address without a token (tests/tests/metrics.rs), so each file's
/// configuration is also run through that same check.
#[test]
fn every_deployment_exposes_metrics_behind_the_token() {
    use kakehashi_runtime::metrics::ScrapeAccess;
    let deploy = observability_dir().join("..");
    // The example files, as the services read them (both parse their files strictly).
    let registry =
        kakehashi_registry::config::RegistryConfig::load(Some(&deploy.join("config/registry.toml")))
            .expect("config/registry.toml loads");
    assert_eq!(registry.metrics_addr.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9464"));
    let adapter = kakehashi_adapter::config::AdapterConfig::load(Some(&deploy.join("config/adapter.toml")))
        .expect("config/adapter.toml loads");
    assert_eq!(adapter.metrics_addr.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9465"));
    for addr in [registry.metrics_addr, adapter.metrics_addr].into_iter().flatten() {
        ScrapeAccess::check(addr, None).expect("loopback: the services start");
    }

    // Kubernetes: the TOML of the ConfigMaps, parsed by the services' own types.
    let config = read(&deploy.join("k8s/kakehashi-config.yaml"));
    let embedded = |key: &str| -> String {
        let mut lines = config.lines().skip_while(|l| l.trim() != format!("{key}: |")).skip(1);
        let mut out = String::new();
        for l in lines.by_ref().take_while(|l| *l != "---") {
            out.push_str(l.strip_prefix("    ").unwrap_or(l));
            out.push('\n');
        }
        out
    };
    let k8s_registry: kakehashi_registry::config::RegistryConfig =
        toml::from_str(&embedded("registry.toml")).expect("k8s registry.toml parses strictly");
    let k8s_adapter: kakehashi_adapter::config::AdapterConfig =
        toml::from_str(&embedded("adapter.toml")).expect("k8s adapter.toml parses strictly");
    for (file, addr, token_file) in [
        ("k8s/registry.yaml", k8s_registry.metrics_addr, k8s_registry.metrics_token_file),
        ("k8s/adapter.yaml", k8s_adapter.metrics_addr, k8s_adapter.metrics_token_file),
    ] {
        let addr = addr.unwrap_or_else(|| panic!("{file}: metrics_addr is set"));
        assert!(!addr.ip().is_loopback(), "{file}: metrics on the pod network, not {addr}");
        assert!(ScrapeAccess::check(addr, None).is_err(), "{file}: would be refused without a token");
        let token_file = token_file.unwrap_or_else(|| panic!("{file}: metrics_token_file is set"));
        let (dir, name) = (token_file.parent().expect("dir"), token_file.file_name().expect("name"));
        let manifest = read(&deploy.join(file));
        for needle in [
            format!("mountPath: {}", dir.display()),
            format!("- key: metrics-token\n                path: {}", name.to_string_lossy()),
            "- name: metrics\n              containerPort: 9464".to_string(),
            "- name: metrics\n      port: 9464\n      targetPort: metrics".to_string(),
        ] {
            assert!(manifest.contains(&needle), "{file}: no `{needle}`");
        }
    }
    assert!(!config.contains("127.0.0.1:9464"), "k8s: metrics no longer hidden on the pod's loopback");

    // Compose: both services on the compose network with the token nats-config generates, and
    // the port published nowhere.
    let compose = read(&deploy.join("docker-compose.yml"));
    assert!(
        compose.contains("kakehashi metrics token --out /nats-auth/metrics-token"),
        "compose generates the token"
    );
    for (volume, port) in [("registry-nats", "9464"), ("adapter-nats", "9465")] {
        for needle in [
            format!("KAKEHASHI_METRICS_ADDR: 0.0.0.0:{port}"),
            format!("install -m 0400 -o 10001 -g 10001 /nats-auth/metrics-token /{volume}/metrics-token"),
            format!("- {volume}:/etc/kakehashi/nats:ro"),
        ] {
            assert!(compose.contains(&needle), "compose: no `{needle}`");
        }
        assert!(!compose.contains(&format!(":{port}:{port}")), "compose publishes metrics port {port}");
    }
    assert_eq!(
        compose.matches("KAKEHASHI_METRICS_TOKEN_FILE: /etc/kakehashi/nats/metrics-token").count(),
        2,
        "compose: both services read the token"
    );
}

/// The alerts of `alerts.yml` (`- alert: Name` lines).
fn alert_names(rules: &str) -> BTreeSet<String> {
    rules.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(|n| n.trim().to_string()).collect()
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_case() {
    let dir = observability_dir().join("prometheus");
    let alerts = alert_names(&read(&dir.join("alerts.yml")));
    assert!(alerts.len() >= 5, "alerts: {alerts:?}");
    // In the test file, `alertname: X` is followed by `exp_alerts: []` (quiet) or by
    // `exp_alerts:` and a list (fires).
    let tests = read(&dir.join("alerts.test.yml"));
    let lines: Vec<&str> =
        tests.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("alertname:") else { continue };
        let next = lines.get(i + 1).copied().unwrap_or_default();
        let case = cases.entry(name.trim().to_string()).or_default();
        match next {
            "exp_alerts: []" => case.1 = true,
            "exp_alerts:" => case.0 = true,
            other => panic!("alertname {name} is followed by {other:?}, not exp_alerts"),
        }
    }
    for alert in &alerts {
        let (fires, quiet) = cases.get(alert).copied().unwrap_or_default();
        assert!(fires, "{alert}: no case in alerts.test.yml where it fires");
        assert!(quiet, "{alert}: no case in alerts.test.yml where it stays quiet");
    }
    let unknown: Vec<_> = cases.keys().filter(|n| !alerts.contains(*n)).collect();
    assert!(unknown.is_empty(), "alerts.test.yml tests alerts alerts.yml does not have: {unknown:?}");
}

/// The Grafana dashboard fields we rely on: the JSON model Grafana imports (title, uid,
/// schemaVersion, a datasource variable) and panels that each have a type, a title, a place on
/// the grid and, unless they are rows, Prometheus queries.
fn dashboard_schema() -> serde_json::Value {
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["title", "uid", "schemaVersion", "panels", "templating", "time"],
        "properties": {
            "title": {"type": "string", "minLength": 1},
            "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
            "schemaVersion": {"type": "integer", "minimum": 30},
            "time": {"type": "object", "required": ["from", "to"]},
            "templating": {
                "type": "object",
                "required": ["list"],
                "properties": {"list": {"type": "array", "contains": {
                    "type": "object",
                    "required": ["name", "type", "query"],
                    "properties": {"name": {"const": "datasource"}, "type": {"const": "datasource"}, "query": {"const": "prometheus"}}
                }}}
            },
            "panels": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/panel"}}
        },
        "$defs": {
            "panel": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos"],
                "properties": {
                    "id": {"type": "integer"},
                    "type": {"enum": ["row", "timeseries", "stat", "table", "heatmap", "gauge", "bargauge"]},
                    "title": {"type": "string", "minLength": 1},
                    "gridPos": {
                        "type": "object",
                        "required": ["x", "y", "w", "h"],
                        "properties": {
                            "x": {"type": "integer", "minimum": 0, "maximum": 23},
                            "y": {"type": "integer", "minimum": 0},
                            "w": {"type": "integer", "minimum": 1, "maximum": 24},
                            "h": {"type": "integer", "minimum": 1}
                        }
                    }
                },
                "if": {"properties": {"type": {"const": "row"}}},
                "then": {"properties": {"panels": {"type": "array"}}},
                "else": {
                    "required": ["datasource", "targets"],
                    "properties": {
                        "datasource": {"type": "object", "required": ["uid"], "properties": {"uid": {"const": "${datasource}"}}},
                        "targets": {"type": "array", "minItems": 1, "items": {
                            "type": "object",
                            "required": ["refId", "expr"],
                            "properties": {"refId": {"type": "string"}, "expr": {"type": "string", "minLength": 1}}
                        }}
                    }
                }
            }
        }
    })
}

fn dashboard() -> serde_json::Value {
    let path = observability_dir().join("grafana/kakehashi.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

#[test]
fn the_dashboard_has_the_structure_grafana_imports() {
    let dashboard = dashboard();
    let validator = jsonschema::draft202012::new(&dashboard_schema()).expect("the schema compiles");
    let problems: Vec<String> =
        validator.iter_errors(&dashboard).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(problems.is_empty(), "kakehashi.json: {problems:#?}");
    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: BTreeSet<_> = panels.iter().filter_map(|p| p["id"].as_i64()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    // The schema must be able to fail: a panel without queries is refused.
    let mut broken = dashboard.clone();
    broken["panels"][1]["targets"] = serde_json::json!([]);
    assert!(!validator.is_valid(&broken), "a panel without targets passes the schema");
}

/// Every PromQL expression of the dashboard's panels and of `alerts.yml`.
fn queried_expressions() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for panel in dashboard()["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = target["expr"].as_str() {
                exprs.push((format!("panel {:?}", panel["title"]), e.to_string()));
            }
        }
    }
    // The rules file keeps every `expr` a block scalar (`expr: |` and indented lines) or a
    // single line, as its header says.
    let rules = read(&observability_dir().join("prometheus/alerts.yml"));
    let lines: Vec<&str> = rules.lines().collect();
    let mut alert = String::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            alert = name.trim().to_string();
        }
        let Some(rest) = line.trim_start().strip_prefix("expr:") else { continue };
        let rest = rest.trim();
        let expr = if rest == "|" || rest == ">" {
            let indent = line.len() - line.trim_start().len();
            lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            rest.trim_matches(|c| c == '"' || c == '\'').to_string()
        };
        exprs.push((format!("alert {alert}"), expr));
    }
    exprs
}

/// PromQL words that are not metric names: operators, modifiers, and the aggregation operators
/// (which may be followed by `by (…)` instead of `(`).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// The metric names a PromQL expression reads, by a deliberately simple rule: drop string
/// literals, label matchers `{…}` and ranges `[…]`, and the label lists after `by`, `without`,
/// `on`, `ignoring`, `group_left` and `group_right`; what is left are identifiers, numbers and
/// operators. An identifier followed by `(` is a function (`rate`, `time`…), a keyword or an
/// aggregation operator (`sum by (le) (…)`) is not a name, and a token starting with a digit is
/// a number or a duration (`0.05`, `1e6`, `10m`). Every other identifier is a metric name.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings, matchers and ranges out (none of ours nests them).
    let mut plain = String::new();
    let mut closing: Option<char> = None;
    for c in expr.chars() {
        match closing {
            Some(end) if c == end => {
                closing = None;
                plain.push(' ');
            }
            Some(_) => {}
            None => match c {
                '"' => closing = Some('"'),
                '\'' => closing = Some('\''),
                '{' => closing = Some('}'),
                '[' => closing = Some(']'),
                c => plain.push(c),
            },
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            if c == '(' && skip_list {
                // The label list of by/without/on/ignoring/group_*: skip to its `)`.
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_list = false;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
        if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word.as_str()) {
            skip_list = true;
        } else if KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) || next == Some('(') {
            // A keyword or a function call.
        } else {
            names.insert(word);
        }
    }
    names
}

#[test]
fn the_name_rule_finds_metrics_and_only_metrics() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le, subscription) (rate(kakehashi_a_bucket{x="y{"}[$__rate_interval])))
           / on() group_left (s) kakehashi_b > 1e6 and time() - kakehashi_c offset 10m or vector(0) * 2"#,
    );
    let expected: BTreeSet<String> =
        ["kakehashi_a_bucket", "kakehashi_b", "kakehashi_c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(names, expected);
}

/// The sample names (metric names of the sample lines) and the `# TYPE` of each family.
fn parse_scrape(text: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut samples = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = t.split_once(' ') {
                types.insert(name.to_string(), kind.to_string());
            }
        } else if line.starts_with("kakehashi_") {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    (samples, types)
}

/// A port the OS says is free now, for a service that binds its own listener.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_query_is_in_a_scrape_of_a_running_bus() {
    let nats = NatsServer::start();
    let (registry, registry_metrics) = Registry::start_with_metrics(registry_config(&nats)).await;
    let mut adapter_config = adapter_config(&nats);
    let adapter_metrics = free_port();
    adapter_config.metrics_addr = Some(adapter_metrics);
    let adapter = Adapter::start(adapter_config).await;
    FLOW.prepare(&registry.endpoint(), r#"{"type":"object","required":["n"]}"#).await;
    let mut subscriber = FLOW.open(&registry.endpoint(), 4).await;

    // A valid event (published twice: the second is a duplicate) and an invalid one.
    let mut publisher = PublisherClient::connect(adapter.endpoint()).await.expect("adapter");
    let valid_id = kakehashi_proto::ids::new_event_id();
    for (id, data) in [(&valid_id, &br#"{"n":1}"#[..]), (&valid_id, br#"{"n":1}"#), (&String::new(), b"{}")] {
        let event = Event {
            id: id.clone(),
            source: "city-x".into(),
            r#type: TYPE.into(),
            data: data.to_vec(),
            ..Default::default()
        };
        let ack = publisher.publish(event).await.expect("publish").into_inner();
        assert!(ack.error.is_none(), "the adapter accepts all three; the validator rejects one: {ack:?}");
    }
    subscriber.expect_and_ack("the valid event", Duration::from_secs(20)).await;

    let queried: Vec<(String, String)> = queried_expressions();
    let wanted: BTreeMap<String, String> = queried
        .iter()
        .flat_map(|(from, expr)| metric_names(expr).into_iter().map(move |n| (n, from.clone())))
        .collect();
    assert!(wanted.len() >= 15, "names found in the expressions: {wanted:?}");
    let foreign: Vec<_> = wanted.keys().filter(|n| !n.starts_with("kakehashi_")).collect();
    assert!(foreign.is_empty(), "the dashboard and alerts query only kakehashi_* metrics: {foreign:?}");

    // The lag poller runs every 5 s: scrape until everything is there or 30 s have passed, then
    // name what is missing.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let scraped = loop {
        let text =
            format!("{}\n{}", scrape_metrics(registry_metrics).await, scrape_metrics(adapter_metrics).await);
        let (samples, _) = parse_scrape(&text);
        if wanted.keys().all(|n| samples.contains(n)) || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (samples, types) = parse_scrape(&scraped);
    let missing: Vec<_> = wanted.iter().filter(|(n, _)| !samples.contains(*n)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");

    // Counters are typed as counters and named `…_total`, and only they are.
    for (name, kind) in &types {
        assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
    }
    for family in ["kakehashi_grpc_requests_total", "kakehashi_schema_cache_lookups_total"] {
        assert_eq!(types.get(family).map(String::as_str), Some("counter"), "{family}");
    }
    // Dead letters are counted by source department; gRPC calls by method and code.
    assert!(
        scraped
            .contains(r#"kakehashi_events_dead_lettered_total{reason="schema_violation",source="city-x"} 1"#),
        "{scraped}"
    );
    assert!(
        scraped.contains(
            r#"kakehashi_grpc_requests_total{method="/kakehashi.v1.Publisher/Publish",code="OK"} 3"#
        ),
        "{scraped}"
    );
    assert!(scraped.contains(r#"kakehashi_nats_connected 1"#), "{scraped}");
    assert!(scraped.contains(r#"kakehashi_events_duplicate_total{source="city-x"} 1"#), "{scraped}");
}
