//! One trace per event across every hop, exported over OTLP/gRPC to a real receiver: a client
//! sends its own W3C trace context with `Publish`, and the spans of the adapter (publish), the
//! validator (validate), delivery (deliver) and the subscriber's ack all arrive in that trace,
//! each the child of the hop before. A dead-lettered event's trace ends at its validate span,
//! whose status is ERROR with the dead-letter reason. Spans carry the kinds and `messaging.*`
//! attributes of the OpenTelemetry messaging conventions (docs/architecture.md): publish is a
//! PRODUCER, validate and deliver are CONSUMERs, ack is a CLIENT settling the message, and each
//! gRPC call is a SERVER span.

use kakehashi_proto::v1::{flows_client, publisher_client, Event, TraceEventRequest};
use kakehashi_tests::bus::{self, Flow};
use kakehashi_tests::otlp::{OtlpReceiver, ReceivedSpan};
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::{wait, Adapter, NatsServer, Registry};
use std::time::Duration;

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";
const REJECTED_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REJECTED_SPAN: &str = "00f067aa0ba902b7";
const CLIENT_STATE: &str = "congo=t61rcWkgMzE";
/// A call the adapter refuses (an unregistered type).
const REFUSED_CALL_TRACE: &str = "6af92f3577b34da6a3ce929d0e0e47aa";
const REFUSED_CALL_SPAN: &str = "22f067aa0ba902d9";
const TYPE: &str = "otel.check.done";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: TYPE, producers: &["city-x"], reader: "mhlw", subscription: "otel" };
/// A reader that never acks: its one delivery is dead-lettered as `delivery_exhausted`.
const EXHAUSTED_TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4799";
const EXHAUSTED_SPAN: &str = "11f067aa0ba902c8";
const POISON_TYPE: &str = "otel.poison.done";
const POISON: Flow = Flow {
    event_type: POISON_TYPE,
    policy: POISON_TYPE,
    producers: &["city-x"],
    reader: "mhlw",
    subscription: "poison",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_of_one_event_joins_the_clients_trace_with_correct_parents() {
    let receiver = OtlpReceiver::start().await;
    // Only this test runs in this process (one test per file).
    let telemetry = receiver.install_export("kakehashi-test", "info");

    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let mut adapter_settings = adapter_config(&nats);
    // The decoding limit at its floor (max_payload_bytes + 64 KiB), for the broken stream below.
    adapter_settings.max_request_bytes = 1;
    let adapter = Adapter::start(adapter_settings).await;
    FLOW.prepare(&registry.endpoint(), r#"{"type":"object","required":["n"]}"#).await;
    let mut deliveries = FLOW.open(&registry.endpoint(), 4).await;
    let flows = flows_client::FlowsClient::connect(registry.endpoint()).await.expect("connect registry");

    let mut publisher =
        publisher_client::PublisherClient::connect(adapter.endpoint()).await.expect("adapter");
    let publish_untraced = |data: &'static [u8]| Event {
        source: "city-x".into(),
        r#type: TYPE.into(),
        data: data.to_vec(),
        ..Default::default()
    };
    let publish = |data: &'static [u8], trace: &str, span: &str| {
        let mut request = bus::traced_publish("city-x", TYPE, data, trace, span);
        request.metadata_mut().insert("tracestate", CLIENT_STATE.parse().expect("header"));
        request
    };
    let ack = publisher.publish(publish(br#"{"n":1}"#, CLIENT_TRACE, CLIENT_SPAN)).await.expect("publish");
    let ack = ack.into_inner();
    assert!(ack.error.is_none(), "accepted: {ack:?}");
    let rejected = publisher.publish(publish(b"{}", REJECTED_TRACE, REJECTED_SPAN)).await.expect("publish");
    assert!(rejected.into_inner().error.is_none(), "the adapter accepts it; the validator rejects it");

    let mut receive_and_ack = async |expected: &str| {
        let d = deliveries.expect_and_ack(&format!("event {expected}"), Duration::from_secs(20)).await;
        let event = d.event.expect("event");
        assert_eq!(event.id, expected);
        assert!(!d.traceparent.is_empty(), "the delivery carries its trace context: {:?}", d.traceparent);
        (d.traceparent, d.tracestate, event.extensions)
    };
    let (tp, state, extensions) = receive_and_ack(&ack.event_id).await;
    assert_eq!(state, CLIENT_STATE, "the client's tracestate travels to the subscriber");
    // The event's distributed-tracing extension stays the context of its creation (the
    // client's, adopted by the adapter), not a hop's.
    assert_eq!(
        extensions.get("traceparent").map(String::as_str),
        Some(format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01").as_str()),
        "the delivered event's traceparent extension is the publisher's"
    );
    assert_eq!(extensions.get("tracestate").map(String::as_str), Some(CLIENT_STATE));
    // Without a client context the bus starts the trace at its publish span.
    let own = publisher.publish(publish_untraced(br#"{"n":2}"#)).await.expect("publish").into_inner();
    let (own_tp, _, own_extensions) = receive_and_ack(&own.event_id).await;
    assert!(
        !own_extensions.contains_key("traceparent"),
        "no creation context was published: {own_extensions:?}"
    );
    let own_trace = own_tp.split('-').nth(1).expect("traceparent has a trace id").to_string();

    let spans = wait::until("every hop's span at the receiver", Duration::from_secs(20), || {
        let (spans, own_trace) = (receiver.spans(), own_trace.clone());
        async move {
            let has = |t: &str, n: &str| spans.iter().any(|s| s.trace_id == t && s.operation() == n);
            let delivered = ["publish", "validate", "deliver", "ack"].iter().all(|n| has(CLIENT_TRACE, n));
            let rejected = ["publish", "validate"].iter().all(|n| has(REJECTED_TRACE, n));
            let own = ["kakehashi.v1.Publisher/Publish", "publish", "validate", "deliver", "ack"]
                .iter()
                .all(|n| has(&own_trace, n));
            (delivered && rejected && own).then_some(spans)
        }
    })
    .await;
    let span = |t: &str, n: &str| -> &ReceivedSpan {
        spans
            .iter()
            .find(|s| s.trace_id == t && s.operation() == n)
            .unwrap_or_else(|| panic!("{n} of {t} missing: {spans:#?}"))
    };
    let (publish, validate, deliver, acked) = (
        span(CLIENT_TRACE, "publish"),
        span(CLIENT_TRACE, "validate"),
        span(CLIENT_TRACE, "deliver"),
        span(CLIENT_TRACE, "ack"),
    );
    assert_eq!(publish.parent_span_id, CLIENT_SPAN, "the bus joins the client's trace");
    assert_eq!(validate.parent_span_id, publish.span_id, "validate is a child of publish");
    assert_eq!(deliver.parent_span_id, validate.span_id, "deliver is a child of validate");
    assert_eq!(acked.parent_span_id, deliver.span_id, "the ack is a child of deliver");
    // Processing links to the event's creation context (messaging conventions), its parent
    // being the hop before.
    let created = [(CLIENT_TRACE.to_string(), CLIENT_SPAN.to_string())];
    assert_eq!(deliver.links, created, "deliver links to the publisher's context: {deliver:?}");
    assert_eq!(validate.links, created, "validate links to the publisher's context: {validate:?}");
    for n in ["validate", "deliver"] {
        assert!(span(&own_trace, n).links.is_empty(), "no creation context, no link ({n})");
    }
    assert_eq!(
        span(REJECTED_TRACE, "validate").links,
        [(REJECTED_TRACE.to_string(), REJECTED_SPAN.to_string())],
        "a dead-lettering validate links to the publisher's context too"
    );
    assert_eq!(publish.service, "kakehashi-test", "spans carry the service name given to init");
    assert!(tp.contains(CLIENT_TRACE), "subscriber can join the trace: {tp}");
    assert!(tp.contains(&deliver.span_id), "the delivered context names the deliver span: {tp}");

    let (r_publish, r_validate) = (span(REJECTED_TRACE, "publish"), span(REJECTED_TRACE, "validate"));
    assert_eq!(r_publish.parent_span_id, REJECTED_SPAN);
    assert_eq!(r_validate.parent_span_id, r_publish.span_id, "the dead-lettering validate joins its trace");
    // Error filters of trace backends (Jaeger, Tempo) count a dead-lettered event.
    assert_eq!(r_validate.status_code, "STATUS_CODE_ERROR", "dead-lettered validate: {r_validate:?}");
    assert!(
        r_validate.status_message.contains("schema_violation"),
        "the status names the reason: {r_validate:?}"
    );
    assert_eq!(validate.status_code, "STATUS_CODE_UNSET", "a validated event's span is no error");
    assert!(
        !spans.iter().any(|s| s.trace_id == REJECTED_TRACE && s.operation() == "deliver"),
        "a dead-lettered event is not delivered"
    );
    // Without a client context the trace starts at the adapter's SERVER span of the call.
    let own_call = span(&own_trace, "kakehashi.v1.Publisher/Publish");
    assert_eq!(own_call.parent_span_id, "", "the adapter's gRPC span is the root");
    assert_eq!(span(&own_trace, "publish").parent_span_id, own_call.span_id, "publish is the call's child");

    // Span kinds and messaging attributes (OpenTelemetry messaging conventions).
    let call = span(CLIENT_TRACE, "kakehashi.v1.Publisher/Publish");
    assert_eq!(call.parent_span_id, CLIENT_SPAN, "the gRPC call joins the client's trace");
    assert_eq!(call.kind, "SPAN_KIND_SERVER", "{call:?}");
    assert_eq!(call.attribute("rpc.system"), Some("grpc"), "{call:?}");
    assert_eq!(call.attribute("rpc.service"), Some("kakehashi.v1.Publisher"), "{call:?}");
    assert_eq!(call.attribute("rpc.method"), Some("Publish"), "{call:?}");
    assert_eq!(call.attribute("rpc.grpc.status_code"), Some("0"), "{call:?}");
    assert_eq!(call.status_code, "STATUS_CODE_UNSET", "an OK call is no error: {call:?}");
    for (s, kind, operation) in [
        (publish, "SPAN_KIND_PRODUCER", "send"),
        (validate, "SPAN_KIND_CONSUMER", "process"),
        (deliver, "SPAN_KIND_CONSUMER", "process"),
        (acked, "SPAN_KIND_CLIENT", "settle"),
        (r_validate, "SPAN_KIND_CONSUMER", "process"),
    ] {
        assert_eq!(s.kind, kind, "{}: {s:?}", s.name);
        assert_eq!(s.attribute("messaging.system"), Some("nats"), "{}: {s:?}", s.name);
        assert_eq!(s.attribute("messaging.operation.type"), Some(operation), "{}: {s:?}", s.name);
    }
    for s in [publish, validate, deliver, acked] {
        assert_eq!(s.attribute("messaging.message.id"), Some(ack.event_id.as_str()), "{}: {s:?}", s.name);
    }
    // Span names are `{operation} {destination}`, the ingress key bucket a placeholder
    // (messaging.destination.template): a name per source and type, not per bucket.
    let template = format!("kh.in.city-x._{{bucket}}.{TYPE}");
    assert_eq!(publish.name, format!("publish {template}"));
    assert_eq!(validate.name, format!("validate {template}"));
    for s in [publish, validate] {
        assert_eq!(s.attribute("messaging.destination.template"), Some(template.as_str()), "{s:?}");
    }
    assert_eq!(deliver.name, format!("deliver kh.ev.{TYPE}"));
    assert_eq!(acked.name, format!("ack kh.ev.{TYPE}"));
    assert_eq!(acked.attribute("messaging.destination.name"), Some(format!("kh.ev.{TYPE}").as_str()));
    let ingress = publish.attribute("messaging.destination.name").unwrap_or_default();
    assert!(
        ingress.starts_with("kh.in.city-x.") && ingress.ends_with(TYPE),
        "publish names the ingress subject: {publish:?}"
    );
    assert_eq!(
        validate.attribute("messaging.destination.name"),
        Some(ingress),
        "validate reads what publish sent"
    );
    assert!(
        validate.attribute("messaging.consumer.group.name").is_some_and(|g| g.starts_with("validator-")),
        "validate names its partition's durable consumer: {validate:?}"
    );
    assert_eq!(deliver.attribute("messaging.destination.name"), Some(format!("kh.ev.{TYPE}").as_str()));
    assert_eq!(deliver.attribute("messaging.consumer.group.name"), Some("sub_mhlw_otel"), "{deliver:?}");
    assert_eq!(r_validate.attribute("error.type"), Some("schema_violation"), "{r_validate:?}");
    assert_eq!(validate.attribute("error.type"), None, "a validated event has no error.type");

    // A delivery past max_deliveries is dead-lettered: its deliver span ends the trace with
    // ERROR too, and is counted by trace backends' error filters like a rejected validate.
    POISON
        .prepare_with(&registry.endpoint(), r#"{"type":"object"}"#, |s| {
            s.max_deliveries = 1;
            s.ack_wait = bus::proto_duration(Duration::from_secs(1));
        })
        .await;
    let mut poisoned = POISON.open(&registry.endpoint(), 4).await;
    let sent = bus::traced_publish("city-x", POISON_TYPE, b"{}", EXHAUSTED_TRACE, EXHAUSTED_SPAN);
    let poison = publisher.publish(sent).await.expect("publish").into_inner();
    poisoned.expect_next("the only delivery, never acked", Duration::from_secs(20)).await;
    let exhausted =
        wait::until("the deliver span of the exhausted delivery", Duration::from_secs(30), || {
            let spans = receiver.spans();
            async move {
                spans.into_iter().find(|s| {
                    s.trace_id == EXHAUSTED_TRACE
                        && s.operation() == "deliver"
                        && s.status_code == "STATUS_CODE_ERROR"
                })
            }
        })
        .await;
    assert_eq!(exhausted.kind, "SPAN_KIND_CONSUMER", "{exhausted:?}");
    assert_eq!(exhausted.attribute("error.type"), Some("delivery_exhausted"), "{exhausted:?}");
    assert!(exhausted.status_message.starts_with("delivery_exhausted: "), "{exhausted:?}");
    assert_eq!(exhausted.attribute("messaging.message.id"), Some(poison.event_id.as_str()));
    assert_eq!(exhausted.attribute("messaging.consumer.group.name"), Some("sub_mhlw_poison"));

    // The audit trail names the same trace as the exported spans, hop by hop.
    for (event_id, trace) in [(&ack.event_id, CLIENT_TRACE), (&own.event_id, own_trace.as_str())] {
        let hops = wait::until("the four audited hops", Duration::from_secs(10), || {
            let (mut flows, id) = (flows.clone(), event_id.clone());
            async move {
                let hops =
                    flows.trace_event(TraceEventRequest { event_id: id }).await.ok()?.into_inner().hops;
                (hops.len() >= 4).then_some(hops)
            }
        })
        .await;
        let names: Vec<_> = hops.iter().map(|h| h.hop.as_str()).collect();
        assert_eq!(names, ["published", "validated", "delivered", "acked"]);
        for h in &hops {
            assert_eq!(h.trace_id, trace, "audit record {} names the exported trace", h.hop);
        }
    }
    // The status of a gRPC call on its SERVER span (OpenTelemetry gRPC conventions): the code
    // always, status ERROR only for the codes counted as server errors.
    let refused =
        bus::traced_publish("city-x", "otel.never.registered", b"{}", REFUSED_CALL_TRACE, REFUSED_CALL_SPAN);
    let refused = publisher.publish(refused).await.expect_err("an unregistered type is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert_eq!(call_unknown_method(&adapter.endpoint()).await.as_deref(), Some("12"), "UNIMPLEMENTED");
    let (refused_call, unknown_call) =
        wait::until("the SERVER spans of the refused calls", Duration::from_secs(20), || {
            let spans = receiver.spans();
            async move {
                let find = |f: &dyn Fn(&ReceivedSpan) -> bool| spans.iter().find(|s| f(s)).cloned();
                let refused = find(&|s| {
                    s.trace_id == REFUSED_CALL_TRACE && s.name == "kakehashi.v1.Publisher/Publish"
                })?;
                let unknown = find(&|s| s.name == "kakehashi.v1.Publisher/NoSuchMethod")?;
                Some((refused, unknown))
            }
        })
        .await;
    assert_eq!(refused_call.attribute("rpc.grpc.status_code"), Some("9"), "{refused_call:?}");
    assert_eq!(refused_call.status_code, "STATUS_CODE_UNSET", "a caller's error is no server error");
    assert_eq!(unknown_call.kind, "SPAN_KIND_SERVER", "{unknown_call:?}");
    assert_eq!(unknown_call.attribute("rpc.grpc.status_code"), Some("12"), "{unknown_call:?}");
    assert_eq!(unknown_call.status_code, "STATUS_CODE_ERROR", "UNIMPLEMENTED is a server error");

    // A stream that fails after it started ends with its status in the trailers: the caller's
    // second message is over the decoding limit. The event before it is acked, then the call
    // ends OUT_OF_RANGE, and its SERVER span says so (before, it said OK: the head's).
    let over = Event { data: vec![b'x'; 700 * 1024], ..publish_untraced(b"{}") };
    let stream = tokio_stream::iter(vec![publish_untraced(br#"{"n":7}"#), over]);
    let mut acks = publisher.publish_stream(stream).await.expect("the stream starts").into_inner();
    let first = acks.message().await.expect("the first event's ack").expect("an ack");
    assert!(first.error.is_none(), "{first:?}");
    let broken = acks.message().await.expect_err("the call ends with the transport's refusal");
    assert_eq!(broken.code(), tonic::Code::OutOfRange, "{broken:?}");
    let stream_call = wait::until("the broken stream's SERVER span", Duration::from_secs(20), || {
        let spans = receiver.spans();
        async move { spans.into_iter().find(|s| s.name == "kakehashi.v1.Publisher/PublishStream") }
    })
    .await;
    assert_eq!(stream_call.attribute("rpc.grpc.status_code"), Some("11"), "{stream_call:?}");
    assert_eq!(stream_call.status_code, "STATUS_CODE_UNSET", "a caller's error is no server error");
    drop(telemetry);
}

/// Calls a method the adapter's `Publisher` does not have (no generated client can), returning
/// the `grpc-status` of the answer's head.
async fn call_unknown_method(endpoint: &str) -> Option<String> {
    use tonic::codegen::{http, Service};
    let mut channel = tonic::transport::Channel::from_shared(endpoint.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect adapter");
    let request = http::Request::builder()
        .method("POST")
        .uri("/kakehashi.v1.Publisher/NoSuchMethod")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .expect("request");
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.expect("channel ready");
    let response = channel.call(request).await.expect("an answer");
    response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_string)
}
