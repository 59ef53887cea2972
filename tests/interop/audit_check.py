#!/usr/bin/env python3
"""Check the audit trail in KH_AUDIT with nats-py and protobuf, nothing of Kakehashi's code.

Only what proto/kakehashi/v1/audit.proto states is used: every message of the stream is one
`kakehashi.v1.AuditRecord` (Python classes generated at run time with grpc_tools.protoc), one
link of its actor's hash chain: `seq` 1, 2, … per (actor, chain), `prev_hash` "genesis" for
seq 1 and the previous record's `hash` after that, and `hash` the lower-case hex SHA-256 of the
record's encoding with `hash` empty. For every record the hash is recomputed from the decoded
record and the stored bytes must be exactly that record's encoding; identical repeats (a record
stored twice) count once; then every chain must run 1, 2, … without a gap and link up.

    python audit_check.py --url nats://127.0.0.1:4222 --creds operator.creds

The credentials file is one written by `kakehashi nats config` (TOML: `nkey_seed`,
`inbox_prefix`) for an identity that may read KH_AUDIT by direct get (`operator`, from its own
account, or `admin`).
Anchored chain heads (KH_CONFIG) and records removed by the stream's retention are not
considered: a chain whose beginning expired is reported as broken.

Prints one JSON object: {"stored": messages read, "records": distinct records, "chains": n,
"hops": {event_id: [hop names in time order]}, "broken": [{"actor", "chain", "seq",
"stream_seq", "problem"}]}. Exits 0 when nothing is broken, 1 when something is, 2 on usage or
connection errors (message on stderr).
"""

import argparse
import asyncio
import hashlib
import importlib
import importlib.resources
import json
import pathlib
import sys
import tempfile
import tomllib

import nats
import nats.js.errors
from grpc_tools import protoc

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"
GENESIS = "genesis"


class UsageError(Exception):
    """Anything that keeps the check from running (exit 2)."""


def audit_module(out_dir: str):
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out_dir}",
            "kakehashi/v1/audit.proto"]
    if protoc.main(args) != 0:
        raise UsageError("protoc failed on kakehashi/v1/audit.proto")
    sys.path.insert(0, out_dir)
    return importlib.import_module("kakehashi.v1.audit_pb2")


async def read_stream(url: str, creds_path: str, stream: str, subjects: str, timeout: float):
    """[(stream_seq, payload)] of every message in the stream up to its end when read."""
    try:
        creds = tomllib.loads(pathlib.Path(creds_path).read_text())
        seed, inbox = creds["nkey_seed"], creds["inbox_prefix"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as err:
        raise UsageError(f"credentials {creds_path}: {err}") from err
    try:
        nc = await nats.connect(url, nkeys_seed_str=seed, inbox_prefix=inbox.encode(),
                                allow_reconnect=False, connect_timeout=timeout)
    except Exception as err:
        raise UsageError(f"connect to {url}: {err!r}") from err
    try:
        js = nc.jetstream(timeout=timeout)
        messages = []
        # Direct gets, one message at a time: the operator's identity lives outside the bus
        # account and may use no other JetStream API (no stream info, no consumer).
        seq = 1
        while True:
            try:
                msg = await js.get_msg(stream, seq=seq, subject=subjects, direct=True, next=True)
            except nats.js.errors.NotFoundError:
                break  # nothing stored at or after `seq`: the end of the stream
            messages.append((msg.seq, msg.data))
            seq = msg.seq + 1
        return messages
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"read {stream}: {err!r}") from err
    finally:
        await nc.close()


def digest(record) -> str:
    unhashed = type(record)()
    unhashed.CopyFrom(record)
    unhashed.ClearField("hash")
    return hashlib.sha256(unhashed.SerializeToString(deterministic=True)).hexdigest()


def check(pb, messages):
    broken = []

    def problem(actor, chain, seq, stream_seq, text):
        broken.append({"actor": actor, "chain": chain, "seq": seq, "stream_seq": stream_seq,
                       "problem": text})

    seen = set()
    chains = {}
    hops = {}
    for stream_seq, data in messages:
        if data in seen:
            continue  # stored twice, byte for byte: one link
        seen.add(data)
        record = pb.AuditRecord()
        try:
            record.ParseFromString(data)
        except Exception as err:  # protobuf's DecodeError; a JSON record lands here too
            problem(None, None, None, stream_seq, f"does not decode as AuditRecord: {err}")
            continue
        if record.SerializeToString(deterministic=True) != data:
            problem(record.actor, record.chain, record.seq, stream_seq,
                    "stored bytes are not the record's encoding")
        if digest(record) != record.hash:
            problem(record.actor, record.chain, record.seq, stream_seq,
                    "content does not match its hash")
        chains.setdefault((record.actor, record.chain), []).append((stream_seq, record))
        for h in (record.hops if len(record.hops) > 0 else [record]):
            hops.setdefault(h.event_id, []).append((h.time_us, h.hop))

    for (actor, chain), links in chains.items():
        links.sort(key=lambda link: link[1].seq)  # stable: equal seqs keep read order
        prev = None
        for stream_seq, r in links:
            if prev is not None and r.seq == prev.seq:
                problem(actor, chain, r.seq, stream_seq, "a second, different record")
                continue
            expected = 1 if prev is None else prev.seq + 1
            if r.seq != expected:
                problem(actor, chain, expected, None,
                        f"record {expected} is missing (next present is {r.seq})")
            expected_prev = GENESIS if r.seq == 1 else (
                prev.hash if prev is not None and prev.seq == r.seq - 1 else None)
            # After a gap the predecessor is unknown: the gap is already reported.
            if expected_prev is not None and r.prev_hash != expected_prev:
                problem(actor, chain, r.seq, stream_seq, "does not link to its predecessor's hash")
            prev = r

    order = {e: [hop for _, hop in sorted(h, key=lambda t: t[0])] for e, h in hops.items()}
    return {
        "stored": len(messages),
        "records": len(seen),
        "chains": len(chains),
        "hops": order,
        "broken": broken,
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--creds", required=True, help="credentials of an identity that reads KH_AUDIT")
    ap.add_argument("--stream", default="KH_AUDIT")
    ap.add_argument("--subjects", default="kh.audit.>", help="the stream's subjects (all of them)")
    ap.add_argument("--timeout", type=float, default=10, help="seconds per NATS request")
    a = ap.parse_args()
    try:
        with tempfile.TemporaryDirectory() as out:
            pb = audit_module(out)
            messages = await read_stream(a.url, a.creds, a.stream, a.subjects, a.timeout)
            report = check(pb, messages)
    except UsageError as err:
        print(f"audit_check: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, ensure_ascii=False))
    return 1 if report["broken"] else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
