#!/usr/bin/env python3
"""Read validated events from kh.ev.> as a CloudEvents consumer that knows only the spec.

Nothing of Kakehashi is used: each NATS message is read as the CloudEvents NATS protocol
binding's binary content mode describes it (attributes in `ce-` headers, values percent-encoded;
the event data is the message body), once by the parser below, written from the binding, and
once by the stock CloudEvents Python SDK (`cloudevents`, its HTTP binary-mode reader: the same
`ce-` header rules, no NATS in it). Both must accept every message and agree.

    python cloudevents_consumer.py --url nats://127.0.0.1:4222 --creds registry.creds --count 3

Prints one JSON line per event: {"subject", "attributes" (every attribute, as strings),
"data" (the body, UTF-8), "sdk" (what the SDK read)}. Exits non-zero on any failure.
"""

import argparse
import asyncio
import json
import pathlib
import re
import sys
import tomllib
from datetime import datetime
from urllib.parse import unquote

import nats
from cloudevents.core.bindings.http import HTTPMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

REQUIRED = ("specversion", "id", "source", "type")
NAME = re.compile(r"^[a-z0-9]+$")


def header_value(raw: str) -> str:
    """A header value as the binding reads it: unquote a quoted string, then percent-decode once."""
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
    return unquote(raw, errors="strict")


def rfc3339(value: str) -> datetime:
    """RFC 3339 with any number of fractional digits (datetime keeps microseconds)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", value)
    if not m:
        raise ValueError(f"time {value!r} is not RFC 3339")
    frac = (m.group(2) or "")[:7]
    return datetime.fromisoformat(m.group(1) + frac + m.group(3).replace("Z", "+00:00"))


def read(headers: dict, body: bytes) -> dict:
    """The event's attributes from its `ce-` headers, checked as the spec requires."""
    attributes = {}
    for name, value in (headers or {}).items():
        if name.lower().startswith("ce-"):
            attr = name.lower()[3:]
            if not NAME.match(attr):
                raise ValueError(f"attribute name {attr!r} is not lowercase letters and digits")
            attributes[attr] = header_value(value)
    for attr in REQUIRED:
        if not attributes.get(attr):
            raise ValueError(f"required attribute {attr} missing")
    if attributes["specversion"] != "1.0":
        raise ValueError(f"specversion {attributes['specversion']!r}")
    if "time" in attributes:
        rfc3339(attributes["time"])
    if "dataschema" in attributes and not re.match(r"^[a-z][a-z0-9+.-]*:", attributes["dataschema"]):
        raise ValueError("dataschema is not an absolute URI")
    return attributes


def sdk(headers: dict, body: bytes) -> dict:
    """The same message through the stock SDK."""
    event = from_binary(HTTPMessage(headers=dict(headers or {}), body=body), JSONFormat())
    core = {"specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema"}
    time = event.get_time()
    return {
        "id": event.get_id(),
        "source": event.get_source(),
        "type": event.get_type(),
        "specversion": event.get_specversion(),
        "subject": event.get_subject(),
        "time": time.isoformat() if time else None,
        "datacontenttype": event.get_datacontenttype(),
        "dataschema": event.get_dataschema(),
        "extensions": {k: v for k, v in event.get_attributes().items() if k not in core},
        "data": event.get_data(),
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--creds", required=True, help="a credentials file allowed to read KH_EVENTS")
    ap.add_argument("--count", type=int, required=True, help="events to read before exiting")
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args()

    creds = tomllib.loads(pathlib.Path(a.creds).read_text())
    nc = await nats.connect(a.url, nkeys_seed_str=creds["nkey_seed"],
                            inbox_prefix=creds["inbox_prefix"].encode(), allow_reconnect=False)
    js = nc.jetstream()
    # An ordered (ephemeral) consumer from the start of the stream: a plain reader, nothing kept.
    sub = await js.subscribe("kh.ev.>", stream="KH_EVENTS", ordered_consumer=True)
    for _ in range(a.count):
        msg = await sub.next_msg(timeout=a.timeout)
        headers = msg.headers or {}
        line = {
            "subject": msg.subject,
            "attributes": read(headers, msg.data),
            "data": msg.data.decode("utf-8"),
            "sdk": sdk(headers, msg.data),
        }
        print(json.dumps(line, ensure_ascii=False), flush=True)
    await sub.unsubscribe()
    await nc.drain()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
