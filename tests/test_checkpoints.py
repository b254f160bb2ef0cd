"""Every supported checkpoint layout loads strictly and gives back the same network."""

import argparse
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pid_sdk.checkpoints import (
    canonical_state_dict,
    infer_config,
    load_artefact,
    load_checkpoint,
    save_artefact,
)
from pid_sdk.config import OFFICIAL_PRESETS, PRESETS
from pid_sdk.errors import CheckpointError, PiDError, UnsafeCheckpointError
from pid_sdk.model import build_model, randomize

FAMILIES = ["tiny-pid-2k", "tiny-pid-2kto4k-v1.5", "tiny-pid-2kto4k-v1.5-flux2", "tiny-pid-2k-sr8x-siglip"]


def reference(name: str, seed: int = 0):
    return randomize(build_model(PRESETS[name]), seed).eval()


def bf16(sd: dict) -> dict:
    return {k: v.to(torch.bfloat16) for k, v in sd.items()}


def assert_same_weights(model, sd_ref: dict):
    got = model.state_dict()
    assert set(got) == set(sd_ref)
    for k, v in sd_ref.items():
        torch.testing.assert_close(got[k].float(), v.float(), rtol=0, atol=0, msg=k)


def split_adaln(sd: dict, channels: int) -> dict:
    """The ComfyUI in-memory layout: per pixel, chunks 0-2 -> _msa, 3-5 -> _mlp."""
    out = {}
    for k, v in sd.items():
        if ".adaLN_modulation.0." in k and k.startswith("pixel_blocks."):
            block, kind = k.split(".adaLN_modulation.0.")
            tail = v.shape[1:]
            six = v.reshape(-1, 6, channels, *tail)
            out[f"{block}.adaLN_modulation_msa.{kind}"] = six[:, :3].reshape(-1, *tail).clone()
            out[f"{block}.adaLN_modulation_mlp.{kind}"] = six[:, 3:].reshape(-1, *tail).clone()
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_official_pid_pth_round_trip(tmp_path, name):
    sd = bf16(reference(name).state_dict())
    extra = {"lq_proj.lq_aux_rgb_head.0.weight": torch.ones(32), "lq_proj.lq_aux_rgb_head.3.weight": torch.ones(48, 32)}
    blob = {f"net.{k}": v for k, v in {**sd, **extra}.items()}
    blob.update({f"net_ema.{k}": v for k, v in sd.items()})
    blob.update({"fake_score.x.weight": torch.ones(3), "discriminator.head.weight": torch.ones(2)})
    path = tmp_path / "model_ema_bf16.pth"
    torch.save(blob, path)
    loaded = load_checkpoint(path)
    assert loaded.source == "official-pid"
    assert loaded.config.backbone == PRESETS[name].backbone and loaded.config.adapter == PRESETS[name].adapter
    assert_same_weights(loaded.model, sd)
    assert any("lq_aux_rgb_head" in k for k in loaded.dropped)


def test_original_pixeldit_pth_round_trip(tmp_path):
    sd = reference("tiny-pixeldit-1.3b").state_dict()
    blob = {"state_dict": {**{f"core.{k}": v for k, v in sd.items()},
                           "_repa_projector.0.weight": torch.ones(4, 4), "pos_embed": torch.ones(1, 4, 64)}}
    path = tmp_path / "pixeldit_t2i_v1.pth"
    torch.save(blob, path)
    loaded = load_checkpoint(path)
    assert loaded.source == "original-pixeldit" and loaded.config.backbone.rope_mode == "plain"
    assert_same_weights(loaded.model, sd)


@pytest.mark.parametrize("prefix", ["", "net.", "model.diffusion_model."])
@pytest.mark.parametrize("split", [False, True])
def test_safetensors_repacks_round_trip(tmp_path, prefix, split):
    name = "tiny-pid-2kto4k-v1.5"
    sd = reference(name).state_dict()
    stored = split_adaln(sd, PRESETS[name].backbone.pixel_hidden_size) if split else sd
    path = tmp_path / "pid_flux1_repack.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in stored.items()}, str(path))
    loaded = load_checkpoint(path)
    assert_same_weights(loaded.model, sd)


def test_split_adaln_maps_chunks_back_per_pixel():
    w = torch.arange(2 * 6 * 3, dtype=torch.float32).view(-1, 1)  # 2 pixels, 3 channels
    sd = {"pixel_blocks.0.adaLN_modulation.0.weight": w, "pixel_embedder.proj.weight": torch.zeros(3, 3)}
    split = split_adaln(sd, 3)
    assert split["pixel_blocks.0.adaLN_modulation_msa.weight"][:, 0].tolist()[:10] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 18]
    merged, _, _ = canonical_state_dict(split)
    torch.testing.assert_close(merged["pixel_blocks.0.adaLN_modulation.0.weight"], w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_sdk_artefact_round_trip(tmp_path, dtype):
    model = reference("tiny-pid-2k")
    out = save_artefact(model, PRESETS["tiny-pid-2k"], tmp_path / "art", dtype=dtype, source="test", latent_space="sd3")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preset"] == "tiny-pid-2k" and manifest["latent_space"] == "sd3"
    assert manifest["dtype"] == str(dtype).removeprefix("torch.") and len(manifest["sha256"]["model.safetensors"]) == 64
    loaded = load_checkpoint(out)
    assert loaded.config.latent_space == "sd3"
    assert_same_weights(loaded.model, {k: v.to(dtype) for k, v in model.state_dict().items()})
    assert all(v.dtype == dtype for v in load_file(str(out / "model.safetensors")).values())


def test_artefact_file_format_is_pinned(tmp_path):
    out = save_artefact(reference("tiny"), PRESETS["tiny"], tmp_path / "a")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.safetensors"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest) == {"format", "format_version", "preset", "config", "latent_space", "source", "dtype",
                             "parameters", "sha256", "pid_sdk_version", "manifest_sha256"}
    assert manifest["format"] == "pid-sdk-model" and manifest["format_version"] == 1
    assert set(manifest["config"]) == {"name", "backbone", "adapter", "latent_space", "description", "trained_sizes"}
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}  # the digest: sha256 of canonical JSON
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert manifest["manifest_sha256"] == hashlib.sha256(canonical).hexdigest()


def test_an_edited_artefact_manifest_is_refused_unless_unverified(tmp_path):
    from pid_sdk.errors import CheckpointError

    out = save_artefact(reference("tiny"), PRESETS["tiny"], tmp_path / "a")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["backbone"]["rope_theta"] = 20000.0  # a valid value, not the one the weights were made with
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="was edited after it was written") as err:
        load_checkpoint(out)
    assert "never edit a manifest by hand" in err.value.fix
    assert load_checkpoint(out, verify=False).config.backbone.rope_theta == 20000.0  # the caller's explicit choice
    del manifest["manifest_sha256"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="has no digest"):
        load_checkpoint(out)


def test_an_artefact_has_the_permissions_of_any_new_file(tmp_path):
    from pid_sdk.checkpoints import current_umask

    out = save_artefact(reference("tiny"), PRESETS["tiny"], tmp_path / "a")  # built in a mkdtemp folder (0700)
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~current_umask())
    for name in ("manifest.json", "model.safetensors"):  # safetensors alone writes 0600
        assert oct((out / name).stat().st_mode & 0o777) == oct(0o666 & ~current_umask()), name


def test_an_artefact_is_replaced_only_when_asked_and_only_an_artefact(tmp_path):
    first = save_artefact(reference("tiny"), PRESETS["tiny"], tmp_path / "a", source="first")
    with pytest.raises(CheckpointError, match="not empty"):
        save_artefact(reference("tiny"), PRESETS["tiny"], first, source="second")
    save_artefact(reference("tiny"), PRESETS["tiny"], first, source="second", replace_artefact=True)
    assert json.loads((first / "manifest.json").read_text())["source"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # nothing left aside
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep")
    with pytest.raises(CheckpointError, match="not empty"):  # a folder that is no artefact is never replaced
        save_artefact(reference("tiny"), PRESETS["tiny"], other, replace_artefact=True)
    assert (other / "todo.txt").read_text() == "keep"


def test_artefact_sha_mismatch_and_missing_manifest(tmp_path):
    out = save_artefact(reference("tiny"), PRESETS["tiny"], tmp_path / "a")
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_artefact(out)
    (out / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest"):
        load_checkpoint(out)


def test_save_artefact_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("keep")
    with pytest.raises(CheckpointError, match="not empty"):
        save_artefact(reference("tiny"), PRESETS["tiny"], tmp_path / "a")
    assert (tmp_path / "a" / "x").read_text() == "keep"


@pytest.mark.parametrize("name", OFFICIAL_PRESETS)
def test_official_presets_are_detected_from_shapes(name):
    with torch.device("meta"):
        sd = build_model(PRESETS[name]).state_dict()
    hint = {"pid-2kto4k": "PiD_res2kto4k_sr4x_official_sd3_distill_4step",
            "pid-2kto4k-sdxl": "PiD_res2kto4k_sr4x_official_sdxl_distill_4step",
            "pid-2kto4k-v1.5-qwenimage": "PiD_v1pt5_res2kto4k_sr4x_official_qwenimage_distill_4step",
            "pixeldit-1.3b-2kto4k": "PixelDiT_finetune_2kto4k"}.get(name, "")
    cfg = infer_config(sd, hint=hint)
    assert cfg.name == name
    assert cfg.backbone == PRESETS[name].backbone and cfg.adapter == PRESETS[name].adapter


@pytest.mark.parametrize("hint,name,space", [
    ("PiD_res2k_sr4x_official_sd3_distill_4step", "pid-2k", "sd3"),
    ("PiD_res2kto4k_sr4x_official_sd3_distill_4step", "pid-2kto4k", "sd3"),
    ("PiD_res2k_sr4x_official_flux_distill_4step", "pid-2k", "flux1"),
    ("model_ema_bf16.pth", "pid-2k", "flux1"),
])
def test_file_name_picks_between_equal_networks(hint, name, space):
    with torch.device("meta"):
        sd = build_model(PRESETS["pid-2k"]).state_dict()
    cfg = infer_config(sd, hint=hint)
    assert (cfg.name, cfg.latent_space) == (name, space)


def test_tiny_checkpoint_detects_a_custom_config(tmp_path):
    sd = reference("tiny-pid-2k").state_dict()
    cfg = infer_config(sd)
    assert cfg.backbone == PRESETS["tiny-pid-2k"].backbone and cfg.adapter == PRESETS["tiny-pid-2k"].adapter


# --- bad files ------------------------------------------------------------------------------------------------
class CodeRunningObject:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_pickle_needing_code_is_refused_unless_trusted(tmp_path):
    sd = reference("tiny").state_dict()
    path = tmp_path / "unsafe.pth"
    torch.save({**{f"net.{k}": v for k, v in sd.items()}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(UnsafeCheckpointError, match="trust_pickle=True"):
        load_checkpoint(path)
    assert_same_weights(load_checkpoint(path, trust_pickle=True).model, sd)
    torch.save({"x": CodeRunningObject()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(tmp_path / "evil.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_and_empty_files(tmp_path, suffix):
    sd = reference("tiny").state_dict()
    full = tmp_path / f"full{suffix}"
    torch.save(sd, full) if suffix == ".pth" else save_file(sd, str(full))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_checkpoint(tmp_path / f"missing{suffix}")


def test_checkpoint_of_another_model(tae_dir):
    with pytest.raises(CheckpointError, match="not a PiD or PixelDiT checkpoint"):
        load_checkpoint(tae_dir / "taef1_decoder.safetensors")


def test_unknown_variant_reports_missing_unexpected_and_best_preset(tmp_path):
    sd = reference("tiny-pid-2k").state_dict()
    sd["lq_proj.new_branch.weight"] = torch.ones(3)
    del sd["pixel_blocks.0.mlp.fc2.bias"]
    path = tmp_path / "variant.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "missing 1: pixel_blocks.0.mlp.fc2.bias" in msg and "unexpected 1: lq_proj.new_branch.weight" in msg
    assert "best matching preset" in msg


def test_wrong_preset_reports_shapes(tmp_path):
    path = tmp_path / "v1.safetensors"
    save_file(reference("tiny-pid-2k").state_dict(), str(path))
    with pytest.raises(PiDError) as err:
        load_checkpoint(path, preset="tiny-pid-2kto4k-v1.5")
    assert "wrong shape" in str(err.value) and "missing" in str(err.value)


def test_meta_build_assigns_the_file_tensors_without_copy():
    from pid_sdk.checkpoints import load_state_dict_strict

    sd = reference("tiny").state_dict()
    model = load_state_dict_strict(PRESETS["tiny"], sd)
    params = dict(model.named_parameters())
    assert all(params[k].data_ptr() == v.data_ptr() for k, v in sd.items())


# --- hostile and careless checkpoints (issue 41): a CheckpointError naming the key, before anything is built ------
@pytest.mark.parametrize("edit,match", [
    (lambda sd: {**sd, "s_embedder.proj.weight": torch.zeros(0)}, "s_embedder.proj.weight has a shape no PiD"),
    (lambda sd: {**sd, "y_pos_embedding": sd["y_pos_embedding"].flatten()}, "y_pos_embedding has a shape no PiD"),
    (lambda sd: {k: v for k, v in sd.items() if not k.startswith("pixel_blocks.")}, "missing tensors every PiD"),
    (lambda sd: {**sd, "patch_blocks.foo.bar": torch.ones(2)}, "unexpected 1: patch_blocks.foo.bar"),
    (lambda sd: {**sd, "patch_blocks.0.attn.q_norm_x.weight": torch.ones(16, dtype=torch.int64)},
     "not floating point: patch_blocks.0.attn.q_norm_x.weight"),
    (lambda sd: {k: v for k, v in sd.items() if not k.startswith("lq_proj.output_heads.")}, "gates do not fit"),
])
def test_damaged_repacks_name_the_key(tmp_path, edit, match):
    path = tmp_path / "repack.safetensors"
    save_file(edit(reference("tiny").state_dict()), str(path))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


@pytest.mark.parametrize("content,kind", [([torch.zeros(3)], "list"), (torch.zeros(3), "Tensor"),
                                           ({1: torch.zeros(3)}, "no tensors")])
def test_a_pth_that_is_not_a_state_dict(tmp_path, content, kind):
    torch.save(content, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=kind if kind != "no tensors" else "not a PiD or PixelDiT"):
        load_checkpoint(tmp_path / "m.pth")


def test_a_pickle_that_needs_code_is_unsafe_not_corrupt_and_loads_only_with_true(tmp_path):
    import pickle

    from pid_sdk.checkpoints import read_file

    marker = tmp_path / "ran"
    (tmp_path / "p0.pth").write_bytes(pickle.dumps({"a": OpensAFile(str(marker))}, protocol=0))  # a plain pickle
    torch.save({"a": OpensAFile(str(marker))}, tmp_path / "zip.pth")
    for name in ("p0.pth", "zip.pth"):
        with pytest.raises(UnsafeCheckpointError, match="can only be loaded by running code"):
            read_file(tmp_path / name)
        assert not marker.exists()
    assert read_file(tmp_path / "zip.pth", trust_pickle=True) and marker.exists()  # consent, and only consent
    torch.save({"a": Fails()}, tmp_path / "fails.pth")
    with pytest.raises(CheckpointError, match="needs its own code to load, and running it failed") as err:
        read_file(tmp_path / "fails.pth", trust_pickle=True)
    assert "corrupt" not in str(err.value)


class OpensAFile:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class Fails:
    def __reduce__(self):
        return (int, ("not a number",))


# --- the key mapping's refusals and hints, found unprotected by mutation testing (scripts/mutation.py) --------------
@pytest.mark.parametrize("hint,space", [("pid-2k-flux2-klein", "flux2"), ("PID_QWEN", "qwenimage"),
                                        ("pid-sdxl", "sdxl"), ("sd3.5", "sd3"), ("SigLIP", "siglip"),
                                        ("dinov2-b", "dinov2"), ("FLUX.1-dev", "flux1"), ("zimage-turbo", "flux1"),
                                        ("model_ema_bf16", None)])
def test_the_file_name_hints_the_latent_space(hint, space):
    from pid_sdk.checkpoints import _space_from_hint

    assert _space_from_hint(hint) == space


def test_trained_sizes_follow_the_version_or_the_2kto4k_hint():
    from pid_sdk.checkpoints import infer_config
    from pid_sdk.config import SIZES_2K, SIZES_4K

    sd = reference("tiny").state_dict()
    assert infer_config(sd).trained_sizes == SIZES_2K
    assert infer_config(sd, hint="pid-2KTO4K").trained_sizes == SIZES_4K


def test_the_key_mappings_refusals_read_as_pinned():
    from pid_sdk.checkpoints import _merge_adaln, canonical_state_dict, infer_config

    with pytest.raises(CheckpointError) as e:
        canonical_state_dict([torch.zeros(1)])
    assert str(e.value) == ("The file holds a list, not a state dict of named tensors.\n  received: list\n"
                            "  expected: a dict of tensor names to tensors\n"
                            "  fix: pass a PiD checkpoint (model_ema_bf16.pth), a safetensors repack or an SDK artefact")
    with pytest.raises(CheckpointError) as e:
        _merge_adaln({"msa": torch.zeros(2)}, "pixel_blocks.0", 16)
    assert str(e.value) == ("pixel_blocks.0: only one half of the split adaLN_modulation is present.\n"
                            "  received: ['msa']\n  expected: ['mlp', 'msa']\n  fix: use a complete checkpoint")
    with pytest.raises(CheckpointError) as e:
        infer_config({f"k{i}": torch.zeros(1) for i in range(9)})
    assert str(e.value) == ("This file is not a PiD or PixelDiT checkpoint.\n"
                            "  received: keys like k0, k1, k2, k3, k4, k5\n"
                            "  expected: keys such as s_embedder.proj.weight, patch_blocks.0.attn.qkv_x.weight\n"
                            "  fix: pass an official PiD / PixelDiT checkpoint, a safetensors repack or an SDK artefact")
    with pytest.raises(CheckpointError, match="received: keys like \\(no tensors\\)"):
        infer_config({})


def test_a_network_of_no_preset_is_read_field_by_field():
    """Every field the shapes carry, each away from the preset's (and the official) value: a field left at its
    default could not show that it was read."""
    from dataclasses import replace

    base = PRESETS["tiny"]
    cfg = replace(base, backbone=replace(base.backbone, patch_size=8, pixel_mlp_ratio=2.0),
                  adapter=replace(base.adapter, latent_channels=8, num_res_blocks=0, interval=1, gate="per_token"))
    with torch.device("meta"):
        got = infer_config(build_model(cfg).state_dict())
    assert (got.backbone, got.adapter) == (cfg.backbone, cfg.adapter)
    assert (got.name, got.latent_space, got.description) == ("custom", None, "read from checkpoint shapes")


@pytest.mark.parametrize("hidden", [7, 11, 64, 1152, 1536, 2304])
def test_the_mlp_ratio_read_gives_back_the_swiglu_width_under_the_two_thirds_rule(hidden):
    from pid_sdk.checkpoints import _mlp_ratio

    for swiglu in range(1, 400):  # (7, 81) and (11, 10) are widths whose plain ratio rounds one below
        assert int(2 * int(hidden * _mlp_ratio(hidden, swiglu)) / 3) == swiglu, (hidden, swiglu)


def test_gates_that_fit_no_interval_are_refused_as_pinned():
    sd = reference("tiny").state_dict()
    sd["lq_proj.output_heads.5.weight"] = torch.zeros(1)  # six gates for three patch blocks
    with pytest.raises(CheckpointError) as e:
        infer_config(sd)
    assert str(e.value) == ("The checkpoint's gates do not fit its blocks.\n"
                            "  received: 6 lq_proj.output_heads for 3 patch blocks\n"
                            "  expected: ceil(patch blocks / interval) gates for some interval\n"
                            "  fix: use a complete, unmodified checkpoint")


def test_training_keys_are_dropped_by_their_stored_name_wherever_they_sit():
    t = torch.zeros(1)
    raw = {"net_ema.a": t, "pos_embed": t, "core.pos_embed": t, "x.weight": t, "module.fake_score.b": t}
    out, source, dropped = canonical_state_dict(raw)
    assert (list(out), source) == (["x.weight"], "safetensors")
    assert dropped == ["net_ema.a", "pos_embed", "core.pos_embed", "module.fake_score.b"]


def test_split_adaln_halves_of_the_wrong_size_are_refused_as_pinned():
    raw = {"pixel_embedder.proj.weight": torch.zeros(8, 3), "pixel_blocks.0.adaLN_modulation_msa.weight":
           torch.zeros(5, 2), "pixel_blocks.0.adaLN_modulation_mlp.weight": torch.zeros(5, 2)}
    with pytest.raises(CheckpointError) as e:
        canonical_state_dict(raw)
    assert str(e.value) == ("pixel_blocks.0.adaLN_modulation_msa / _mlp have shapes no PiT block has.\n"
                            "  received: {'msa': (5, 2), 'mlp': (5, 2)}\n  expected: [pixels x 3 x 8, ...] each\n"
                            "  fix: use a complete, unmodified checkpoint")
    with pytest.raises(CheckpointError, match="^pixel_blocks.3: only one half"):
        canonical_state_dict({"pixel_blocks.3.adaLN_modulation_mlp.weight": torch.zeros(48, 2)})


@pytest.mark.parametrize("embedder", [None, torch.zeros(()), torch.zeros(0, 3)])
def test_a_split_file_without_a_usable_pixel_embedder_is_refused_as_incomplete(embedder):
    sd = split_adaln(reference("tiny").state_dict(), PRESETS["tiny"].backbone.pixel_hidden_size)
    del sd["pixel_embedder.proj.weight"]
    if embedder is not None:
        sd["pixel_embedder.proj.weight"] = embedder
    with pytest.raises(CheckpointError, match="missing tensors every PiD variant has|has a shape no PiD model has"):
        infer_config(canonical_state_dict(sd)[0])


def test_the_rope_follows_the_source_and_the_sizes_follow_the_version():
    from pid_sdk.config import SIZES_4K

    bare = reference("tiny-pixeldit-1.3b").state_dict()
    assert (infer_config(bare).backbone.rope_mode, infer_config(bare).backbone.rope_ref) == ("plain", 1024)
    official = infer_config(bare, source="official-pid").backbone
    assert (official.rope_mode, official.rope_ref) == ("ntk", 2048)
    assert infer_config(reference("tiny-pid-2kto4k-v1.5").state_dict()).trained_sizes == SIZES_4K
