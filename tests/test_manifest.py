"""pid_sdk.runtime.manifest on hand-made folders (no export: fast, so scripts/mutation.py can run it per mutant):
the schema types every field, the digest refuses edits, paths stay in the folder, hashes are checked."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from pid_sdk.config import get_preset
from pid_sdk.errors import CheckpointError, InputError
from pid_sdk.files import digest
from pid_sdk.runtime.manifest import (Entry, Manifest, check_static_inputs, is_engine_dir, manifest_paths,
                                      read_engine_manifest, verify_files, verify_weights, write_manifest)

CONFIG = get_preset("tiny")


def io(bucket=(64, 64), batch=1):
    tensor = [{"name": "x", "shape": [batch, 4], "dtype": "float"}]
    return {"text": {"inputs": [{"name": "text", "shape": [batch, 8, 16], "dtype": "float"}], "outputs": tensor},
            "adapter": {"inputs": [{"name": "latent", "shape": [batch, 16, bucket[0] // 32, bucket[1] // 32],
                                    "dtype": "float"}], "outputs": tensor},
            "denoiser": {"inputs": tensor, "outputs": tensor}}


def entry(folder, bucket=(64, 64), **fields) -> Entry:
    files, sha = {}, {}
    for graph in ("text", "adapter", "denoiser"):
        rel = f"onnx/{bucket[0]}x{bucket[1]}/{graph}.onnx"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(graph.encode() * 10)
        files[graph], sha[rel] = rel, hashlib.sha256(graph.encode() * 10).hexdigest()
    values = dict(backend="onnx", bucket=bucket, batch=1, precision="fp32", files=files, sha256=sha, io=io(bucket))
    return Entry(**(values | fields))


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"weights")
    manifest = Manifest(CONFIG, hashlib.sha256(b"weights").hexdigest(), [entry(tmp_path)], "weights.safetensors")
    write_manifest(tmp_path, manifest)
    return tmp_path


def edit(folder, change, *, reseal=True):
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    if reseal:
        data["manifest_sha256"] = digest(data)
    (folder / "manifest.json").write_text(json.dumps(data))


def test_a_written_manifest_reads_back_as_it_was(folder):
    manifest = read_engine_manifest(folder)
    assert manifest.config == CONFIG and manifest.weights == "weights.safetensors"
    assert manifest.entries == [entry(folder)] and is_engine_dir(folder)
    assert not list(folder.glob(".manifest-*"))  # the temporary file was renamed into place
    assert (folder / "manifest.json").stat().st_mode & 0o777 == 0o644


def test_entries_are_keyed_by_size_batch_and_variant(folder):
    native, fp16 = entry(folder), entry(folder, attention_dtype="fp16")
    assert native.key == "onnx:-:64x64:b1:fp32" and fp16.key == "onnx:-:64x64:b1:fp32-attn-fp16"
    manifest = Manifest(CONFIG, "0" * 64, [native])
    manifest.add(fp16)
    manifest.add(entry(folder, sha256={}))  # the same key: replaces the first
    assert [e.key for e in manifest.entries] == [fp16.key, native.key] and manifest.entries[1].sha256 == {}
    assert entry(folder, backend="tensorrt_rtx", target="rtx5090").key.startswith("tensorrt_rtx:rtx5090:")


def test_manifest_paths_are_the_weights_graphs_and_hashed_files(folder):
    extra = entry(folder, sha256=entry(folder).sha256 | {"onnx/64x64/denoiser.onnx.data": "0" * 64})
    paths = manifest_paths(Manifest(CONFIG, "0" * 64, [extra], "weights.safetensors"))
    assert paths[0] == "weights.safetensors" and paths.count("onnx/64x64/text.onnx") == 2
    assert "onnx/64x64/denoiser.onnx.data" in paths and len(paths) == 8
    assert "weights.safetensors" not in manifest_paths(Manifest(CONFIG, "0" * 64, [extra]))


def test_an_edit_that_keeps_the_schema_is_refused_by_the_digest(folder):
    edit(folder, lambda d: d["config"]["backbone"].update(rope_theta=1.0), reseal=False)
    with pytest.raises(CheckpointError, match="edited after it was written") as e:
        read_engine_manifest(folder)
    assert "never edit a manifest by hand" in e.value.fix
    assert read_engine_manifest(folder, verify=False).config.backbone.rope_theta == 1.0


def test_a_manifest_without_a_digest_is_refused_unless_the_caller_opts_out(folder):
    edit(folder, lambda d: d.pop("manifest_sha256"), reseal=False)
    with pytest.raises(CheckpointError, match="has no digest"):
        read_engine_manifest(folder)
    assert read_engine_manifest(folder, verify=False).entries == [entry(folder)]


@pytest.mark.parametrize("change, where", [
    (lambda d: d["entries"][0].update(bucket=[0, 64]), "entries.0.bucket.0"),
    (lambda d: d["entries"][0].update(bucket=[64, 64, 1]), "entries.0.bucket"),
    (lambda d: d["entries"][0].update(batch="1"), "entries.0.batch"),
    (lambda d: d["entries"][0].update(batch=1025), "entries.0.batch"),
    (lambda d: d["entries"][0].update(precision="int4"), "entries.0.precision"),
    (lambda d: d["entries"][0].update(colour="red"), "entries.0.colour"),
    (lambda d: d["entries"][0].update(target="h100"), "entries.0: Value error, a onnx entry's target"),
    (lambda d: d["entries"][0].update(backend="aoti", target="cpu"), "records the torch release"),
    (lambda d: d["entries"][0].update(backend="tensorrt_rtx", target="rtx5090"), "records its library version"),
    (lambda d: d["entries"][0]["files"].pop("text"), "files and io must name each of"),
    (lambda d: d["entries"][0]["sha256"].update({"onnx/64x64/text.onnx": "ABC"}), "entries.0.sha256"),
    (lambda d: d["entries"][0]["io"]["text"]["inputs"][0].update(shape=[65536, 65536, 2]), "elements"),
    (lambda d: d["entries"][0]["io"]["text"]["inputs"][0].update(shape=[]), "shape"),
    (lambda d: d["entries"][0]["io"]["text"]["inputs"][0].update(dtype="int4"), "dtype"),
    (lambda d: d.update(model_sha256="xyz"), "model_sha256"),
    (lambda d: d.update(extra=1), "extra"),
])
def test_the_schema_names_the_field_that_breaks_it(folder, change, where):
    edit(folder, change)
    with pytest.raises(CheckpointError, match="is damaged") as e:
        read_engine_manifest(folder)
    assert where in str(e.value) and "re-export" in e.value.fix


def test_another_format_or_version_says_what_it_found(folder):
    edit(folder, lambda d: d.update(format_version=2))
    with pytest.raises(CheckpointError, match="not a pid-sdk engine manifest") as e:
        read_engine_manifest(folder)
    assert e.value.received == "format=pid-sdk-engines version=2"
    (folder / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a pid-sdk engine manifest") as e:
        read_engine_manifest(folder)
    assert e.value.received == "list" and not is_engine_dir(folder / "missing")


def test_no_manifest_says_to_export_first(tmp_path):
    with pytest.raises(CheckpointError, match="has no engine manifest") as e:
        read_engine_manifest(tmp_path)
    assert "pid-sdk export" in e.value.fix and not is_engine_dir(tmp_path)


@pytest.mark.parametrize("rel", ["../outside.onnx", "/etc/passwd", "a/../../b.onnx"])
def test_paths_out_of_the_folder_are_refused_before_anything_opens(folder, rel):
    edit(folder, lambda d: d["entries"][0]["files"].update(text=rel))
    with pytest.raises(CheckpointError, match="outside its folder"):
        read_engine_manifest(folder)


def test_verify_files_checks_every_hash_and_names_the_file(folder):
    e = read_engine_manifest(folder).entries[0]
    verify_files(folder, e)
    (folder / "onnx/64x64/adapter.onnx").write_bytes(b"other")
    with pytest.raises(CheckpointError, match="adapter.onnx of onnx:-:64x64:b1:fp32 does not match") as err:
        verify_files(folder, e)
    assert err.value.received == hashlib.sha256(b"other").hexdigest()
    verify_files(folder, e, verify=False)
    (folder / "onnx/64x64/adapter.onnx").unlink()
    with pytest.raises(CheckpointError, match="adapter.onnx of .* is missing"):
        verify_files(folder, e, verify=False)  # the opt-out skips hashes, never the files


def test_unhashed_graphs_are_refused_unless_the_caller_opts_out(folder):
    e = entry(folder, sha256={})
    with pytest.raises(CheckpointError, match="without a sha256") as err:
        verify_files(folder, e)
    assert err.value.received == sorted(e.files.values()) and "verify=False" in err.value.fix
    verify_files(folder, e, verify=False)


def test_verify_weights(folder):
    manifest = read_engine_manifest(folder)
    assert verify_weights(folder, manifest) == folder / "weights.safetensors"
    (folder / "weights.safetensors").write_bytes(b"other weights")
    with pytest.raises(CheckpointError, match="the shared weights\\) does not match"):
        verify_weights(folder, manifest)
    assert verify_weights(folder, manifest, verify=False) == folder / "weights.safetensors"
    unhashed = Manifest(CONFIG, None, [], "weights.safetensors")
    with pytest.raises(CheckpointError, match="has no sha256 for weights.safetensors"):
        verify_weights(folder, unhashed)
    assert verify_weights(folder, unhashed, verify=False).name == "weights.safetensors"
    with pytest.raises(CheckpointError, match="carries no weights"):
        verify_weights(folder, Manifest(CONFIG, "0" * 64, []), verify=False)


def test_static_inputs_must_have_the_entrys_shapes(folder):
    e = entry(folder, bucket=(64, 128))
    check_static_inputs(e, torch.zeros(1, 8, 16), torch.zeros(1, 16, 2, 4))
    for text, latent, name in [(torch.zeros(1, 7, 16), torch.zeros(1, 16, 2, 4), "text"),
                               (torch.zeros(1, 8, 16), torch.zeros(1, 16, 4, 2), "latent")]:
        with pytest.raises(InputError, match=f"The {name} does not fit") as err:
            check_static_inputs(e, text, latent)
        assert "bucket (64, 128), batch 1" in err.value.expected


def _unhashed(folder):
    verify_files(folder, entry(folder, sha256={}))


def _modified(folder):
    e = entry(folder)
    (folder / "onnx/64x64/text.onnx").write_bytes(b"x")
    verify_files(folder, e)


def _missing(folder):
    e = entry(folder)
    (folder / "onnx/64x64/denoiser.onnx").unlink()
    verify_files(folder, e)


# Every refusal, rendered in full: the words a user acts on are part of the contract. <d> is the folder.
PINNED = {
    "no manifest": (lambda f: read_engine_manifest(f / "nothing"),
                    "<d>/nothing has no engine manifest (manifest.json).\n"
                    "  fix: export graphs into it with `pid-sdk export` first"),
    "another version": (lambda f: (edit(f, lambda d: d.update(format_version=2)), read_engine_manifest(f)),
                        "<d>/manifest.json is not a pid-sdk engine manifest of a supported version.\n"
                        "  received: format=pid-sdk-engines version=2\n"
                        "  expected: format=pid-sdk-engines version=1\n"
                        "  fix: re-export the engine set (pid-sdk export)"),
    "schema": (lambda f: (edit(f, lambda d: d["entries"][0].update(batch=0)), read_engine_manifest(f)),
               "<d>/manifest.json is damaged: entries.0.batch: Input should be greater than or equal to 1.\n"
               "  received: 1 problems\n"
               "  expected: a manifest written by pid-sdk export / build\n"
               "  fix: re-export the engine set (pid-sdk export)"),
    "top level": (lambda f: (edit(f, lambda d: d.pop("config")), read_engine_manifest(f)),
                  "<d>/manifest.json is damaged: config: Field required.\n"
                  "  received: 1 problems\n"
                  "  expected: a manifest written by pid-sdk export / build\n"
                  "  fix: re-export the engine set (pid-sdk export)"),
    "no digest": (lambda f: (edit(f, lambda d: d.pop("manifest_sha256"), reseal=False), read_engine_manifest(f)),
                  "<d>/manifest.json has no digest (manifest_sha256): it cannot be checked for edits.\n"
                  "  fix: re-export the engine set (pid-sdk export), or pass verify=False (CLI: --no-verify) to read "
                  "it unchecked"),
    "unhashed": (_unhashed,
                 "The manifest lists files of onnx:-:64x64:b1:fp32 without a sha256.\n"
                 "  received: ['onnx/64x64/adapter.onnx', 'onnx/64x64/denoiser.onnx', 'onnx/64x64/text.onnx']\n"
                 "  fix: rebuild this entry (pid-sdk export / pid-sdk build), or pass verify=False (CLI: --no-verify) "
                 "to run unverified files"),
    "modified": (_modified,
                 "onnx/64x64/text.onnx of onnx:-:64x64:b1:fp32 does not match the manifest's sha256 (modified, "
                 "truncated or replaced).\n"
                 f"  received: {hashlib.sha256(b'x').hexdigest()}\n"
                 f"  expected: {hashlib.sha256(b'text' * 10).hexdigest()}\n"
                 "  fix: rebuild it (pid-sdk export / pid-sdk build)"),
    "missing": (_missing,
                "onnx/64x64/denoiser.onnx of onnx:-:64x64:b1:fp32 is missing.\n"
                "  received: <d>/onnx/64x64/denoiser.onnx\n"
                "  fix: rebuild it (pid-sdk export / pid-sdk build)"),
    "no weights": (lambda f: verify_weights(f, Manifest(CONFIG, "0" * 64, [])),
                   "The engine set carries no weights for the PyTorch fallback.\n"
                   "  fix: re-export it with pid-sdk export (weights.safetensors is written beside the graphs)"),
    "no weights hash": (lambda f: verify_weights(f, Manifest(CONFIG, None, [], "weights.safetensors")),
                        "The manifest of <d> has no sha256 for weights.safetensors.\n"
                        "  received: None\n"
                        "  expected: model_sha256: 64 hex digits\n"
                        "  fix: re-export the engine set, or pass verify=False (CLI: --no-verify) to load unverified "
                        "weights"),
    "static shape": (lambda f: check_static_inputs(entry(f), torch.zeros(1, 8, 16), torch.zeros(1, 16, 2, 3)),
                     "The latent does not fit this engine's static shape.\n"
                     "  received: (1, 16, 2, 3)\n"
                     "  expected: (1, 16, 2, 2) (bucket (64, 64), batch 1)\n"
                     "  fix: pass full-length text embeddings; decode with the engine of this size"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_refusal_reads_as_pinned(folder, name):
    call, expected = PINNED[name]
    with pytest.raises((CheckpointError, InputError)) as e:
        call(folder)
    assert str(e.value).replace(str(folder), "<d>") == expected


def test_hashed_files_beyond_the_graphs_are_checked_too(folder):
    """External weights are hashed but are not one of the three graphs: verify_files checks them as well."""
    (folder / "onnx/64x64/denoiser.onnx.data").write_bytes(b"data")
    e = entry(folder, sha256=entry(folder).sha256 | {"onnx/64x64/denoiser.onnx.data": hashlib.sha256(b"data")
                                                    .hexdigest()})
    verify_files(folder, e)
    (folder / "onnx/64x64/denoiser.onnx.data").write_bytes(b"other")
    with pytest.raises(CheckpointError, match="denoiser.onnx.data of .* does not match"):
        verify_files(folder, e)


def test_the_manifest_is_written_indented_and_renamed_into_place(tmp_path):
    """Two-space JSON (a reviewer reads it in a diff), and the temporary file lives in the folder itself: a rename
    across file systems would fail (/dev/shm is another one here)."""
    import os
    import tempfile

    write_manifest(tmp_path, Manifest(CONFIG, "0" * 64, []))
    assert (tmp_path / "manifest.json").read_text().startswith('{\n  "format": "pid-sdk-engines",\n')
    assert (tmp_path / "manifest.json").read_text().endswith("}\n")
    if os.path.isdir("/dev/shm") and os.stat("/dev/shm").st_dev != os.stat(tempfile.gettempdir()).st_dev:
        shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
        write_manifest(shm, Manifest(CONFIG, "0" * 64, []))
        assert read_engine_manifest(shm).entries == [] and os.listdir(shm) == ["manifest.json"]


def test_a_manifest_without_weights_names_no_weights_path(folder):
    assert manifest_paths(Manifest(CONFIG, "0" * 64, [entry(folder)])) == list(entry(folder).files.values()) + \
        list(entry(folder).sha256)


def test_a_manifest_that_is_a_folder_or_truncated_says_so(tmp_path):
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(CheckpointError) as e:
        read_engine_manifest(tmp_path)
    assert str(e.value).startswith(f"The engine manifest {tmp_path}/manifest.json is a folder, not a regular file.")
    assert not is_engine_dir(tmp_path)
    (tmp_path / "manifest.json").rmdir()
    (tmp_path / "manifest.json").write_text('{"format": "pid-sdk-engines", "entries": [')
    assert is_engine_dir(tmp_path)  # it says what it is, damaged: the error then says re-export
    with pytest.raises(CheckpointError) as e:
        read_engine_manifest(tmp_path)
    assert str(e.value).startswith(f"The engine manifest {tmp_path}/manifest.json is not valid JSON within the SDK")
    assert e.value.fix == "re-export the engine set (pid-sdk export)"


def test_a_graph_that_is_a_folder_is_named_and_a_short_weights_hash_is_shown(folder):
    e = entry(folder)
    (folder / "onnx/64x64/text.onnx").unlink()
    (folder / "onnx/64x64/text.onnx").mkdir()
    with pytest.raises(CheckpointError, match="onnx/64x64/text.onnx of onnx:-:64x64:b1:fp32 .*is a folder"):
        verify_files(folder, e, verify=False)
    with pytest.raises(CheckpointError) as err:
        verify_weights(folder, Manifest(CONFIG, "abc", [], "weights.safetensors"))
    assert err.value.received == "'abc'"
