#!/usr/bin/env python3
"""Publish events onto the bus as a department, with nats-py and nothing of Kakehashi's code.

Only what the documentation gives a third party is used: the `Event` envelope from
proto/kakehashi/v1/event.proto (Python stubs generated at run time with grpc_tools.protoc), the
ingress subject `kh.in.<source>._<bucket>.<type>` with the key bucket computed as
docs/delivery.md describes, `Nats-Msg-Id` = the event id, and the department's credentials
file written by `kakehashi nats config` (TOML: `nkey_seed`, `inbox_prefix`).

    python nats_publisher.py --url nats://127.0.0.1:4222 --creds dept-city-x.creds \
        --source city-x --type test.interop.counted --count 200 --keys 20

Prints one JSON line per confirmed publish ({"id", "key", "n", "seq"}), then, for --as-other,
whether publishing as another department was refused. Exits non-zero on any failure.
"""

import argparse
import asyncio
import importlib
import importlib.resources
import json
import pathlib
import sys
import tempfile
import time
import tomllib
import uuid

import nats
from grpc_tools import protoc

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"


def key_bucket(source: str, event_type: str, key: str) -> int:
    """The key bucket of docs/delivery.md, written from the documentation."""
    h = 0x811C9DC5
    for b in source.encode() + b"\xff" + event_type.encode() + b"\xff" + key.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % 1024


def event_module(out_dir: str):
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out_dir}",
            "kakehashi/v1/event.proto"]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on kakehashi/v1/event.proto")
    sys.path.insert(0, out_dir)
    return importlib.import_module("kakehashi.v1.event_pb2")


def uuid7() -> str:
    ms = int(time.time() * 1000)
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--creds", required=True, help="the department's credentials file")
    ap.add_argument("--source", required=True)
    ap.add_argument("--type", required=True)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--as-other", help="also try to publish as this other department")
    ap.add_argument("--print-bucket", nargs=3, metavar=("SOURCE", "TYPE", "KEY"), action="append",
                    default=[], help="print the key bucket of these, as {\"bucket\": …}")
    a = ap.parse_args()

    for source, event_type, key in a.print_bucket:
        print(json.dumps({"bucket": [source, event_type, key, key_bucket(source, event_type, key)]}))

    creds = tomllib.loads(pathlib.Path(a.creds).read_text())
    with tempfile.TemporaryDirectory() as out:
        pb = event_module(out)
        nc = await nats.connect(a.url, nkeys_seed_str=creds["nkey_seed"],
                                inbox_prefix=creds["inbox_prefix"].encode(), allow_reconnect=False)
        js = nc.jetstream()

        def envelope(n: int, source: str):
            key = f"resident-{n % a.keys}"
            e = pb.Event(id=uuid7(), source=source, type=a.type, subject=key,
                         data_content_type="application/json",
                         data=json.dumps({"n": n}).encode())
            e.time.GetCurrentTime()
            return e, f"kh.in.{source}._{key_bucket(source, a.type, key)}.{a.type}"

        for n in range(a.count):
            e, subject = envelope(n, a.source)
            ack = await js.publish(subject, e.SerializeToString(), headers={"Nats-Msg-Id": e.id})
            print(json.dumps({"id": e.id, "key": e.subject, "n": n, "seq": ack.seq}), flush=True)

        if a.as_other:
            e, subject = envelope(a.count, a.as_other)
            try:
                await js.publish(subject, e.SerializeToString(), headers={"Nats-Msg-Id": e.id},
                                 timeout=2)
                print(json.dumps({"as_other": "accepted"}))
            except Exception as err:  # a permission violation shows as no ack (timeout)
                print(json.dumps({"as_other": "refused", "error": type(err).__name__}))
        await nc.drain()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
