#!/usr/bin/env python3
"""Kakehashi interop check: drive the bus from Python using only proto/ and the README.

Stubs are generated at run time from proto/kakehashi/v1/*.proto with grpc_tools.protoc (into a
temporary directory; nothing is written to the repository). The script then checks, against a
running registry and adapter:

  a. grpc.health.v1.Health/Check is SERVING on both servers;
  b. server reflection lists the kakehashi.v1 services (registry: SchemaRegistry, Delivery,
     Subscriptions, Policies, Flows, DeadLetters; adapter: Publisher);
  c. the full flow: register a schema under a fresh subject, put a policy, create a subscription,
     open Delivery.Subscribe, publish one valid and one invalid event, receive the valid one (id ==
     PublishAck.event_id), ack it, and see that the invalid one is not delivered within 2 s.

Run it:

    pip install grpcio grpcio-tools grpcio-health-checking grpcio-reflection
    kakehashi dev                          # or: bash deploy/demo.sh
    python3 tests/interop/python_client.py --registry 127.0.0.1:50051 --adapter 127.0.0.1:50052

It prints PASS/FAIL per check and exits non-zero when any check fails.
"""

import argparse
import importlib
import importlib.resources
import json
import pathlib
import queue
import sys
import tempfile
import threading
import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_tools import protoc

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"
REGISTRY_SERVICES = {"SchemaRegistry", "Delivery", "Subscriptions", "Policies", "Flows", "DeadLetters"}
ADAPTER_SERVICES = {"Publisher"}
PRODUCER, READER = "interop-dept", "interop-reader"

results = []  # (name, ok, detail)


def check(name, ok, detail=""):
    results.append((name, bool(ok), detail))
    print(f"  [{'PASS' if ok else 'FAIL'}] {name}" + (f" — {detail}" if detail else ""), flush=True)
    return ok


def generate_stubs(out_dir):
    """Compile proto/kakehashi/v1/*.proto to Python modules in out_dir and import them."""
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    files = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("kakehashi/v1/*.proto"))
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *files]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed on {files}")
    sys.path.insert(0, out_dir)
    names = ["event", "registry", "subscriptions", "delivery", "publisher", "flows"]
    return {n: (importlib.import_module(f"kakehashi.v1.{n}_pb2"),
                importlib.import_module(f"kakehashi.v1.{n}_pb2_grpc")) for n in names}


def check_health(label, channel):
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        check(f"health {label}", resp.status == health_pb2.HealthCheckResponse.SERVING, status)
    except grpc.RpcError as e:
        check(f"health {label}", False, f"{e.code().name}: {e.details()}")


def check_reflection(label, channel, expected):
    try:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        ours = {s.removeprefix("kakehashi.v1.") for s in services if s.startswith("kakehashi.v1.")}
        check(f"reflection {label}", expected <= ours, f"kakehashi.v1: {sorted(ours)}")
        if ours - expected:  # not a failure of the brief's check, but clients trusting `list` are misled
            print(f"  [WARN] reflection {label} also lists services this server does not serve: "
                  f"{sorted(ours - expected)}")
    except grpc.RpcError as e:
        check(f"reflection {label}", False, f"{e.code().name}: {e.details()}")


def check_flow(pb, registry, adapter):
    ev_pb, _ = pb["event"]
    reg_pb, reg_grpc = pb["registry"]
    sub_pb, sub_grpc = pb["subscriptions"]
    del_pb, del_grpc = pb["delivery"]
    _, pub_grpc = pb["publisher"]

    token = uuid.uuid4().hex[:10]
    subject = f"interop.sample.recorded-{token}"
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://kakehashi.invalid/schemas/{subject}/1",
        "title": "Interop sample",
        "type": "object",
        "required": ["sample_id", "value"],
        "properties": {"sample_id": {"type": "string", "minLength": 1},
                       "value": {"type": "integer", "minimum": 0}},
        "additionalProperties": False,
    }
    reg = reg_grpc.SchemaRegistryStub(registry).RegisterSchema(
        reg_pb.RegisterSchemaRequest(subject=subject, schema=json.dumps(schema)), timeout=10)
    check("register schema", reg.created and reg.version == 1,
          f"{subject} id={reg.id} version={reg.version}")

    sub_grpc.PoliciesStub(registry).PutPolicy(
        sub_pb.Policy(type_pattern=subject, producers=[PRODUCER], readers=[READER]), timeout=10)
    check("put policy", True, f"{subject}: {PRODUCER} -> {READER}")

    sub_name = f"interop-{token}"
    subs = sub_grpc.SubscriptionsStub(registry)
    created = subs.CreateSubscription(sub_pb.CreateSubscriptionRequest(subscription=sub_pb.Subscription(
        department=READER, name=sub_name, type_pattern=subject)), timeout=10)
    check("create subscription", created.name == sub_name, f"{READER}/{sub_name}")

    # Delivery.Subscribe: requests are fed from a queue, responses read by a thread into another.
    requests, deliveries = queue.Queue(), queue.Queue()
    requests.put(del_pb.SubscribeRequest(open=del_pb.OpenSubscription(
        subscription=sub_name, department=READER, max_in_flight=16)))
    call = del_grpc.DeliveryStub(registry).Subscribe(iter(requests.get, None))

    def read():
        try:
            for d in call:
                deliveries.put(d)
        except grpc.RpcError as e:
            deliveries.put(e)

    threading.Thread(target=read, daemon=True).start()
    try:
        publisher = pub_grpc.PublisherStub(adapter)
        good = publisher.Publish(ev_pb.Event(source=PRODUCER, type=subject, subject="s-1",
                                             data=json.dumps({"sample_id": "s-1", "value": 7}).encode()),
                                 timeout=10)
        check("publish valid", good.event_id and good.sequence > 0,
              f"event_id={good.event_id} seq={good.sequence}")
        bad = publisher.Publish(ev_pb.Event(source=PRODUCER, type=subject, subject="s-2",
                                            data=json.dumps({"sample_id": "", "value": -1}).encode()),
                                timeout=10)
        check("publish invalid (accepted at ingress)", bad.event_id and bad.sequence > 0,
              f"event_id={bad.event_id} seq={bad.sequence}")

        try:
            got = deliveries.get(timeout=15)
        except queue.Empty:
            got = None
        if isinstance(got, grpc.RpcError):
            check("receive valid event", False, f"stream ended: {got.code().name}: {got.details()}")
            return
        ok = got is not None and got.event.id == good.event_id
        check("receive valid event", ok, "no delivery within 15 s" if got is None else
              f"id={got.event.id} delivery_id={got.delivery_id} attempt={got.attempt} "
              f"data={got.event.data.decode()}")
        if got is not None:
            requests.put(del_pb.SubscribeRequest(ack=del_pb.AckDeliveries(delivery_ids=[got.delivery_id])))
            check("ack delivery", True, f"delivery_id={got.delivery_id}")

        try:
            extra = deliveries.get(timeout=2)
        except queue.Empty:
            extra = None
        if isinstance(extra, grpc.RpcError):
            check("invalid event not delivered (2 s)", False,
                  f"stream ended: {extra.code().name}: {extra.details()}")
        else:
            check("invalid event not delivered (2 s)", extra is None,
                  "" if extra is None else f"got id={extra.event.id} attempt={extra.attempt}")
    finally:
        requests.put(None)
        call.cancel()
        # Best-effort cleanup; the schema stays (schemas are versioned history).
        cleanup = (("DeleteSubscription", subs.DeleteSubscription,
                    sub_pb.DeleteSubscriptionRequest(department=READER, name=sub_name)),
                   ("DeletePolicy", sub_grpc.PoliciesStub(registry).DeletePolicy,
                    sub_pb.DeletePolicyRequest(type_pattern=subject)))
        for name, rpc, req in cleanup:
            try:
                rpc(req, timeout=10)
            except grpc.RpcError as e:
                print(f"  (cleanup {name}: {e.code().name}: {e.details()})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--registry", default="127.0.0.1:50051", help="registry gRPC host:port")
    ap.add_argument("--adapter", default="127.0.0.1:50052", help="adapter gRPC host:port")
    args = ap.parse_args()
    strip = lambda a: a.split("://", 1)[-1]  # accept http://host:port too

    with tempfile.TemporaryDirectory(prefix="kh-stubs-") as out:
        pb = generate_stubs(out)
        print(f"stubs generated from {PROTO_DIR}")
        with grpc.insecure_channel(strip(args.registry)) as registry, \
                grpc.insecure_channel(strip(args.adapter)) as adapter:
            check_health("registry", registry)
            check_health("adapter", adapter)
            check_reflection("registry", registry, REGISTRY_SERVICES)
            check_reflection("adapter", adapter, ADAPTER_SERVICES)
            try:
                check_flow(pb, registry, adapter)
            except grpc.RpcError as e:
                check("flow", False, f"{e.code().name}: {e.details()}")

    failed = [n for n, ok, _ in results if not ok]
    print(f"\n{'PASS' if not failed else 'FAIL'}: {len(results) - len(failed)}/{len(results)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
