"""The PyTorch backend's speed settings against the plain reference, on the CPU (CUDA-only ones in test_gpu.py)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pid_sdk import DEMO_MODEL, Decoder, PiDError, Speed
from pid_sdk.compare import run_parity
from pid_sdk.config import PRESETS
from pid_sdk.model import build_model, randomize
from pid_sdk.runtime.attention import kernels_used
from pid_sdk.fp8 import fp8_layers
from pid_sdk.runtime.fp8_linear import Fp8MatmulLinear, quantize_linears
from pid_sdk.runtime.speed import get_speed
from tests.test_model import latent_for

ROOT = Path(__file__).resolve().parents[1]
PRESET = "tiny-pid-2kto4k-v1.5"  # PiT injection and per-token gates: every path the settings touch


def decoder(speed=None, preset=PRESET):
    return Decoder.load(preset=preset, seed=3, device="cpu", speed=speed)


def latent(preset=PRESET, batch=1):
    return latent_for(PRESETS[preset], (128, 128), batch=batch, seed=5)


def test_split_modulation_equals_one_matmul():
    cfg = PRESETS[PRESET]
    model = randomize(build_model(cfg), 0).eval()
    x, text, z = torch.randn(2, 3, 64, 96), torch.randn(2, 5, 32), latent_for(cfg, (64, 96))
    args = (x, torch.tensor([0.3, 0.8]), text, z, torch.tensor([0.0, 0.4]))
    with torch.no_grad():
        plain = model(*args)
        model.set_split_modulation(True)
        split = model(*args)
    assert torch.allclose(split, plain, rtol=1e-5, atol=1e-6)


def test_fp8_rows_equal_full_output():
    layer = Fp8MatmulLinear(torch.nn.Linear(64, 96).bfloat16())
    x = torch.randn(7, 64, dtype=torch.bfloat16)
    rows = torch.tensor([3, 0, 95, 17])
    assert torch.equal(layer.rows(x, rows), layer(x)[:, rows])


def test_fp8_linear_close_to_bf16():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128).bfloat16()
    x = torch.randn(64, 256, dtype=torch.bfloat16)
    ref, out = linear(x).double(), Fp8MatmulLinear(linear)(x).double()
    assert out.dtype == torch.float64 and 0 < ((out - ref).norm() / ref.norm()).item() < 0.06  # E4M3: ~3% seen


def test_quantize_linears_takes_the_mmdit_linears_only():
    model = randomize(build_model(PRESETS["tiny-pid-2k"]), 0)
    expected = fp8_layers(model)
    n = quantize_linears(model)
    fp8 = [name for name, m in model.named_modules() if isinstance(m, Fp8MatmulLinear)]
    assert fp8 == expected and n == len(fp8) > 0
    assert all(name.startswith("patch_blocks.") for name in fp8)  # the PiT blocks' per-pixel layers stay bf16
    assert not any("adaLN" in name for name in fp8)


def test_attention_kernel_choice_and_report():
    z = latent()
    math_dec = decoder(Speed(attention="math"))
    flash_dec = decoder()
    assert "math (unfused)" in kernels_used(lambda: math_dec.decode(z, seed=0, steps=1))
    assert "flash (CPU)" in kernels_used(lambda: flash_dec.decode(z, seed=0, steps=1))
    report = run_parity(flash_dec, math_dec, z, precision="fp32")
    assert report.passed, str(report)


def test_bf16_weights_within_bf16_tolerance():
    report = run_parity(decoder(), decoder("bf16"), latent(), precision="bf16")
    assert report.passed, str(report)
    assert report.image.max_abs > 0  # really another precision


def test_fp8_linears_within_fp8_tolerance_of_bf16():
    """The issue's parity check: FP8 layers against the bf16 model they were quantised from."""
    report = run_parity(decoder("bf16"), decoder(Speed(weights="fp8")), latent(batch=2), precision="fp8")
    assert report.passed, str(report)
    assert report.image.max_abs > 0


def test_offsets_are_held_in_the_feature_dtype():
    dec = decoder("bf16")
    backend = dec.runtime.backend(text=torch.zeros(1, 1, 32), latent=latent(), latent_sigma=torch.zeros(1),
                                  height=128, width=128)
    _, state, n_gates = backend._state
    assert n_gates > 0 and all(t.dtype == torch.bfloat16 for t in state[1:])


def test_geometry_is_built_once_per_size():
    dec = decoder()
    z = latent()
    dec.decode(z, seed=0, steps=1)
    first = dict(dec.runtime._geometry)
    dec.decode(z, seed=1, steps=1)
    assert dec.runtime._geometry == first and len(first) == 1


def test_compiled_step_matches_eager():
    report = run_parity(decoder(), decoder(Speed(compile=True)), latent(), precision="fp32")
    assert report.passed, str(report)


def test_settings_are_checked():
    cpu = torch.device("cpu")
    assert get_speed("fast", cpu) == Speed(weights="bf16", compile=True)  # no CUDA graphs without CUDA
    with pytest.raises(PiDError, match="CUDA graphs need a CUDA device"):
        get_speed(Speed(cuda_graphs=True), cpu)
    with pytest.raises(PiDError, match="Unknown speed setting"):
        get_speed("warp", cpu)
    with pytest.raises(PiDError, match="Unknown attention kernel"):
        get_speed(Speed(attention="sparse"), cpu)
    with pytest.raises(PiDError, match="fp32 precision needs fp32 weights"):
        Decoder.load(preset="tiny", device="cpu", precision="fp32", speed="bf16")


def test_speed_is_refused_for_an_engine_folder(tmp_path):
    from pid_sdk.runtime.manifest import is_engine_dir

    (tmp_path / "manifest.json").write_text('{"format": "pid-sdk-engines"}')
    assert is_engine_dir(tmp_path)
    with pytest.raises(PiDError, match="not an engine folder"):
        Decoder.load(tmp_path, speed="fast")


def test_torchao_fp8_is_refused_off_a_cuda_gpu_with_the_reason():
    """torchao's float8 linears need CUDA 8.9+ and the package; here they are refused before any model is touched,
    whether torchao is installed or not (its parity runs in test_gpu.py)."""
    with pytest.raises(PiDError, match="torchao's FP8 linear layers cannot run here") as refused:
        get_speed("fp8-torchao", torch.device("cpu"))
    assert "torchao" in str(refused.value.received) and "speed='fp8'" in refused.value.fix


def test_autotuned_compile_matches_eager():
    """max-autotune GEMM selection and the flux-fast Inductor flags change kernels, not results."""
    report = run_parity(decoder(), decoder(Speed(compile=True, autotune=True)), latent(), precision="fp32")
    assert report.passed, str(report)
    with pytest.raises(PiDError, match="autotune tunes what torch.compile generates"):
        get_speed(Speed(autotune=True), torch.device("cpu"))
    assert get_speed("fast-autotune", torch.device("cpu")) == Speed(weights="bf16", compile=True, autotune=True)


def joint_parts(seed=0, image=64, text=7, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    make = lambda n: [2 * torch.randn(2, 3, n, 16, generator=gen).to(dtype) for _ in range(3)]  # noqa: E731
    return make(image), make(text)


@pytest.mark.parametrize("kernel", ["cpu", "math"])
def test_split_joint_attention_equals_one_call(kernel):
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from pid_sdk.model.split_attention import split_joint_attention

    (qx, kx, vx), (qy, ky, vy) = joint_parts()
    one = sdpa(torch.cat([qy, qx], 2), torch.cat([ky, kx], 2), torch.cat([vy, vx], 2)).transpose(1, 2).flatten(2)
    ax, ay = split_joint_attention((qx, kx, vx), (qy, ky, vy), kernel)
    assert torch.allclose(ax, one[:, 7:], atol=2e-5) and torch.allclose(ay, one[:, :7], atol=2e-5)


def test_split_attention_log_sum_exp_is_the_scores():
    from pid_sdk.model.split_attention import attention_with_lse

    (q, k, v), _ = joint_parts(image=33)
    out, lse = attention_with_lse(q, k[:, :, :20], v[:, :, :20], "cpu")
    expected = (q @ k[:, :, :20].transpose(-2, -1) / 4).logsumexp(-1, keepdim=True)
    assert lse.shape == (2, 3, 33, 1) and torch.allclose(lse, expected, atol=1e-5)


def test_split_attention_in_bf16_rounds_like_one_call():
    """In bf16 the merge adds one rounding: the error against fp32 stays that of a single bf16 call."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from pid_sdk.model.split_attention import split_joint_attention

    (qx, kx, vx), (qy, ky, vy) = joint_parts(image=256, text=20)
    joint = [torch.cat(pair, 2) for pair in ((qy, qx), (ky, kx), (vy, vx))]
    exact = sdpa(*joint).transpose(1, 2).flatten(2)
    one_bf16 = sdpa(*(t.bfloat16() for t in joint)).transpose(1, 2).flatten(2).float()
    ax, ay = split_joint_attention([t.bfloat16() for t in (qx, kx, vx)], [t.bfloat16() for t in (qy, ky, vy)], "cpu")
    split_error = (torch.cat([ay, ax], 1).float() - exact).abs().max()
    assert 0 < split_error <= 2 * (one_bf16 - exact).abs().max()


def test_split_attention_decodes_as_the_reference():
    dec = decoder(Speed(split_attention=True))
    assert {block.attn.split_kernel for block in dec.runtime.model.patch_blocks} == {"cpu"}
    report = run_parity(decoder(), dec, latent(batch=2), precision="fp32")
    assert report.passed, str(report)
    assert report.image.max_abs > 0  # really another computation, equal up to rounding


def test_split_attention_compiles():
    report = run_parity(decoder(), decoder(Speed(compile=True, split_attention=True)), latent(), precision="fp32")
    assert report.passed, str(report)


def test_split_attention_kernel_follows_the_attention_setting():
    from pid_sdk.runtime.attention import lse_kernel

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [lse_kernel(name, cpu) for name in ("auto", "flash", "math")] == ["cpu", "cpu", "math"]
    assert [lse_kernel(name, cuda) for name in ("auto", "cudnn", "efficient")] == ["flash", "cudnn", "efficient"]
    with pytest.raises(PiDError, match="Unknown attention kernel"):
        lse_kernel("fast", cpu)


def test_fp8_attention_is_refused_with_the_reason():
    cpu = torch.device("cpu")
    with pytest.raises(PiDError, match="cannot run here") as refused:
        get_speed("fp8-attention", cpu)
    assert "CUDA GPU" in str(refused.value.received) and "speed='fast'" in refused.value.fix
    with pytest.raises(PiDError, match="bf16 model"):
        Speed(fp8_attention=True).check(cpu)
    with pytest.raises(PiDError, match="same call"):
        Speed(weights="bf16", fp8_attention=True, split_attention=True).check(cpu)


def test_fp8_attention_quantisation_is_per_tensor_e4m3():
    from pid_sdk.runtime.fp8_attention import E4M3_MAX, quantize

    x = torch.randn(2, 3, 50, 16, dtype=torch.bfloat16) * 5
    x8, descale = quantize(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.shape == (1, 1, 1, 1) and descale.dtype == torch.float32
    assert x8.float().abs().max().item() == E4M3_MAX  # the largest value lands on E4M3's maximum
    back = x8.float() * descale
    assert 0 < ((back - x.float()).norm() / x.float().norm()).item() < 0.04  # 3 mantissa bits


def test_fp8_attention_arithmetic_close_to_bf16_attention():
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from pid_sdk.runtime.fp8_attention import reference_fp8_sdpa

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 300, 64, generator=gen).bfloat16() for _ in range(3))
    exact = sdpa(q.float(), k.float(), v.float())
    fp8 = reference_fp8_sdpa(q, k, v)
    assert fp8.dtype == torch.bfloat16 and fp8.shape == exact.shape
    assert 0.005 < ((fp8.float() - exact).norm() / exact.norm()).item() < 0.08


@pytest.mark.parametrize("model", ["random", "demo"])
def test_fp8_attention_arithmetic_within_the_fp8_row(model):
    """What E4M3 attention costs a decode, per step and per image against bf16: cuDNN's arithmetic run in PyTorch
    on the MM-DiT attention (the GPU tests hold the kernel to this arithmetic)."""
    from pid_sdk.runtime.fp8_attention import reference_fp8_sdpa

    if model == "demo":
        load = lambda: Decoder.load(DEMO_MODEL, device="cpu", speed="bf16")  # noqa: E731
        z = load_file(str(ROOT / "samples" / "sample_latent_flux1.safetensors"))["latent"][None]  # 512x512 out
    else:
        load, z = (lambda: decoder("bf16")), latent()
    fp8 = load()
    fp8.runtime.model.set_joint_sdpa(reference_fp8_sdpa)
    report = run_parity(load(), fp8, z, precision="fp8")
    assert report.passed, str(report)
    assert report.image.max_abs > 1e-3  # really quantised


def test_fp8_attention_operator_traces_with_the_kernels_output_layout():
    """What torch.compile sees of the opaque cuDNN operator: shape, dtype and the [B, n, h, Dh] layout that makes the
    model's heads-to-channels step a view (the kernel itself runs in tests/test_gpu.py)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pid_sdk.runtime.fp8_attention import fp8_sdpa

    with FakeTensorMode():
        q, k, v = torch.empty(3, 2, 24, 1324, 64, dtype=torch.bfloat16)
        out = fp8_sdpa(q, k, v)
        assert out.shape == (2, 24, 1324, 64) and out.dtype == torch.bfloat16
        assert out.transpose(1, 2).is_contiguous()
