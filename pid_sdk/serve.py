"""`pid-sdk serve`: the decoder as a Ray Serve application with a FastAPI ingress (optional extra `serve`).

    GET  /healthz                                  200 once this replica's model is loaded
    POST /v1/decode?latent_space=&seed=&latent_sigma=&steps=&window=&overlap=   body: a latent file -> image/png

The query is a typed model (`DecodeQuery`): every field checked for kind and range, an unknown parameter refused,
before the body is read. Requests of the same output size and options that arrive together are decoded as one batch
(`@serve.batch`), each with its own seed, so a batched request returns what it would alone (to float rounding); a
request that fails in a batch fails alone (its batch-mates are decoded again without it). Bad input is a 400 with
the PiDError's fields, an oversized body a 413, a full replica queue a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
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


class DecodeQuery(BaseModel):
    """The query of POST /v1/decode: each field typed and bounded, nothing else accepted."""

    model_config = ConfigDict(extra="forbid")

    latent_space: str | None = Field(None, max_length=32, description="the LDM's latent space (default: the model's)")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    latent_sigma: float = Field(0.0, ge=0, allow_inf_nan=False, description="noise level of a partial capture")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="network calls (default: the sampler's, 4)")
    window: str | None = Field(None, max_length=16, description="HxW or auto: decode as overlapping windows")
    overlap: int | None = Field(None, ge=0, le=65536, description="pixels windows share (default: a quarter)")


@dataclass(frozen=True)
class DecodeRequest:
    latent: object  # torch.Tensor [1, C, h, w]
    latent_space: str | None
    seed: int
    latent_sigma: float
    steps: int
    window: tuple[int, int] | str | None = None
    overlap: int | None = None

    def batch_key(self, decoder) -> tuple:
        """Requests that can share one batched decode: same output size and options, any seed."""
        size = decoder.output_size(tuple(self.latent.shape[-2:]), self.latent_space)
        return (size, tuple(self.latent.shape[1:]), self.latent_space, self.latent_sigma, self.steps, self.window,
                self.overlap)


class _TooLarge(Exception):
    def __init__(self, size: int, limit: int):
        super().__init__("The request body is too large.")
        self.size, self.limit = size, limit


app = FastAPI(title="pid-sdk", description="The PiD pixel diffusion decoder over HTTP")


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
            return error_response(503, "the decoder's queue is full", self.pending, fix="retry after a second, "
                                  "or add replicas", headers={"Retry-After": "1"})
        self.pending += 1
        try:
            body = await read_body(request, self.options.max_body_bytes)
            result = await self.decode_batch(self._parse(body, query))
            if isinstance(result, PiDError):
                raise result
            png, batch = result
            return Response(png, media_type="image/png", headers={"X-PiD-Batch-Size": str(batch)})
        finally:
            self.pending -= 1

    def _parse(self, body: bytes, query: DecodeQuery) -> DecodeRequest:
        latent = read_latent_body(body)
        if latent.ndim != 4 or latent.shape[0] != 1:
            raise InputError("A request decodes one latent.", received=f"shape {tuple(latent.shape)}",
                             expected="[C, h, w] or [1, C, h, w]", fix="send one request per latent")
        from pid_sdk.windows import parse_window

        window = parse_window(query.window, "window=")
        self.decoder.check(latent, latent_space=query.latent_space, latent_sigma=query.latent_sigma, window=window,
                           overlap=query.overlap)
        steps = query.steps or self.decoder.default_steps("sde")
        return DecodeRequest(latent, query.latent_space, query.seed, query.latent_sigma, steps, window, query.overlap)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def decode_batch(self, items: list[DecodeRequest]) -> list:
        """Split what arrived together by output size and options; decode each group as one batch, each item
        with its own seed. Each item's answer is (png, batch size) or the PiDError that refused it."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.batch_key(self.decoder), []).append(i)
        out: list = [None] * len(items)
        for indices in groups.values():
            answers = await asyncio.get_running_loop().run_in_executor(None, self._decode_isolated,
                                                                       [items[i] for i in indices])
            for i, answer in zip(indices, answers):
                out[i] = answer
        return out

    def _decode_isolated(self, group: list[DecodeRequest]) -> list:
        """The group's answers; where the batched decode is refused, each item alone, so a request that fails
        fails by itself."""
        try:
            return [(png, len(group)) for png in self._decode_group(group)]
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
        return [_png(image) for image in images]


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
                                  **scaling)
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
    ray.init(address=options.address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(build_app(options), name="pid-sdk", route_prefix="/", blocking=False)
        log(f"pid-sdk serve: {options.model} at http://{options.host}:{options.port} "
            f"(POST /v1/decode, GET /v1/model, GET /healthz; Ctrl-C stops)", flush=True)
        log(f"pid-sdk serve: licence of the weights: {license_of(options.model)}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:  # the local Ray instance this command started goes with it; on a cluster, only this application
        if owns_ray:
            ray.shutdown()
        else:
            serve.delete("pid-sdk")
        log("pid-sdk serve: stopped", flush=True)
