"""`pid-sdk serve`: the decoder as a Ray Serve application (optional extra `serve`; Ray is imported lazily).

    GET  /healthz                                  200 once this replica's model is loaded
    POST /v1/decode?latent_space=&seed=&latent_sigma=&steps=   body: a latent file -> 200 image/png

Requests of the same output size and options that arrive together are decoded as one batch (`@serve.batch`), each
with its own seed, so a batched request returns what it would alone (to float rounding); bad input is a 400 with
the PiDError's fields, an oversized body a 413, a full replica queue a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ray import serve

from pid_sdk.errors import InputError, PiDError

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


@dataclass(frozen=True)
class DecodeRequest:
    latent: object  # torch.Tensor [1, C, h, w]
    latent_space: str | None
    seed: int
    latent_sigma: float
    steps: int

    def batch_key(self, decoder) -> tuple:
        """Requests that can share one batched decode: same output size and options, any seed."""
        size = decoder.output_size(tuple(self.latent.shape[-2:]), self.latent_space)
        return (size, tuple(self.latent.shape[1:]), self.latent_space, self.latent_sigma, self.steps)


class DecoderServer:
    """One replica: a loaded Decoder, a bounded queue, and a batched decode."""

    def __init__(self, options: dict):
        from pid_sdk.decoder import Decoder

        self.options = ServeOptions(**options)
        self.decoder = Decoder.load(self.options.model, backend=self.options.backend)
        self.pending = 0
        self.decode_batch.set_max_batch_size(self.options.max_batch)
        self.decode_batch.set_batch_wait_timeout_s(self.options.batch_wait_ms / 1000)

    async def __call__(self, request):
        from starlette.responses import JSONResponse, Response

        if request.url.path.rstrip("/").endswith("/healthz"):
            return JSONResponse({"status": "ok", "model": self.options.model, "backend": self.decoder.backend_name})
        if not request.url.path.rstrip("/").endswith("/v1/decode") or request.method != "POST":
            return JSONResponse({"error": "not found", "fix": "POST /v1/decode or GET /healthz"}, status_code=404)
        if self.pending >= self.options.max_queue:
            return JSONResponse({"error": "the decoder's queue is full", "received": self.pending,
                                 "fix": "retry after a second, or add replicas"}, status_code=503,
                                headers={"Retry-After": "1"})
        self.pending += 1
        try:
            body = await _read_body(request, self.options.max_body_bytes)
            item = self._parse(body, request.query_params)
            png, batch = await self.decode_batch(item)
            return Response(png, media_type="image/png", headers={"X-PiD-Batch-Size": str(batch)})
        except _TooLarge as exc:
            return JSONResponse({"error": str(exc), "received": exc.size, "expected": f"<= {exc.limit} bytes",
                                 "fix": "send one latent per request"}, status_code=413)
        except PiDError as exc:
            return JSONResponse({"error": exc.what, "received": _jsonable(exc.received),
                                 "expected": _jsonable(exc.expected), "fix": exc.fix}, status_code=400)
        finally:
            self.pending -= 1

    def _parse(self, body: bytes, params) -> DecodeRequest:
        from pid_sdk.latent_files import read_latent_file

        suffix = next((s for magic, s in MAGIC_SUFFIXES if body.startswith(magic)), ".safetensors")
        with tempfile.TemporaryDirectory(prefix="pid-serve-") as tmp:
            path = Path(tmp) / f"latent{suffix}"
            path.write_bytes(body)
            try:
                latent = read_latent_file(path)  # weights_only, checked from its metadata before it is read
            except PiDError as exc:  # the temporary file's name means nothing to the client
                raise InputError(*(str(v).replace(str(path), "the request body").replace(path.name, "the body")
                                   if v is not None else None for v in (exc.what,)),
                                 received=exc.received, expected=exc.expected, fix=exc.fix) from None
        latent = latent[None] if latent.ndim == 3 else latent
        item = DecodeRequest(latent, params.get("latent_space") or None, _param(params, "seed", int, 0),
                             _param(params, "latent_sigma", float, 0.0), _param(params, "steps", int, 4))
        if latent.ndim != 4 or latent.shape[0] != 1:
            raise InputError("A request decodes one latent.", received=f"shape {tuple(latent.shape)}",
                             expected="[C, h, w] or [1, C, h, w]", fix="send one request per latent")
        self.decoder.check(latent, latent_space=item.latent_space, latent_sigma=item.latent_sigma)
        return item

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def decode_batch(self, items: list[DecodeRequest]) -> list[tuple[bytes, int]]:
        """Split what arrived together by output size and options; decode each group as one batch, each item
        with its own seed."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.batch_key(self.decoder), []).append(i)
        out: list = [None] * len(items)
        for indices in groups.values():
            group = [items[i] for i in indices]
            pngs = await asyncio.get_running_loop().run_in_executor(None, self._decode_group, group)
            for i, png in zip(indices, pngs):
                out[i] = (png, len(indices))
        return out

    def _decode_group(self, group: list[DecodeRequest]) -> list[bytes]:
        import torch

        first = group[0]
        images = self.decoder.decode(torch.cat([g.latent for g in group]), latent_space=first.latent_space,
                                     latent_sigma=first.latent_sigma, steps=first.steps, seed=[g.seed for g in group],
                                     output="pil")
        return [_png(image) for image in images]


class _TooLarge(Exception):
    def __init__(self, size: int, limit: int):
        super().__init__("The request body is too large.")
        self.size, self.limit = size, limit


async def _read_body(request, limit: int) -> bytes:
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit:
        raise _TooLarge(declared, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _param(params, name: str, kind, default):
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise InputError(f"The query parameter {name} is not a {kind.__name__}.", received=raw[:40],
                         expected=f"{name}={default}", fix=f"pass ?{name}={default}") from None


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
    """The Ray Serve application: one deployment of `replicas` DecoderServer replicas."""
    import torch

    gpus = options.num_gpus if options.num_gpus is not None else (1 if torch.cuda.is_available() else 0)
    scaling = {"autoscaling_config": options.autoscaling} if options.autoscaling else {"num_replicas": options.replicas}
    deployment = serve.deployment(DecoderServer, name="pid-decoder", ray_actor_options={"num_gpus": gpus},
                                  max_ongoing_requests=options.max_queue + 1, **scaling)
    return deployment.bind(asdict(options))


def run_server(options: ServeOptions, log=print) -> None:
    """Start (or join, with `address`) Ray, run the application, and serve until SIGINT / SIGTERM; then shut the
    application down, and the Ray instance too when this command started it."""
    import signal
    import threading

    import ray

    stop = threading.Event()
    owns_ray = options.address is None and not ray.is_initialized()
    ray.init(address=options.address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(build_app(options), name="pid-sdk", route_prefix="/", blocking=False)
        log(f"pid-sdk serve: {options.model} at http://{options.host}:{options.port} "
            f"(POST /v1/decode, GET /healthz; Ctrl-C stops)", flush=True)
        while not stop.wait(0.5):
            pass
    finally:  # the local Ray instance this command started goes with it; on a cluster, only this application
        if owns_ray:
            ray.shutdown()
        else:
            serve.delete("pid-sdk")
        log("pid-sdk serve: stopped", flush=True)
