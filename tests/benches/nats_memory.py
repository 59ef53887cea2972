"""What makes nats-server's memory grow with every stored message: `Nats-Msg-Id` dedup ids,
distinct subjects, or neither (docs/BENCHMARKS.md, "nats-server memory per event").

Not a cargo bench: a Python program with nats-py (the interop clients' virtualenv that
`bash deploy/test.sh` installs under ~/.cache/kakehashi/python-*/):

    ~/.cache/kakehashi/python-*/bin/python tests/benches/nats_memory.py \
        ~/.cache/kakehashi/nats-server-2.15.1/nats-server 500000

Each variant starts its own nats-server (JetStream, temp store under /var/tmp, profiling port),
publishes N messages of 500 bytes into one file-backed stream with core NATS publishes, waits
until they are stored, and prints at 5 points: RSS, and the Go heap in use from the server's
pprof endpoint (`HeapInuse`, `HeapAlloc`).
"""
import asyncio, re, secrets, shutil, socket, subprocess, sys, tempfile, time, urllib.request, uuid
import nats
from nats.js.api import StreamConfig

BIN = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 500_000

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def heap(prof):
    txt = urllib.request.urlopen(f"http://127.0.0.1:{prof}/debug/pprof/heap?debug=1").read().decode()
    get = lambda k: int(re.search(rf"# {k} = (\d+)", txt).group(1))
    return get("HeapInuse") / 1e6, get("HeapAlloc") / 1e6

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

async def variant(name, msg_id, distinct_subjects, window):
    port, mon, prof = free_port(), free_port(), free_port()
    store = tempfile.mkdtemp(prefix="memexp-", dir="/var/tmp")
    token = secrets.token_hex(16)  # loopback only, and still not open
    srv = subprocess.Popen([BIN, "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port), "-m", str(mon), "--profile", str(prof),
                            "--auth", token],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        nc = await nats.connect(f"nats://127.0.0.1:{port}", token=token)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="S", subjects=["t.>"], duplicate_window=window))
        body = b"x" * 500
        points = []
        began = time.monotonic()
        for i in range(N):
            subj = f"t.{uuid.uuid4()}" if distinct_subjects else "t.a"
            hdrs = {"Nats-Msg-Id": str(uuid.uuid4())} if msg_id else None
            await nc.publish(subj, body, headers=hdrs)
            if i % 2000 == 1999:
                await nc.flush()
            if (i + 1) % (N // 5) == 0:
                while (await js.stream_info("S")).state.messages < i + 1 - 5000:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1)
                hi, ha = heap(prof)
                points.append((i + 1, round(rss(srv.pid)), round(hi), round(ha)))
        info = await js.stream_info("S")
        await nc.close()
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(store, ignore_errors=True)
    rate = N / (time.monotonic() - began)
    print(f"{name}: stored {info.state.messages} at {rate:,.0f} msg/s; (msgs, RSS MB, HeapInuse MB, HeapAlloc MB): {points}", flush=True)

async def main():
    await variant("A one subject, no msg id", False, False, 120)
    await variant("B one subject, unique Nats-Msg-Id, 2 h window", True, False, 7200)
    await variant("C distinct subject per message, no msg id", False, True, 120)
    await variant("D one subject, unique Nats-Msg-Id, 10 s window", True, False, 10)

asyncio.run(main())
