"""The training loops of the blending and harmonization networks.

One loop for both: synthesise a batch, step Adam (the paper's learning rates: 1e-4 blending,
2e-4 harmonization), and every ``validate_every`` steps measure PSNR on a fixed held-out set. A CSV
log gets a row per logged step; a checkpoint (weights, optimizer moments, data generators) is
written every ``checkpoint_every`` steps and at the end, so ``resume=True`` continues a run exactly
where it stopped. The weights file written to ``out`` holds the weights with the best validation
score, with provenance (data, steps, time, metrics, the command's configuration).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compositor.errors import CompositorError
from compositor.networks.blending import BlendingUNet
from compositor.networks.harmonization import HarmonizationUNet
from compositor.networks.weights import save_network
from compositor.training.checkpoint import CheckpointError, CheckpointNotFoundError, load_checkpoint, save_checkpoint
from compositor.training.data import DataSplit, build_data
from compositor.training.discriminator import DomainDiscriminator
from compositor.training.losses import HARMONY_CAP_DB, blending_loss, harmonization_loss, lsgan_loss, psnr
from compositor.training.synthesis import KINDS, TrainingBatch, crop_around_band, fixed_batches

log = logging.getLogger(__name__)

TASKS = ("blending", "harmonization")
PAPER_LEARNING_RATES = {"blending": 1e-4, "harmonization": 2e-4}


class TrainConfigError(CompositorError, ValueError):
    """A training option that cannot work (on this machine, or with the other options)."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in the weights' provenance and the checkpoint."""

    task: str
    out: Path
    synthetic: bool = False
    data: Path | None = None
    size: int = 512
    crop: int | None = None
    batch_size: int = 4
    steps: int = 20000
    minutes: float | None = None
    learning_rate: float | None = None
    learning_rate_given: bool = dataclasses.field(default=False, init=False)
    adversarial_weight: float = 0.0
    background_cue: str = "complete"
    tone_transform: bool = True
    harmonious_weight: float = 3.0
    tone_steps: int = 0
    refine_alpha: bool = True
    transfer_learning_rate_multiplier: float = 10.0
    base_channels: int = 16
    validate_every: int = 250
    validation_samples: int = 64
    checkpoint_every: int = 50
    run_dir: Path | None = None
    device: str = "cpu"
    seed: int = 0
    resume: bool = False

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        self.out = Path(self.out)
        self.run_dir = Path(self.run_dir) if self.run_dir else self.out.with_suffix(".run")
        # Whether the learning rate was asked for (a resumed run then takes it) or is the paper's default.
        self.learning_rate_given = self.learning_rate is not None
        if self.learning_rate is None:
            self.learning_rate = PAPER_LEARNING_RATES[self.task]
        if self.adversarial_weight < 0:
            raise TrainConfigError(f"adversarial weight must be >= 0, got {self.adversarial_weight}")
        if self.crop is not None and (self.crop % 32 or self.crop > self.size):
            raise TrainConfigError(f"--crop must be a multiple of 32 no larger than the size {self.size}, got {self.crop}")
        if self.task == "blending" and self.adversarial_weight:
            raise TrainConfigError("the adversarial loss belongs to harmonization; blending trains on L1 + band L1")

    def as_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def build_network(config: TrainConfig) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.task == "blending":
            return BlendingUNet(base_channels=config.base_channels, refine_alpha=config.refine_alpha)
        return HarmonizationUNet(
            base_channels=config.base_channels, tone_transform=config.tone_transform, background_cue=config.background_cue
        )


def parameter_groups(network: nn.Module, config: TrainConfig) -> list[dict]:
    """Adam parameter groups: the paper's rate for the paper's net; the tone transform (a small head
    over global statistics, which sees one sample's worth of signal per image) a multiple of it."""
    transfer = getattr(network, "tone", None)
    if transfer is None:
        return [{"params": list(network.parameters()), "lr": config.learning_rate}]
    transfer_ids = {id(p) for p in transfer.parameters()}
    return [
        {"params": [p for p in network.parameters() if id(p) not in transfer_ids], "lr": config.learning_rate},
        {"params": list(transfer.parameters()), "lr": config.learning_rate * config.transfer_learning_rate_multiplier},
    ]


def run_network(task: str, network: nn.Module, batch: TrainingBatch) -> torch.Tensor:
    """The network's output for a batch: blending sees the imperfect matte, harmonization the true one."""
    if task == "blending":
        return network(batch.source, batch.imperfect_alpha, batch.background)
    return network(batch.harmonization_input, batch.alpha, batch.background)


@torch.no_grad()
def validate(task: str, network: nn.Module, batches: list[TrainingBatch], device: str) -> dict[str, float]:
    """Mean PSNR over a fixed set: blending in the boundary band (and linear blending's for
    reference), harmonization over the whole image and inside the foreground."""
    was_training = network.training
    network.eval()
    scores: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        batch = batch.to(device)
        output = run_network(task, network, batch)
        if task == "blending":
            scores.setdefault("val_band_psnr", []).append(psnr(output, batch.target, batch.band))
            scores.setdefault("val_linear_band_psnr", []).append(psnr(batch.linear_blend(), batch.target, batch.band))
        else:
            values = psnr(output, batch.target)
            scores.setdefault("val_psnr", []).append(values)
            scores.setdefault("val_foreground_psnr", []).append(psnr(output, batch.target, batch.alpha))
            scores.setdefault("val_copy_paste_psnr", []).append(psnr(batch.harmonization_input, batch.target))
            if batch.kind is not None:
                for code, kind in enumerate(KINDS):
                    scores.setdefault(f"val_psnr_{kind}", []).append(values[batch.kind == code])
    network.train(was_training)
    metrics = {key: float(torch.cat(values).mean()) for key, values in scores.items() if torch.cat(values).numel()}
    kinds = [metrics[f"val_psnr_{kind}"] for kind in KINDS if f"val_psnr_{kind}" in metrics]
    if task == "harmonization":
        # Every input kind counts alike, each capped (HARMONY_CAP_DB): gaining on one kind by harming
        # another does not pay. Without kinds (iHarmony4) it is the plain PSNR.
        metrics["val_score"] = float(np.mean([min(k, HARMONY_CAP_DB) for k in kinds])) if kinds else metrics["val_psnr"]
    return metrics


def selection_metric(task: str) -> str:
    return "val_band_psnr" if task == "blending" else "val_score"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Trainer:
    """One training run (see the module docstring); ``run()`` trains and returns the final summary."""

    def __init__(self, config: TrainConfig, data: DataSplit | None = None):
        self.config = config
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise TrainConfigError(f"--device {config.device}: no CUDA device is available to PyTorch on this machine")
        self.data = data or build_data(config.synthetic, config.data, config.size, config.seed, config.task)
        self.network = build_network(config).to(config.device).train()
        self.optimizer = torch.optim.Adam(parameter_groups(self.network, config), betas=(0.9, 0.999))
        self.modules: dict[str, nn.Module] = {"model": self.network}
        self.optimizers = {"optimizer": self.optimizer}
        self.discriminator = None
        if config.task == "harmonization" and config.adversarial_weight > 0:
            self.discriminator = DomainDiscriminator().to(config.device).train()
            self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=config.learning_rate, betas=(0.5, 0.999))
            self.modules["discriminator"] = self.discriminator
            self.optimizers["discriminator_optimizer"] = self.disc_optimizer
        self.validation = fixed_batches(self.data.validation, config.validation_samples, config.batch_size)
        self.step, self.elapsed_s, self.best = 0, 0.0, {"step": 0, "metrics": {}}
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = config.run_dir / "checkpoint.safetensors"
        self.best_path = config.run_dir / "best.safetensors"
        self.log_path = config.run_dir / "log.csv"

    # --- state ---------------------------------------------------------------------------------
    def _generator_states(self) -> dict:
        train = self.data.train
        return {
            "numpy": getattr(train, "rng", np.random.default_rng()).bit_generator.state,
            "torch": train.generator.get_state().tolist(),
        }

    def _restore_generators(self, states: dict) -> None:
        train = self.data.train
        if hasattr(train, "rng"):
            train.rng.bit_generator.state = states["numpy"]
        train.generator.set_state(torch.tensor(states["torch"], dtype=torch.uint8))

    def save(self) -> None:
        info = {"step": self.step, "elapsed_s": self.elapsed_s, "best": self.best, "config": self.config.as_json(),
                "generators": self._generator_states()}
        save_checkpoint(self.checkpoint_path, self.modules, self.optimizers, info)

    def resume(self) -> None:
        if not self.checkpoint_path.is_file():
            raise CheckpointNotFoundError(f"--resume: no checkpoint at {self.checkpoint_path} (start without --resume, or give the run's --run-dir)")
        info = load_checkpoint(self.checkpoint_path, self.modules, self.optimizers)
        saved = {k: v for k, v in info["config"].items() if k in ("task", "size", "background_cue", "tone_transform", "refine_alpha", "base_channels")}
        current = {k: v for k, v in self.config.as_json().items() if k in saved}
        if saved != current:
            raise CheckpointError(f"--resume: the checkpoint was made with {saved}, this run asks for {current}")
        self.step, self.elapsed_s, self.best = info["step"], info["elapsed_s"], info["best"]
        self._restore_generators(info["generators"])
        self._resume_learning_rate()
        log.info("resumed %s at step %d (%.1f min trained)", self.checkpoint_path, self.step, self.elapsed_s / 60)

    def _resume_learning_rate(self) -> None:
        """A learning rate given with --resume replaces the checkpoint's (each group keeps its multiple);
        without one the checkpoint's stays. Either way the log says which."""
        wanted = parameter_groups(self.network, self.config)
        restored = [group["lr"] for group in self.optimizer.param_groups]
        if not self.config.learning_rate_given:
            log.info("resumed with the checkpoint's learning rates %s", restored)
            return
        for group, new in zip(self.optimizer.param_groups, wanted):
            group["lr"] = new["lr"]
        log.info("learning rates %s -> %s (given with --resume)", restored, [group["lr"] for group in wanted])

    # --- one step ------------------------------------------------------------------------------
    def train_step(self, batch: TrainingBatch) -> dict[str, float]:
        if self.config.task == "harmonization" and self.step < self.config.tone_steps and self.network.tone is not None:
            # Warm-up: the tone transform alone, on many more images per second than the U-Net allows.
            # The U-Net's residual head is still zero, so this is the whole net's output.
            weights = None if self.network.background_cue == "complete" else 1.0 - batch.alpha
            background = batch.background if weights is None else batch.background * weights
            parts = self.network.tone(batch.harmonization_input, batch.alpha, background, weights)
            output = parts["harmonized"] = parts["composite"].clamp(0.0, 1.0)
        elif self.config.task == "harmonization":
            parts = self.network.forward_parts(batch.harmonization_input, batch.alpha, batch.background)
            output = parts["harmonized"]
        else:
            output = run_network(self.config.task, self.network, batch)
        if self.config.task == "blending":
            losses = blending_loss(output, batch.target, batch.band)
        else:
            losses = harmonization_loss(parts, batch, self.config.harmonious_weight)
            if self.discriminator is not None:
                scores = self.discriminator(output, batch.alpha)
                adversarial = sum(lsgan_loss(s, real=True) for s in scores)
                losses["adversarial"] = adversarial
                losses["loss"] = losses["loss"] + self.config.adversarial_weight * adversarial
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        if self.discriminator is not None:
            real = self.discriminator(batch.target, batch.alpha)
            fake = self.discriminator(output.detach(), batch.alpha)
            disc_loss = sum(lsgan_loss(s, real=True) for s in real) + sum(lsgan_loss(s, real=False) for s in fake)
            self.disc_optimizer.zero_grad(set_to_none=True)
            disc_loss.backward()
            self.disc_optimizer.step()
            losses["discriminator"] = disc_loss
        return {key: float(value.detach()) for key, value in losses.items()}

    def _log_row(self, row: dict) -> None:
        fields = ["step", "elapsed_s", "images_per_s", "loss", "l1", "band_l1", "statistics", "gate", "adversarial",
                  "discriminator", "val_band_psnr", "val_linear_band_psnr", "val_score", "val_psnr",
                  *(f"val_psnr_{kind}" for kind in KINDS), "val_foreground_psnr", "val_copy_paste_psnr"]
        new = not self.log_path.is_file()
        with self.log_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _validate_and_keep_best(self, row: dict) -> None:
        metrics = validate(self.config.task, self.network, self.validation, self.config.device)
        row.update(metrics)
        key = selection_metric(self.config.task)
        if self.best["metrics"].get(key, -np.inf) < metrics[key]:
            self.best = {"step": self.step, "metrics": metrics}
            save_network(self.network, self.best_path, {"step": self.step})
        log.info("step %d: %s (best %s %.2f dB at step %d)", self.step,
                 ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()), key, self.best["metrics"][key], self.best["step"])

    # --- the loop ------------------------------------------------------------------------------
    def run(self, progress: bool = True) -> dict:
        """Train until ``steps`` or ``minutes``; write ``out`` (best validation weights); return a summary."""
        from tqdm import tqdm

        config = self.config
        if config.resume:
            self.resume()
        if self.step == 0:
            # Step 0 is the starting point (linear blending / classical colour transfer): the weights
            # written to ``out`` are never worse on validation than what training started from.
            self._validate_and_keep_best(row := {"step": 0, "elapsed_s": 0.0})
            self._log_row(row)
        session_start, session_elapsed = time.perf_counter(), self.elapsed_s
        bar = tqdm(total=config.steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True,
                   desc=f"train {config.task}")
        window_start, window_images = time.perf_counter(), 0
        try:
            while self.step < config.steps:
                if config.minutes is not None and self.elapsed_s >= config.minutes * 60:
                    log.info("time budget of %.1f min reached at step %d", config.minutes, self.step)
                    break
                batch = self.data.train.batch(config.batch_size)
                if config.crop:
                    batch = crop_around_band(batch, config.crop, self.data.train.generator)
                batch = batch.to(config.device)
                losses = self.train_step(batch)
                self.step += 1
                window_images += len(batch)
                self.elapsed_s = session_elapsed + time.perf_counter() - session_start
                images_per_s = window_images / max(time.perf_counter() - window_start, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss']:.4f}", img_s=f"{images_per_s:.1f}")
                row = {"step": self.step, "elapsed_s": round(self.elapsed_s, 1), "images_per_s": round(images_per_s, 2), **losses}
                if self.step % config.validate_every == 0:
                    self._validate_and_keep_best(row)
                if self.step % config.checkpoint_every == 0 or self.step % config.validate_every == 0:
                    self._log_row(row)
                    self.save()
                    window_start, window_images = time.perf_counter(), 0
        finally:
            bar.close()
        if self.step % config.validate_every:
            self._validate_and_keep_best(row := {"step": self.step, "elapsed_s": round(self.elapsed_s, 1)})
            self._log_row(row)
        self.save()
        return self.finish()

    def finish(self) -> dict:
        """Copy the best-validation weights to ``out`` with full provenance."""
        from compositor.networks.weights import load_network

        best = load_network(self.best_path)
        provenance = {
            "trained_by": "compositor train",
            "task": self.config.task,
            "data": self.data.description,
            "config": self.config.as_json(),
            "steps_trained": self.step,
            "training_time_s": round(self.elapsed_s, 1),
            "best_step": self.best["step"],
            "validation": self.best["metrics"],
            "torch": torch.__version__,
            "device": self.config.device,
            "threads": torch.get_num_threads(),
            "commit": _git_commit(),
        }
        # Stored in float16 to keep the committed files small; the evaluation runs these very values.
        save_network(best, self.config.out, provenance, half=True)
        log.info("wrote %s (step %d of %d, %s)", self.config.out, self.best["step"], self.step, json.dumps(self.best["metrics"]))
        return provenance
