"""Model configurations and named presets.

Every official family is a preset built from one base with `dataclasses.replace`; any dimension can be changed the
same way, so a small model of any shape is one `replace` away.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from pid_sdk.errors import ConfigError

ROPE_MODES = ("plain", "ntk")
GATE_TYPES = ("per_token_per_dim", "per_token")
PADDING_MODES = ("zeros", "replicate")


@dataclass(frozen=True)
class BackboneConfig:
    """The PixelDiT T2I backbone (spec section 2)."""

    in_channels: int = 3
    patch_size: int = 16
    hidden_size: int = 1536
    num_heads: int = 24
    patch_depth: int = 14
    pixel_depth: int = 2
    pixel_hidden_size: int = 16
    pixel_attn_hidden_size: int = 1152
    pixel_num_heads: int = 16
    mlp_ratio: float = 4.0  # SwiGLU inner width is int(2 * int(hidden_size * mlp_ratio) / 3)
    pixel_mlp_ratio: float = 4.0
    txt_embed_dim: int = 2304
    txt_max_length: int = 300
    rope_theta: float = 10000.0
    text_rope_theta: float = 10000.0
    rope_scale: float = 16.0  # image positions span [0, rope_scale] whatever the grid size
    rope_mode: str = "plain"
    rope_ref: int = 1024  # NTK reference size in pixels (grid = rope_ref / patch_size)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def pixel_head_dim(self) -> int:
        return self.pixel_attn_hidden_size // self.pixel_num_heads

    @property
    def swiglu_hidden_size(self) -> int:
        return int(2 * int(self.hidden_size * self.mlp_ratio) / 3)

    @property
    def pixel_mlp_hidden_size(self) -> int:
        return int(self.pixel_hidden_size * self.pixel_mlp_ratio)

    @property
    def pixels_per_patch(self) -> int:
        return self.patch_size * self.patch_size


@dataclass(frozen=True)
class AdapterConfig:
    """The PiD latent adapter `lq_proj` and its gates (spec section 5.1, 5.2)."""

    latent_channels: int = 16  # as the LDM delivers them, before any unpatchify
    hidden_dim: int = 512
    num_res_blocks: int = 4
    num_groups: int = 4
    interval: int = 2  # a gate before every `interval`-th patch block
    gate: str = "per_token_per_dim"
    padding_mode: str = "zeros"
    pit_inject: bool = False
    sr_scale: int = 4
    latent_factor: int = 8  # pixels per latent cell of the source image
    unpatchify_factor: int = 1


# Output sizes (height, width) of the official checkpoints' training: square, 4:3, 3:4, 7:4, 4:7 at about 4.2
# megapixels, and twice each side for the 2k->4k models.
SIZES_2K = ((2048, 2048), (2304, 1728), (1728, 2304), (2688, 1536), (1536, 2688))
SIZES_4K = tuple((2 * h, 2 * w) for h, w in SIZES_2K)


@dataclass(frozen=True)
class PiDConfig:
    """A whole network: the backbone, and the adapter unless it is the bare PixelDiT; and the output sizes its
    weights were trained at (the sizes export and compare default to, and windowed decoding's windows)."""

    name: str
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig | None = None
    latent_space: str | None = None
    description: str = ""
    trained_sizes: tuple[tuple[int, int], ...] = SIZES_2K

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_gates(self) -> int:
        return 0 if self.adapter is None else math.ceil(self.backbone.patch_depth / self.adapter.interval)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PiDConfig":
        """A configuration read from a manifest: every field type-checked and bounded (`validate`) before any
        module is built, so a hand-edited depth of 10**7 is refused, not built until memory runs out."""
        try:
            backbone = BackboneConfig(**data["backbone"])
            adapter = AdapterConfig(**data["adapter"]) if data.get("adapter") else None
            rest = {k: v for k, v in data.items() if k not in ("backbone", "adapter")}
            if "trained_sizes" in rest:  # JSON lists -> the tuples a frozen config holds
                rest["trained_sizes"] = tuple(tuple(size) for size in rest["trained_sizes"])
            return cls(backbone=backbone, adapter=adapter, **rest)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(
                "The model configuration could not be read.",
                received=f"{type(data).__name__}: {sorted(data) if isinstance(data, dict) else repr(data)[:80]} "
                         f"({type(exc).__name__}: {exc})"[:300],
                expected="a dict written by PiDConfig.to_dict()",
                fix="re-create the artefact with `pid-sdk convert`",
            ) from None


# Bounds on every field a manifest can set: a few times the largest official model, far below what would exhaust
# a machine while the network is built.
BOUNDS = {
    "in_channels": (1, 16), "patch_size": (1, 64), "hidden_size": (4, 16384), "num_heads": (1, 256),
    "patch_depth": (1, 128), "pixel_depth": (0, 32), "pixel_hidden_size": (4, 1024),
    "pixel_attn_hidden_size": (4, 16384), "pixel_num_heads": (1, 256), "mlp_ratio": (0.01, 16.0),
    "pixel_mlp_ratio": (0.01, 16.0), "txt_embed_dim": (1, 16384), "txt_max_length": (1, 4096),
    "rope_theta": (1.0, 1e9), "text_rope_theta": (1.0, 1e9), "rope_scale": (1e-3, 1e6), "rope_ref": (16, 65536),
    "latent_channels": (1, 4096), "hidden_dim": (1, 16384), "num_res_blocks": (0, 64), "num_groups": (1, 1024),
    "interval": (1, 128), "sr_scale": (1, 16), "latent_factor": (1, 64), "unpatchify_factor": (1, 8),
}


def _field_problems(section: object) -> list[str]:
    problems = []
    for f in dataclasses.fields(section):
        value, default = getattr(section, f.name), f.default
        if isinstance(default, (bool, str)):
            if type(value) is not type(default):
                problems.append(f"{f.name} must be a {type(default).__name__}, not {value!r}"[:120])
            continue
        low, high = BOUNDS[f.name]
        kind = int if isinstance(default, int) else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) \
                or not low <= value <= high:
            problems.append(f"{f.name} must be a number in [{low}, {high}], not {value!r}"[:120])
    return problems


def _sizes_ok(sizes: object) -> bool:
    def side(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= 65536

    return (isinstance(sizes, tuple) and 1 <= len(sizes) <= 16
            and all(isinstance(s, tuple) and len(s) == 2 and all(map(side, s)) for s in sizes))


def validate(cfg: PiDConfig) -> None:
    b, a = cfg.backbone, cfg.adapter
    if not isinstance(b, BackboneConfig) or not (a is None or isinstance(a, AdapterConfig)):
        raise ConfigError(f"Invalid model configuration {cfg.name!r}.", received=f"{type(b).__name__}, "
                          f"{type(a).__name__}", expected="BackboneConfig and AdapterConfig (or None)",
                          fix="build configurations with dataclasses.replace on a preset (pid_sdk.PRESETS)")
    problems = _field_problems(b) + (_field_problems(a) if a is not None else [])
    if not isinstance(cfg.name, str) or not (cfg.latent_space is None or isinstance(cfg.latent_space, str)):
        problems.append("name and latent_space must be strings")
    if not _sizes_ok(cfg.trained_sizes):
        problems.append(f"trained_sizes must be 1 to 16 (height, width) pairs of 16 to 65536 pixels, not "
                        f"{cfg.trained_sizes!r}"[:120])
    if problems:
        raise ConfigError(f"Invalid model configuration {str(cfg.name)[:40]!r}: {problems[0]}.",
                          received="; ".join(problems)[:400], expected="the values of a PiD model (see BOUNDS)",
                          fix="re-create the artefact with `pid-sdk convert`; never edit its configuration by hand")
    checks = [
        (b.hidden_size % b.num_heads == 0, "hidden_size must be divisible by num_heads"),
        (b.pixel_attn_hidden_size % b.pixel_num_heads == 0, "pixel_attn_hidden_size must divide by pixel_num_heads"),
        (b.head_dim % 4 == 0, "the patch head_dim must be a multiple of 4 (2D RoPE)"),
        (b.pixel_head_dim % 4 == 0, "the pixel head_dim must be a multiple of 4 (2D RoPE)"),
        (b.pixel_hidden_size % 4 == 0, "pixel_hidden_size must be a multiple of 4 (pixel sin-cos)"),
        (b.rope_mode in ROPE_MODES, f"rope_mode must be one of {ROPE_MODES}"),
    ]
    if a is not None:
        checks += [
            (a.gate in GATE_TYPES, f"gate must be one of {GATE_TYPES}"),
            (a.padding_mode in PADDING_MODES, f"padding_mode must be one of {PADDING_MODES}"),
            (a.hidden_dim % a.num_groups == 0, "adapter hidden_dim must divide by num_groups"),
            (a.latent_channels % a.unpatchify_factor**2 == 0, "latent_channels must divide by unpatchify_factor^2"),
        ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"Invalid model configuration {cfg.name!r}: {message}.", received=repr(cfg)[:300],
                              fix="re-create the artefact with `pid-sdk convert`; never edit its configuration by hand")


PIXELDIT = BackboneConfig()
ADAPTER_V1 = AdapterConfig()
ADAPTER_V1PT5 = replace(ADAPTER_V1, hidden_dim=1024, gate="per_token", padding_mode="replicate", pit_inject=True)
NTK_1024 = replace(PIXELDIT, rope_mode="ntk", rope_ref=1024)
NTK_2048 = replace(PIXELDIT, rope_mode="ntk", rope_ref=2048)



def variant(base: PiDConfig, name: str, latent_space: str, description: str, **adapter: object) -> PiDConfig:
    """Another latent space of a family: same backbone, adapter fields changed."""
    return replace(base, name=name, latent_space=latent_space, description=description,
                   adapter=replace(base.adapter, **adapter))


_PID_2K = PiDConfig("pid-2k", NTK_1024, ADAPTER_V1, "flux1", "PiD v1 2k, 4x, 16-channel latents (FLUX.1, SD3)")
_PID_2KTO4K = replace(variant(_PID_2K, "pid-2kto4k", "sd3", "PiD v1 2k->4k, 4x, SD3"), trained_sizes=SIZES_4K)
_PID_V1PT5 = PiDConfig(
    "pid-2kto4k-v1.5", NTK_2048, ADAPTER_V1PT5, "flux1", "PiD v1.5 2k->4k, 4x, 16-channel (FLUX.1, Qwen-Image)",
    SIZES_4K,
)

_OFFICIAL = [
    PiDConfig("pixeldit-1.3b", PIXELDIT, None, None, "PixelDiT-1300M-1024px text-to-image backbone"),
    PiDConfig("pixeldit-1.3b-2kto4k", NTK_2048, None, None, "PixelDiT finetuned 2k->4k (NTK RoPE, ref 2048)",
              SIZES_4K),
    _PID_2K,
    variant(_PID_2K, "pid-2k-flux2", "flux2", "PiD v1 2k, 4x, FLUX.2 (128-channel patchified latent)",
            latent_channels=128, latent_factor=16),
    variant(_PID_2K, "pid-2k-dinov2", "dinov2", "PiD v1 2k, 4x, DINOv2-B features (RAE)",
            latent_channels=768, latent_factor=16),
    variant(_PID_2K, "pid-2k-sr8x-siglip", "siglip", "PiD v1 2k, 8x, SigLIP-2 features (Scale-RAE)",
            latent_channels=1152, latent_factor=16, sr_scale=8),
    _PID_2KTO4K,
    variant(_PID_2KTO4K, "pid-2kto4k-sdxl", "sdxl", "PiD v1 2k->4k, 4x, SDXL", latent_channels=4),
    _PID_V1PT5,
    variant(_PID_V1PT5, "pid-2kto4k-v1.5-qwenimage", "qwenimage", "PiD v1.5 2k->4k, 4x, Qwen-Image"),
    variant(_PID_V1PT5, "pid-2kto4k-v1.5-flux2", "flux2", "PiD v1.5 2k->4k, 4x, FLUX.2",
            latent_channels=128, latent_factor=16, unpatchify_factor=2),
]

TINY_BACKBONE = replace(
    PIXELDIT,
    hidden_size=64,
    num_heads=4,
    patch_depth=3,
    pixel_depth=1,
    pixel_hidden_size=8,
    pixel_attn_hidden_size=32,
    pixel_num_heads=2,
    mlp_ratio=3.0,
    txt_embed_dim=32,
    txt_max_length=16,
)


def tiny(cfg: PiDConfig) -> PiDConfig:
    """The same family at test size: every code path of the full model, a few hundred thousand parameters."""
    backbone = replace(TINY_BACKBONE, rope_mode=cfg.backbone.rope_mode, rope_ref=cfg.backbone.rope_ref)
    adapter = None if cfg.adapter is None else replace(cfg.adapter, hidden_dim=32, num_res_blocks=2)
    return replace(cfg, name=f"tiny-{cfg.name}", backbone=backbone, adapter=adapter,
                   description=f"test-size {cfg.name}, random weights", trained_sizes=((64, 64),))


PRESETS: dict[str, PiDConfig] = {c.name: c for c in _OFFICIAL}
PRESETS.update({tiny(c).name: tiny(c) for c in _OFFICIAL})
PRESETS["tiny"] = replace(PRESETS["tiny-pid-2k"], name="tiny")
# The project's own small decoder (FLUX.1 latents, 4x), trained by training/demo/train_demo.py. The shipped DEMO_MODEL
# grew from it (patch_depth 8, num_res_blocks 6: training/grow.py) and carries that config in its manifest.
PRESETS["demo-flux1"] = replace(
    PRESETS["tiny-pid-2k"],
    name="demo-flux1",
    backbone=replace(TINY_BACKBONE, hidden_size=128, num_heads=2, patch_depth=4, pixel_depth=1, pixel_hidden_size=16,
                     pixel_attn_hidden_size=128, pixel_num_heads=2, txt_embed_dim=32, txt_max_length=8,
                     rope_mode="plain"),
    adapter=replace(ADAPTER_V1, hidden_dim=64, num_res_blocks=2),
    description="pid-sdk demo decoder: FLUX.1 latents -> 4x, 6.8M parameters, trained on package images",
    trained_sizes=((256, 256), (384, 384), (512, 512)),  # square crops (docs/training.md)
)
# Its trained weights, installed with the package: Decoder.load(pid_sdk.DEMO_MODEL) decodes FLUX.1 latents for real.
DEMO_MODEL = Path(__file__).resolve().parent / "data" / "demo-flux1"
# The tiny autoencoders of ../shared beside a checkout (tests and training make real latents with them).
SHARED_TAE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "tae"
OFFICIAL_PRESETS = tuple(c.name for c in _OFFICIAL)


def get_preset(name: str) -> PiDConfig:
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"Unknown preset {name!r}.",
            received=name,
            expected=", ".join(PRESETS),
            fix="pick one of the names above (`pid-sdk info --presets` lists them)",
        ) from None
