"""`pid-sdk serve` as a user starts it: a Ray Serve application on a free loopback port with the demo model."""

import concurrent.futures
import io
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

pytest.importorskip("ray.serve", reason="needs Ray Serve (pip install 'pid-sdk[serve]')")

import pid_sdk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample_latent_flux1.safetensors"
MAX_QUEUE = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    exe = Path(sys.executable).with_name("pid-sdk")
    log = tmp_path_factory.mktemp("serve") / "serve.log"  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([str(exe), "serve", str(pid_sdk.DEMO_MODEL), "--port", str(port), "--max-batch", "8",
                             "--batch-wait-ms", "100", "--max-queue", str(MAX_QUEUE), "--max-body-mb", "0.1"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while "Ctrl-C stops" not in log.read_text() and proc.poll() is None and time.time() < deadline:
        time.sleep(1)  # the command says when it serves
    assert proc.poll() is None and "Ctrl-C stops" in log.read_text(), log.read_text()
    yield f"http://127.0.0.1:{port}", proc, log
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def post(url: str, body: bytes, query: str = "") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"{url}/v1/decode{query}", data=body, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def latent(side: int, seed: int) -> bytes:
    return save({"latent": torch.randn(1, 16, side, side, generator=torch.Generator().manual_seed(seed))})


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_health_and_the_sample_decodes_as_the_cli_does(server, tmp_path):
    url, _, _ = server
    with urllib.request.urlopen(f"{url}/healthz") as r:
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    status, headers, png = post(url, SAMPLE.read_bytes(), "?seed=0&steps=4&latent_sigma=0&latent_space=flux1")
    assert status == 200 and headers["content-type"] == "image/png"
    from pid_sdk.cli import main

    assert main(["decode", str(SAMPLE), "--model", str(pid_sdk.DEMO_MODEL), "-o", str(tmp_path / "cli.png"),
                 "--quiet"]) == 0
    assert png == (tmp_path / "cli.png").read_bytes()


def test_concurrent_requests_of_two_sizes_are_batched_by_size(server):
    url, _, _ = server
    sides = [2 if i % 2 else 4 for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: post(url, latent(sides[i], i), f"?seed={i}"), range(16)))
    assert [a[0] for a in answers] == [200] * 16
    batches = [int(a[1]["x-pid-batch-size"]) for a in answers]
    assert max(batches) > 1, batches  # batches really formed
    alone = pid_sdk.Decoder.load(pid_sdk.DEMO_MODEL)
    for i, (_, _, png) in enumerate(answers):
        got = pixels(png)
        assert got.shape == (sides[i] * 32, sides[i] * 32, 3)  # sizes never mixed
        z = torch.randn(1, 16, sides[i], sides[i], generator=torch.Generator().manual_seed(i))
        want = alone.decode(z, seed=i, output="numpy")[0].astype(int)
        assert np.abs(got - want).max() <= 1  # batched GEMMs round a few 1e-6 differently from a lone decode


def test_bad_input_is_400_with_the_errors_fields_and_the_server_keeps_serving(server):
    url, _, _ = server
    for body, query in [(b"garbage", ""), (latent(2, 0), "?seed=-1"), (latent(2, 0), "?latent_space=sd9"),
                        (latent(2, 0), "?steps=abc"), (save({"latent": torch.full((1, 16, 2, 2), float("nan"))}), "")]:
        status, _, data = post(url, body, query)
        error = json.loads(data)
        assert status == 400 and {"error", "received", "fix"} <= set(error) and error["fix"], (query, error)
    status, _, data = post(url, b"\0" * (200 << 10))
    assert status == 413 and "too large" in json.loads(data)["error"]
    assert post(url, latent(2, 1))[0] == 200


def test_a_full_queue_answers_503_with_retry_after(server):
    url, _, _ = server
    with concurrent.futures.ThreadPoolExecutor(3 * MAX_QUEUE) as pool:
        answers = list(pool.map(lambda i: post(url, latent(8, i), "?steps=8"), range(3 * MAX_QUEUE)))
    refused = [a for a in answers if a[0] == 503]
    assert refused and all(a[1].get("retry-after") for a in refused), [a[0] for a in answers]
    assert {a[0] for a in answers} <= {200, 503}
    assert post(url, latent(2, 1))[0] == 200


def test_sigterm_stops_the_server_cleanly(server):
    url, proc, log = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    assert "pid-sdk serve: stopped" in log.read_text()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/healthz", timeout=5)
