//! `kakehashi dev`: the whole bus on one machine for a new user — nats-server (started when none
//! answers), registry and adapter in this process, the schema catalogue and demo policies
//! loaded — and, with `--demo`, events flowing through it.

use crate::cli::{Conn, DevArgs};
use crate::error::CtlError;
use crate::{clients, commands, nats_server};
use kakehashi_adapter::config::AdapterConfig;
use kakehashi_proto::v1::*;
use kakehashi_registry::config::RegistryConfig;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_stream::StreamExt;

fn addr_of(endpoint: &str) -> Result<SocketAddr, CtlError> {
    endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|e| CtlError::Usage(format!("endpoint {endpoint} must be http://<ip>:<port> for dev: {e}")))
}

/// Runs the dev bus.
pub async fn run(conn: &Conn, args: DevArgs) -> Result<(), CtlError> {
    let owned_nats = nats_server::ensure(&conn.nats, &args.data_dir)?;
    let nats_note = if owned_nats.is_some() {
        format!("started nats-server (store {})", args.data_dir.join("nats").display())
    } else {
        "using the nats-server already running there".to_string()
    };

    let registry_addr = addr_of(&conn.registry)?;
    let adapter_addr = addr_of(&conn.adapter)?;
    let registry_cfg = RegistryConfig {
        nats_url: conn.nats.clone(),
        grpc_addr: registry_addr,
        metrics_addr: Some(args.metrics),
        ..RegistryConfig::load(None).map_err(|e| CtlError::Dev(e.to_string()))?
    };
    let adapter_cfg = AdapterConfig {
        nats_url: conn.nats.clone(),
        grpc_addr: adapter_addr,
        ..AdapterConfig::load(None).map_err(|e| CtlError::Dev(e.to_string()))?
    };
    let registry_listener = tokio::net::TcpListener::bind(registry_addr)
        .await
        .map_err(|e| CtlError::Dev(format!("cannot listen on {registry_addr}: {e}")))?;
    let adapter_listener = tokio::net::TcpListener::bind(adapter_addr)
        .await
        .map_err(|e| CtlError::Dev(format!("cannot listen on {adapter_addr}: {e}")))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let registry =
        tokio::spawn(kakehashi_registry::run(registry_cfg, registry_listener, stopped(stop_rx.clone())));
    let adapter = tokio::spawn(kakehashi_adapter::run(adapter_cfg, adapter_listener, stopped(stop_rx)));

    let mut schemas = wait_for_registry(conn).await?;
    eprintln!("loading the schema catalogue from {}", args.schemas.display());
    commands::schema::load(&mut schemas, &args.schemas, false).await?;
    let n = commands::policy::load_file(conn, &args.policies).await?;

    println!("Kakehashi dev bus is up");
    println!("  NATS      {}  ({nats_note})", conn.nats);
    println!(
        "  registry  {}  (SchemaRegistry, Delivery, Subscriptions, Policies, Flows; health; reflection)",
        conn.registry
    );
    println!("  adapter   {}  (Publisher; health; reflection)", conn.adapter);
    println!("  metrics   http://{}/metrics", args.metrics);
    println!("  policies  {n} loaded from {}", args.policies.display());

    let outcome = if args.demo { demo(conn, &args.schemas).await } else { Ok(()) };
    if outcome.is_ok() && !args.exit_after_demo {
        println!("\nServing until Ctrl-C.");
        // SIGTERM too (`kill`, `timeout`, a container stop): the nats-server we started goes with us.
        kakehashi_proto::settings::shutdown_signal().await;
    }
    let _ = stop_tx.send(true);
    match registry.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("kakehashi: registry: {e}"),
        Err(e) => eprintln!("kakehashi: registry task: {e}"),
    }
    match adapter.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("kakehashi: adapter: {e}"),
        Err(e) => eprintln!("kakehashi: adapter task: {e}"),
    }
    drop(owned_nats);
    outcome
}

async fn wait_for_registry(
    conn: &Conn,
) -> Result<schema_registry_client::SchemaRegistryClient<clients::Authed>, CtlError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = clients::registry(conn).await {
            if c.list_subjects(ListSubjectsRequest::default()).await.is_ok()
                && clients::publisher(conn).await.is_ok()
            {
                return Ok(c);
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CtlError::Dev("registry and adapter did not come up within 30s".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The demo: a municipality publishes a valid and an invalid vaccination record; the health
/// ministry receives the valid one; the invalid one is dead-lettered with the reason.
async fn demo(conn: &Conn, catalogue: &std::path::Path) -> Result<(), CtlError> {
    const TYPE: &str = "health.vaccination.recorded";
    let examples = catalogue.join(TYPE).join("examples");
    let valid = crate::error::read(&examples.join("valid-mr-second-dose.json"))?;
    let invalid = crate::error::read(&examples.join("invalid-dose-number-zero.json"))?;

    println!("\n== Demo: city-shibuya sends vaccination records to mhlw ==");
    let mut subs = clients::subscriptions(conn).await?;
    subs.create_subscription(CreateSubscriptionRequest {
        subscription: Some(Subscription {
            department: "mhlw".into(),
            name: "demo-vaccinations".into(),
            type_pattern: TYPE.into(),
            ..Default::default()
        }),
    })
    .await?;
    println!("1. mhlw subscribed to {TYPE} (durable subscription mhlw/demo-vaccinations)");

    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let open = OpenSubscription {
        subscription: "demo-vaccinations".into(),
        department: "mhlw".into(),
        max_in_flight: 8,
    };
    let _ = tx.send(SubscribeRequest { request: Some(subscribe_request::Request::Open(open)) }).await;
    let mut deliveries = clients::delivery(conn)
        .await?
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();

    let mut publisher = clients::publisher(conn).await?;
    let mut sent = Vec::new();
    for (label, data) in [("a valid", valid), ("an invalid (dose_number 0)", invalid)] {
        let ack = publisher
            .publish(Event {
                source: "city-shibuya".into(),
                r#type: TYPE.into(),
                data: data.into_bytes(),
                ..Default::default()
            })
            .await?
            .into_inner();
        println!(
            "2. city-shibuya published {label} record: event {} (KH_INGRESS #{})",
            ack.event_id, ack.sequence
        );
        sent.push(ack.event_id);
    }

    let delivered = tokio::time::timeout(Duration::from_secs(15), deliveries.next())
        .await
        .map_err(|_| CtlError::Dev("no delivery within 15s".into()))?
        .ok_or_else(|| CtlError::Dev("delivery stream closed".into()))??;
    let event = delivered.event.unwrap_or_default();
    let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap_or_default();
    println!(
        "3. mhlw received event {} ({}, attempt {}):\n{}",
        event.id,
        event.r#type,
        delivered.attempt,
        indent(&serde_json::to_string_pretty(&data).unwrap_or_default())
    );
    let _ = tx
        .send(SubscribeRequest {
            request: Some(subscribe_request::Request::Ack(AckDeliveries {
                delivery_ids: vec![delivered.delivery_id],
            })),
        })
        .await;
    println!("   mhlw acked it.");

    let js = async_nats::jetstream::new(crate::nats_client::connect(conn).await?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let letter = loop {
        let all = commands::dlq::read_all(&js, &format!("kh.dlq.city-shibuya.{TYPE}")).await?;
        if let Some(s) = all.into_iter().find(|s| s.letter.event_id == sent[1]) {
            break s;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CtlError::Dev("the invalid event did not reach KH_DLQ within 15s".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("4. the invalid record was dead-lettered (KH_DLQ #{}):", letter.seq);
    println!("   reason:  {}", letter.letter.reason);
    for v in &letter.letter.violations {
        println!("   field:   {} — {}", v.pointer, v.message);
    }
    println!(
        "   raw:     {} bytes kept for replay (kakehashi dlq show {})",
        letter.letter.raw.len(),
        letter.seq
    );

    // ---- 5. Legacy exports: two department files imported through their mappings ----------
    // The same code as `kakehashi-adapter ingest --mapping <toml> <csv>`. Checkpoints and reject
    // files go to a fresh temp directory, so running the demo again imports again — and the bus
    // reports every event as a duplicate (same deterministic ids), delivering nothing twice.
    {
        use kakehashi_adapter::{import, legacy, sdk};
        const DEPARTMENT: &str = "city-shibuya";
        let dev_err = |e: &dyn std::fmt::Display| CtlError::Dev(format!("legacy import: {e}"));
        let root = catalogue.parent().unwrap_or(std::path::Path::new(""));
        let demo_dir = root.join("deploy").join("demo");
        let work = std::env::temp_dir().join(format!("kakehashi-demo-import-{}", std::process::id()));
        std::fs::create_dir_all(&work).map_err(|e| dev_err(&e))?;
        println!("\n== Demo: legacy exports imported through declarative mappings ==");
        let bus = sdk::Bus::builder(&conn.nats, DEPARTMENT).connect().await.map_err(|e| dev_err(&e))?;
        for (n, name, what) in [
            (5, "vaccination-city-shibuya", "vaccination records (Shift_JIS CSV, era dates)"),
            (6, "resident-registry-export", "resident registry changes (UTF-8 CSV with BOM)"),
        ] {
            let mapping_path = demo_dir.join(format!("{name}.toml"));
            let mapping = legacy::Mapping::load(&mapping_path).map_err(|e| dev_err(&e))?;
            let job = legacy::IngestJob {
                input: demo_dir.join(format!("{name}.csv")),
                source: DEPARTMENT.into(),
                checkpoint: work.join(format!("{name}.checkpoint.json")),
                rejects: work.join(format!("{name}.rejects.csv")),
                limits: legacy::IngestLimits::default(),
            };
            println!("{n}. {DEPARTMENT} imports its {what} with {}:", mapping_path.display());
            let reports = import::import(&bus, &mapping, &[job], 256, true, |_, _| {})
                .await
                .map_err(|e| dev_err(&e))?;
            for report in &reports {
                print!("{}", indent(&report.render()));
                println!();
                if let Err(e) = &report.outcome {
                    return Err(dev_err(e));
                }
            }
        }
        println!("   The published events are validated and delivered like any other (mhlw reads them).");
    }
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("     {l}")).collect::<Vec<_>>().join("\n")
}
