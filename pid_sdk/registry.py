"""Released PiD checkpoints by name, fetched from the Hugging Face Hub into its cache (`huggingface_hub`), and
converted once into the SDK's safetensors artefact beside the cache, so a later load reads no pickle.

    Decoder.load("nvidia/PiD", variant="flux1-2k")      # a registry entry
    Decoder.load("flux1-2k")                            # the same, by its name alone
    Decoder.load("hf://Comfy-Org/PixelDiT/pid_flux1_512_to_2048_4step_bf16.safetensors")   # any file of a repository

Facts from the model cards and repository trees (spec section 4). `revision`, the cache folder (`HF_HUB_CACHE`,
`HF_HOME`), offline mode (`HF_HUB_OFFLINE=1`) and tokens (`HF_TOKEN`) are huggingface_hub's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pid_sdk.config import get_preset
from pid_sdk.errors import ConfigError

OFFICIAL = "nvidia/PiD"
COMFY = "Comfy-Org/PixelDiT"
NSCL = "NSCLv1 (NVIDIA Source Code License, non-commercial), as the nvidia/PiD model card says"
REPACK = "NSCLv1 (non-commercial) of the nvidia/PiD weights it repacks; the repository's own card may differ"
UNKNOWN = "unknown: not from the registry (pass --license, or read the weights' model card)"


@dataclass(frozen=True)
class RegistryEntry:
    name: str  # the variant: "flux1-2k"
    repo: str
    file: str
    preset: str  # the network it loads strictly as
    latent_space: str
    license: str
    note: str = ""

    @property
    def scale(self) -> int:
        return get_preset(self.preset).adapter.sr_scale

    @property
    def trained_sizes(self) -> tuple[tuple[int, int], ...]:
        return get_preset(self.preset).trained_sizes

    @property
    def rope_ref(self) -> int:
        return get_preset(self.preset).backbone.rope_ref

    @property
    def url(self) -> str:
        return f"hf://{self.repo}/{self.file}"


def _official(name: str, experiment: str, preset: str, space: str, note: str = "") -> RegistryEntry:
    return RegistryEntry(name, OFFICIAL, f"checkpoints/{experiment}/model_ema_bf16.pth", preset, space, NSCL, note)


def _comfy(space: str, sizes: str, preset: str) -> RegistryEntry:
    short = "2k" if sizes == "512_to_2048" else "2kto4k"
    return RegistryEntry(f"comfy-{space}-{short}", COMFY, f"pid_{space}_{sizes}_4step_bf16.safetensors", preset,
                         space, REPACK, "single-file repack")


REGISTRY: list[RegistryEntry] = [
    _official("flux1-2k", "PiD_res2k_sr4x_official_flux_distill_4step", "pid-2k", "flux1"),
    _official("flux2-2k", "PiD_res2k_sr4x_official_flux2_distill_4step", "pid-2k-flux2", "flux2"),
    _official("sd3-2k", "PiD_res2k_sr4x_official_sd3_distill_4step", "pid-2k", "sd3"),
    _official("dinov2-2k", "PiD_res2k_sr4x_official_dinov2_distill_4step", "pid-2k-dinov2", "dinov2"),
    _official("siglip-2k", "PiD_res2k_sr8x_official_siglip_distill_4step", "pid-2k-sr8x-siglip", "siglip"),
    _official("sd3-2kto4k", "PiD_res2kto4k_sr4x_official_sd3_distill_4step", "pid-2kto4k", "sd3"),
    _official("sdxl-2kto4k", "PiD_res2kto4k_sr4x_official_sdxl_distill_4step", "pid-2kto4k-sdxl", "sdxl"),
    _official("flux1-2kto4k", "PiD_v1pt5_res2kto4k_sr4x_official_flux_distill_4step", "pid-2kto4k-v1.5", "flux1"),
    _official("flux2-2kto4k", "PiD_v1pt5_res2kto4k_sr4x_official_flux2_distill_4step", "pid-2kto4k-v1.5-flux2",
              "flux2"),
    _official("qwenimage-2kto4k", "PiD_v1pt5_res2kto4k_sr4x_official_qwenimage_distill_4step",
              "pid-2kto4k-v1.5-qwenimage", "qwenimage"),
    _official("flux1-2kto4k-teacher", "PiD_v1pt5_res2kto4k_sr4x_official_flux_undistilled", "pid-2kto4k-v1.5",
              "flux1", "undistilled: sampler='teacher'"),
    _official("flux2-2kto4k-teacher", "PiD_v1pt5_res2kto4k_sr4x_official_flux2_undistilled",
              "pid-2kto4k-v1.5-flux2", "flux2", "undistilled: sampler='teacher'"),
    _official("qwenimage-2kto4k-teacher", "PiD_v1pt5_res2kto4k_sr4x_official_qwenimage_undistilled",
              "pid-2kto4k-v1.5-qwenimage", "qwenimage", "undistilled: sampler='teacher'"),
    _comfy("flux1", "512_to_2048", "pid-2k"),
    _comfy("flux1", "1024_to_4096", "pid-2kto4k-v1.5"),
    _comfy("flux2", "512_to_2048", "pid-2k-flux2"),
    _comfy("flux2", "1024_to_4096", "pid-2kto4k-v1.5-flux2"),
    _comfy("sd3", "512_to_2048", "pid-2k"),
    _comfy("sd3", "1024_to_4096", "pid-2kto4k"),
]


def is_hub_source(source: str | Path, variant: str | None = None) -> bool:
    """Whether Decoder.load should look `source` up here rather than on disk: hf://..., a registry name, or a
    repository with a variant. A path that exists is always the path."""
    text = str(source)
    if text.startswith("hf://"):
        return True
    if os.path.exists(text):  # False, not an OSError, for a path the system refuses (too long, NUL)
        return False
    return variant is not None or any(text in (e.name, e.repo) for e in REGISTRY)


def find(source: str, variant: str | None = None) -> RegistryEntry:
    """The entry named `variant` of repository `source`, or named `source` itself."""
    name = variant if variant is not None else source
    repo = source if variant is not None else None
    for entry in REGISTRY:
        if entry.name == name and repo in (None, entry.repo):
            return entry
    names = ", ".join(e.name for e in REGISTRY if repo in (None, e.repo)) or "(none in this repository)"
    repository = any(e.repo == name for e in REGISTRY)  # a repository named without its variant
    raise ConfigError(f"No registered PiD model named {name!r}" + (f" in {repo}." if repo else "."),
                      received=f"{source!r}" + (f", variant={variant!r}" if variant else ""),
                      expected=names, fix=(f"pass variant= one of those ({name!r} holds several models)" if repository
                                           else "pick one of those (`pid-sdk models` lists them with their files)")
                      + ", or pass hf://REPO/PATH for any file")


def parse_hf(text: str) -> tuple[str, str]:
    """hf://OWNER/NAME/PATH -> ("OWNER/NAME", "PATH")."""
    parts = text[len("hf://"):].split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ConfigError("hf:// takes a repository and a file in it.", received=text,
                          expected="hf://OWNER/NAME/PATH/TO/FILE",
                          fix="e.g. hf://Comfy-Org/PixelDiT/pid_flux1_512_to_2048_4step_bf16.safetensors")
    return f"{parts[0]}/{parts[1]}", parts[2]


def entry_for(source: str, variant: str | None = None) -> RegistryEntry:
    """A registry entry for any hub source; hf:// files the registry lacks get one of unknown preset and licence."""
    if not str(source).startswith("hf://"):
        return find(str(source), variant)
    repo, file = parse_hf(str(source))
    known = next((e for e in REGISTRY if (e.repo, e.file) == (repo, file)), None)
    return known or RegistryEntry(Path(file).stem, repo, file, "", "", UNKNOWN)


def download(entry: RegistryEntry, revision: str | None = None) -> Path:
    """The file in the local Hub cache, fetched where it is missing (offline: only from the cache)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise ConfigError("Loading models by name needs huggingface_hub.", received="huggingface_hub not installed",
                          fix="pip install huggingface_hub (or download the file and pass its path)") from None
    try:
        return Path(hf_hub_download(entry.repo, entry.file, revision=revision))
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise ConfigError(f"{entry.url} is not in the local Hugging Face cache"
                          + (" and HF_HUB_OFFLINE is set." if offline else " and the Hub cannot be reached."),
                          received=f"revision {revision or 'main'}, cache {_cache_dir()}",
                          fix=f"pid-sdk download {command_name(entry)} (on a machine with network; then copy the "
                              "cache), or pass the file's path") from None
    except (EntryNotFoundError, RepositoryNotFoundError) as exc:
        raise ConfigError(f"{entry.url} does not exist on the Hub (or needs a token).", received=str(exc)[:200],
                          fix="check the name (`pid-sdk models`), or set HF_TOKEN for a gated repository") from None


def command_name(entry: RegistryEntry) -> str:
    """What `pid-sdk download` takes for this entry: its registry name, else its hf:// path."""
    return entry.name if entry in REGISTRY else entry.url


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve(source: str, variant: str | None = None, revision: str | None = None,
            trust_pickle: bool = False) -> tuple[Path, RegistryEntry]:
    """(an SDK artefact folder, its entry) for a hub source: the file fetched into the Hub cache, then converted
    once into an artefact beside it (`pid-sdk/` beside the cache: the weights' network, latent space and licence in its
    manifest), which later loads read instead."""
    entry = entry_for(source, variant)
    file = download(entry, revision)
    folder = artefact_folder(entry, file)
    if not (folder / "manifest.json").is_file():
        convert(entry, file, folder, trust_pickle)
    return folder, entry


def artefact_folder(entry: RegistryEntry, file: Path) -> Path:
    """`<hub cache>/../pid-sdk/<owner>--<name>/<snapshot>/<file path>`: one artefact per file and revision, beside
    the Hub's cache (inside it, the Hub's cache tools would take it for a damaged repository)."""
    parts = file.parts
    snapshot = parts[parts.index("snapshots") + 1] if "snapshots" in parts else "local"
    return Path(_cache_dir()).parent / "pid-sdk" / entry.repo.replace("/", "--") / snapshot / entry.file


def convert(entry: RegistryEntry, file: Path, folder: Path, trust_pickle: bool = False) -> None:
    from pid_sdk.checkpoints import load_checkpoint, save_artefact

    loaded = load_checkpoint(file, preset=entry.preset or None, trust_pickle=trust_pickle)
    dtype = next(loaded.model.parameters()).dtype
    save_artefact(loaded.model, loaded.config, folder, dtype=dtype, source=entry.url,
                  latent_space=entry.latent_space or None, license=entry.license)


def license_of(path: str | Path) -> str:
    """The licence an artefact or engine folder records, else that it is unknown (a checkpoint file records none)."""
    from pid_sdk.checkpoints import read_artefact_manifest
    from pid_sdk.errors import PiDError
    from pid_sdk.runtime.manifest import is_engine_dir, read_engine_manifest

    try:
        if is_engine_dir(path):
            return read_engine_manifest(path, verify=False).license or UNKNOWN
        return read_artefact_manifest(path, verify=False).get("license") or UNKNOWN
    except PiDError:
        return UNKNOWN
