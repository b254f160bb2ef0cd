"""DMD2 few-step distillation (paper 3.4 / 4.2) onto the 4-step sigma schedule {0.999, 0.866, 0.634, 0.342}.

Three networks start from the teacher: the frozen teacher is the real score (queried with text-only
classifier-free guidance, so guidance is distilled into the student), the fake score learns the student's output
distribution by denoising score matching, and the student follows the difference of the two. An optional GAN head
on the fake score's patch features adds a non-saturating loss with an R1 penalty on real images. The noisy latent
conditioning of training is kept.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from pid_sdk.errors import CheckpointError, ConfigError
from pid_sdk.sampling import STUDENT_SIGMAS
from training.files import safetensors_writer, write_all_then_rename
from training.flow import add_noise, sample_latent_sigma, sample_sigma, velocity_target, x0_from_v
from training.precision import autocast

DISTILL_STATE = "distill_state.pt"


@dataclass
class DistillConfig:
    steps: int = 500
    batch: int = 2
    lr_student: float = 1e-5
    lr_fake: float = 2e-5
    guidance: float = 3.0  # the teacher's classifier-free guidance scale the student absorbs
    fake_updates: int = 5  # fake-score updates per student update (two time-scale rule)
    gan_weight: float = 0.0  # > 0 enables the GAN head
    r1_weight: float = 0.0
    sigma_range: tuple[float, float] = (0.02, 0.98)  # noise levels at which the two scores are compared
    # Not in the paper: a decoder has the real image of every latent, so the student's x0 can also be pulled
    # towards it (mean squared error). 0 is plain DMD2; > 0 trades some sharpness for fidelity (PSNR).
    recon_weight: float = 0.0
    latent_noise_prob: float = 0.5  # share of samples with a noised latent, as in training (spec 6.2)
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.latent_noise_prob <= 1:
            raise ConfigError("latent_noise_prob is a share of the samples.", received=self.latent_noise_prob,
                              expected="a number in [0, 1]", fix="e.g. 0.1 to distil mostly for clean latents")
        if self.fake_updates < 1:
            raise ConfigError("The fake score must follow the student.", received=self.fake_updates,
                              expected="fake_updates of 1 or more", fix="the paper uses 5; 1 or 2 for speed")


class Conditioning:
    """Text (and its dropped form for guidance), latent and its noise level for one batch."""

    def __init__(self, text: Tensor, latent: Tensor, latent_sigma: Tensor):
        self.text, self.latent, self.latent_sigma = text, latent, latent_sigma

    def __call__(self, model: nn.Module, x: Tensor, sigma: Tensor, *, text: Tensor | None = None) -> Tensor:
        return model(x, sigma, self.text if text is None else text, self.latent, self.latent_sigma)


def guided_velocity(teacher: nn.Module, cond: Conditioning, x: Tensor, sigma: Tensor, guidance: float) -> Tensor:
    """Text-only CFG: the latent is in both branches, the unconditional one has the dropped (zero) caption."""
    v = cond(teacher, x, sigma)
    if guidance == 1.0:
        return v
    v_u = cond(teacher, x, sigma, text=torch.zeros_like(cond.text))
    return v_u + guidance * (v - v_u)


def student_sample(student: nn.Module, cond: Conditioning, shape, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Backward simulation: run the student (no grad) from noise to a random step of its schedule, then one step with
    grad. Returns the student's x0 and the sigma it was predicted at."""
    sigmas = STUDENT_SIGMAS[:-1]
    k = int(torch.randint(len(sigmas), (1,), generator=gen, device=gen.device))  # a CUDA generator draws there
    x = torch.randn(shape, generator=gen, device=cond.latent.device)
    with torch.no_grad():
        for i in range(k):
            s = torch.full((shape[0],), sigmas[i], device=x.device)
            x0 = x0_from_v(x, s, cond(student, x, s))
            x = add_noise(x0, torch.full_like(s, sigmas[i + 1]), torch.randn(shape, generator=gen, device=x.device))
    s = torch.full((shape[0],), sigmas[k], device=x.device)
    return x0_from_v(x, s, cond(student, x, s)), s


def dm_loss(x0_student: Tensor, teacher: nn.Module, fake: nn.Module, cond: Conditioning, cfg: DistillConfig,
            gen: torch.Generator) -> Tensor:
    """Distribution matching: move the student's x0 along (x0_fake - x0_real), normalised per sample."""
    n = x0_student.shape[0]
    lo, hi = cfg.sigma_range
    sigma = lo + (hi - lo) * torch.rand(n, generator=gen, device=x0_student.device)
    with torch.no_grad():
        x = add_noise(x0_student, sigma, torch.randn(x0_student.shape, generator=gen, device=x0_student.device))
        x0_real = x0_from_v(x, sigma, guided_velocity(teacher, cond, x, sigma, cfg.guidance))
        x0_fake = x0_from_v(x, sigma, cond(fake, x, sigma))
        weight = 1 / (x0_student - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        grad = (x0_fake - x0_real) * weight
    target = (x0_student - grad).detach()
    return 0.5 * F.mse_loss(x0_student, target, reduction="sum") / n


def fake_score_loss(fake: nn.Module, x0_student: Tensor, cond: Conditioning, gen: torch.Generator) -> Tensor:
    """Denoising score matching of the fake score on the student's (detached) samples."""
    x0 = x0_student.detach()
    sigma = sample_sigma(x0.shape[0], generator=gen, device=x0.device)
    eps = torch.randn(x0.shape, generator=gen, device=x0.device)
    return F.mse_loss(cond(fake, add_noise(x0, sigma, eps), sigma), velocity_target(x0, eps))


class GanHead(nn.Module):
    """Logits from the fake score's patch tokens after block `tap` (hooked), one per image."""

    def __init__(self, fake: nn.Module, tap: int | None = None):
        super().__init__()
        d = fake.cfg.hidden_size
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1))
        self.tap = len(fake.patch_blocks) // 2 if tap is None else tap
        self._features: Tensor | None = None
        fake.patch_blocks[self.tap].register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self._features = output[0]

    def logits(self, fake: nn.Module, cond: Conditioning, x: Tensor, sigma: Tensor) -> Tensor:
        cond(fake, x, sigma)
        return self.head(self._features).mean(dim=(1, 2))  # [B]


def gan_losses(head: GanHead, fake: nn.Module, cond: Conditioning, x0_student: Tensor, x0_real: Tensor,
               r1_weight: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(generator loss, discriminator loss with R1 on the noised real images)."""
    n = x0_real.shape[0]
    sigma = sample_sigma(n, generator=gen, device=x0_real.device)
    noise = torch.randn(x0_real.shape, generator=gen, device=x0_real.device)
    g_loss = F.softplus(-head.logits(fake, cond, add_noise(x0_student, sigma, noise), sigma)).mean()
    real = add_noise(x0_real, sigma, noise).detach().requires_grad_(r1_weight > 0)
    # R1 differentiates twice through attention: only the math kernel of SDPA has a double backward
    with sdpa_kernel(SDPBackend.MATH) if r1_weight > 0 else contextlib.nullcontext():
        real_logits = head.logits(fake, cond, real, sigma)
    fake_logits = head.logits(fake, cond, add_noise(x0_student.detach(), sigma, noise), sigma)
    d_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if r1_weight > 0:
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        d_loss = d_loss + r1_weight * grad.pow(2).flatten(1).sum(1).mean()
    return g_loss, d_loss


def is_distill_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a distillation run's state (written by `DMD2.save`)."""
    return (Path(folder) / DISTILL_STATE).is_file()


class DMD2:
    """One distillation run: `step(batch)` does `fake_updates` fake-score updates and one student update."""

    def __init__(self, teacher: nn.Module, cfg: DistillConfig, device="cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.student = copy.deepcopy(self.teacher).train().requires_grad_(True)
        self.fake = copy.deepcopy(self.teacher).train().requires_grad_(True)
        self.head = None
        if cfg.gan_weight > 0:
            with torch.random.fork_rng(devices=[]):  # the head's initial weights follow the run's seed
                torch.manual_seed(cfg.seed)
                self.head = GanHead(self.fake).to(device)
        fake_params = list(self.fake.parameters()) + (list(self.head.parameters()) if self.head else [])
        self.opt_student = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr_student, betas=(0.0, 0.99))
        self.opt_fake = torch.optim.AdamW(fake_params, lr=cfg.lr_fake, betas=(0.0, 0.99))
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.step_count = 0

    def conditioning(self, batch: dict[str, Tensor], space) -> Conditioning:
        b, dev = self.teacher.cfg, self.device
        latent = batch["latent"].to(dev)
        n = latent.shape[0]
        text = batch.get("text")
        text = torch.zeros(n, b.txt_max_length, b.txt_embed_dim, device=dev) if text is None else text.to(dev)
        latent_sigma = sample_latent_sigma(n, prob=self.cfg.latent_noise_prob, generator=self.gen, device=dev)
        latent = space.add_noise(latent, latent_sigma, torch.randn(latent.shape, generator=self.gen, device=dev))
        return Conditioning(text, latent, latent_sigma)

    def step(self, batch: dict[str, Tensor], space) -> dict[str, float]:
        cond = self.conditioning(batch, space)
        real = batch["image"].to(self.device)
        for _ in range(self.cfg.fake_updates):
            loss_fake = self._fake_loss(cond, real)
            self.opt_fake.zero_grad(set_to_none=True)
            loss_fake.backward()
            self.opt_fake.step()
        loss, recon = self._student_loss(cond, real)
        self.opt_student.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_fake.zero_grad(set_to_none=True)  # the student's loss must not move the fake score
        self.opt_student.step()
        self.step_count += 1
        return {"loss": loss.item(), "fake": loss_fake.item(), "recon_mse": recon.item()}

    def _fake_loss(self, cond: Conditioning, real: Tensor) -> Tensor:
        with autocast(self.device):
            with torch.no_grad():
                x0_s, _ = student_sample(self.student, cond, tuple(real.shape), self.gen)
            loss = fake_score_loss(self.fake, x0_s.float(), cond, self.gen)
            if self.head is not None:
                _, d_loss = gan_losses(self.head, self.fake, cond, x0_s.float(), real, self.cfg.r1_weight, self.gen)
                loss = loss + self.cfg.gan_weight * d_loss
        return loss.float()

    def _student_loss(self, cond: Conditioning, real: Tensor) -> tuple[Tensor, Tensor]:
        with autocast(self.device):
            x0_s, _ = student_sample(self.student, cond, tuple(real.shape), self.gen)
            x0_s = x0_s.float()
            loss = dm_loss(x0_s, self.teacher, self.fake, cond, self.cfg, self.gen)
            recon = F.mse_loss(x0_s, real)
            if self.cfg.recon_weight > 0:
                loss = loss + self.cfg.recon_weight * recon * x0_s[0].numel()  # dm_loss is a per-sample sum
            if self.head is not None:
                g_loss, _ = gan_losses(self.head, self.fake, cond, x0_s, real, 0.0, self.gen)
                loss = loss + self.cfg.gan_weight * g_loss
        return loss.float(), recon.float()

    # --- checkpoint and resume ------------------------------------------------------------------------------
    def save(self, out: str | Path) -> None:
        """Student, fake score, GAN head, both optimisers and the random state: all `resume` needs."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        writers = {out / f"{name}.safetensors": safetensors_writer(net) for name, net in self._networks().items()}
        state = {"opt_student": self.opt_student.state_dict(), "opt_fake": self.opt_fake.state_dict(),
                 "step": self.step_count, "rng": self.gen.get_state()}
        writers[out / DISTILL_STATE] = lambda path: torch.save(state, path)
        config = json.dumps({"distill": asdict(self.cfg), "model": self.teacher.config.to_dict()}, indent=2)
        writers[out / "distill_config.json"] = lambda path: path.write_text(config)
        write_all_then_rename(writers)

    def resume(self, out: str | Path) -> None:
        out = Path(out)
        if not is_distill_folder(out):
            raise CheckpointError(f"{out} holds no distillation state ({DISTILL_STATE}).",
                                  fix="resume the folder a `pid-sdk distill` run wrote, or drop --resume")
        saved = json.loads((out / "distill_config.json").read_text())
        if saved["model"] != json.loads(json.dumps(self.teacher.config.to_dict())):  # tuples as JSON keeps them
            raise CheckpointError(f"{out} distils another model than this teacher.",
                                  fix="resume with the teacher the run started from")
        if (saved["distill"]["gan_weight"] > 0) != (self.head is not None):
            raise CheckpointError(f"{out} was distilled {'with' if self.head is None else 'without'} a GAN head.",
                                  received=f"gan_weight {self.cfg.gan_weight}",
                                  expected=f"gan_weight {saved['distill']['gan_weight']} as in that run",
                                  fix="resume with the run's --gan-weight, or start a new run")
        for name, module in self._networks().items():
            module.load_state_dict(load_file(str(out / f"{name}.safetensors")))
        state = torch.load(out / DISTILL_STATE, weights_only=True)
        self.opt_student.load_state_dict(state["opt_student"])
        self.opt_fake.load_state_dict(state["opt_fake"])
        self.step_count = state["step"]
        self.gen.set_state(state["rng"])

    def _networks(self) -> dict[str, nn.Module]:
        nets = {"student": self.student, "fake": self.fake}
        return nets | ({"gan_head": self.head.head} if self.head is not None else {})

