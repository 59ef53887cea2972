//! The bus driven by third-party clients that know only the documentation and `proto/`: nats-py
//! publishing as a department (credentials from `kakehashi nats config`, key buckets computed
//! as `docs/delivery.md` describes), and Python's gRPC stack running the whole flow through the
//! registry and the adapter (`tests/interop/python_client.py`).

use kakehashi_proto::subjects;
use kakehashi_tests::bus::{self, Flow};
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::{interop, Adapter, NatsServer, Registry};
use std::collections::HashMap;
use std::time::Duration;

const TYPE: &str = "test.interop.counted";
const SOURCE: &str = "city-x";
const FLOW: Flow = Flow {
    event_type: TYPE,
    policy: "test.>",
    producers: &[SOURCE],
    reader: "mhlw",
    subscription: "interop",
};
const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_publishes_as_its_department_with_the_documented_key_buckets() {
    let nats = NatsServer::start();
    nats.expect_violations(); // the publish as another department must be refused
    let registry = Registry::start(registry_config(&nats)).await;
    FLOW.prepare(&registry.endpoint(), bus::counter_schema()).await;
    let mut sub = FLOW.open(&registry.endpoint(), 512).await;

    let samples = [
        (SOURCE, TYPE, "resident-1"),
        ("city-shibuya", "health.vaccination.recorded", ""),
        ("a", "b.c", "鈴木"),
    ];
    let mut args = vec![
        "--url".to_string(),
        nats.url(),
        "--creds".into(),
        nats.department_creds(SOURCE).display().to_string(),
        "--source".into(),
        SOURCE.into(),
        "--type".into(),
        TYPE.into(),
        "--count".into(),
        "300".into(),
        "--keys".into(),
        "30".into(),
        "--as-other".into(),
        "city-shibuya".into(),
    ];
    for (s, t, k) in samples {
        args.extend(["--print-bucket".to_string(), s.into(), t.into(), k.into()]);
    }
    let out = interop::run("nats_publisher.py", args, LIMIT).await;
    interop::expect_success("nats_publisher.py", &out);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();

    // The documented bucket, computed in Python, is the one the bus computes.
    let buckets: Vec<&serde_json::Value> = lines.iter().filter_map(|l| l.get("bucket")).collect();
    assert_eq!(buckets.len(), samples.len());
    for (b, (s, t, k)) in buckets.iter().zip(samples) {
        assert_eq!(b[3].as_u64(), Some(u64::from(subjects::key_bucket(s, t, k))), "{s} {t} {k:?}");
    }
    let refused = lines.iter().find_map(|l| l.get("as_other")).expect("as-other result");
    assert_eq!(refused, "refused", "publishing as another department must be refused");

    // Every published event is delivered once, in publish order per key.
    let published: HashMap<String, u64> = lines
        .iter()
        .filter_map(|l| Some((l.get("id")?.as_str()?.to_string(), l.get("n")?.as_u64()?)))
        .collect();
    assert_eq!(published.len(), 300);
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut seen = 0;
    while seen < published.len() {
        let d = sub.expect_and_ack("a delivery of a Python-published event", Duration::from_secs(20)).await;
        let e = d.event.expect("event");
        let n = *published.get(&e.id).unwrap_or_else(|| panic!("unknown event {}", e.id));
        if let Some(prev) = last.insert(e.subject.clone(), n) {
            assert!(prev < n, "key {}: {prev} delivered before {n}", e.subject);
        }
        seen += 1;
    }
    assert!(bus::dead_letters(&bus::jetstream(&nats).await).await.is_empty(), "nothing dead-lettered");
    assert!(
        nats.violations().iter().any(|v| v.contains("kh.in.city-shibuya")),
        "the refused publish shows in the server log: {:?}",
        nats.violations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_client_runs_the_whole_flow_from_the_proto_files() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let adapter = Adapter::start(adapter_config(&nats)).await;
    let strip = |e: String| e.trim_start_matches("http://").to_string();
    let args =
        vec!["--registry".into(), strip(registry.endpoint()), "--adapter".into(), strip(adapter.endpoint())];
    let out = interop::run("python_client.py", args, LIMIT).await;
    interop::expect_success("python_client.py", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
    assert!(stdout.matches("[PASS]").count() >= 6, "{stdout}");
}
