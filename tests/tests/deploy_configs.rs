//! The deployment files are secure by default: every NATS configuration under `deploy/`
//! includes the authorization `kakehashi nats config` generates (and so refuses to start until
//! it has been generated), and none opens a listener without authentication. The files are run
//! by the pinned nats-server with the generated authorization, not only read. Every Kakehashi
//! process of compose and Kubernetes authenticates each listener it opens: gRPC with bearer
//! tokens, metrics with the scrape token, the console with TLS plus department logins.

use kakehashi_ctl::nats_config::{self, permissions::Service, Generated, Plan};
use kakehashi_runtime::nats_auth::NatsAuthConfig;
use kakehashi_tests::nats::server_binary;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What every NATS configuration must include, relative to itself.
const INCLUDE: &str = "include \"auth/auth.conf\"";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs the real `kakehashi nats config` code into `<dir>/auth`, as the files' headers say.
fn generate_beside(dir: &Path) -> Generated {
    let plan = Plan {
        departments: vec!["city-shibuya".into(), "mhlw".into()],
        out: dir.join("auth"),
        ..Plan::default()
    };
    nats_config::generate(&plan).expect("kakehashi nats config")
}

/// `nats-server -t -c <conf>` with extra environment variables.
fn config_test(conf: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(server_binary());
    cmd.arg("-t").arg("-c").arg(conf);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run nats-server -t")
}

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The route environment the cluster files' headers tell operators to export.
fn route_env(password: &str, hosts: &[&str]) -> (String, String) {
    let routes: Vec<String> =
        hosts.iter().map(|h| format!("nats-route://kakehashi-route:{password}@{h}")).collect();
    (password.to_string(), format!("[{}]", routes.join(",")))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `conf` on a port the OS picks (address, client and monitoring ports overridden on
/// the command line, as compose overrides the address) and returns its client URL.
fn start(conf: &Path, dir: &Path) -> (Server, String) {
    let ports = dir.join("ports");
    std::fs::create_dir_all(&ports).expect("ports dir");
    let child = Command::new(server_binary())
        .arg("-c")
        .arg(conf)
        .args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1", "--ports_file_dir"])
        .arg(&ports)
        .arg("-l")
        .arg(dir.join("nats-server.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let mut server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = std::fs::read_dir(&ports)
            .ok()
            .and_then(|mut d| d.find_map(|e| e.ok()))
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|j| j.get("nats")?.get(0)?.as_str().map(str::to_string));
        if let Some(url) = url {
            return (server, url);
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("{} did not start: {status}; log: {}", conf.display(), read(&dir.join("nats-server.log")));
        }
        assert!(Instant::now() < deadline, "{} did not start within 15s", conf.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn single_conf_refuses_anonymous_clients_and_admits_generated_identities() {
    let dir = tempfile::tempdir().expect("temp dir");
    // deploy/nats/single.conf beside its auth/ directory; only the store moves into the temp
    // dir (nats-server refuses a --store_dir flag next to the file's store_dir).
    let conf = dir.path().join("single.conf");
    let store = dir.path().join("store");
    let text = read(&deploy_dir().join("nats/single.conf"));
    assert!(text.contains("\"/var/lib/kakehashi/nats\""), "single.conf's store_dir moved; update this test");
    std::fs::write(&conf, text.replace("\"/var/lib/kakehashi/nats\"", &format!("{:?}", store)))
        .expect("write single.conf");

    let before = config_test(&conf, &[]);
    assert!(!before.status.success(), "single.conf must not start before `kakehashi nats config`");
    assert!(
        said(&before).contains("auth/auth.conf"),
        "the refusal names the missing file: {}",
        said(&before)
    );

    let generated = generate_beside(dir.path());
    let (_server, url) = start(&conf, dir.path());

    let anonymous =
        async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(3)).connect(&url).await;
    let err = anonymous.expect_err("an anonymous client is refused");
    assert_eq!(err.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{err}");

    let auth =
        NatsAuthConfig { credentials: Some(generated.service(Service::Registry)), ..Default::default() };
    let registry =
        auth.options("deploy-test").expect("credentials").connect(&url).await.expect("registry connects");
    // JetStream is on for the bus account, in the store the file names.
    async_nats::jetstream::new(registry).query_account().await.expect("JetStream account info as registry");

    let dept = NatsAuthConfig { credentials: Some(generated.department("mhlw")), ..Default::default() };
    dept.options("deploy-test-dept")
        .expect("credentials")
        .connect(&url)
        .await
        .expect("a department connects");
}

#[test]
fn cluster_and_kubernetes_configs_pass_the_config_test_with_generated_auth() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut confs = Vec::new();
    for n in 1..=3 {
        let name = format!("cluster-node-{n}.conf");
        let path = dir.path().join(&name);
        std::fs::copy(deploy_dir().join("nats").join(&name), &path).expect("copy node config");
        confs.push(path);
    }
    // The StatefulSet's nats.conf, as the ConfigMap holds it.
    let k8s = dir.path().join("nats.conf");
    std::fs::write(&k8s, k8s_nats_conf(&read(&deploy_dir().join("k8s/nats.yaml")))).expect("write nats.conf");
    let (password, routes) =
        route_env("0123456789abcdef", &["127.0.0.1:6231", "127.0.0.1:6232", "127.0.0.1:6233"]);
    let env = [
        ("KAKEHASHI_NATS_ROUTE_PASSWORD", password.as_str()),
        ("KAKEHASHI_NATS_ROUTES", routes.as_str()),
        ("POD_NAME", "nats-0"),
    ];

    for conf in confs.iter().chain([&k8s]) {
        let out = config_test(conf, &env);
        assert!(!out.status.success(), "{} must not pass before `kakehashi nats config`", conf.display());
    }
    generate_beside(dir.path());
    for conf in confs.iter().chain([&k8s]) {
        let out = config_test(conf, &env);
        assert!(out.status.success(), "{}: {}", conf.display(), said(&out));
        assert!(said(&out).contains("is valid"), "{}: {}", conf.display(), said(&out));
        // Without the route password no node starts: routes are never left open.
        let out = config_test(conf, &[("POD_NAME", "nats-0")]);
        assert!(!out.status.success(), "{} starts without a route password", conf.display());
        assert!(said(&out).contains("KAKEHASHI_NATS_ROUTE"), "{}: {}", conf.display(), said(&out));
    }
}

/// The `nats.conf: |` block of the nats ConfigMap, unindented.
fn k8s_nats_conf(yaml: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "nats.conf: |").skip(1);
    let mut out = String::new();
    for line in lines.by_ref() {
        if !line.trim().is_empty() && !line.starts_with("    ") {
            break;
        }
        out.push_str(line.strip_prefix("    ").unwrap_or(""));
        out.push('\n');
    }
    assert!(out.contains("jetstream"), "no nats.conf block found in deploy/k8s/nats.yaml");
    out
}

/// A NATS configuration's text without comments (`#` and `//`, whole-line or trailing).
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.split(" #").next().unwrap_or("");
            let t = l.trim_start();
            if t.starts_with('#') || t.starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text of the `{ … }` block that follows `keyword` at `at`.
fn block_after(text: &str, at: usize) -> &str {
    let rest = &text[at..];
    let Some(open) = rest.find('{') else { return "" };
    let mut depth = 0;
    for (i, c) in rest[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &rest[open..open + i + 1];
                }
            }
            _ => {}
        }
    }
    &rest[open..]
}

/// Every reason a NATS configuration leaves something open.
fn problems(name: &str, conf: &str) -> Vec<String> {
    let text = uncommented(conf);
    let mut found = Vec::new();
    if !text.lines().any(|l| l.trim() == INCLUDE) {
        found.push(format!("{name}: no `{INCLUDE}` (the generated authorization)"));
    }
    for word in ["no_auth_user", "accounts", "users"] {
        // Identities come from the generated file only, never written by hand.
        if text.lines().any(|l| l.trim_start().starts_with(word)) {
            found.push(format!("{name}: hand-written `{word}`"));
        }
    }
    for (at, _) in text.match_indices("authorization") {
        let block = block_after(&text, at);
        if !(block.contains("user") && block.contains("password")) || block.contains("token") {
            found.push(format!("{name}: an authorization block without a user and password: {block}"));
        }
    }
    if text
        .lines()
        .any(|l| l.trim_start().starts_with("authorization") && l.contains(':') && !l.contains('{'))
    {
        found.push(format!("{name}: a plain authorization value"));
    }
    // Listeners besides the client port must authenticate too.
    for listener in ["cluster", "leafnodes", "gateway", "websocket", "mqtt"] {
        for (at, _) in text.match_indices(listener) {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            if text[line_start..at].trim().is_empty() && !block_after(&text, at).contains("authorization") {
                found.push(format!("{name}: a {listener} listener without authorization"));
            }
        }
    }
    // Monitoring has no authentication at all: loopback only.
    for line in text.lines() {
        let t = line.trim_start();
        for key in ["http:", "http_port", "monitor_port", "https:", "https_port"] {
            if t.starts_with(key) && !(t.contains("127.0.0.1") || t.contains("localhost")) {
                found.push(format!("{name}: monitoring not on loopback: {}", line.trim()));
            }
        }
    }
    found
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_deploy_file_leaves_a_nats_listener_without_authentication() {
    let mut files = Vec::new();
    walk(&deploy_dir(), &mut files);
    let mut problems_found = Vec::new();
    let mut configs = 0;
    for path in &files {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        let name = path.strip_prefix(deploy_dir()).unwrap_or(path).display().to_string();
        if uncommented(&text).contains("no_auth_user") {
            problems_found.push(format!("{name}: no_auth_user"));
        }
        let is_conf = path.extension().is_some_and(|e| e == "conf");
        // A NATS server configuration: a .conf file, or one embedded in a Kubernetes ConfigMap.
        if is_conf {
            configs += 1;
            problems_found.extend(problems(&name, &text));
        }
        if text.lines().any(|l| l.trim() == "nats.conf: |") {
            configs += 1;
            problems_found.extend(problems(&format!("{name} (nats.conf)"), &k8s_nats_conf(&text)));
        }
        // A nats-server container must run a configuration file (one of those checked here),
        // never bare flags, and must not expose monitoring.
        if text.contains("image: nats:") {
            let live = uncommented(&text);
            if !live.contains("--config") {
                problems_found.push(format!("{name}: a nats container without --config"));
            }
            for flag in ["\"-m\"", "--http_port", "\"-js\"", ":8222\""] {
                if live.contains(flag) {
                    problems_found.push(format!("{name}: nats container with {flag}"));
                }
            }
        }
    }
    assert!(configs >= 5, "expected single, three cluster nodes and the k8s config; found {configs}");
    assert!(problems_found.is_empty(), "open NATS listeners in deploy/:\n{}", problems_found.join("\n"));
}

#[test]
fn the_check_finds_each_kind_of_open_listener() {
    // Guards the guard: a configuration with every hole it looks for.
    let open = "# include \"auth/auth.conf\"\nlisten: 0.0.0.0:4222\nhttp: 0.0.0.0:8222\n\
                no_auth_user: anyone\nauthorization { token: abc }\n\
                cluster {\n  listen: 0.0.0.0:6222\n  routes: [nats-route://a:6222]\n}\n";
    let found = problems("open.conf", open).join("\n");
    for hole in [
        "no `include",
        "hand-written `no_auth_user`",
        "authorization block without a user and password",
        "cluster listener without authorization",
        "monitoring not on loopback",
    ] {
        assert!(found.contains(hole), "missed {hole:?} in:\n{found}");
    }
    let closed = format!(
        "{INCLUDE}\nlisten: 0.0.0.0:4222\nhttp: 127.0.0.1:8222\ncluster {{\n  listen: 0.0.0.0:6222\n  \
         authorization {{ user: r, password: $P }}\n  routes: $R\n}}\n"
    );
    assert!(problems("closed.conf", &closed).is_empty(), "{:?}", problems("closed.conf", &closed));
}

/// The gRPC servers of compose and Kubernetes authenticate their callers: each service is
/// handed the generated token file, and the registry names its administrators.
#[test]
fn grpc_servers_in_compose_and_kubernetes_require_tokens() {
    let dir = deploy_dir();
    for (file, needles) in [
        (
            "docker-compose.yml",
            &["KAKEHASHI_CREDENTIALS_FILE: /etc/kakehashi/nats/grpc-tokens.toml", "kakehashi grpc tokens"][..],
        ),
        (
            "k8s/registry.yaml",
            &["KAKEHASHI_CREDENTIALS_FILE", "KAKEHASHI_ADMINS", "key: grpc-tokens.toml"][..],
        ),
        ("k8s/adapter.yaml", &["KAKEHASHI_CREDENTIALS_FILE", "key: grpc-tokens.toml"][..]),
    ] {
        let text = uncommented(&read(&dir.join(file)));
        for needle in needles {
            assert!(
                text.contains(needle),
                "{file}: no `{needle}`: its gRPC server would accept anonymous callers"
            );
        }
    }
    let compose = uncommented(&read(&dir.join("docker-compose.yml")));
    assert_eq!(
        compose.matches("KAKEHASHI_CREDENTIALS_FILE").count(),
        2,
        "docker-compose.yml: both the registry and the adapter read the token file"
    );
}

#[test]
fn the_console_example_config_parses_strictly_into_the_defaults() {
    let text = read(&deploy_dir().join("config").join("console.toml"));
    let parsed: kakehashi_console::config::ConsoleConfig =
        toml::from_str(&text).expect("deploy/config/console.toml parses into ConsoleConfig");
    assert_eq!(parsed, kakehashi_console::config::ConsoleConfig::default());
    parsed.check().expect("the example is a configuration the console accepts");
}

/// Least privilege for files: in compose only the one-shot `nats-config` sees the volume with
/// every identity's credentials, tokens and keys; each service mounts what it uses.
#[test]
fn only_the_config_job_mounts_the_volume_holding_every_secret() {
    let compose = read(&deploy_dir().join("docker-compose.yml"));
    let services = compose_services(&compose);
    let mounting: Vec<&str> = services
        .iter()
        .filter(|(_, block)| block.lines().any(|l| l.trim_start().starts_with("- nats-auth:")))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(mounting, ["nats-config"], "docker-compose.yml: services mounting nats-auth");
    let nats = services.iter().find(|(name, _)| name == "nats").map(|(_, b)| b.as_str()).unwrap_or_default();
    assert!(nats.contains("- nats-conf:/etc/nats/auth:ro"), "the NATS server reads auth.conf alone:\n{nats}");
}

/// The services of a compose file: (name, its block without comments).
fn compose_services(compose: &str) -> Vec<(String, String)> {
    let mut services: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    for line in uncommented(compose).lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            inside = line == "services:";
            continue;
        }
        if !inside {
            continue;
        }
        let name = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')).and_then(|l| l.strip_suffix(':'));
        match (name, services.last_mut()) {
            (Some(name), _) => services.push((name.to_string(), String::new())),
            (None, Some((_, block))) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, None) => {}
        }
    }
    services
}

/// The containers of a Kubernetes manifest: (name, its block without comments).
fn k8s_containers(manifest: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut indent = None;
    for line in uncommented(manifest).lines() {
        let depth = line.len() - line.trim_start().len();
        if line.trim() == "containers:" {
            indent = Some(depth);
            continue;
        }
        let Some(base) = indent else { continue };
        if !line.trim().is_empty() && depth <= base && !line.trim_start().starts_with("- ") {
            indent = None;
            continue;
        }
        if let Some(name) = line.trim_start().strip_prefix("- name: ").filter(|_| depth == base + 2) {
            out.push((name.to_string(), String::new()));
        } else if let Some((_, block)) = out.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

/// What a Kakehashi process in a deployment file lacks to authenticate every listener it opens
/// (its command names the binary; `env` is how the file sets variables: `NAME: value` in
/// compose, `- name: NAME` in Kubernetes).
fn unauthenticated_listeners(file: &str, name: &str, block: &str, kubernetes: bool) -> Vec<String> {
    let has = |var: &str| {
        if kubernetes {
            block.contains(&format!("- name: {var}\n"))
        } else {
            block.contains(&format!("{var}: "))
        }
    };
    // A variable's literal value: `VAR: value` in compose, `- name: VAR` then `value: value`.
    let lines: Vec<&str> = block.lines().map(str::trim).collect();
    let value = |var: &str| -> Option<&str> {
        let value = if kubernetes {
            lines
                .windows(2)
                .find(|w| w[0] == format!("- name: {var}"))
                .and_then(|w| w[1].strip_prefix("value: "))
        } else {
            lines.iter().find_map(|l| l.strip_prefix(&format!("{var}: ")))
        };
        value.map(|v| v.trim_matches('"'))
    };
    let mut found = Vec::new();
    let mut need = |var: &str, why: &str| {
        if !has(var) {
            found.push(format!("{file}: {name}: no {var} ({why})"));
        }
    };
    if block.contains("\"kakehashi-registry\"") || block.contains("\"kakehashi-adapter\"") {
        need("KAKEHASHI_CREDENTIALS_FILE", "gRPC without bearer tokens");
        // Bearer tokens (and raw-PII deliveries) must not cross the compose or pod network in
        // clear.
        need("KAKEHASHI_GRPC_TLS_CERT", "gRPC without TLS");
        need("KAKEHASHI_GRPC_TLS_KEY", "gRPC without TLS");
        // Compose sets the metrics address and token by environment; Kubernetes in the
        // ConfigMap (checked in tests/tests/observability.rs), the token file from the Secret.
        if kubernetes {
            if !block.contains("- name: metrics-token\n") {
                found.push(format!("{file}: {name}: the scrape token is not mounted"));
            }
        } else {
            need("KAKEHASHI_METRICS_ADDR", "metrics not exposed");
            need("KAKEHASHI_METRICS_TOKEN_FILE", "metrics without the scrape token");
            if block.contains("\"kakehashi-registry\"") {
                need("KAKEHASHI_PSEUDONYM_SECRET_FILE", "the public development pseudonym secret");
            }
        }
    } else if block.contains("\"kakehashi-console\"") {
        need("KAKEHASHI_CONSOLE_TLS_CERT", "console without TLS");
        need("KAKEHASHI_CONSOLE_TLS_KEY", "console without TLS");
        need("KAKEHASHI_CA", "the registry's CA");
        if !value("KAKEHASHI_REGISTRY").is_some_and(|v| v.starts_with("https://")) {
            found.push(format!("{file}: {name}: the console calls the registry without TLS"));
        }
    }
    // The certificate files are on a mounted volume (the Secret's, in Kubernetes): `- name:/dir`
    // in compose, `mountPath: /dir` in Kubernetes.
    let mounts: Vec<&str> = if kubernetes {
        lines.iter().filter_map(|l| l.strip_prefix("mountPath: ")).collect()
    } else {
        lines.iter().filter_map(|l| l.strip_prefix("- ")).filter_map(|v| v.split(':').nth(1)).collect()
    };
    for var in [
        "KAKEHASHI_GRPC_TLS_CERT",
        "KAKEHASHI_GRPC_TLS_KEY",
        "KAKEHASHI_CONSOLE_TLS_CERT",
        "KAKEHASHI_CONSOLE_TLS_KEY",
        "KAKEHASHI_CA",
    ] {
        if let Some(path) = value(var).filter(|p| !mounts.iter().any(|m| p.starts_with(&format!("{m}/")))) {
            found.push(format!("{file}: {name}: {var} {path} is on no mounted volume"));
        }
    }
    found
}

#[test]
fn no_listener_in_compose_or_kubernetes_is_unauthenticated() {
    let dir = deploy_dir();
    let compose = read(&dir.join("docker-compose.yml"));
    let services = compose_services(&compose);
    let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["nats-config", "nats", "registry", "adapter", "console"], "compose services");
    let mut problems = Vec::new();
    for (name, block) in &services {
        if block.contains("image: kakehashi:") && name != "nats-config" {
            problems.extend(unauthenticated_listeners("docker-compose.yml", name, block, false));
        } else if !["nats", "nats-config"].contains(&name.as_str()) {
            problems.push(format!("docker-compose.yml: {name}: a listener nobody checked"));
        }
    }
    let mut containers = Vec::new();
    for file in ["k8s/registry.yaml", "k8s/adapter.yaml", "k8s/console.yaml"] {
        for (name, block) in k8s_containers(&read(&dir.join(file))) {
            problems.extend(unauthenticated_listeners(file, &name, &block, true));
            containers.push(name);
        }
    }
    assert_eq!(containers, ["registry", "adapter", "console"], "the Kakehashi containers of deploy/k8s");
    let kustomization = read(&dir.join("k8s/kustomization.yaml"));
    assert!(kustomization.contains("  - console.yaml\n"), "kustomization.yaml deploys the console");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_listener_check_finds_each_kind_of_gap() {
    let compose = read(&deploy_dir().join("docker-compose.yml"));
    let services = compose_services(&compose);
    let block = |name: &str| services.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone()).expect(name);
    for (name, var) in [
        ("registry", "KAKEHASHI_METRICS_TOKEN_FILE"),
        ("registry", "KAKEHASHI_CREDENTIALS_FILE"),
        ("adapter", "KAKEHASHI_METRICS_ADDR"),
        ("console", "KAKEHASHI_CONSOLE_TLS_CERT"),
        ("registry", "KAKEHASHI_GRPC_TLS_CERT"),
        ("adapter", "KAKEHASHI_GRPC_TLS_KEY"),
        ("registry", "KAKEHASHI_PSEUDONYM_SECRET_FILE"),
        ("console", "KAKEHASHI_CA"),
    ] {
        let broken = block(name).replace(&format!("{var}: "), "X_REMOVED: ");
        let found = unauthenticated_listeners("compose", name, &broken, false);
        assert!(found.iter().any(|p| p.contains(var)), "{name} without {var}: {found:?}");
    }
    let k8s = read(&deploy_dir().join("k8s/registry.yaml"));
    let (name, registry) = k8s_containers(&k8s).into_iter().next().expect("registry container");
    assert!(unauthenticated_listeners("k8s", &name, &registry, true).is_empty());
    let broken = registry.replace("- name: metrics-token\n", "- name: other\n");
    assert!(!unauthenticated_listeners("k8s", &name, &broken, true).is_empty());
}

/// Where a deployment's registry keeps its trace index: a file under a mounted volume, so a
/// restart goes on from where it was instead of reading the whole of `KH_AUDIT` again (the
/// default, a temporary file, is for development). `mounts` are the block's mount paths.
fn index_on_a_volume(path: Option<&str>, mounts: &[&str]) -> Result<(), String> {
    let path = path.ok_or("KAKEHASHI_TRACE_INDEX_PATH is not set: the index is a temporary file")?;
    let dir = std::path::Path::new(path).parent().and_then(|d| d.to_str()).unwrap_or("");
    mounts
        .iter()
        .any(|m| dir == *m || dir.starts_with(&format!("{m}/")))
        .then_some(())
        .ok_or_else(|| format!("{path} is not on a mounted volume ({mounts:?})"))
}

#[test]
fn the_registry_keeps_its_trace_index_on_a_volume_in_compose_and_kubernetes() {
    let dir = deploy_dir();
    let compose = read(&dir.join("docker-compose.yml"));
    let services = compose_services(&compose);
    let (_, registry) = services.iter().find(|(n, _)| n == "registry").expect("registry service");
    let path = registry
        .lines()
        .find_map(|l| l.trim().strip_prefix("KAKEHASHI_TRACE_INDEX_PATH: "))
        .map(|v| v.trim_matches('"'));
    // Named volumes only (`name:/path`, no `./` bind of a file from the checkout), writable.
    let mounts: Vec<&str> = registry
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|v| !v.starts_with('.') && !v.ends_with(":ro"))
        .filter_map(|v| v.split(':').nth(1))
        .collect();
    index_on_a_volume(path, &mounts).unwrap_or_else(|e| panic!("docker-compose.yml: registry: {e}"));
    let k8s = read(&dir.join("k8s/registry.yaml"));
    let (_, container) = k8s_containers(&k8s).into_iter().next().expect("registry container");
    let lines: Vec<&str> = container.lines().map(str::trim).collect();
    let path = lines
        .windows(2)
        .find(|w| w[0] == "- name: KAKEHASHI_TRACE_INDEX_PATH")
        .and_then(|w| w[1].strip_prefix("value: "));
    let mounts: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("mountPath: ")).collect();
    index_on_a_volume(path, &mounts).unwrap_or_else(|e| panic!("k8s/registry.yaml: {e}"));
    // The check itself: a temporary file, or a path off every volume, is refused.
    assert!(index_on_a_volume(None, &["/var/lib/kakehashi"]).is_err());
    assert!(index_on_a_volume(Some("/tmp/index.redb"), &["/var/lib/kakehashi"]).is_err());
    assert!(index_on_a_volume(Some("/var/lib/kakehashi-other/i.redb"), &["/var/lib/kakehashi"]).is_err());
    assert!(index_on_a_volume(Some("/var/lib/kakehashi/i.redb"), &["/var/lib/kakehashi"]).is_ok());
}

/// The example collector's OTLP receiver requires a bearer token and its health check stays on
/// the container's loopback: the example is a deploy file like the others. (Text checks: the
/// file's layout is ours; the tests carry no YAML parser.)
#[test]
fn the_example_collector_authenticates_its_receiver() {
    let text = read(&deploy_dir().join("otel/collector.yaml"));
    let active: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let active = active.join("\n");
    let receiver = "      grpc:\n        endpoint: 0.0.0.0:4317\n        auth:\n          authenticator: bearertokenauth\n";
    assert!(active.contains(receiver), "the OTLP gRPC receiver must require the bearer token:\n{active}");
    assert!(!active.contains("\n      http:"), "an OTLP/HTTP receiver is configured:\n{active}");
    assert!(active.contains("  bearertokenauth:\n    filename: /etc/otelcol-contrib/token\n"), "{active}");
    assert!(
        active.contains("  health_check:\n    endpoint: 127.0.0.1:13133\n"),
        "health check off loopback:\n{active}"
    );
    assert!(
        active.contains("  extensions: [bearertokenauth, health_check]"),
        "the authenticator is not enabled"
    );
    let endpoints = active.lines().filter(|l| l.trim_start().starts_with("endpoint:")).count();
    assert_eq!(endpoints, 2, "a listener this test does not check:\n{active}");
}
