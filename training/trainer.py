"""`pid-sdk train`: the latent-conditioned decoder's rectified-flow training (paper section 3.3, spec 6.2)."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from pid_sdk.checkpoints import load_state_dict_strict
from pid_sdk.config import PiDConfig
from pid_sdk.errors import ConfigError
from pid_sdk.latents import LatentSpace
from training.distill import Conditioning, student_sample
from training.ema import EMA
from training.files import safetensors_writer, write_all_then_rename
from training.flow import add_noise, gradient_mse, pooled_mse, sample_latent_sigma, sample_sigma, velocity_target
from training.precision import autocast

OBJECTIVES = ("flow", "rollout")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch: int = 4
    lr: float = 2e-4
    lr_decay: tuple[int, int] | None = None  # (start, end) steps: lr falls linearly to lr_final_ratio * lr
    lr_final_ratio: float = 0.1
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    shift: float = 1.0  # timestep shift of the logit-normal sigma
    latent_sigma_max: float = 0.8  # noisy latent conditioning: sigma_latent ~ U[0, max] ...
    latent_noise_prob: float = 0.5  # ... applied to this share of samples
    caption_dropout: float = 0.1
    latent_dropout: float = 0.1
    freeze_backbone: bool = False  # train only the adapter and its gates
    grad_clip: float = 1.0
    seed: int = 0
    compile: bool = False  # torch.compile the forward (one compile per crop shape; ~1.4x on the 2-core CPU)
    # "flow": the rectified-flow loss above. "rollout": a fine-tune of a trained model for the 4-step sampler: the
    # model runs that sampler on itself (no grad) to a random step, and its x0 prediction there is regressed onto
    # the real image, so it learns to correct its own earlier steps (DMD2's backward simulation with only the
    # reconstruction loss: no teacher or fake score, hence affordable on a CPU).
    objective: str = "flow"
    pooled_loss: tuple[tuple[int, float], ...] = ()  # (pool, weight) terms of `pooled_mse`: weigh coarse errors more
    gradient_loss: float = 0.0  # weight of `gradient_mse`, the error's neighbour-to-neighbour steps

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError("Unknown training objective.", received=self.objective, expected=" or ".join(OBJECTIVES))
        self.pooled_loss = tuple((int(p), float(w)) for p, w in self.pooled_loss)
        if any(p < 2 or w < 0 for p, w in self.pooled_loss):
            raise ConfigError("Pooled loss terms need a pool of at least 2 and a weight of at least 0.",
                              received=self.pooled_loss, expected="(pool, weight) pairs", fix="e.g. 8:4 16:8")
        if self.gradient_loss < 0:
            raise ConfigError("The gradient loss weight cannot be negative.", received=self.gradient_loss,
                              expected="a weight of at least 0", fix="e.g. 1, or 0 for none")
        shares = {"latent_noise_prob": self.latent_noise_prob, "latent_dropout": self.latent_dropout,
                  "caption_dropout": self.caption_dropout}
        for name, share in shares.items():
            if not 0 <= share <= 1:
                raise ConfigError(f"{name} is a share of the samples.", received=share, expected="a number in [0, 1]",
                                  fix="e.g. 0.1 for a tenth")
        if self.lr_decay is not None and not 0 <= self.lr_decay[0] < self.lr_decay[1]:
            raise ConfigError("The learning-rate decay must end after it starts.", received=self.lr_decay,
                              expected="(start, end) steps with 0 <= start < end", fix="e.g. --lr-decay 6400 8000")


class Trainer:
    def __init__(self, model: nn.Module, space: LatentSpace, cfg: TrainConfig, device: str | torch.device = "cpu"):
        self.model, self.space, self.cfg = model.to(device).train(), space, cfg
        self.device = torch.device(device)
        if cfg.freeze_backbone:
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(("lq_proj.", "pit_lq_gate.")))
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        self.ema = EMA(model, cfg.ema_decay)
        # The wrapper shares the parameters; self.model stays the plain module so checkpoint keys do not change.
        self.forward = torch.compile(model, dynamic=False) if cfg.compile else model
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.step_count = 0

    def autocast(self):
        return autocast(self.device)

    def conditioning(self, batch: dict[str, Tensor]) -> Conditioning:
        """The batch's caption and latent, each dropped (zeros) for its share of samples, the latent noised for its."""
        cfg, b, g, dev = self.cfg, self.model.cfg, self.gen, self.device
        latent = batch["latent"].to(dev)
        n = latent.shape[0]
        text = batch.get("text")
        text = torch.zeros(n, b.txt_max_length, b.txt_embed_dim, device=dev) if text is None else text.to(dev)
        text = text * (torch.rand(n, generator=g, device=dev) >= cfg.caption_dropout).float().view(-1, 1, 1)
        latent_sigma = sample_latent_sigma(n, cfg.latent_sigma_max, cfg.latent_noise_prob, generator=g, device=dev)
        latent = self.space.add_noise(latent, latent_sigma, torch.randn(latent.shape, generator=g, device=dev))
        latent = latent * (torch.rand(n, generator=g, device=dev) >= cfg.latent_dropout).float().view(-1, 1, 1, 1)
        return Conditioning(text, latent, latent_sigma)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Rectified flow on v = eps - x0, or the rollout loss (TrainConfig.objective), on `conditioning(batch)`."""
        x0 = batch["image"].to(self.device)
        cond = self.conditioning(batch)
        if self.cfg.objective == "rollout":  # x0 at a random step of the model's own 4-step sampler
            with self.autocast():
                x0_pred, _ = student_sample(self.forward, cond, tuple(x0.shape), self.gen)
            return self.error_loss(x0_pred.float() - x0)
        sigma = sample_sigma(x0.shape[0], shift=self.cfg.shift, generator=self.gen, device=self.device)
        eps = torch.randn(x0.shape, generator=self.gen, device=self.device)
        with self.autocast():
            v = cond(self.forward, add_noise(x0, sigma, eps), sigma)
        return self.error_loss(v.float() - velocity_target(x0, eps))

    def error_loss(self, err: Tensor) -> Tensor:
        loss = pooled_mse(err, self.cfg.pooled_loss)
        return loss + self.cfg.gradient_loss * gradient_mse(err) if self.cfg.gradient_loss else loss

    def lr_at(self, step: int) -> float:
        """The learning rate of `step`: a function of the step alone, so a resumed run follows the same schedule."""
        if self.cfg.lr_decay is None:
            return self.cfg.lr
        start, end = self.cfg.lr_decay
        done = min(max((step - start) / (end - start), 0.0), 1.0)  # end > start: __post_init__
        return self.cfg.lr * (1 - done * (1 - self.cfg.lr_final_ratio))

    def step(self, batch: dict[str, Tensor]) -> float:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step_count)
        loss = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.cfg.grad_clip)
        self.opt.step()
        self.ema.update(self.model)
        self.step_count += 1
        return loss.item()

    def fit(self, sampler, out: str | Path, *, save_every: int = 500, log=print) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        from tqdm import tqdm

        bar = tqdm(total=self.cfg.steps, initial=self.step_count, unit="step", desc="train")
        t0, seen = time.perf_counter(), 0
        while self.step_count < self.cfg.steps:
            batch = sampler.batch(self.cfg.batch)
            loss = self.step(batch)
            seen += batch["image"].shape[0]
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.2f}")
            if self.step_count % save_every == 0 or self.step_count == self.cfg.steps:
                self.save(out)
        bar.close()

    # --- checkpoint and resume ------------------------------------------------------------------------------
    def save(self, out: str | Path) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        state = {"optimizer": self.opt.state_dict(), "step": self.step_count, "rng": self.gen.get_state()}
        config = json.dumps({"train": asdict(self.cfg), "model": self.model.config.to_dict()}, indent=2)
        write_all_then_rename({out / "model.safetensors": safetensors_writer(self.model),
                               out / "ema.safetensors": safetensors_writer(self.ema.model),
                               out / "trainer_state.pt": lambda path: torch.save(state, path),
                               out / "train_config.json": lambda path: path.write_text(config)})

    def resume(self, out: str | Path) -> None:
        out = Path(out)
        now, saved = _flat(self.model.config.to_dict()), _flat(run_config(out).to_dict())
        changed = sorted(k for k in now.keys() | saved.keys() if now.get(k) != saved.get(k))
        if changed:  # the weights may still load (e.g. another RoPE mode): say so
            warnings.warn(f"Resuming {out} with a different model config ({', '.join(changed)}).", stacklevel=2)
        recorded = json.loads((out / "train_config.json").read_text())["train"]
        current = json.loads(json.dumps(asdict(self.cfg)))  # tuples as JSON lists, as recorded
        settings = sorted(k for k, v in current.items() if k != "steps" and recorded.get(k) != v)
        if settings:  # a new schedule or objective can be the point, but a forgotten option restarts the run
            warnings.warn(f"Resuming {out} with other training settings than it recorded: " + ", ".join(
                f"{k} {recorded.get(k)} -> {current[k]}" for k in settings) + ". To continue the run as "
                "it was, pass the recorded values (a command line's left-out options take their defaults).",
                stacklevel=2)
        self.model.load_state_dict(load_file(str(out / "model.safetensors")))
        self.ema.model.load_state_dict(load_file(str(out / "ema.safetensors")))
        state = torch.load(out / "trainer_state.pt", weights_only=True)
        was_frozen = recorded.get("freeze_backbone", False)
        if was_frozen == self.cfg.freeze_backbone:
            self.opt.load_state_dict(state["optimizer"])
        else:  # e.g. the adapter warmed up alone, now the whole model: the optimizer holds other parameters
            warnings.warn(f"Resuming {out} with freeze_backbone={self.cfg.freeze_backbone} (the run had "
                          f"{was_frozen}): the optimizer starts afresh.", stacklevel=2)
        self.step_count = state["step"]
        self.gen.set_state(state["rng"])


def parse_pooled_loss(items: list[str] | None) -> tuple[tuple[int, float], ...]:
    """Command-line `POOL:WEIGHT` items (e.g. 8:4 16:8) -> TrainConfig.pooled_loss."""
    out = []
    for item in items or []:
        pool, _, weight = item.partition(":")
        try:
            out.append((int(pool), float(weight)))
        except ValueError:
            raise ConfigError("A pooled loss term is not POOL:WEIGHT.", received=item, expected="e.g. 8:4",
                              fix="an integer pool of at least 2, a colon, a weight") from None
    return tuple(out)


def run_config(folder: str | Path) -> PiDConfig:
    return PiDConfig.from_dict(json.loads((Path(folder) / "train_config.json").read_text())["model"])


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def is_run_folder(folder: str | Path) -> bool:
    return (Path(folder) / "ema.safetensors").is_file()


def load_run_ema(folder: str | Path) -> tuple[PiDConfig, nn.Module]:
    """The config and EMA weights of a run folder written by `Trainer.save`, loaded strictly."""
    folder = Path(folder)
    cfg = run_config(folder)
    return cfg, load_state_dict_strict(cfg, load_file(str(folder / "ema.safetensors")))
