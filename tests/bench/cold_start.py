#!/usr/bin/env python3
"""Restart-to-ready, RSS and first-request latency with many keys on disk.

1. Starts a release node on a fresh data dir and writes KEYS keys (one receipt each) through
   /v1/batch (1,000 ops per request, 4 connections).
2. Stops it with SIGTERM (snapshots are written on drain), restarts it, and measures the time
   from exec to /ready == 200 and the RSS once ready.
3. Reads SAMPLE random distinct keys, one at a time on one connection: each is the first
   request to a passivated key (it activates the actor: snapshot load via the writer thread).
   Prints p50/p99/p999/max of those, then the RSS after.

Usage: tests/bench/cold_start.py [KEYS] [SAMPLE] [term|kill]   (from the repository root,
after `cargo build --release`). `kill` stops the node with SIGKILL instead of SIGTERM: no
drain, so the restart rebuilds the journal tail index from the rows not yet compacted.
Only the Python standard library is used.
"""

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.environ.get("STOCKRING_BIN", "target/release/stockring")
PORT = 18095


def start(data_dir):
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [BIN, "serve", "--http-addr", f"127.0.0.1:{PORT}", "--data-dir", data_dir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "STOCKRING_LOG": "warn"})
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return proc, time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.002)


def rss_mib(proc):
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def populate(keys):
    chunks = list(range(0, keys, 1000))
    lock = threading.Lock()

    def worker():
        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
        while True:
            with lock:
                if not chunks:
                    return
                start_i = chunks.pop()
            ops = [{"op": "receive", "sku": f"cold-{i}", "warehouse": "w1", "qty": 1 + i % 1000, "op_id": "seed"}
                   for i in range(start_i, min(start_i + 1000, keys))]
            c.request("POST", "/v1/batch", json.dumps({"ops": ops}), {"content-type": "application/json"})
            r = c.getresponse()
            body = json.loads(r.read())
            assert r.status == 200 and all(x["status"] == 200 for x in body["results"]), body

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def pct(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def main():
    keys = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    sample = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    data = tempfile.mkdtemp(prefix="stockring-cold-")
    proc, _ = start(data)
    t0 = time.monotonic()
    populate(keys)
    print(f"populated {keys} keys in {time.monotonic() - t0:.1f} s")
    stop = signal.SIGKILL if len(sys.argv) > 3 and sys.argv[3] == "kill" else signal.SIGTERM
    proc.send_signal(stop)
    proc.wait()
    print(f"stopped with {stop.name}")
    db = os.path.join(data, "stockring.db")
    print(f"database {os.path.getsize(db) / 2**20:.0f} MiB")
    proc, ready_s = start(data)
    print(f"restart to ready: {ready_s * 1000:.0f} ms, RSS when ready {rss_mib(proc):.0f} MiB")
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    lat = []
    for i in random.sample(range(keys), sample):
        t = time.perf_counter()
        c.request("GET", f"/v1/stock/cold-{i}/w1")
        r = c.getresponse()
        body = json.loads(r.read())
        lat.append((time.perf_counter() - t) * 1000)
        assert r.status == 200 and body["on_hand"] == 1 + i % 1000, body
    lat.sort()
    print(f"first request to a passivated key ({sample} keys, 1 client): "
          f"p50 {pct(lat, .5):.3f} ms  p99 {pct(lat, .99):.3f} ms  p999 {pct(lat, .999):.3f} ms  max {lat[-1]:.3f} ms")
    print(f"RSS after {sample} activations: {rss_mib(proc):.0f} MiB")
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    subprocess.run(["rm", "-rf", data], check=False)


if __name__ == "__main__":
    main()
