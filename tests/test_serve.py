"""`pid-sdk serve` as a user starts it: a Ray Serve application on a free loopback port with the demo model."""

import concurrent.futures
import io
import json
import os
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
    port, metrics_port = free_port(), free_port()
    exe = Path(sys.executable).with_name("pid-sdk")
    log = tmp_path_factory.mktemp("serve") / "serve.log"  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([str(exe), "serve", str(pid_sdk.DEMO_MODEL), "--port", str(port), "--max-batch", "8",
                             "--batch-wait-ms", "100", "--max-queue", str(MAX_QUEUE), "--max-body-mb", "0.1",
                             "--warmup", "256x256", "--warmup", "128x384", "--metrics-port", str(metrics_port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while not ("Ctrl-C stops" in log.read_text() and healthy(url)) and proc.poll() is None \
                and time.time() < deadline:
            time.sleep(1)  # the command says when it serves; the health route says the replica answers
        assert proc.poll() is None and "Ctrl-C stops" in log.read_text() and healthy(url), log.read_text()
        yield url, proc, log, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        stop(proc)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
            return r.status == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, as a user stops it; then the whole session (Ray's processes with it) if it does not stop, so no
    daemon outlives the tests."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def post(url: str, body: bytes, query: str = "", headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"{url}/v1/decode{query}", data=body, method="POST",
                                 headers={"Content-Type": "application/octet-stream", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def latent(side: int, seed: int) -> bytes:
    return save({"latent": torch.randn(1, 16, side, side, generator=torch.Generator().manual_seed(seed))})


def pickled(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save({"latent": tensor}, buffer)
    return buffer.getvalue()


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_health_and_the_sample_decodes_as_the_cli_does(server, tmp_path):
    url, *_ = server
    with urllib.request.urlopen(f"{url}/healthz", timeout=60) as r:
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    with urllib.request.urlopen(f"{url}/v1/model", timeout=60) as r:
        model = json.loads(r.read())
    assert model["preset"] == "demo-flux1" and model["latent_space"] == "flux1"
    assert model["license"].startswith("unknown")
    assert "licence of the weights: unknown" in server[2].read_text()
    status, headers, png = post(url, SAMPLE.read_bytes(), "?seed=0&steps=4&latent_sigma=0&latent_space=flux1")
    assert status == 200 and headers["content-type"] == "image/png"
    from pid_sdk.cli import main

    assert main(["decode", str(SAMPLE), "--model", str(pid_sdk.DEMO_MODEL), "-o", str(tmp_path / "cli.png"),
                 "--quiet"]) == 0
    assert png == (tmp_path / "cli.png").read_bytes()


def test_concurrent_requests_of_two_sizes_are_batched_by_size(server):
    url, *_ = server
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
    url, *_ = server
    for body, query in [(b"garbage", ""), (latent(2, 0), "?seed=-1"), (latent(2, 0), "?latent_space=sd9"),
                        (latent(2, 0), "?steps=abc"), (save({"latent": torch.full((1, 16, 2, 2), float("nan"))}), ""),
                        (pickled(torch.randn(1, 16, 2, 2).to_sparse()), "")]:
        status, _, data = post(url, body, query)
        error = json.loads(data)
        assert status == 400 and {"error", "received", "fix"} <= set(error) and error["fix"], (query, error)
    status, _, data = post(url, b"\0" * (200 << 10))
    assert status == 413 and "too large" in json.loads(data)["error"]
    assert post(url, latent(2, 1))[0] == 200


def test_unknown_query_parameters_and_a_bad_content_length_are_400(server):
    url, *_ = server
    status, _, data = post(url, latent(2, 0), "?seed=1&colour=red")
    error = json.loads(data)
    assert status == 400 and "colour" in error["received"] and "seed=" in error["expected"] and error["fix"]
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Length: twelve\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n")[0].split()[1] == b"400", answer[:300]
    assert post(url, latent(2, 1))[0] == 200


def test_a_request_decodes_through_windows_as_the_api_does(server):
    url, *_ = server
    status, _, png = post(url, latent(4, 7), "?seed=7&window=64x64&overlap=32")  # 128x128 from the demo
    assert status == 200, png[:300]
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(7))
    alone = pid_sdk.Decoder.load(pid_sdk.DEMO_MODEL)
    want = alone.decode(z, seed=7, window=(64, 64), overlap=32, output="numpy")[0].astype(int)
    assert np.abs(pixels(png) - want).max() <= 1
    assert np.abs(pixels(png) - alone.decode(z, seed=7, output="numpy")[0].astype(int)).max() > 8  # not whole
    for query, match in [("?window=wide", "window= takes HxW or auto"), ("?window=64x64&overlap=16", "overlap="),
                         ("?overlap=32", "overlap= applies to windowed decoding only")]:
        status, _, data = post(url, latent(4, 7), query)
        assert status == 400 and match in json.loads(data)["error"], (query, data[:300])


def test_bad_requests_in_a_batch_fail_alone(server):
    """Requests that arrive together: the bad ones (a seed out of range, steps 0) are refused with 400 before they
    join a batch, the good ones are decoded as they would be alone."""
    url, *_ = server
    queries = [f"?seed={i}" if i % 3 else ("?seed=-5" if i % 2 else "?steps=0") for i in range(9)]
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        answers = list(pool.map(lambda i: post(url, latent(2, i), queries[i]), range(9)))
    assert [a[0] for a in answers] == [400 if i % 3 == 0 else 200 for i in range(9)]
    alone = pid_sdk.Decoder.load(pid_sdk.DEMO_MODEL)
    for i in (1, 2, 4):
        z = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(i))
        assert np.abs(pixels(answers[i][2]) - alone.decode(z, seed=i, output="numpy")[0].astype(int)).max() <= 1


def test_a_request_that_fails_inside_a_batch_fails_alone(monkeypatch):
    """What passes every check can still fail in the decode (a NaN image): the batch is decoded again item by item,
    and only the failing request gets the error."""
    from pid_sdk.errors import NumericsError
    from pid_sdk.serve import DecodeRequest, DecoderServer

    server = DecoderServer({"model": str(pid_sdk.DEMO_MODEL)})
    real = server.decoder.decode

    def nan_for_seed_13(z, **kwargs):
        if 13 in kwargs["seed"]:
            raise NumericsError("simulated NaN image")
        return real(z, **kwargs)

    monkeypatch.setattr(server.decoder, "decode", nan_for_seed_13)
    group = [DecodeRequest(torch.randn(1, 16, 2, 2), None, seed, 0.0, 1) for seed in (3, 13, 5)]
    answers = server._decode_isolated(group)
    assert isinstance(answers[1], NumericsError)
    assert [type(a).__name__ for a in answers] == ["tuple", "NumericsError", "tuple"]
    assert answers[0][2] == answers[2][2] == 1  # decoded alone after the batch failed (png, encode ms, batch, ...)


def test_a_full_queue_answers_503_with_retry_after(server):
    url, *_ = server
    with concurrent.futures.ThreadPoolExecutor(3 * MAX_QUEUE) as pool:
        answers = list(pool.map(lambda i: post(url, latent(8, i), "?steps=8"), range(3 * MAX_QUEUE)))
    refused = [a for a in answers if a[0] == 503]
    assert refused and all(a[1].get("retry-after") for a in refused), [a[0] for a in answers]
    assert {a[0] for a in answers} <= {200, 503}
    assert post(url, latent(2, 1))[0] == 200


def get(url: str, headers: dict | None = None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())


def test_live_at_once_ready_after_its_warmup_decodes(server):
    url, *_ = server
    assert get(f"{url}/livez")[0] == 200
    deadline = time.time() + 120
    while (ready := get(f"{url}/readyz"))[0] == 503 and time.time() < deadline:
        assert ready[1]["retry-after"] == "1" and ready[2]["status"] == "warming"
        time.sleep(0.5)
    assert ready[0] == 200 and ready[2] == {"status": "ready", "warmed": ["256x256", "128x384"], "pending": [],
                                            "error": None}


def test_every_answer_has_a_request_id_and_server_timing(server):
    url, *_ = server
    status, headers, _ = post(url, latent(2, 3), "", {"X-Request-Id": "client-42"})
    assert status == 200 and headers["x-request-id"] == "client-42"
    timing = dict(part.strip().split(";dur=") for part in headers["server-timing"].split(","))
    assert set(timing) == {"queue", "decode", "encode", "total"} and float(timing["decode"]) > 0
    assert float(timing["total"]) >= float(timing["decode"]) + float(timing["encode"])
    made = [get(f"{url}/livez")[1]["x-request-id"] for _ in range(2)]
    assert made[0] != made[1] and all(len(m) >= 32 for m in made)  # made by Ray Serve's proxy: its logs name it
    status, headers, _ = post(url, b"junk", "", {"X-Request-Id": "client-43"})
    assert status == 400 and headers["x-request-id"] == "client-43" and "total;dur=" in headers["server-timing"]


def test_a_request_past_its_deadline_is_504_and_its_decode_never_runs(server):
    url, *_ = server
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        slow = pool.submit(post, url, latent(8, 1), "?steps=12")  # holds the replica's decoder for seconds
        time.sleep(0.3)
        late = pool.submit(post, url, latent(2, 2), "?timeout=0.2&seed=77")
        status, _, body = late.result()
        assert slow.result()[0] == 200
    assert status == 504 and json.loads(body)["fix"].startswith("raise ?timeout=")
    assert post(url, latent(2, 2), "?timeout=600")[0] == 200
    assert post(url, latent(2, 2), "?timeout=0")[0] == 400  # a deadline must be positive


def test_prometheus_metrics_count_what_was_served(server):
    """Ray exports the replica's metrics every few seconds: polled until the decodes above are counted."""
    url, *_, metrics = server
    post(url, latent(2, 9))
    deadline, text = time.time() + 90, ""
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(metrics, timeout=10) as r:
                text = r.read().decode()
        except OSError:
            text = ""
        if "ray_pid_images_decoded_total" in text and "ray_pid_decode_latency_seconds_bucket" in text:
            break
        time.sleep(2)
    lines = [line for line in text.splitlines() if line.startswith("ray_pid_")]
    images = sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("ray_pid_images_decoded_total"))
    assert images >= 3, "\n".join(lines)[:3000]
    assert any('size="512x512"' in line for line in lines if "latency_seconds_bucket" in line)
    assert any("ray_pid_batch_size_bucket" in line for line in lines)
    assert any('kind="inputerror"' in line for line in lines if line.startswith("ray_pid_errors_total"))
    assert any(line.startswith("ray_pid_queue_depth") for line in lines)


def test_sigterm_drains_requests_in_flight_then_stops(server):
    url, proc, log, _ = server
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(post, url, latent(8, 5), "?steps=8")
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert in_flight.result()[0] == 200  # taken before the signal: it finishes
    assert proc.wait(timeout=180) == 0
    assert "pid-sdk serve: stopped" in log.read_text()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/healthz", timeout=5)


def test_the_serve_flags_make_the_ray_configuration(monkeypatch, capsys):
    """--replicas, --num-gpus, --autoscaling, --max-queue, --backend, --address as the CLI passes them on, and the
    Ray Serve deployment they make (no cluster started)."""
    import pid_sdk.serve as serve_module
    from pid_sdk.cli import main
    from pid_sdk.serve import build_app, replica_threads

    seen = []
    monkeypatch.setattr(serve_module, "run_server", seen.append)
    assert main(["serve", str(pid_sdk.DEMO_MODEL), "--replicas", "3", "--num-gpus", "0.5", "--max-queue", "7",
                 "--backend", "pytorch", "--address", "ray://head:10001", "--port", "8123"]) == 0
    options = seen[-1]
    assert (options.replicas, options.num_gpus, options.max_queue, options.backend, options.address, options.port) == \
        (3, 0.5, 7, "pytorch", "ray://head:10001", 8123)
    deployment = build_app(options)._bound_deployment
    assert deployment.num_replicas == 3 and deployment.ray_actor_options["num_gpus"] == 0.5
    assert deployment.max_ongoing_requests == 8 and deployment.init_args[0]["backend"] == "pytorch"
    assert main(["serve", str(pid_sdk.DEMO_MODEL), "--autoscaling", '{"min_replicas": 1, "max_replicas": 4}']) == 0
    scaled = build_app(seen[-1])._bound_deployment._deployment_config.autoscaling_config
    assert (scaled.min_replicas, scaled.max_replicas) == (1, 4)
    assert replica_threads(seen[-1]) == max(1, torch.get_num_threads() // 4)  # threads shared by the most replicas
    for bad in (["--autoscaling", "[1]"], ["--max-body-mb", "-1"], ["--replicas", "0"], ["--port", "70000"]):
        assert main(["serve", str(pid_sdk.DEMO_MODEL), *bad]) == 2, bad
    assert "error:" in capsys.readouterr().err
