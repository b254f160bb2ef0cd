"""A bounded load test of `pid-sdk serve` on this machine (loopback only; a fixed number of requests; stops itself).

    python bench/serve_load.py [--model pid_sdk/data/demo-flux1] [--requests 32] [--replicas 1 2] [--out FILE]

Starts the server for each setting, with batching on (--max-batch 8) and off (--max-batch 1) and each number of
`--replicas` (the machine's threads shared among them), and at 1, 4 and 16 concurrent clients sends `--requests`
decodes of the bundled sample latent (512x512 out, 4 steps, a seed each) once /readyz says the replicas are warm;
prints throughput and p50 / p95 / p99 latency per setting as a markdown table with the machine and date.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample_latent_flux1.safetensors"


def start(model: str, max_batch: int, log: Path, replicas: int = 1) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("pid-sdk")
    proc = subprocess.Popen([str(exe), "serve", model, "--port", str(port), "--max-batch", str(max_batch),
                             "--batch-wait-ms", "20", "--max-queue", "256", "--replicas", str(replicas),
                             "--warmup", "512x512"], stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while "Ctrl-C stops" not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit(f"the server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(1)
    url = f"http://127.0.0.1:{port}"
    while not ready(url):
        if time.time() > deadline:
            proc.kill()
            raise SystemExit(f"the replicas did not warm up:\n{log.read_text()[-2000:]}")
        time.sleep(1)
    return proc, url


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as r:
            return r.status == 200
    except OSError:  # 503 while warming (HTTPError is an OSError), or not listening yet
        return False


def one(url: str, body: bytes, seed: int) -> float:
    req = urllib.request.Request(f"{url}/v1/decode?seed={seed}", data=body, method="POST")
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()
        assert r.status == 200
    return time.perf_counter() - t0


def load(url: str, clients: int, requests: int) -> dict:
    body = SAMPLE.read_bytes()
    one(url, body, 0)  # warm-up
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(lambda i: one(url, body, i), range(requests)))
    wall = time.perf_counter() - t0
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {"clients": clients, "requests": requests, "images_per_s": requests / wall, "p50_s": p50, "p95_s": p95,
            "p99_s": p99}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "pid_sdk" / "data" / "demo-flux1"))
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = []
    for replicas in args.replicas:
        for batching, max_batch in (("on", 8), ("off", 1)):
            log = Path(os.environ.get("TMPDIR", "/tmp")) / f"pid-serve-load-{replicas}-{max_batch}.log"
            proc, url = start(args.model, max_batch, log, replicas)
            try:
                rows += [{"replicas": replicas, "batching": batching, **load(url, c, args.requests)}
                         for c in args.clients]
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=300)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch CPU"
    print(f"{date.today().isoformat()}, {machine}, {Path(args.model).name}, 512x512, 4 steps\n")
    print("| replicas | batching | clients | images/s | p50 s | p95 s | p99 s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['replicas']} | {r['batching']} | {r['clients']} | {r['images_per_s']:.2f} | {r['p50_s']:.2f} | "
              f"{r['p95_s']:.2f} | {r['p99_s']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"date": date.today().isoformat(), "machine": machine, "rows": rows},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
