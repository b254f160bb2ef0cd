"""CUDA checks: run by scripts/gpu_check.sh on a GPU host; skipped (with the reason) on CPU machines."""

from dataclasses import replace

import pytest
import torch

from pid_sdk import Decoder
from pid_sdk.checkpoints import LoadedModel
from pid_sdk.config import PRESETS
from pid_sdk.model import build_model, randomize

pytestmark = pytest.mark.gpu


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def velocity(model, device, x, text, z, ls, precision="fp32"):
    from pid_sdk.runtime.torch_backend import TorchRuntime

    runtime = TorchRuntime(model.to(device), torch.device(device), precision)
    backend = runtime.backend(text=text, latent=z, latent_sigma=ls, height=x.shape[-2], width=x.shape[-1])
    return backend.infer({"x": x, "sigma": torch.tensor([0.6])})["v"].cpu()


def inputs(cfg, side=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = cfg.adapter
    h = side // (a.latent_factor * a.sr_scale)
    return (torch.randn(1, 3, side, side, generator=g), torch.randn(1, 8, cfg.backbone.txt_embed_dim, generator=g),
            torch.randn(1, a.latent_channels, h, h, generator=g), torch.tensor([0.2]))


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("name", ["tiny-pid-2k", "tiny-pid-2kto4k-v1.5", "tiny-pid-2kto4k-v1.5-flux2"])
def test_cuda_fp32_matches_cpu(name):
    cfg = PRESETS[name]
    model = randomize(build_model(cfg), 0).eval()
    x, text, z, ls = inputs(cfg)
    cpu = velocity(model, "cpu", x, text, z, ls)
    gpu = velocity(model, "cuda", x, text, z, ls)
    assert rel(gpu, cpu) < 5e-5  # reduction order differs between CPU and CUDA kernels (seen: 1.0e-5)


@pytest.mark.parametrize("name", ["tiny-pid-2k", "tiny-pid-2kto4k-v1.5"])
def test_cuda_bf16_autocast_close_to_fp32(name):
    cfg = PRESETS[name]
    model = randomize(build_model(cfg), 0).eval()
    x, text, z, ls = inputs(cfg)
    assert rel(velocity(model, "cuda", x, text, z, ls, "bf16"), velocity(model, "cuda", x, text, z, ls)) < 2e-2


def test_cuda_decode_is_reproducible_per_seed():
    dec = Decoder.load(preset="tiny", device="cuda")
    z = torch.randn(2, 16, 8, 8)
    a, b = dec.decode(z, seed=1), dec.decode(z, seed=1)
    assert dec.precision == "bf16" and torch.equal(a, b) and a.shape == (2, 3, 256, 256)


@pytest.mark.slow
def test_full_size_pid_bf16_velocity_close_to_fp32():
    cfg = PRESETS["pid-2k"]
    with torch.device("cuda"):
        model = randomize(build_model(cfg), 0).eval()
    x, text, z, ls = inputs(cfg, side=512)
    text = torch.randn(1, 300, 2304)
    fp32 = velocity(model, "cuda", x, text, z, ls)
    bf16 = velocity(model, "cuda", x, text, z, ls, "bf16")
    assert torch.isfinite(bf16).all() and rel(bf16, fp32) < 5e-2


@pytest.mark.slow
def test_full_size_decode_2048():
    cfg = PRESETS["pid-2k"]
    with torch.device("cuda"):
        model = build_model(cfg)
    dec = Decoder.from_model(LoadedModel(model, cfg, "random", "test", []), device="cuda")
    img = dec.decode(torch.randn(1, 16, 64, 64), seed=0)
    assert img.shape == (1, 3, 2048, 2048) and torch.isfinite(img).all()


# --- speed settings (issue 5): each against the plain reference --------------------------------------------------
def speed_decoder(speed, preset="tiny-pid-2kto4k-v1.5"):
    return Decoder.load(preset=preset, seed=3, device="cuda", speed=speed)


def speed_latent(batch=1, side=256, preset="tiny-pid-2kto4k-v1.5"):
    from tests.test_model import latent_for

    return latent_for(PRESETS[preset], (side, side), batch=batch, seed=5)


def test_cuda_graphs_replay_the_eager_step():
    from pid_sdk import Speed
    from pid_sdk.compare import run_parity

    z = speed_latent(batch=2)
    eager, graphed = speed_decoder(Speed(weights="bf16")), speed_decoder(Speed(weights="bf16", cuda_graphs=True))
    report = run_parity(eager, graphed, z, precision="fp32")  # the same kernels: float rounding only
    assert report.passed, str(report)
    first = graphed.decode(z, seed=4)
    assert torch.equal(graphed.decode(z, seed=4), first)  # a second decode reloads its state into the graph
    assert torch.allclose(graphed.decode(z[:1], seed=4), eager.decode(z[:1], seed=4), atol=1e-3)  # another graph


def test_cuda_graphs_with_guidance_keep_two_decodes_apart():
    from pid_sdk import Speed

    z = speed_latent()
    text, negative = torch.randn(1, 8, 32), torch.zeros(1, 8, 32)
    kw = dict(sampler="teacher", steps=3, guidance=4.0, text_embeddings=text, negative_embeddings=negative, seed=2)
    eager = speed_decoder(Speed(weights="bf16")).decode(z, **kw)
    graphed = speed_decoder(Speed(weights="bf16", cuda_graphs=True)).decode(z, **kw)
    assert (graphed - eager).abs().max().item() < 1e-3


@pytest.mark.parametrize("speed", ["reference", "fast"])
def test_step_loop_never_syncs_the_host(speed):
    """torch.cuda.set_sync_debug_mode('error') raises on any synchronising call inside the sampler loop."""
    from pid_sdk.sampling import sample_student

    dec = speed_decoder(speed)
    z = speed_latent().cuda()
    backend = dec.runtime.backend(text=torch.zeros(1, 1, 32, device="cuda"), latent=z,
                                  latent_sigma=torch.zeros(1, device="cuda"), height=256, width=256)
    fn = lambda x, s: backend.infer({"x": x, "sigma": s})["v"]  # noqa: E731
    gen = torch.Generator("cuda").manual_seed(0)
    sample_student(fn, (1, 3, 256, 256), generator=gen, device="cuda")  # warm-up: compile, capture
    torch.cuda.set_sync_debug_mode("error")
    try:
        image = sample_student(fn, (1, 3, 256, 256), generator=gen, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(image).all()


@pytest.mark.parametrize("speed", ["fast", "fast-autotune"])
def test_compiled_and_graphed_step_matches_eager(speed):
    from pid_sdk.compare import run_parity

    report = run_parity(speed_decoder("bf16"), speed_decoder(speed), speed_latent(), precision="bf16")
    assert report.passed, str(report)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9),
                    reason="FP8 matmuls need compute capability 8.9+")
def test_cuda_fp8_linears_within_fp8_tolerance_of_bf16():
    from pid_sdk import Speed
    from pid_sdk.compare import run_parity

    report = run_parity(speed_decoder("bf16"), speed_decoder(Speed(weights="fp8")), speed_latent(batch=2),
                        precision="fp8")
    assert report.passed, str(report)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9),
                    reason="FP8 matmuls need compute capability 8.9+")
def test_cuda_torchao_fp8_linears_within_fp8_tolerance_of_bf16():
    """torchao's dynamic float8 (per-row scales) on the same layers as ours (gpu_check.sh installs the wheel)."""
    pytest.importorskip("torchao", reason="torchao is not installed (carry its wheel in .whl/ for gpu_check.sh)")
    from pid_sdk import Speed
    from pid_sdk.compare import run_parity

    report = run_parity(speed_decoder("bf16"), speed_decoder(Speed(weights="fp8-torchao")), speed_latent(batch=2),
                        precision="fp8")
    assert report.passed, str(report)
    assert report.image.max_abs > 1e-4  # it really ran quantised


@pytest.mark.parametrize("kernel", ["cudnn", "flash", "efficient"])
def test_split_joint_attention_on_each_cuda_kernel_equals_one_call(kernel):
    """The kernels' log-sum-exp (layouts differ) merges the text and image parts into the single call's result."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from pid_sdk.model.split_attention import attention_with_lse, split_joint_attention

    gen = torch.Generator("cuda").manual_seed(0)
    image, text = ([torch.randn(1, 24, n, 64, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
                   for n in (1024, 300))
    _, lse = attention_with_lse(image[0], text[1], text[2], kernel)
    _, exact_lse = attention_with_lse(image[0], text[1], text[2], "math")
    assert (lse - exact_lse).abs().max().item() < 2e-2
    joint = [torch.cat([t, i], 2) for t, i in zip(text, image)]
    exact = sdpa(*(t.float() for t in joint)).transpose(1, 2).flatten(2)
    one = sdpa(*joint).transpose(1, 2).flatten(2).float()
    ax, ay = split_joint_attention(image, text, kernel)
    split = torch.cat([ay, ax], 1).float()
    assert (split - exact).abs().max() <= 2 * (one - exact).abs().max() + 1e-3


def test_split_attention_decode_within_bf16_tolerance():
    from pid_sdk import Speed
    from pid_sdk.compare import run_parity
    from pid_sdk.runtime.attention import kernels_used

    fast = Speed(weights="bf16", compile=True, cuda_graphs=True, attention="cudnn")
    split = speed_decoder(Speed(weights="bf16", attention="cudnn", split_attention=True))
    assert "cudnn" in kernels_used(lambda: split.decode(speed_latent(), seed=0, steps=1))
    report = run_parity(speed_decoder(fast), speed_decoder(replace(fast, split_attention=True)), speed_latent(),
                        precision="bf16")
    assert report.passed, str(report)


def fp8_attention_or_skip():
    from pid_sdk.runtime.fp8_attention import fp8_attention_supported

    ok, why = fp8_attention_supported(torch.device("cuda"))
    if not ok:
        pytest.skip(why)


def test_cudnn_fp8_attention_computes_its_reference_arithmetic():
    """cuDNN's FP8 SDPA against the same E4M3 arithmetic in PyTorch, and both against bf16 attention, at the
    MM-DiT's shape (24 heads of 64, an unaligned joint length) and with q, k, v laid out as the model makes them."""
    fp8_attention_or_skip()
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from pid_sdk.runtime.fp8_attention import fp8_sdpa, reference_fp8_sdpa

    gen = torch.Generator("cuda").manual_seed(0)
    qkv = torch.randn(1, 1324, 3, 24, 64, generator=gen, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [B, heads, N, Dh] views
    out, expected, exact = fp8_sdpa(q, k, v), reference_fp8_sdpa(q, k, v), sdpa(q.float(), k.float(), v.float())
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()  # noqa: E731
    assert out.dtype == torch.bfloat16 and out.shape == (1, 24, 1324, 64)
    assert rel(out, expected) < 0.02, rel(out, expected)  # the kernel does the arithmetic it is described by
    assert rel(out, exact) < 0.08, rel(out, exact)


def test_fp8_attention_decode_within_fp8_tolerance_and_runs_the_fp8_kernel():
    fp8_attention_or_skip()
    from pid_sdk.compare import run_parity
    from pid_sdk.runtime.attention import kernels_used
    from pid_sdk.runtime.speed import SPEEDS

    preset, setting = "demo-flux1", SPEEDS["fp8-attention"]  # heads of 64, as pid-2k's MM-DiT
    z = speed_latent(preset=preset)
    eager = speed_decoder(replace(setting, compile=False, cuda_graphs=False), preset)
    found = kernels_used(lambda: eager.decode(z, seed=0, steps=1))
    assert found.get("cudnn FP8", 0) > 0, found
    report = run_parity(speed_decoder(replace(setting, fp8_attention=False), preset), speed_decoder(setting, preset),
                        z, precision="fp8")
    assert report.passed, str(report)
    assert report.image.max_abs > 1e-4  # it really ran in FP8


def test_bf16_attention_runs_a_fused_kernel():
    from pid_sdk.runtime.attention import kernels_used

    dec = speed_decoder("bf16")
    found = kernels_used(lambda: dec.decode(speed_latent(), seed=0, steps=1))
    assert found and not set(found) & {"math (unfused)"}, found


def test_split_modulation_lowers_peak_memory():
    """Two of six adaLN chunks alive instead of six: at least a third of the full modulation tensor saved."""
    from pid_sdk import Speed

    z = torch.randn(1, 16, 32, 32)  # 1024x1024
    b = PRESETS["tiny"].backbone
    full_bytes = (1024 // b.patch_size) ** 2 * 6 * b.pixels_per_patch * b.pixel_hidden_size * 2  # bf16

    def peak(split):
        dec = Decoder.load(preset="tiny", device="cuda", speed=Speed(weights="bf16", split_modulation=split))
        dec.decode(z, seed=0, steps=1)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        dec.decode(z, seed=0, steps=1)
        return torch.cuda.max_memory_allocated()

    assert peak(False) - peak(True) > full_bytes / 3


@pytest.mark.parametrize("objective", ["flow", "rollout"])
def test_cuda_training_under_bf16_autocast_learns_and_resumes(tmp_path, objective):
    """The path of `pid-sdk train` and training/demo/gpu_train_demo.sh on CUDA: bf16 autocast, EMA, save and resume."""
    from test_training import FLUX, eval_loss, smooth_batch, tiny_model

    from training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(objective=objective, lr=2e-3, caption_dropout=0, latent_dropout=0, latent_noise_prob=0)
    trainer = Trainer(tiny_model(), FLUX, cfg, "cuda")
    with trainer.autocast():
        assert torch.get_autocast_dtype("cuda") == torch.bfloat16 and torch.is_autocast_enabled("cuda")
    b = smooth_batch()
    first = eval_loss(trainer, b)
    for _ in range(30):
        trainer.step(b)
    assert eval_loss(trainer, b) < 0.7 * first  # as on the CPU (tests/test_training.py)
    trainer.save(tmp_path)
    resumed = Trainer(tiny_model(1), FLUX, cfg, "cuda")
    resumed.resume(tmp_path)
    assert resumed.step_count == 30 and next(resumed.ema.model.parameters()).is_cuda
    for (k, v), w in zip(trainer.ema.model.state_dict().items(), resumed.ema.model.state_dict().values()):
        torch.testing.assert_close(w, v, msg=k)


def test_pair_sampler_cuts_crops_on_the_gpu_as_on_the_cpu():
    """training/demo/train_demo.py --device cuda crops there; the same seed gives the CPU's crops (same positions,
    flips)."""
    import numpy as np

    from training.data import PairSampler

    img = np.random.default_rng(0).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    encode = lambda rgb: torch.nn.functional.avg_pool2d(rgb, 8)  # noqa: E731  any callable encoder
    for augment in (False, True):  # turned, mirrored and recoloured alike too (gpu_train_demo.sh AUGMENT=1)
        on = {dev: PairSampler([img], encode, buckets=[(128, 128)], seed=3, device=dev, augment=augment).batch(4)
              for dev in ("cpu", "cuda")}
        assert on["cuda"]["image"].is_cuda and on["cuda"]["latent"].shape == (4, 3, 4, 4)
        torch.testing.assert_close(on["cuda"]["image"].cpu(), on["cpu"]["image"], atol=1e-4, rtol=0)


def test_cuda_dmd2_under_bf16_autocast_pulls_towards_the_image_and_resumes(tmp_path):
    """The path of `pid-sdk distill` on CUDA: the three networks, the GAN head and every draw on the GPU."""
    from test_training import FLUX, batch, tiny_model

    from training.distill import DMD2, Conditioning, DistillConfig, student_sample

    b = {k: v.cuda() for k, v in batch().items()}
    cond = Conditioning(torch.zeros(2, 16, 32, device="cuda"), b["latent"], torch.zeros(2, device="cuda"))
    # The fake score frozen at the teacher: the DM gradient is zero and only the reconstruction term moves the student
    dmd = DMD2(tiny_model(), DistillConfig(fake_updates=1, lr_fake=0.0, guidance=1.0, recon_weight=1.0,
                                           lr_student=1e-2), "cuda")

    def error() -> float:
        with torch.no_grad():
            x0, _ = student_sample(dmd.student, cond, (2, 3, 64, 64), torch.Generator("cuda").manual_seed(0))
        return torch.nn.functional.mse_loss(x0, b["image"]).item()

    before = error()
    for _ in range(10):
        dmd.step(b, FLUX)
    assert error() < 0.9 * before  # as on the CPU (tests/test_training.py)

    gan = DMD2(tiny_model(), DistillConfig(fake_updates=1, gan_weight=0.1, r1_weight=0.1), "cuda")
    losses = gan.step(b, FLUX)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert next(gan.head.parameters()).is_cuda
    gan.save(tmp_path)
    resumed = DMD2(tiny_model(1), DistillConfig(fake_updates=1, gan_weight=0.1, r1_weight=0.1), "cuda")
    resumed.resume(tmp_path)
    assert resumed.step_count == 1
    for a, c in ((gan.student, resumed.student), (gan.fake, resumed.fake), (gan.head, resumed.head)):
        for (k, v), w in zip(a.state_dict().items(), c.state_dict().values()):
            torch.testing.assert_close(w, v, rtol=0, atol=0, msg=k)
