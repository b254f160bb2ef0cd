"""Training and DMD2 distillation at tiny scale: each loss behaves as it should."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pid_sdk.config import PRESETS
from pid_sdk.errors import ConfigError
from pid_sdk.latents import get_latent_space
from pid_sdk.model import build_model, randomize
from training.distill import (
    DMD2,
    Conditioning,
    DistillConfig,
    GanHead,
    dm_loss,
    fake_score_loss,
    gan_losses,
    guided_velocity,
    student_sample,
)
from training.ema import EMA
from training.flow import add_noise, gradient_mse, pooled_mse, sample_sigma, velocity_target, x0_from_v
from training.trainer import TrainConfig, Trainer

FLUX = get_latent_space("flux1")


def tiny_model(seed=0):
    return randomize(build_model(PRESETS["tiny"]), seed)


def batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, 64, 64, generator=g) * 2 - 1, "latent": torch.randn(n, 16, 2, 2, generator=g)}


def test_sigma_sampling_is_logit_normal_then_shifted():
    s = sample_sigma(20000, generator=torch.Generator().manual_seed(0))
    assert 0 < s.min() and s.max() < 1 and abs(s.median().item() - 0.5) < 0.02
    shifted = sample_sigma(20000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert abs(shifted.median().item() - 0.75) < 0.02  # 3 * 0.5 / (1 + 2 * 0.5)


def test_flow_identities():
    x0, eps, s = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.tensor([0.1, 0.5, 0.9])
    x = add_noise(x0, s, eps)
    torch.testing.assert_close(x0_from_v(x, s, velocity_target(x0, eps)), x0)


def smooth_batch(n=2):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    img = torch.stack([xx, yy, xx * yy])[None].repeat(n, 1, 1, 1)
    return {"image": img, "latent": torch.randn(n, 16, 2, 2, generator=torch.Generator().manual_seed(0))}


def eval_loss(trainer, b):
    state = trainer.gen.get_state()
    trainer.gen.manual_seed(123)
    with torch.no_grad():
        loss = sum(trainer.loss(b).item() for _ in range(4)) / 4
    trainer.gen.set_state(state)
    return loss


def test_training_loss_decreases():
    trainer = Trainer(tiny_model(), FLUX, TrainConfig(lr=2e-3, caption_dropout=0, latent_dropout=0))
    b = smooth_batch()
    first = eval_loss(trainer, b)
    for _ in range(40):
        trainer.step(b)
    assert eval_loss(trainer, b) < 0.7 * first


def test_pooled_mse_weighs_coarse_error_and_ignores_fine_error():
    constant = torch.full((1, 3, 8, 8), 0.5)  # all coarse: every pooled term sees it whole
    assert pooled_mse(constant).item() == pytest.approx(0.25)
    assert pooled_mse(constant, ((2, 1.0), (4, 3.0))).item() == pytest.approx(0.25 * 5)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]).remainder(2).float().expand(1, 3, 8, 8) - 0.5
    assert pooled_mse(checker, ((2, 10.0),)).item() == pytest.approx(0.25)  # pooled by 2 it averages to zero


def test_gradient_mse_sees_the_errors_steps_not_its_level():
    assert gradient_mse(torch.full((1, 3, 8, 8), 0.5)).item() == 0.0
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0  # one vertical edge: 8 of the 8 x 7 horizontal steps are 1, no vertical step
    assert gradient_mse(step).item() == pytest.approx(1 / 7)
    assert gradient_mse(step.transpose(-1, -2)).item() == pytest.approx(1 / 7)


def test_trainer_adds_the_weighted_gradient_term_to_either_objectives_error():
    err = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = Trainer(tiny_model(), FLUX, TrainConfig(pooled_loss=((4, 2.0),))).error_loss(err)
    weighted = Trainer(tiny_model(), FLUX, TrainConfig(pooled_loss=((4, 2.0),), gradient_loss=3.0)).error_loss(err)
    torch.testing.assert_close(plain, pooled_mse(err, ((4, 2.0),)))
    torch.testing.assert_close(weighted, plain + 3.0 * gradient_mse(err))


def test_train_config_rejects_unknown_objectives_bad_pools_and_shares_outside_0_1():
    with pytest.raises(ConfigError, match="objective"):
        TrainConfig(objective="x0")
    with pytest.raises(ConfigError, match="pool"):
        TrainConfig(pooled_loss=((1, 1.0),))
    with pytest.raises(ConfigError, match="gradient loss"):
        TrainConfig(gradient_loss=-1.0)
    for field in ("latent_noise_prob", "latent_dropout", "caption_dropout"):
        with pytest.raises(ConfigError, match=f"{field} is a share"):
            TrainConfig(**{field: -0.1})
    assert TrainConfig(latent_noise_prob=0.0, latent_dropout=1.0).latent_dropout == 1.0
    assert TrainConfig(pooled_loss=[[8, 4]]).pooled_loss == ((8, 4.0),)  # as read back from train_config.json


def test_rollout_loss_is_the_x0_error_at_a_step_of_the_models_own_sampler():
    cfg = TrainConfig(objective="rollout", caption_dropout=0, latent_dropout=0, latent_noise_prob=0)
    trainer, b = Trainer(tiny_model(), FLUX, cfg), batch()
    trainer.gen.manual_seed(5)
    loss = trainer.loss(b)
    gen = torch.Generator().manual_seed(5)  # replay the draws: dropout tests, latent sigma and noise, then sampling
    n = b["image"].shape[0]
    torch.rand(n, generator=gen), torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    torch.randn(b["latent"].shape, generator=gen), torch.rand(n, generator=gen)
    text = torch.zeros(n, trainer.model.cfg.txt_max_length, trainer.model.cfg.txt_embed_dim)
    x0, _ = student_sample(trainer.model, Conditioning(text, b["latent"], torch.zeros(n)), (n, 3, 64, 64), gen)
    torch.testing.assert_close(loss, F.mse_loss(x0, b["image"]))


def test_rollout_fine_tune_lowers_the_error_of_the_four_step_decode():
    trainer = Trainer(tiny_model(), FLUX, TrainConfig(objective="rollout", lr=2e-3, caption_dropout=0,
                                                      latent_dropout=0, latent_noise_prob=0))
    b = smooth_batch()
    first = eval_loss(trainer, b)
    for _ in range(30):
        trainer.step(b)
    assert eval_loss(trainer, b) < 0.7 * first


def test_noisy_latent_conditioning_and_dropouts_are_applied():
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m, self.cfg, self.config = m, m.cfg, m.config

        def forward(self, x, sigma, text, latent, latent_sigma):
            seen.update(text=text, latent=latent, latent_sigma=latent_sigma)
            return self.m(x, sigma, text, latent, latent_sigma)

    cfg = TrainConfig(caption_dropout=1.0, latent_dropout=0.0, latent_noise_prob=1.0)
    t = Trainer(Spy(tiny_model()), FLUX, cfg)
    b = batch(8)
    b["text"] = torch.ones(8, 16, 32)
    t.loss(b)
    assert torch.all(seen["text"] == 0)  # every caption dropped
    assert torch.all((seen["latent_sigma"] > 0) & (seen["latent_sigma"] <= 0.8))
    assert not torch.allclose(seen["latent"], b["latent"])  # noised in the flow form
    t.cfg = TrainConfig(latent_dropout=1.0)
    t.loss(b)
    assert torch.all(seen["latent"] == 0)


def test_freeze_backbone_trains_only_the_adapter():
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    t = Trainer(model, FLUX, TrainConfig(freeze_backbone=True, lr=1e-2))
    t.step(batch())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("lq_proj.") for k in changed)


def test_ema_update():
    model = tiny_model()
    ema = EMA(model, decay=0.9)
    p0 = next(ema.model.parameters()).clone()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    ema.update(model)
    torch.testing.assert_close(next(ema.model.parameters()), p0 + 0.1)


def test_checkpoint_resume_continues_exactly(tmp_path):
    """With a learning-rate decay that spans the resume point, so the schedule resumes too."""
    b = batch()
    a = Trainer(tiny_model(), FLUX, TrainConfig(lr_decay=(1, 3)))
    for _ in range(4):
        a.step(b)
    r = Trainer(tiny_model(), FLUX, TrainConfig(lr_decay=(1, 3)))
    for _ in range(2):
        r.step(b)
    r.save(tmp_path)
    resumed = Trainer(tiny_model(1), FLUX, TrainConfig(lr_decay=(1, 3)))
    resumed.resume(tmp_path)
    for _ in range(2):
        resumed.step(b)
    assert resumed.step_count == 4
    for (k, v), w in zip(a.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(w, v, msg=k)


def test_save_makes_the_folder_and_resume_warns_about_a_changed_config(tmp_path, recwarn):
    from dataclasses import replace

    run = tmp_path / "new" / "run"
    Trainer(tiny_model(), FLUX, TrainConfig()).save(run)
    Trainer(tiny_model(1), FLUX, TrainConfig()).resume(run)
    assert not [w for w in recwarn if "different model config" in str(w.message)]
    cfg = PRESETS["tiny"]
    plain_rope = build_model(replace(cfg, backbone=replace(cfg.backbone, rope_mode="plain")))  # same keys, loads
    with pytest.warns(UserWarning, match=r"different model config \(backbone.rope_mode\)"):
        Trainer(plain_rope, FLUX, TrainConfig()).resume(run)
    assert not [w for w in recwarn if "other training settings" in str(w.message)]
    Trainer(tiny_model(1), FLUX, TrainConfig(steps=5000)).resume(run)  # more steps is what resuming is for
    assert not [w for w in recwarn if "other training settings" in str(w.message)]
    with pytest.warns(UserWarning, match=r"other training settings than it recorded: lr 0.0002 -> 0.001, "
                                         r"lr_decay None -> \[5, 9\]\. To continue"):
        Trainer(tiny_model(1), FLUX, TrainConfig(lr=1e-3, lr_decay=[5, 9])).resume(run)  # a list, as argparse gives


def test_lr_decay_is_linear_to_a_tenth_and_reaches_the_optimizer():
    trainer = Trainer(tiny_model(), FLUX, TrainConfig(lr=1e-3, lr_decay=(10, 20)))
    assert [trainer.lr_at(s) for s in (0, 10, 15, 20, 99)] == pytest.approx([1e-3, 1e-3, 5.5e-4, 1e-4, 1e-4])
    trainer.step_count = 15
    trainer.step(batch())
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(5.5e-4)
    assert Trainer(tiny_model(), FLUX, TrainConfig(lr=1e-3)).lr_at(10**6) == 1e-3
    from pid_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="end after it starts"):
        TrainConfig(lr_decay=(20, 10))


def test_compiled_training_step_matches_eager_and_keeps_checkpoint_keys(tmp_path):
    eager = Trainer(tiny_model(), FLUX, TrainConfig())
    compiled = Trainer(tiny_model(), FLUX, TrainConfig(compile=True))
    assert compiled.forward is not compiled.model
    assert compiled.step(batch()) == pytest.approx(eager.step(batch()), rel=1e-4)
    # Gradients, not updated weights: Adam's first step is lr * sign(grad), which flips on near-zero gradients.
    # Inductor reorders fp32 sums: measured <= 3e-5 of each gradient's largest entry.
    for (k, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
        if p.grad is None:  # a parameter this step does not reach (e.g. behind a gate initialised to zero)
            assert q.grad is None, k
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=2e-4 * p.grad.abs().max().item(), msg=k)
    compiled.save(tmp_path)
    assert load_file(str(tmp_path / "model.safetensors")).keys() == eager.model.state_dict().keys()


# --- DMD2 -----------------------------------------------------------------------------------------------------
def cond_for(b):
    return Conditioning(torch.randn(b["latent"].shape[0], 16, 32), b["latent"], torch.zeros(b["latent"].shape[0]))


def test_guidance_is_text_only_cfg():
    model, b = tiny_model(), batch()
    cond = cond_for(b)
    x, s = torch.randn(2, 3, 64, 64), torch.tensor([0.5, 0.5])
    with torch.no_grad():
        v_c, v_u = cond(model, x, s), cond(model, x, s, text=torch.zeros_like(cond.text))
        torch.testing.assert_close(guided_velocity(model, cond, x, s, 3.0), v_u + 3.0 * (v_c - v_u))


def test_dm_loss_vanishes_when_the_fake_score_equals_the_real_one():
    teacher, b = tiny_model(), batch()
    cond, gen = cond_for(b), torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 64, 64, requires_grad=True)
    loss = dm_loss(x0, teacher, copy.deepcopy(teacher), cond, DistillConfig(guidance=1.0), gen)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-10) and x0.grad.abs().max() < 1e-8


def test_dm_loss_pushes_the_sample_from_fake_towards_real():
    teacher, b = tiny_model(0), batch()
    fake = tiny_model(1)
    cond = cond_for(b)
    x0 = torch.randn(2, 3, 64, 64, requires_grad=True)
    cfg = DistillConfig(guidance=1.0)
    loss = dm_loss(x0, teacher, fake, cond, cfg, torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in fake.parameters())
    # the same noise drawn again: the gradient of 0.5 |x0 - (x0 - g)|^2 / n is g / n, g the (fake - real) x0
    # difference divided by the mean distance of the sample from the real x0, per sample
    gen = torch.Generator().manual_seed(0)
    lo, hi = cfg.sigma_range
    sigma = lo + (hi - lo) * torch.rand(2, generator=gen)
    with torch.no_grad():
        x = add_noise(x0, sigma, torch.randn(x0.shape, generator=gen))
        real, fake_x0 = x0_from_v(x, sigma, cond(teacher, x, sigma)), x0_from_v(x, sigma, cond(fake, x, sigma))
    g = (fake_x0 - real) / (x0 - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(x0.grad, g / 2, rtol=1e-4, atol=1e-7)
    assert loss.item() == pytest.approx(0.5 * g.pow(2).sum().item() / 2, rel=1e-4)


def test_fake_score_loss_decreases_when_fitting_fixed_samples():
    fake, b = tiny_model(), batch()
    cond = cond_for(b)
    x0 = torch.rand(2, 3, 64, 64) * 2 - 1
    opt = torch.optim.Adam(fake.parameters(), lr=3e-3)
    losses = []
    for i in range(25):
        loss = fake_score_loss(fake, x0, cond, torch.Generator().manual_seed(i % 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])


def test_student_sample_uses_the_four_step_schedule():
    student, b = tiny_model(), batch()
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, sigma, text, latent, latent_sigma):
            seen.append(round(sigma[0].item(), 3))
            return student(x, sigma, text, latent, latent_sigma)

    gen = torch.Generator().manual_seed(3)
    x0, s = student_sample(Spy(), cond_for(b), (2, 3, 64, 64), gen)
    assert x0.requires_grad and 1 <= len(seen) <= 4 and seen == [0.999, 0.866, 0.634, 0.342][: len(seen)]
    assert s[0].item() == pytest.approx(seen[-1])
    drawn = set()
    for seed in range(40):  # the stopping step is drawn: over many draws, every step of the schedule is reached
        seen.clear()
        student_sample(Spy(), cond_for(b), (2, 3, 64, 64), torch.Generator().manual_seed(seed))
        drawn.add(len(seen))
    assert drawn == {1, 2, 3, 4}


def test_gan_losses_and_r1():
    fake, b = tiny_model(), batch()
    head = GanHead(fake)
    cond = cond_for(b)
    x0_s = torch.rand(2, 3, 64, 64, requires_grad=True) * 2 - 1
    g, d = gan_losses(head, fake, cond, x0_s, b["image"], r1_weight=1.0, gen=torch.Generator().manual_seed(0))
    _, d0 = gan_losses(head, fake, cond, x0_s, b["image"], r1_weight=0.0, gen=torch.Generator().manual_seed(0))
    assert g.item() > 0 and d.item() > d0.item() > 0  # R1 adds a positive penalty
    (grad,) = torch.autograd.grad(g, x0_s)
    assert grad.abs().sum() > 0  # the generator loss reaches the student's output


def test_dmd2_step_updates_student_and_fake_not_teacher():
    teacher = tiny_model()
    t0 = copy.deepcopy(teacher.state_dict())
    dmd = DMD2(teacher, DistillConfig(fake_updates=2, gan_weight=0.1, r1_weight=0.1, lr_student=1e-3, lr_fake=1e-3))
    s0, f0 = copy.deepcopy(dmd.student.state_dict()), copy.deepcopy(dmd.fake.state_dict())
    out = dmd.step(batch(), FLUX)
    assert set(out) == {"loss", "fake", "recon_mse"}
    assert all(torch.equal(v, t0[k]) for k, v in dmd.teacher.state_dict().items())
    assert any(not torch.equal(v, s0[k]) for k, v in dmd.student.state_dict().items())
    assert any(not torch.equal(v, f0[k]) for k, v in dmd.fake.state_dict().items())


def test_dmd2_resume_continues_exactly_with_the_gan_head(tmp_path):
    """Student, fake score, GAN head, both optimisers and the random state all come back."""
    cfg = DistillConfig(fake_updates=1, gan_weight=0.1, r1_weight=0.1, lr_student=1e-3, lr_fake=1e-3)
    straight = DMD2(tiny_model(), cfg)
    for i in range(3):
        straight.step(batch(seed=i), FLUX)
    first = DMD2(tiny_model(), cfg)
    first.step(batch(seed=0), FLUX)
    first.save(tmp_path)
    from pid_sdk.checkpoints import current_umask

    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {  # safetensors alone writes 0600
        p.name: 0o666 & ~current_umask() for p in tmp_path.iterdir()}
    resumed = DMD2(tiny_model(), cfg)
    resumed.resume(tmp_path)
    assert resumed.step_count == 1
    for i in (1, 2):
        resumed.step(batch(seed=i), FLUX)
    for a, b in ((straight.student, resumed.student), (straight.fake, resumed.fake),
                 (straight.head, resumed.head)):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(v, w, rtol=0, atol=1e-6, msg=k)


def test_a_failed_save_keeps_the_previous_checkpoint_whole(tmp_path):
    from training.files import write_all_then_rename

    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")

    def fail(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_all_then_rename({tmp_path / "a.txt": lambda p: p.write_text("new a"), tmp_path / "b.txt": fail})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temporary files left
    assert (tmp_path / "a.txt").read_text() == "old a" and (tmp_path / "b.txt").read_text() == "old b"
    write_all_then_rename({tmp_path / "a.txt": lambda p: p.write_text("new a")})
    assert (tmp_path / "a.txt").read_text() == "new a"


def test_distill_config_rejects_shares_outside_0_1_and_no_fake_updates():
    from pid_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="share"):
        DistillConfig(latent_noise_prob=1.5)
    with pytest.raises(ConfigError, match="fake_updates"):
        DistillConfig(fake_updates=0)


def test_dmd2_latent_noise_prob_sets_the_share_of_noised_latents():
    b = batch(n=64)
    clean = DMD2(tiny_model(), DistillConfig(latent_noise_prob=0.0)).conditioning(b, FLUX)
    torch.testing.assert_close(clean.latent, b["latent"])
    assert torch.all(clean.latent_sigma == 0)
    noised = DMD2(tiny_model(), DistillConfig(latent_noise_prob=0.5)).conditioning(b, FLUX)
    assert 16 < int((noised.latent_sigma > 0).sum()) < 48


def test_dmd2_resume_refuses_a_folder_without_state_and_another_teacher(tmp_path):
    from pid_sdk.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no distillation state"):
        DMD2(tiny_model(), DistillConfig()).resume(tmp_path)
    DMD2(tiny_model(), DistillConfig()).save(tmp_path)
    from dataclasses import replace

    deeper = build_model(replace(PRESETS["tiny"], backbone=replace(PRESETS["tiny"].backbone, patch_depth=4)))
    with pytest.raises(CheckpointError, match="another model"):
        DMD2(deeper, DistillConfig()).resume(tmp_path)
    with pytest.raises(CheckpointError, match="without a GAN head"):
        DMD2(tiny_model(), DistillConfig(gan_weight=0.1)).resume(tmp_path)


def test_recon_weight_pulls_the_student_towards_the_real_image():
    """With the fake score equal to the teacher the DM gradient is zero: only the reconstruction term moves it."""
    b = batch()
    dmd = DMD2(tiny_model(), DistillConfig(fake_updates=1, lr_fake=0.0, guidance=1.0, recon_weight=1.0,
                                           lr_student=1e-2))

    def error() -> float:
        with torch.no_grad():
            x0, _ = student_sample(dmd.student, cond_for(b), (2, 3, 64, 64), torch.Generator().manual_seed(0))
        return F.mse_loss(x0, b["image"]).item()

    before = error()
    for _ in range(10):
        dmd.step(b, FLUX)
    assert error() < 0.9 * before  # seen: 1.78 -> 1.52


def test_cli_train_then_distill(tmp_path, tae_dir, capsys):
    from conftest import real_image
    from PIL import Image

    from pid_sdk.cli import main

    data = tmp_path / "images"
    data.mkdir()
    for name in ("astronaut", "coffee"):
        arr = (real_image(name, 96)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
        Image.fromarray(arr).save(data / f"{name}.png")
    run = tmp_path / "run"
    assert main(["train", str(run), "--preset", "tiny", "--data", str(data), "--tae-dir", str(tae_dir),
                 "--steps", "2", "--size", "64"]) == 0
    assert {p.name for p in run.iterdir()} >= {"model.safetensors", "ema.safetensors", "trainer_state.pt"}
    assert main(["train", str(run), "--preset", "tiny", "--data", str(data), "--steps", "3"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(run), "--preset", "tiny", "--data", str(data), "--tae-dir", str(tae_dir),
                 "--steps", "3", "--size", "64", "--resume", "--lr-decay", "1", "3", "--compile"]) == 0
    assert "3 steps" in capsys.readouterr().out
    recorded = json.loads((run / "train_config.json").read_text())["train"]
    assert recorded["lr_decay"] == [1, 3] and recorded["compile"] is True
    common = ["train", str(run), "--preset", "tiny", "--data", str(data), "--tae-dir", str(tae_dir), "--size", "64"]
    assert main(common + ["--steps", "4", "--resume", "--objective", "rollout", "--pooled-loss", "8:2",
                          "--latent-noise-prob", "0.1", "--latent-dropout", "0.02", "--gradient-loss", "1.5"]) == 0
    recorded = json.loads((run / "train_config.json").read_text())["train"]
    assert recorded["objective"] == "rollout" and recorded["pooled_loss"] == [[8, 2.0]]
    assert recorded["gradient_loss"] == 1.5
    assert recorded["latent_noise_prob"] == 0.1 and recorded["latent_dropout"] == 0.02
    assert main(common + ["--steps", "5", "--resume", "--latent-dropout", "10"]) == 2
    assert "latent_dropout is a share" in capsys.readouterr().err
    assert main(common + ["--steps", "5", "--resume", "--pooled-loss", "8"]) == 2
    assert "POOL:WEIGHT" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="bucket 64x128"):  # the two images are square
        assert main(common + ["--steps", "5", "--resume", "--buckets", "64x64", "64x128", "--crop", "centre"]) == 0
    assert main(common + ["--steps", "6", "--resume", "--buckets", "60x64"]) == 2
    assert "whole number of latent cells" in capsys.readouterr().err
    distill = ["distill", str(tmp_path / "dmd"), "--teacher", str(run), "--data", str(data), "--tae-dir",
               str(tae_dir), "--size", "64", "--fake-updates", "1", "--save-every", "1"]
    assert main(distill + ["--steps", "1"]) == 0
    assert main(distill + ["--steps", "2"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(distill + ["--steps", "2", "--resume", "--gan-weight", "0"]) == 0
    assert "after 2 steps" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "dmd").iterdir()) == [
        "distill_config.json", "distill_state.pt", "fake.safetensors", "student", "student.safetensors"]
    import pid_sdk

    manifest = json.loads((tmp_path / "dmd" / "student" / "manifest.json").read_text())
    assert manifest["source"].endswith("step 2")
    dec = pid_sdk.Decoder.load(tmp_path / "dmd" / "student")
    assert dec.decode(torch.randn(1, 16, 2, 2), seed=0).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("command", ["train", "distill"])
def test_cli_augment_reaches_the_sampler(tmp_path, tae_dir, command):
    from conftest import real_image
    from PIL import Image

    from pid_sdk.cli import _parser
    from pid_sdk.config import get_preset
    from training.commands import pair_sampler

    arr = (real_image("coffee", 96)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
    Image.fromarray(arr).save(tmp_path / "coffee.png")
    extra = ["--teacher", "x"] if command == "distill" else []
    for flags, on in (([], False), (["--augment"], True)):
        args = _parser().parse_args([command, str(tmp_path / "run"), "--data", str(tmp_path), "--tae-dir",
                                     str(tae_dir), "--size", "64", *extra, *flags])
        assert pair_sampler(args, get_preset("tiny")).augment is on


def test_cli_train_from_trained_weights_with_the_backbone_frozen(tmp_path, tae_dir, capsys):
    from dataclasses import replace

    from conftest import real_image
    from PIL import Image

    from pid_sdk.checkpoints import save_artefact
    from pid_sdk.cli import main

    data = tmp_path / "images"
    data.mkdir()
    arr = (real_image("coffee", 96)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
    Image.fromarray(arr).save(data / "coffee.png")
    init = tiny_model(3)
    art = save_artefact(init, PRESETS["tiny"], tmp_path / "init", dtype=torch.float32)
    no_space = save_artefact(init, replace(PRESETS["tiny"], latent_space=None), tmp_path / "no_space",
                             dtype=torch.float32)
    run = tmp_path / "run"
    common = ["train", str(run), "--data", str(data), "--tae-dir", str(tae_dir), "--size", "64"]
    assert main(common + ["--init", str(no_space), "--steps", "1"]) == 2
    assert "--latent-space" in capsys.readouterr().err
    assert main(common + ["--init", str(art), "--steps", "2", "--freeze-backbone", "--lr", "1e-2"]) == 0
    trained = load_file(str(run / "model.safetensors"))
    start = init.state_dict()
    for k, v in trained.items():  # the adapter (lq_proj) and its gates learn; the backbone keeps the init's weights
        assert torch.equal(v, start[k]) != k.startswith(("lq_proj.", "pit_lq_gate.")), k
    assert json.loads((run / "init.json").read_text())["init"] == str(art)
    assert main(common + ["--init", str(art), "--steps", "3", "--resume"]) == 2
    assert "drop --init" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="optimizer starts afresh"):  # now the whole model, from the run's config
        assert main(common + ["--steps", "3", "--resume", "--preset", "demo-flux1"]) == 0
    assert main(common + ["--steps", "4", "--resume"]) == 0  # as at the last save: the optimizer state loads
    assert main(["train", str(tmp_path / "none"), "--data", str(data), "--steps", "1", "--resume"]) == 2
    assert "No training run" in capsys.readouterr().err


def test_named_image_matches_the_training_pool_and_reaches_images_outside_it():
    import numpy as np

    from pid_sdk.errors import InputError
    from training.data import named_image, package_images

    for name, img in package_images(wallpapers=True, more=True).items():  # looked up directly where it can be
        np.testing.assert_array_equal(named_image(name), img, err_msg=name)
    assert named_image("skimage.camera").shape == (512, 512, 3)  # grey, not in the pool: made RGB
    with pytest.raises(InputError, match="No package image named"):
        named_image("skimage.no_such_picture")


def test_folder_images_are_keyed_by_their_path_in_the_folder(tmp_path):
    import numpy as np
    from PIL import Image

    from pid_sdk.errors import InputError
    from training.data import folder_images, load_folder

    (tmp_path / "sub").mkdir()
    for name, value in (("a.png", 10), ("sub/a.PNG", 200)):
        Image.fromarray(np.full((4, 6), value, np.uint8)).save(tmp_path / name)  # grey: read back as RGB
    (tmp_path / "notes.txt").write_text("not an image")
    images = folder_images(tmp_path)
    assert list(images) == ["a", "sub/a"]  # same stem in two folders: both kept
    assert images["sub/a"].shape == (4, 6, 3) and images["sub/a"][0, 0, 0] == 200
    assert [i[0, 0, 0] for i in load_folder(tmp_path)] == [10, 200]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No images"):
        folder_images(tmp_path / "empty")
