"""`pid-sdk serve`: the decoder as a Ray Serve application with a FastAPI ingress (optional extra `serve`).

    GET  /livez                                    200 while the replica's process answers
    GET  /readyz                                   200 once its warm-up decodes are done (503 before)
    GET  /healthz                                  200 once this replica's model is loaded
    GET  /v1/model                                 the model, its sizes and the weights' licence
    POST /v1/decode?latent_space=&seed=&latent_sigma=&steps=&window=&overlap=   body: a latent file -> image/png

The query is a typed model (`DecodeQuery`): every field checked for kind and range, an unknown parameter refused,
before the body is read. Requests of the same output size and options that arrive together are decoded as one batch
(`@serve.batch`), each with its own seed, so a batched request returns what it would alone (to float rounding); a
request that fails in a batch fails alone (its batch-mates are decoded again without it). Bad input is a 400 with
the PiDError's fields, an oversized body a 413, a full replica queue a 503 with Retry-After, a passed deadline a 504
(the decode not started where it had not). Every answer carries X-Request-Id and Server-Timing (queue, decode and
encode for a decode; the total for all). SIGTERM drains: requests in flight finish.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from starlette.exceptions import HTTPException

from pid_sdk.errors import InputError, PiDError
from pid_sdk.inputs import MAX_SEED, MAX_STEPS

DRAIN_S = 120  # how long a stopping replica waits for the requests it holds
MAGIC_SUFFIXES = ((b"\x93NUMPY", ".npy"), (b"PK\x03\x04", ".pt"))  # anything else is read as safetensors


@dataclass(frozen=True)
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_batch: int = 8
    batch_wait_ms: float = 10.0
    backend: str = "auto"
    max_body_bytes: int = 64 << 20
    max_queue: int = 64  # requests a replica holds (decoding or waiting) before it answers 503
    num_gpus: float | None = None  # per replica; None: 1 where a GPU exists, else 0
    autoscaling: dict | None = None  # Ray Serve's autoscaling_config, passed through
    address: str | None = None  # an existing Ray cluster; None starts a local instance
    threads: int | None = None  # CPU threads per replica (torch); None: the command's share of the machine
    max_memory: int | None = None  # bytes a decode may take (Decoder.load(max_memory=)): larger ones as windows
    timeout_s: float | None = None  # a request's deadline unless its ?timeout= says; None: none
    warmup: tuple[tuple[int, int], ...] | None = None  # output sizes decoded before /readyz; None: the folder's buckets
    metrics_port: int | None = None  # where the local Ray instance exports Prometheus metrics; None: Ray's choice


class DecodeQuery(BaseModel):
    """The query of POST /v1/decode: each field typed and bounded, nothing else accepted."""

    model_config = ConfigDict(extra="forbid")

    latent_space: str | None = Field(None, max_length=32, description="the LDM's latent space (default: the model's)")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    latent_sigma: float = Field(0.0, ge=0, allow_inf_nan=False, description="noise level of a partial capture")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="network calls (default: the sampler's, 4)")
    window: str | None = Field(None, max_length=16, description="HxW or auto: decode as overlapping windows")
    overlap: int | None = Field(None, ge=0, le=65536, description="pixels windows share (default: a quarter)")
    timeout: float | None = Field(None, gt=0, le=3600, allow_inf_nan=False,
                                  description="seconds before the answer is a 504 (default: the server's)")


@dataclass(frozen=True)
class DecodeRequest:
    latent: object  # torch.Tensor [1, C, h, w]
    latent_space: str | None
    seed: int
    latent_sigma: float
    steps: int
    window: tuple[int, int] | str | None = None
    overlap: int | None = None
    deadline: float = math.inf  # time.monotonic() after which the request is answered 504, never decoded
    received: float = 0.0  # time.perf_counter() when the route took it: its queue time starts here

    def output_size(self, decoder) -> tuple[int, int]:
        return decoder.output_size(tuple(self.latent.shape[-2:]), self.latent_space)

    def batch_key(self, decoder) -> tuple:
        """Requests that can share one batched decode: same output size and options, any seed."""
        return (self.output_size(decoder), tuple(self.latent.shape[1:]), self.latent_space, self.latent_sigma,
                self.steps, self.window, self.overlap)


class _TooLarge(Exception):
    def __init__(self, size: int, limit: int):
        super().__init__("The request body is too large.")
        self.size, self.limit = size, limit


app = FastAPI(title="pid-sdk", description="The PiD pixel diffusion decoder over HTTP")


@app.middleware("http")
async def _request_id_and_timing(request: Request, call_next):
    """Every answer carries X-Request-Id (the client's, else one made: Ray Serve's proxy makes it before the request
    reaches a replica, and its logs use it) and a Server-Timing total; the decode route adds its queue, decode and
    encode parts."""
    started = time.perf_counter()
    response = await call_next(request)
    total = f"total;dur={1000 * (time.perf_counter() - started):.1f}"
    parts = response.headers.get("server-timing")
    response.headers["server-timing"] = f"{parts}, {total}" if parts else total
    response.headers["x-request-id"] = request.headers.get("x-request-id") or uuid.uuid4().hex
    return response


class DeadlinePassed(Exception):
    """A request whose deadline passed before its decode began: answered 504, its decode never run."""


def error_response(status: int, error: str, received=None, expected=None, fix: str | None = None, headers=None):
    return JSONResponse({"error": error, "received": _jsonable(received), "expected": _jsonable(expected),
                         "fix": fix}, status_code=status, headers=headers)


@app.exception_handler(PiDError)
async def _pid_error(_request: Request, exc: PiDError):
    return error_response(400, exc.what, exc.received, exc.expected, exc.fix)


@app.exception_handler(RequestValidationError)
async def _bad_query(_request: Request, exc: RequestValidationError):
    problems = [f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
    fields = ", ".join(f"{name}=" for name in DecodeQuery.model_fields)
    return error_response(400, "Bad query parameter.", "; ".join(problems)[:300], f"only {fields} (all optional)",
                          "fix or drop the parameter named above (docs/serving.md)")


@app.exception_handler(_TooLarge)
async def _too_large(_request: Request, exc: _TooLarge):
    return error_response(413, str(exc), exc.size, f"<= {exc.limit} bytes", "send one latent per request")


@app.exception_handler(HTTPException)
async def _http_error(_request: Request, exc: HTTPException):
    return error_response(exc.status_code, str(exc.detail), fix="POST /v1/decode or GET /healthz")


class DecoderServer:
    """One replica: a loaded Decoder, a bounded queue, and a batched decode."""

    def __init__(self, options: dict):
        import torch

        from pid_sdk.decoder import Decoder

        self.options = ServeOptions(**options)
        if self.options.threads:  # Ray starts replicas with one thread: the command's share, as a CLI decode has
            torch.set_num_threads(self.options.threads)
        self.decoder = Decoder.load(self.options.model, backend=self.options.backend,
                                    max_memory=self.options.max_memory)
        self.pending = 0
        self.decode_batch.set_max_batch_size(self.options.max_batch)
        self.decode_batch.set_batch_wait_timeout_s(self.options.batch_wait_ms / 1000)
        self.lock = threading.Lock()  # one decode at a time on the model: the warm-up's and the batches'
        self.metrics = Metrics()
        warmup = self.options.warmup if self.options.warmup is not None else self.decoder.bucket_sizes or []
        self.warmup = Warmup(warmup)  # default: an engine folder's sizes (loaded on first use); none for a checkpoint
        threading.Thread(target=self.warmup.run, args=(self.decoder, self.lock), daemon=True).start()

    @app.get("/livez")
    async def livez(self):
        """The replica's process answers (its model may still be warming up)."""
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz(self):
        """200 once every warm-up size has been decoded once (compilation, graph capture and allocation paid before
        the first user); 503 until then, 500 where a warm-up decode failed."""
        state = self.warmup.state()
        code = {"ready": 200, "warming": 503, "failed": 500}[state["status"]]
        return JSONResponse(state, status_code=code, headers={"Retry-After": "1"} if code == 503 else None)

    @app.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "model": self.options.model, "backend": self.decoder.backend_name}

    @app.get("/v1/model")
    async def model(self):
        """What this replica decodes with, the weights' licence included."""
        from pid_sdk.registry import UNKNOWN

        dec = self.decoder
        return {"model": self.options.model, "preset": dec.config.name, "latent_space": dec.latent_space,
                "scale": dec.config.adapter.sr_scale, "trained_sizes": [list(s) for s in dec.config.trained_sizes],
                "backend": dec.backend_name, "license": dec.license or UNKNOWN}

    @app.post("/v1/decode")
    async def decode(self, request: Request, query: Annotated[DecodeQuery, Query()]):
        if self.pending >= self.options.max_queue:
            self.metrics.errors.inc(tags={"kind": "queue_full"})
            return error_response(503, "the decoder's queue is full", self.pending, fix="retry after a second, "
                                  "or add replicas", headers={"Retry-After": "1"})
        self.pending += 1
        self.metrics.queue.set(self.pending)
        received = time.perf_counter()
        try:
            return await self._answer(request, query, received)
        except (PiDError, _TooLarge) as exc:
            self.metrics.errors.inc(tags={"kind": type(exc).__name__.strip("_").lower()})
            raise
        finally:
            self.pending -= 1
            self.metrics.queue.set(self.pending)

    async def _answer(self, request: Request, query: DecodeQuery, received: float):
        """The decode answer: the PNG with its timings, a 504 past the deadline; PiDErrors raised."""
        body = await read_body(request, self.options.max_body_bytes)
        timeout = query.timeout or self.options.timeout_s
        item = self._parse(body, query, time.monotonic() + timeout if timeout else math.inf, received)
        try:
            result = await asyncio.wait_for(self.decode_batch(item), timeout)
        except (asyncio.TimeoutError, DeadlinePassed):
            result = DeadlinePassed()
        if isinstance(result, DeadlinePassed):
            self.metrics.errors.inc(tags={"kind": "deadline"})
            return error_response(504, "The request's deadline passed before its image was ready.",
                                  f"timeout={timeout} s", fix="raise ?timeout= (or the server's --timeout-s), "
                                  "or add replicas")
        if isinstance(result, PiDError):
            raise result
        png, batch, timing = result
        height, width = item.output_size(self.decoder)
        self.metrics.latency.observe(time.perf_counter() - received, tags={"size": f"{height}x{width}"})
        self.metrics.images.inc()
        return Response(png, media_type="image/png", headers={"X-PiD-Batch-Size": str(batch),
                                                              "Server-Timing": timing})

    def _parse(self, body: bytes, query: DecodeQuery, deadline: float = math.inf,
               received: float = 0.0) -> DecodeRequest:
        latent = read_latent_body(body)
        if latent.ndim != 4 or latent.shape[0] != 1:
            raise InputError("A request decodes one latent.", received=f"shape {tuple(latent.shape)}",
                             expected="[C, h, w] or [1, C, h, w]", fix="send one request per latent")
        from pid_sdk.windows import parse_window

        window = parse_window(query.window, "window=")
        self.decoder.check(latent, latent_space=query.latent_space, latent_sigma=query.latent_sigma, window=window,
                           overlap=query.overlap)
        steps = query.steps or self.decoder.default_steps("sde")
        return DecodeRequest(latent, query.latent_space, query.seed, query.latent_sigma, steps, window, query.overlap,
                             deadline, received)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def decode_batch(self, items: list[DecodeRequest]) -> list:
        """Split what arrived together by output size and options; decode each group as one batch, each item
        with its own seed. Each item's answer is (png, batch size) or the PiDError that refused it."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.batch_key(self.decoder), []).append(i)
        out: list = [None] * len(items)
        for indices in groups.values():
            late = [i for i in indices if time.monotonic() > items[i].deadline]
            for i in late:  # its client has been answered 504: the work is not started
                out[i] = DeadlinePassed()
            live = [i for i in indices if i not in late]
            if not live:
                continue
            self.metrics.batch.observe(len(live))
            answers = await asyncio.get_running_loop().run_in_executor(None, self._decode_isolated,
                                                                       [items[i] for i in live])
            for i, answer in zip(live, answers):
                out[i] = _timed(answer, items[i].received)
        return out

    def _decode_isolated(self, group: list[DecodeRequest]) -> list:
        """The group's answers, (png, encode ms, batch size, decode start, decode end) each; where the batched
        decode is refused, each item alone, so a request that fails fails by itself."""
        try:
            started = time.perf_counter()
            with self.lock:
                images = self._decode_group(group)
            decoded = time.perf_counter()
            return [(*_encoded(image), len(group), started, decoded) for image in images]
        except PiDError as exc:
            if len(group) == 1:
                return [exc]
        return [answer for item in group for answer in self._decode_isolated([item])]

    def _decode_group(self, group: list[DecodeRequest]) -> list[bytes]:
        import torch

        first = group[0]
        images = self.decoder.decode(torch.cat([g.latent for g in group]), latent_space=first.latent_space,
                                     latent_sigma=first.latent_sigma, steps=first.steps, seed=[g.seed for g in group],
                                     window=first.window, overlap=first.overlap, output="pil")
        return images


class Metrics:
    """The replica's Prometheus metrics, through Ray Serve's metrics API (exported by Ray as ray_pid_*)."""

    def __init__(self):
        from ray.serve import metrics

        self.latency = metrics.Histogram("pid_decode_latency_seconds", description="a decode request, received to "
                                         "answered", boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300],
                                         tag_keys=("size",))
        self.batch = metrics.Histogram("pid_batch_size", description="requests decoded together",
                                       boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.queue = metrics.Gauge("pid_queue_depth", description="requests the replica holds (waiting or decoding)")
        self.errors = metrics.Counter("pid_errors_total", description="refused or failed requests, by kind",
                                      tag_keys=("kind",))
        self.images = metrics.Counter("pid_images_decoded_total", description="images answered")


class Warmup:
    """The replica's warm-up: one decode of each size (batch 1, seed 0) before /readyz says ready."""

    def __init__(self, sizes):
        self.sizes = [tuple(size) for size in sizes]
        self.done: list[tuple[int, int]] = []
        self.error: str | None = None

    def run(self, decoder, lock: threading.Lock) -> None:
        import torch

        cell = decoder.output_size((1, 1))
        channels = decoder.config.adapter.latent_channels
        try:
            for height, width in self.sizes:
                z = torch.randn(1, channels, height // cell[0], width // cell[1],
                                generator=torch.Generator().manual_seed(0))
                with lock:
                    decoder.decode(z, seed=0)
                self.done.append((height, width))
        except Exception as exc:  # noqa: BLE001 - any failure is the replica's state, answered by /readyz
            self.error = f"{type(exc).__name__}: {exc}"[:500]

    def state(self) -> dict:
        status = "failed" if self.error else "ready" if len(self.done) == len(self.sizes) else "warming"
        return {"status": status, "warmed": [f"{h}x{w}" for h, w in self.done],
                "pending": [f"{h}x{w}" for h, w in self.sizes if (h, w) not in self.done], "error": self.error}


@serve.ingress(app)
class HttpDecoderServer(DecoderServer):
    """DecoderServer behind the FastAPI app: the routes above, bound to the replica (at import, in every process
    that runs one)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` (a declared Content-Length over it: before reading)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit() or len(declared.strip()) > 19:
            raise InputError("The Content-Length header is not a byte count.", received=declared[:40],
                             expected="a non-negative integer", fix="send the body's length in bytes (or no header)")
        if int(declared) > limit:
            raise _TooLarge(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def read_latent_body(body: bytes):
    """A latent file sent as the body, read as `pid-sdk decode` reads files (recognised by its first bytes)."""
    from pid_sdk.latent_files import read_latent_file

    suffix = next((s for magic, s in MAGIC_SUFFIXES if body.startswith(magic)), ".safetensors")
    with tempfile.TemporaryDirectory(prefix="pid-serve-") as tmp:
        path = Path(tmp) / f"latent{suffix}"
        path.write_bytes(body)
        try:
            latent = read_latent_file(path)  # weights_only, checked from its metadata before it is read
        except PiDError as exc:  # the temporary file's name means nothing to the client
            raise type(exc)(exc.what.replace(str(path), "the request body").replace(path.name, "the body"),
                            received=exc.received, expected=exc.expected, fix=exc.fix) from None
    return latent[None] if latent.ndim == 3 else latent


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _encoded(image) -> tuple[bytes, float]:
    """The PNG and how long encoding it took (ms)."""
    started = time.perf_counter()
    png = _png(image)
    return png, 1000 * (time.perf_counter() - started)


def _timed(answer, received: float):
    """(png, batch, Server-Timing parts) from a decoded answer; an error as it is."""
    if not isinstance(answer, tuple):
        return answer
    png, encode_ms, batch, started, decoded = answer
    timing = (f"queue;dur={1000 * (started - received):.1f}, decode;dur={1000 * (decoded - started):.1f}, "
              f"encode;dur={encode_ms:.1f}")
    return png, batch, timing


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def build_app(options: ServeOptions):
    """The Ray Serve application: one deployment of `replicas` DecoderServer replicas behind the FastAPI app."""
    import torch

    gpus = options.num_gpus if options.num_gpus is not None else (1 if torch.cuda.is_available() else 0)
    scaling = {"autoscaling_config": options.autoscaling} if options.autoscaling else {"num_replicas": options.replicas}
    deployment = serve.deployment(HttpDecoderServer, name="pid-decoder",
                                  ray_actor_options={"num_gpus": gpus}, max_ongoing_requests=options.max_queue + 1,
                                  graceful_shutdown_timeout_s=DRAIN_S, **scaling)
    return deployment.bind(asdict(options))


def replica_threads(options: ServeOptions) -> int:
    """CPU threads per replica: this machine's torch threads shared among the replicas it may run."""
    import torch

    replicas = (options.autoscaling or {}).get("max_replicas", options.replicas)
    return max(1, torch.get_num_threads() // max(1, int(replicas)))


def run_server(options: ServeOptions, log=print) -> None:
    """Start (or join, with `address`) Ray, run the application, and serve until SIGINT / SIGTERM; then shut the
    application down, and the Ray instance too when this command started it."""
    import signal
    import threading
    from dataclasses import replace

    import ray

    from pid_sdk.registry import license_of

    stop = threading.Event()
    owns_ray = options.address is None and not ray.is_initialized()
    options = replace(options, threads=options.threads or replica_threads(options))
    metrics = {"_metrics_export_port": options.metrics_port} if owns_ray and options.metrics_port else {}
    ray.init(address=options.address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             **metrics)
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(build_app(options), name="pid-sdk", route_prefix="/", blocking=False)
        log(f"pid-sdk serve: {options.model} at http://{options.host}:{options.port} "
            f"(POST /v1/decode, GET /v1/model, /livez, /readyz, /healthz; Ctrl-C stops)", flush=True)
        log(f"pid-sdk serve: licence of the weights: {license_of(options.model)}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:  # requests in flight finish (the replicas drain), then the local Ray instance this command started goes
        log("pid-sdk serve: stopping: requests in flight finish, new ones are refused", flush=True)
        serve.delete("pid-sdk")  # waits for each replica's ongoing requests (graceful_shutdown_timeout_s)
        if owns_ray:
            serve.shutdown()
            ray.shutdown()
        log("pid-sdk serve: stopped", flush=True)
