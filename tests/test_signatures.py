"""Engine files judged by their contents: a manifest whose labels lie about its graphs (roles swapped, a bucket, an
I/O shape or a precision edited), even with every hash and its digest made right again, is refused by `verify`,
`Decoder.load` and the decode, naming the mismatch (pid_sdk/runtime/signatures.py)."""

import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import pid_sdk  # noqa: E402
from conftest import copy_folder, sealed  # noqa: E402
from pid_sdk.cli import main  # noqa: E402
from pid_sdk.errors import CheckpointError  # noqa: E402


def edited(folder, tmp_path, change):
    f = copy_folder(folder, tmp_path)
    data = json.loads((f / "manifest.json").read_text())
    change(data["entries"][0])
    (f / "manifest.json").write_text(json.dumps(sealed(data)))
    return f


def swap_text_and_adapter(e):
    e["files"]["text"], e["files"]["adapter"] = e["files"]["adapter"], e["files"]["text"]


def bucket_128(e):
    e["bucket"] = [128, 128]
    e["io"]["denoiser"]["inputs"][0]["shape"] = [1, 3, 128, 128]


def latent_shape(e):
    e["io"]["adapter"]["inputs"][0]["shape"][2] = 4


@pytest.mark.parametrize("change,says", [
    (swap_text_and_adapter, "its inputs are ['latent', 'latent_sigma']"),
    (bucket_128, "its input shapes are"),
    (latent_shape, "its input shapes are"),
    (lambda e: e.update(precision="bf16"), "its weights are ['float'], a bf16 graph's bfloat16"),
    (lambda e: e.update(precision="fp8-fp32"), "it has no FP8 Q/DQ"),
    (lambda e: e.update(attention_dtype="fp16"), "it has no attention cast to float16"),
    (lambda e: e["io"]["text"]["inputs"][0].update(dtype="float16"), "its input dtypes are ['float']"),
])
def test_labels_that_lie_about_the_graphs_are_refused_everywhere(tiny_engine_folder, tmp_path, capsys, change, says):
    f = edited(tiny_engine_folder, tmp_path, change)
    assert main(["verify", str(f)]) == 2
    out = capsys.readouterr().out
    assert "FAIL onnx:" in out and says in out
    from pid_sdk.compare import compare_folder

    [result] = compare_folder(f, "onnxruntime", steps=1)  # the entry opened on its own, as every decode opens it
    assert result.status == "failed" and "says it is" in result.reason and says in result.reason
    assert "rebuild the entry" in result.reason


@pytest.mark.parametrize("change,says", [
    (lambda e: e.update(precision="int4"), "entries.0.precision"),
    (lambda e: e.update(backend="aoti", target="tpu", torch_version="2.13.0"), "target is one of"),
    (lambda e: e.update(backend="aoti", target="cpu", torch_version=2.13), "entries.0.torch_version"),
    (lambda e: e.update(batch=True), "entries.0.batch"),
    (lambda e: e["io"]["text"]["inputs"][0].update(shape=[1, 0, 32]), "entries.0.io.text.inputs.0.shape"),
])
def test_labels_the_sdk_never_writes_are_refused_by_the_schema(tiny_engine_folder, tmp_path, capsys, change, says):
    f = edited(tiny_engine_folder, tmp_path, change)
    with pytest.raises(CheckpointError, match="is damaged") as err:
        pid_sdk.Decoder.load(f)
    assert says in err.value.what
    assert main(["verify", str(f)]) == 2 and "is damaged" in capsys.readouterr().err


def test_the_unchanged_folder_passes_and_decodes(tiny_engine_folder, capsys):
    assert main(["verify", str(tiny_engine_folder)]) == 0
    assert "graphs are what the entry says" in capsys.readouterr().out
    image = pid_sdk.Decoder.load(tiny_engine_folder, backend="onnxruntime").decode(torch.zeros(1, 16, 2, 2), seed=0)
    assert image.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("change,latent", [(lambda e: e.update(bucket=[32, 64]), (1, 16, 1, 2)),
                                           (lambda e: e.update(batch=2), (2, 16, 2, 2))])
def test_a_bucket_or_batch_that_its_own_shapes_contradict_is_refused(tiny_engine_folder, tmp_path, capsys, change,
                                                                     latent):
    f = edited(tiny_engine_folder, tmp_path, change)
    assert main(["verify", str(f)]) == 2
    assert "does not agree with its own I/O shapes" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="does not agree with its own I/O shapes") as err:
        pid_sdk.Decoder.load(f, backend="onnxruntime").decode(torch.zeros(latent), seed=0)
    assert "denoiser x [1, 3, 64, 64]" in err.value.received
