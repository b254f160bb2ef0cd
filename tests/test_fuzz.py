"""Property-based fuzzing of everything a hostile or careless caller controls: latent files, manifests, decode
arguments. The property: every call ends in a finite result or a PiDError; never another exception, never a file
left behind, never a jump of the process's peak memory.

CI runs the bounded profile (PID_SDK_FUZZ unset: 40 examples per test, under a minute in all); a longer run:
    PID_SDK_FUZZ=long .venv/bin/python -m pytest tests/test_fuzz.py      # 3000 examples a test
    PID_SDK_FUZZ=500 .venv/bin/python -m pytest tests/test_fuzz.py       # or any number
"""

import io
import json
import math
import os
import resource
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes

import pid_sdk
from pid_sdk.cli import main
from pid_sdk.errors import PiDError

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
LONG = os.environ.get("PID_SDK_FUZZ", "")  # "long" (3000 examples a test) or a number of examples
settings.register_profile("long", max_examples=int(LONG) if LONG.isdigit() else 3000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile("long" if LONG else "ci")

PEAK_GROWTH_KIB = 3 << 20  # what the whole fuzz module may add to the process's peak resident set


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    start = peak_kib()
    yield
    assert peak_kib() - start < PEAK_GROWTH_KIB, f"peak memory grew by {(peak_kib() - start) >> 10} MiB"


@pytest.fixture(scope="module")
def tiny():
    return pid_sdk.Decoder.load(preset="tiny", seed=0)


def finite_or_pid_error(call):
    """Run `call`: a PiDError is a refusal; anything else it returns must be finite."""
    try:
        out = call()
    except PiDError as exc:
        assert exc.what and exc.fix, f"a refusal without a fix: {exc}"
        return None
    if isinstance(out, torch.Tensor):
        assert torch.isfinite(out).all()
    return out


# --- latent files --------------------------------------------------------------------------------------------------
dims = st.one_of(st.integers(0, 4), st.sampled_from([7, 10**5, 2**31, 2**40]))
shapes = st.lists(dims, min_size=0, max_size=6)
dtypes = st.sampled_from(["<f4", "<f2", "<f8", "<i4", "|b1", "<c8", "|O", "|u1", "<U3", "<f16"])


def npy_with_header(shape, dtype, payload: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + payload


def valid_file(suffix: str, shape=(1, 16, 2, 2)) -> bytes:
    z = torch.randn(tuple(shape))
    if suffix == ".safetensors":
        return safetensors_bytes({"latent": z})
    buf = io.BytesIO()
    if suffix == ".npy":
        np.save(buf, z.numpy())
    else:
        torch.save(z, buf)
    return buf.getvalue()


@st.composite
def mutated(draw, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "cut", "append", "splice"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos:]
        elif op == "append":
            data += draw(st.binary(max_size=64))
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@st.composite
def latent_files(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".safetensors", ".npy", ".pt", ".pth", ".png", ""]))
    kind = draw(st.sampled_from(["random", "mutated", "lying_npy", "view", "valid_odd"]))
    if kind == "random":
        return suffix, draw(st.binary(max_size=512))
    if kind == "mutated":
        return suffix, draw(mutated(valid_file(suffix if suffix in (".safetensors", ".npy") else ".pt")))
    if kind == "lying_npy":
        return ".npy", npy_with_header(draw(shapes), draw(dtypes), draw(st.binary(max_size=256)))
    if kind == "view":
        shape = draw(st.lists(st.sampled_from([1, 2, 16, 10**5]), min_size=4, max_size=4)
                     .filter(lambda s: math.prod(s) < 2**62))  # torch itself refuses more elements than int64 holds
        buf = io.BytesIO()
        torch.save(torch.zeros(1, 1, 1, 1).expand(*shape), buf)
        return ".pt", buf.getvalue()
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=5))
    return suffix or ".pt", valid_file(suffix if suffix in (".safetensors", ".npy") else ".pt", shape)


@given(latent_files())
def test_latent_files_through_the_cli(tmp_path_factory, file):
    suffix, data = file
    work = tmp_path_factory.mktemp("fuzz")
    path = work / f"z{suffix}"
    path.write_bytes(data)
    out = work / "out"
    out.mkdir()
    code = main(["decode", str(path), "--preset", "tiny", "-o", str(out / "o.png"), "--quiet", "--steps", "1"])
    assert code in (0, 2)
    written = sorted(p.name for p in out.iterdir())
    assert written == (["o.png"] if code == 0 else []) or (code == 0 and all(n.startswith("o_") for n in written))
    shutil.rmtree(work)


# --- manifests -----------------------------------------------------------------------------------------------------
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
              st.sampled_from(["", "..", "../weights.safetensors", "/etc/hostname", "onnx/../../x", "a" * 300]),
              st.text(max_size=8)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6)


@st.composite
def mutated_json(draw, data):
    """`data` with a few values replaced, keys deleted or added, at any depth."""
    def paths(node, prefix=()):
        yield prefix
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            yield from paths(v, prefix + (k,))

    data = json.loads(json.dumps(data))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(list(paths(data))))
        if not where:
            data = draw(json_values) if draw(st.integers(0, 9)) == 0 else data
            continue
        parent = data
        for k in where[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and draw(st.booleans()) and draw(st.booleans()):
            del parent[where[-1]]
        else:
            parent[where[-1]] = draw(json_values)
    return data


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    return pid_sdk.save_artefact(pid_sdk.build_model(pid_sdk.get_preset("tiny")), pid_sdk.get_preset("tiny"),
                                 tmp_path_factory.mktemp("fuzz-artefact") / "art")


@given(data=st.data())
def test_artefact_manifests(artefact, data):
    path = artefact / "manifest.json"
    original = path.read_text()
    try:
        path.write_text(json.dumps(data.draw(mutated_json(json.loads(original)))))
        dec = finite_or_pid_error(lambda: pid_sdk.Decoder.load(artefact))
        if dec is not None:
            finite_or_pid_error(lambda: dec.decode(torch.zeros(1, 16, 2, 2), steps=1))
    finally:
        path.write_text(original)


@given(data=st.data())
def test_engine_manifests(tiny_engine_folder, tmp_path_factory, data):
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("fuzz-engines") / "set"
    shutil.copytree(tiny_engine_folder, folder)
    original = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(data.draw(mutated_json(original))))
    backend = data.draw(st.sampled_from(["auto", "onnxruntime", "pytorch"]))
    dec = finite_or_pid_error(lambda: pid_sdk.Decoder.load(folder, backend=backend))
    if dec is not None:
        finite_or_pid_error(lambda: dec.decode(torch.zeros(1, 16, 2, 2), steps=1))
    shutil.rmtree(folder.parent)


# --- decode arguments ------------------------------------------------------------------------------------------------
anything = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=4),
                     st.lists(st.floats(), max_size=3))


@st.composite
def latents(draw):
    kind = draw(st.sampled_from(["good", "shape", "values", "type", "view", "dtype"]))
    if kind == "good":
        return torch.randn(draw(st.integers(1, 2)), 16, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if kind == "shape":
        return torch.zeros(tuple(draw(st.lists(st.integers(0, 20), max_size=5))))
    if kind == "values":
        return torch.full((1, 16, 2, 2), draw(st.floats(width=32)))
    if kind == "view":
        return torch.zeros(1, 16, 1, 1).expand(1, 16, draw(st.sampled_from([1, 7, 10**5])), 10**5)
    if kind == "dtype":
        return torch.zeros(1, 16, 2, 2, dtype=draw(st.sampled_from([torch.int8, torch.bool, torch.complex64,
                                                                      torch.float16, torch.bfloat16])))
    return draw(anything)


@given(latent=latents(), sigma=st.one_of(anything, st.floats(0, 1)), seed=st.one_of(anything, st.integers(0, 9)),
       steps=st.one_of(anything, st.integers(-1, 4)), guidance=st.one_of(anything, st.floats(0, 10)),
       sampler=st.one_of(st.sampled_from(["sde", "ode", "teacher"]), anything),
       output=st.one_of(st.sampled_from(["tensor", "numpy", "pil"]), anything), normalized=st.booleans(),
       space=st.one_of(st.none(), st.sampled_from(["flux1", "sd3", "sdxl", "flux2", "siglip", "nope"])))
def test_decode_arguments(tiny, latent, sigma, seed, steps, guidance, sampler, output, normalized, space):
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > 8:
        steps = 8  # a valid request's cost grows with steps: keep the examples short, not the property weaker
    kwargs = dict(latent_sigma=sigma, seed=seed, steps=steps, guidance=guidance, sampler=sampler, output=output,
                  normalized=normalized, latent_space=space, negative_embeddings=torch.zeros(1, 8, 32))
    out = finite_or_pid_error(lambda: tiny.decode(latent, **kwargs))
    if isinstance(out, np.ndarray):
        assert out.dtype == np.uint8
    elif isinstance(out, list):
        assert all(img.size[0] > 0 for img in out)
