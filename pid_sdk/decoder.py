"""`Decoder`: load any PiD model and decode latents into images 4x (SigLIP: 8x) their pixel size."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from pid_sdk import inputs, registry
from pid_sdk.checkpoints import LoadedModel, load_checkpoint
from pid_sdk.config import PiDConfig, get_preset
from pid_sdk.errors import ConfigError, InputError, NumericsError, counted
from pid_sdk.latents import LatentSpace, get_latent_space
from pid_sdk.memory import MemoryEstimate, estimate_memory, format_bytes, parse_memory
from pid_sdk.model import build_model, parameter_count, randomize
from pid_sdk.runtime.manifest import is_engine_dir
from pid_sdk.runtime.speed import Speed, get_speed, prepare_model
from pid_sdk.runtime.torch_backend import TorchRuntime
from pid_sdk.sampling import dynamic_shift, sample_student, sample_teacher
from pid_sdk.windows import BLENDS, Window, WindowedStep, auto_window, check_window, default_overlap, plan_windows

SAMPLERS = ("sde", "ode", "teacher")
STEPS = {"sde": 4, "ode": 4, "teacher": 50}  # the distilled students' 4 steps; the teacher's own default (spec 6.2)
OUTPUTS = ("tensor", "numpy", "pil")


class Decoder:
    """A model ready to decode on one backend. Build it with `Decoder.load`."""

    def __init__(self, config: PiDConfig, runtime, *, text_encoder=None, source: str = ""):
        if config.adapter is None:
            raise ConfigError(
                f"{config.name} is the bare PixelDiT backbone: it has no latent adapter and cannot decode.",
                received=source, expected="a PiD checkpoint (keys lq_proj.*)",
                fix="load a PiD model (e.g. PiD_res2k_sr4x_official_flux_distill_4step/model_ema_bf16.pth)")
        self.config, self.runtime, self.source = config, runtime, source
        self.text_encoder = _text_encoder(text_encoder, runtime.device, config.backbone.txt_max_length)
        self.max_output_side = inputs.MAX_OUTPUT_SIDE
        self.max_pixels = inputs.MAX_PIXELS  # output pixels of one call: bounds the memory a request can take
        self._told_windows: set[tuple[int, int]] = set()  # sizes an engine folder decodes through windows
        self.max_memory: int | None = None  # bytes a decode may take (estimated), unless decode(max_memory=) says
        self.license: str | None = None  # the weights' licence where the artefact or manifest records it
        self._params: int | None = None

    @classmethod
    def from_model(cls, loaded: LoadedModel, *, device: str | torch.device | None = None,
                   precision: str | None = None, text_encoder=None, speed: Speed | str | None = None,
                   max_memory: int | str | None = None) -> Decoder:
        """The PyTorch backend over a loaded model: CPU fp32; CUDA with fp32 parameters under bf16 autocast.

        `speed` trades the reference setting for a faster one ("bf16", "fast", "fp8" or a `Speed`); `max_memory` as
        in `load`.
        """
        dev = _resolve_device(device)
        chosen = get_speed(speed, dev)
        precision = precision or ("bf16" if dev.type == "cuda" or chosen.weights != "fp32" else "fp32")
        if precision not in ("fp32", "bf16"):
            raise ConfigError("Unknown precision.", received=precision, expected="fp32 or bf16",
                              fix="pass precision='fp32' (CPU reference) or 'bf16' (GPU)")
        if precision == "fp32" and chosen.weights != "fp32":
            raise ConfigError("fp32 precision needs fp32 weights.", received=f"weights {chosen.weights}",
                              fix="leave precision unset with a bf16 / fp8 speed setting")
        if loaded.config.adapter is None:  # refuse before moving 1.3B parameters anywhere
            return cls(loaded.config, None, source=loaded.path)
        # By default parameters stay fp32 and bf16 comes from autocast: the official precision policy (spec 7.4).
        runtime = TorchRuntime(prepare_model(loaded.model, chosen, dev), dev, precision, chosen)
        decoder = cls(loaded.config, runtime, text_encoder=text_encoder, source=loaded.path)
        decoder.license = (loaded.manifest or {}).get("license")
        return decoder._budget(max_memory)

    @classmethod
    def load(cls, path: str | Path | None = None, *, preset: str | None = None, seed: int = 0,
             backend: str = "auto", device: str | torch.device | None = None, precision: str | None = None,
             trust_pickle: bool = False, text_encoder=None, device_info=None, providers=None,
             speed: Speed | str | None = None, verify: bool = True,
             max_memory: int | str | None = None, variant: str | None = None,
             revision: str | None = None) -> Decoder:
        """An engine folder, an artefact folder, an official/repacked checkpoint, or `preset=` with random weights.

        For an engine folder `backend` picks TensorRT, ONNX Runtime or PyTorch; "auto" takes, per decode, the first
        that runs here and warns with the reason for each one it skips; `precision` keeps to the folder's entries
        of that precision (refused, naming the entries there are, where it has none); `engine` then says what ran.
        `speed` applies to the PyTorch backend (see `Speed`). Every file loaded from a folder is checked against its
        manifest's sha256; `verify=False` is the explicit opt-out for folders whose manifest has lost its hashes
        (paths are confined regardless). `max_memory` (bytes, or "16GiB") bounds every decode's estimated peak
        (`estimate_memory`): larger outputs decode as windows that fit, windows run batched as far as it allows.

        Released models load by name from the Hugging Face Hub (pid_sdk/registry.py, `pid-sdk models`):
        `load("nvidia/PiD", variant="flux1-2k")`, `load("flux1-2k")`, or any file as `load("hf://OWNER/NAME/PATH")`,
        at `revision`; the file is fetched into the Hub cache and converted once into an artefact beside it.
        """
        if path is None and preset is None:
            raise ConfigError("Decoder.load needs a path or a preset.",
                              fix="Decoder.load('model_dir') or preset='tiny'")
        if path is not None and not isinstance(path, (str, Path)):
            raise ConfigError("Decoder.load takes a path.", received=type(path).__name__,
                              expected="a str or pathlib.Path: an engine folder, artefact folder or checkpoint",
                              fix="Decoder.load('path/to/model')")
        trust_pickle, verify = inputs.check_flag("trust_pickle", trust_pickle), inputs.check_flag("verify", verify)
        max_memory = None if max_memory is None else parse_memory(max_memory)  # refused before loading anything
        if path is not None and registry.is_hub_source(path, variant):
            path, _ = registry.resolve(str(path), variant, revision, trust_pickle)
            preset = None  # the artefact holds its network
        elif variant is not None or revision is not None:
            raise ConfigError("variant= and revision= name a model of the Hub, not a path.", received=str(path),
                              fix="pass a repository (e.g. 'nvidia/PiD') or hf://OWNER/NAME/PATH, or drop them")
        _check_text_encoder(text_encoder)
        if path is not None and is_engine_dir(path):
            from pid_sdk.runtime.open_folder import open_engine_set

            if speed is not None:
                raise ConfigError("speed= sets up the PyTorch backend over a checkpoint, not an engine folder.",
                                  received=f"speed={speed!r} with {path}",
                                  fix="drop speed= (engines fix their precision at build time), or load the "
                                      "checkpoint itself")

            manifest, runtime = open_engine_set(path, backend, device_info, providers, verify=verify,
                                                precision=precision)
            decoder = cls(manifest.config, runtime, text_encoder=text_encoder, source=str(path))
            decoder.license = manifest.license
            return decoder._budget(max_memory)
        if backend not in ("auto", "pytorch"):
            raise ConfigError(f"A checkpoint runs on the PyTorch backend, not {backend}.", received=str(path),
                              fix="export and build engines first (pid-sdk export / pid-sdk build)")
        if path is None:
            cfg = get_preset(preset)
            model = randomize(build_model(cfg), seed)
            loaded = LoadedModel(model, cfg, "random", f"preset:{preset} (seeded random weights, seed {seed})", [])
        else:
            loaded = load_checkpoint(path, preset=preset, trust_pickle=trust_pickle, verify=verify)
        return cls.from_model(loaded, device=device, precision=precision, text_encoder=text_encoder, speed=speed,
                              max_memory=max_memory)

    def _budget(self, max_memory) -> Decoder:
        self.max_memory = None if max_memory is None else parse_memory(max_memory)
        return self

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def precision(self) -> str:
        return self.runtime.precision

    @property
    def backend_name(self) -> str:
        return self.runtime.name

    @property
    def engine(self) -> dict | None:
        """What the last decode ran: {"entry", "backend", "provider", "precision", "files"} ("entry" None and no
        files for the PyTorch backend); None for an engine folder before its first decode."""
        return self.runtime.engine

    @property
    def latent_space(self) -> str | None:
        return self.config.latent_space

    def output_size(self, latent_hw: tuple[int, int], latent_space: str | None = None) -> tuple[int, int]:
        space = get_latent_space(latent_space or self.latent_space)
        return space.output_size(*latent_hw, self.config.adapter.sr_scale)

    def check(self, latent, *, latent_space: str | None = None, latent_sigma: float | Tensor = 0.0,
              normalized: bool = True, stats: dict[str, Tensor] | None = None, window=None,
              overlap: int | None = None) -> None:
        """Raise the InputError `decode` would raise for this latent (and windows), without decoding: to refuse a
        request before it waits for the GPU, or before a progress bar opens."""
        space = get_latent_space(latent_space or self._require_space())
        z = self._check_latent(latent, space, normalized, stats)
        inputs.check_sigma(latent_sigma, z.shape[0], space)
        height, width = space.output_size(z.shape[-2], z.shape[-1], self.config.adapter.sr_scale)
        self._windows(window, overlap, height, width, height // z.shape[-2])

    def decode(
        self,
        latent,
        *,
        latent_space: str | None = None,
        latent_sigma: float | Tensor = 0.0,
        prompt: str | list[str] | None = None,
        text_embeddings: Tensor | None = None,
        negative_embeddings: Tensor | None = None,
        steps: int | None = None,
        seed: int | list[int] | None = 0,
        sampler: str = "sde",
        guidance: float = 5.0,
        normalized: bool = True,
        stats: dict[str, Tensor] | None = None,
        output: str = "tensor",
        on_step: Callable[[int, int], None] | None = None,
        window: tuple[int, int] | str | None = None,
        overlap: int | None = None,
        blend: str = "linear",
        windows_per_call: int | str = "auto",
        max_memory: int | str | None = None,
    ):
        """Decode [B, C, h, w] (or [C, h, w]) latents. Returns [B, 3, H, W] in [-1, 1], uint8 [B, H, W, 3] or PIL.

        `latent_sigma` is the noise level of a partially denoised capture (0 = clean), in the LDM's own frame
        (SDXL: the Euler sigma). `sampler` is "sde" (default) or "ode" for distilled students, "teacher" for
        the undistilled DPM-Solver++ model with text-only guidance; `steps` defaults to the sampler's own (4 for
        the students, 50 for the teacher). `seed` defaults to 0, as in the CLI and the server (the C ABI takes it
        as an argument): a latent decodes to the same image everywhere (None draws a fresh one). It may list one
        seed per latent: each image then draws the noise it would draw alone with that seed, and equals the lone
        decode up to the float rounding of batched matrix products (a few 1e-6).

        `window=(h, w)` (output pixels) or "auto" denoises the output as overlapping windows of that size, each at
        the positions of a whole image of its size, their velocities blended at every step across `overlap` pixels
        (default: a quarter of the window): any output size in the memory of one window, and on an engine folder
        any size through its buckets (pid_sdk/windows.py). "auto" takes the largest trained size (an engine
        folder: bucket) that fits the output. A window covering the whole output is the whole-image decode. An
        engine folder without an entry of the output's size decodes it through windows by itself (and says so
        once); a whole-image output larger than the model's trained sizes warns, with this fix. `blend` shapes
        the weights across an overlap: "linear" (default, chosen by bench/windows.py: docs/guide.md), "cosine" or
        "flat". `windows_per_call` stacks that many windows on the batch axis of one network call (an engine folder
        needs entries of that batch): faster where one window leaves the GPU idle, with that many windows'
        activations in memory; "auto" (default) stacks as many as `max_memory` allows (one without a budget).

        `max_memory` (bytes, or "16GiB"; default: the one given to `load`) bounds the decode's estimated peak
        (`estimate_memory`, weights included): an output whose whole-image decode would pass it decodes as windows
        (window="auto" takes the largest size that fits); a decode that cannot fit is refused before it starts.
        """
        inputs.check_choice("sampler", sampler, SAMPLERS)
        inputs.check_choice("output", output, OUTPUTS)
        inputs.check_callback("on_step", on_step)
        inputs.check_choice("blend", blend, BLENDS)
        per_call = windows_per_call if windows_per_call == "auto" else inputs.check_int(
            "windows_per_call", windows_per_call, 1, 1024, "auto (default), or 1, 2, 4, ...")
        budget = self.max_memory if max_memory is None else parse_memory(max_memory)
        steps = inputs.check_steps(self.default_steps(sampler) if steps is None else steps)
        guidance = inputs.check_guidance(guidance)
        space = get_latent_space(latent_space or self._require_space())
        z = self._check_latent(latent, space, normalized, stats)
        seed = inputs.check_seed(seed, z.shape[0])
        sigma = inputs.check_sigma(latent_sigma, z.shape[0], space)
        z, sigma = space.from_capture(z, sigma)
        text = self._text(prompt, text_embeddings, z.shape[0])
        height, width = space.output_size(z.shape[-2], z.shape[-1], self.config.adapter.sr_scale)
        shape = (z.shape[0], 3, height, width)
        windows, per_call = self._plan(window, overlap, per_call, budget, shape, cell=height // z.shape[-2])
        step = partial(self._step, windows, blend, per_call, latent=z, latent_sigma=sigma, height=height,
                       width=width)
        cond = step(text=text)
        gen = _generators(seed, self.device)  # after the backend: with backend="auto" it may have fallen back
        watch = _FiniteWatch()
        fn = watch.wrap(_model_fn(cond))
        if sampler == "teacher":
            uncond_fn = None
            if guidance != 1.0:  # guidance 1 is the conditional model alone: no negative pass
                negative = self._negative(negative_embeddings, text)
                uncond = step(text=negative)
                uncond_fn = watch.wrap(_model_fn(uncond))
            image = sample_teacher(fn, shape, steps=steps, shift=dynamic_shift(height, width), guidance=guidance,
                                   uncond_fn=uncond_fn, generator=gen, device=self.device, on_step=on_step)
        else:
            image = sample_student(fn, shape, steps=steps, mode=sampler, generator=gen, device=self.device,
                                   on_step=on_step)
        watch.check(image, self.backend_name)
        return to_output(image.cpu(), output)

    def _plan(self, window, overlap, per_call, budget: int | None, shape: tuple[int, ...], cell: int):
        """(windows or None for the whole image, windows per call) for outputs of `shape`, within `budget`."""
        batch, _, height, width = shape
        need = partial(self.estimate_memory, height, width, batch=batch, overlap=overlap)
        why = None
        if window is None and budget is not None and (whole := need().total) > budget:  # windows that fit instead
            window, why = "auto", f"its whole-image decode (~{format_bytes(whole)}) would pass max_memory=" \
                                  f"{format_bytes(budget)}"
        if window == "auto" and budget is not None:
            window = self._window_within(shape, cell, budget, need)
        windows = self._windows(window, overlap, height, width, cell)
        if windows is None:
            windows = self._bucket_windows(shape, cell, budget, need)
            why = f"{self.source} has no engine of {height}x{width} (pid-sdk export {self.source} --size " \
                  f"{height}x{width} adds a whole-image engine)"
        if windows is None:
            self._warn_if_untrained(height, width)
            return None, 1
        if why is not None:
            self._tell_windows(windows, why)
        size = (windows[0].height, windows[0].width)
        if per_call == "auto":
            per_call = self._windows_per_call(size, len(windows), batch, budget, need)
        if budget is not None and (chosen := need(window=size, windows_per_call=per_call)).total > budget:
            raise _over_budget(budget, size, chosen, shape, per_call)
        return windows, per_call

    def _windows(self, window, overlap, height: int, width: int, cell: int) -> list[Window] | None:
        if window is None:
            if overlap is not None:
                raise InputError("overlap= applies to windowed decoding only.", received=overlap,
                                 fix="pass window='auto' (or window=(h, w)) with it, or drop overlap=")
            return None
        if isinstance(window, str) and window == "auto":
            window = auto_window(height, width, self._window_sizes(), cell)
        size, overlap = check_window(window, overlap, height, width, cell)
        return plan_windows(height, width, size, overlap)

    def _warn_if_untrained(self, height: int, width: int) -> None:
        """Larger outputs than the model saw in training drift in colour and detail as a whole image (RoPE and
        attention past their trained range): say so, with the windowed decode that keeps to trained sizes."""
        trained = self.config.trained_sizes
        largest = max(trained, key=lambda s: s[0] * s[1]) if trained else None
        if largest is None or height * width <= largest[0] * largest[1] * 9 // 8:
            return
        warnings.warn(f"{height}x{width} is larger than any size {self.config.name} was trained at (largest "
                      f"{largest[0]}x{largest[1]}): a whole-image decode drifts there; pass window='auto' "
                      "(CLI: --window auto) to decode it as windows of trained sizes", stacklevel=4)

    def _window_sizes(self) -> list[tuple[int, int]]:
        """Sizes a window may take: an engine folder's buckets (its engines run no others), else the model's
        trained sizes."""
        buckets = self.bucket_sizes
        return buckets if buckets is not None else sorted(set(map(tuple, self.config.trained_sizes)))

    @property
    def bucket_sizes(self) -> list[tuple[int, int]] | None:
        """An engine folder's output sizes (its entries' buckets), sorted; None for a checkpoint."""
        manifest = getattr(self.runtime, "manifest", None)
        return None if manifest is None else sorted({e.bucket for e in manifest.entries})

    def _bucket_windows(self, shape: tuple[int, ...], cell: int, budget: int | None, need):
        """An engine folder without an engine of this size decodes it through windows of its buckets (said once
        per size), where one fits inside the output; otherwise None, and selection explains what is missing."""
        if getattr(self.runtime, "manifest", None) is None:
            return None
        height, width = shape[2:]
        buckets = self._window_sizes()
        size = auto_window(height, width, buckets, cell) if budget is None else \
            self._window_within(shape, cell, budget, need)
        if (height, width) in buckets or size not in buckets:
            return None
        return self._windows(size, None, height, width, cell)

    def _tell_windows(self, windows: list[Window], why: str) -> None:
        """Say once per output size that a decode nobody asked to window runs as windows, and why."""
        w = windows[-1]
        height, width = w.top + w.height, w.left + w.width
        if (height, width) not in self._told_windows:
            self._told_windows.add((height, width))
            warnings.warn(f"decoding {height}x{width} as {counted(len(windows), 'window')} of {w.height}x{w.width}: "
                          f"{why}", stacklevel=4)

    # --- memory ----------------------------------------------------------------------------------------------
    def estimate_memory(self, height: int, width: int, *, batch: int = 1, window: tuple[int, int] | None = None,
                        overlap: int | None = None, windows_per_call: int = 1) -> MemoryEstimate:
        """The estimated peak of decoding [batch] HxW outputs here, whole or as windows (pid_sdk/memory.py), at
        this backend's precision: on the CPU fp32, on the GPU bf16 activations (fp32 weights under autocast)."""
        if window is not None and overlap is None:
            cell = self.config.adapter.latent_factor * self.config.adapter.sr_scale
            overlap = default_overlap(min(window[0], height), min(window[1], width), cell)
        model = getattr(self.runtime, "model", None)  # an engine folder has none: counted from its config
        if self._params is None:
            self._params = parameter_count(self.config) if model is None else \
                sum(p.numel() for p in model.parameters())
        weight_bytes = next(model.parameters()).element_size() if model is not None else \
            {"fp32": 4, "fp8": 1}.get(self.precision, 2)
        activation_bytes = 4 if self.precision == "fp32" else 2
        return estimate_memory(self.config, self._params, height, width, batch=batch, window=window, overlap=overlap,
                               per_call=windows_per_call, weight_bytes=weight_bytes,
                               activation_bytes=activation_bytes)

    def _window_within(self, shape: tuple[int, ...], cell: int, budget: int, need) -> tuple[int, int]:
        """The largest window size (trained sizes, engine buckets) inside the output whose decode fits `budget`."""
        height, width = shape[2:]
        sizes = self._window_sizes()
        inside = [s for s in sizes if s[0] <= height and s[1] <= width] or [auto_window(height, width, sizes, cell)]
        fits = [s for s in inside if need(window=s).total <= budget]
        if fits:
            return max(fits, key=lambda s: s[0] * s[1])
        least = min(inside, key=lambda s: need(window=s).total)
        raise _over_budget(budget, least, need(window=least), shape)

    def _windows_per_call(self, size: tuple[int, int], count: int, batch: int, budget: int | None, need) -> int:
        """As many windows per call as the budget allows (and an engine folder has batches for); one without."""
        manifest = getattr(self.runtime, "manifest", None)
        allowed = range(1, min(count, 16) + 1) if manifest is None else sorted(
            e.batch // batch for e in manifest.entries if e.bucket == size and e.batch % batch == 0)
        fits = [k for k in allowed if budget is not None and need(window=size, windows_per_call=k).total <= budget]
        return max(fits, default=1)

    def _step(self, windows, blend: str, per_call: int, **prepared):
        if windows is None:
            return self.runtime.backend(**prepared)
        return WindowedStep(self.runtime, windows, blend=blend, per_call=per_call, **prepared)

    @staticmethod
    def default_steps(sampler: str) -> int:
        """The network calls `decode` makes by default with this sampler."""
        inputs.check_choice("sampler", sampler, SAMPLERS)
        return STEPS[sampler]

    # --- input checks ----------------------------------------------------------------------------------------
    def _require_space(self) -> str:
        if self.latent_space is None:
            raise InputError("The model does not say which latent space it decodes.", received=None,
                             expected="latent_space= one of flux1, sd3, sdxl, flux2, qwenimage, dinov2, siglip",
                             fix="pass latent_space= (the LDM that produced the latent)")
        return self.latent_space

    def _check_latent(self, latent, space: LatentSpace, normalized: bool, stats) -> Tensor:
        return inputs.check_latent(latent, space, model_space=self.latent_space, adapter=self.config.adapter,
                                   normalized=inputs.check_flag("normalized", normalized), stats=stats,
                                   max_side=self.max_output_side,
                                   max_pixels=self.max_pixels)

    def _text(self, prompt, embeddings, batch: int) -> Tensor:
        b = self.config.backbone
        if prompt is not None and embeddings is not None:
            raise InputError("Pass either prompt= or text_embeddings=, not both.", fix="drop one of them")
        if prompt is not None:
            if self.text_encoder is None:
                raise ConfigError("prompt= needs a text encoder.", received=prompt,
                                  expected="Decoder.load(..., text_encoder='path/to/gemma-2-2b-it')",
                                  fix="pass text_encoder= when loading, or pass text_embeddings=")
            prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
            embeddings = self.text_encoder.encode(prompts)
        if embeddings is None:  # no caption: the zero embedding used for caption dropout
            return torch.zeros(batch, b.txt_max_length, b.txt_embed_dim)
        return self._check_text(embeddings, batch)

    def _check_text(self, embeddings, batch: int) -> Tensor:
        b = self.config.backbone
        return inputs.check_text_embeddings(embeddings, batch, b.txt_max_length, b.txt_embed_dim)

    def _negative(self, negative, text: Tensor) -> Tensor:
        if negative is not None:
            return self._check_text(negative, text.shape[0])
        if self.text_encoder is not None:
            from pid_sdk.text import DEFAULT_NEGATIVE

            return self.text_encoder.encode([DEFAULT_NEGATIVE] * text.shape[0])
        raise InputError("The teacher's guidance needs a negative embedding.", received=None,
                         expected="negative_embeddings= or a text encoder", fix="pass one of them, or guidance=1")


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("Unknown device.", received=device, expected="cpu, cuda or cuda:N",
                          fix="pass device='cpu' or device='cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("A CUDA device was asked for, but this PyTorch sees no CUDA GPU.", received=device,
                          expected=f"a CUDA build of torch and a GPU (torch {torch.__version__})",
                          fix="pass device='cpu', or install a CUDA build of torch")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError("Unsupported device.", received=device, expected="cpu or cuda",
                          fix="pass device='cpu' or device='cuda'")
    return dev


def _generators(seed: int | list[int] | None, device: torch.device):
    """One generator for the batch, or one per item for a list of seeds."""
    def make(s: int | None) -> torch.Generator:
        gen = torch.Generator(device)
        gen.manual_seed(s) if s is not None else gen.seed()
        return gen

    return [make(s) for s in seed] if isinstance(seed, list) else make(seed)


def _model_fn(backend):
    return lambda x, sigma: backend.infer({"x": x, "sigma": sigma})["v"]


def _check_text_encoder(spec) -> None:
    if spec is not None and not isinstance(spec, (str, Path)) and not callable(getattr(spec, "encode", None)):
        raise ConfigError("text_encoder must be a folder or an encoder.", received=repr(spec)[:80],
                          expected="a path to a local Gemma-2-2B-it folder, or an object with encode(prompts)",
                          fix="text_encoder='path/to/gemma-2-2b-it'")


def _text_encoder(spec, device: torch.device, max_length: int):
    """A text encoder from a folder, producing the model's own text length (official models: 300 tokens)."""
    if spec is None or not isinstance(spec, (str, Path)):
        return spec
    from pid_sdk.text import TextEncoder

    return TextEncoder(spec, device=device, max_length=max_length)


class _FiniteWatch:
    """Remembers, without a host sync per step, whether each network call returned finite values, so a non-finite
    image is refused with the step that produced it."""

    def __init__(self):
        self.flags: list[Tensor] = []

    def wrap(self, fn):
        def watched(x: Tensor, sigma) -> Tensor:
            v = fn(x, sigma)
            self.flags.append(torch.isfinite(v).all())
            return v

        return watched

    def check(self, image: Tensor, backend: str) -> None:
        if torch.isfinite(image).all():
            return
        bad = [i + 1 for i, ok in enumerate(torch.stack(self.flags).tolist()) if not ok] if self.flags else []
        raise NumericsError("The decode produced NaN or Inf values.",
                            received=f"first non-finite network output at call {bad[0]} of {len(self.flags)}"
                            if bad else "the network's outputs were finite; the sampler's update overflowed",
                            expected="a finite image",
                            fix="check the model's weights for Inf / NaN (pid-sdk info MODEL loads them)"
                            + ("" if backend == "pytorch" else f"; decode with backend='pytorch' to see whether "
                               f"{backend}'s precision is the cause"))


def to_output(image: Tensor, output: str):
    """[B, 3, H, W] in [-1, 1] -> the requested form."""
    if output == "tensor":
        return image
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if output == "numpy":
        return array
    from PIL import Image

    return [Image.fromarray(a) for a in array]


def _over_budget(budget: int, size, need: MemoryEstimate, shape: tuple[int, ...], per_call: int = 1) -> InputError:
    calls = f", {per_call} per call" if per_call > 1 else ""
    batch = f"{shape[0]} x " if shape[0] > 1 else ""
    return InputError(f"A decode of {batch}{shape[2]}x{shape[3]} needs more memory than max_memory allows.",
                      received=f"max_memory={format_bytes(budget)}",
                      expected=f"at least {format_bytes(need.total)} (windows of {size[0]}x{size[1]}{calls}: weights "
                               f"{format_bytes(need.weights)}, activations {format_bytes(need.activations)}, image "
                               f"state {format_bytes(need.image_state)})",
                      fix="raise max_memory, pass a smaller window= (or windows_per_call=1), or decode fewer or "
                          "smaller latents per call")
