"""Held-out evaluation the paper's way (Xing et al., ACM MM 2022, Tables 1 and 2), plus flicker.

* Table 1, blending: PSNR and SSIM inside the boundary band, learned blending vs linear blending
  with the *same* imperfect matte;
* Table 2, harmonization: PSNR and SSIM of the harmonizer vs copy-paste (the input), vs the classical
  baseline (Reinhard colour transfer of the foreground toward the complete background's Lab
  statistics), vs the partial-cue ablation and, where given, the paper's exact net;
* video: a foreground slides across a static background; flicker is the mean absolute change of
  the output (8-bit levels) between consecutive frames, motion-compensated, over the pixels whose
  *input* did not change (the inside of the foreground in both frames). A harmonizer driven by the
  background around the object sees that surround change as the object moves; one driven by the
  complete background does not.

The held-out set is drawn once from a fixed seed, so every network is scored on the same samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compositor.networks.colour import reinhard_transfer
from compositor.networks.layers import erode, linear_composite
from compositor.training import photos, readers
from compositor.training.data import matting_synthesizer, photo_synthesizer
from compositor.training.losses import psnr, ssim
from compositor.training.synthesis import CompositeSynthesizer, TrainingBatch

log = logging.getLogger(__name__)

EVALUATION_SEED = 20221010
"""Seed of the held-out draw (distinct from training's validation draw, seed + 1)."""


@dataclass
class Harmonizers:
    """The harmonization networks under comparison; ``None`` where no weights were given."""

    complete: nn.Module
    partial: nn.Module | None = None
    paper: nn.Module | None = None


def held_out_synthesizer(synthetic: bool, data: Path | None, size: int, seed: int = EVALUATION_SEED) -> tuple[CompositeSynthesizer, dict]:
    """Synthesizer over held-out photos: the validation split of the package photos (``synthetic``),
    or every photo group of ``data`` (a folder of photos or a matting set kept out of training)."""
    if synthetic == (data is not None):
        raise ValueError("give exactly one of --synthetic or --data DIR")
    if synthetic:
        _, groups = photos.split_groups(photos.synthetic_groups())
        description = {"data": "synthetic: validation split of the package-shipped photos", "groups": [g.name for g in groups]}
        return photo_synthesizer(groups, size, seed, flips=False), description
    data = Path(data)
    layout = readers.detect_layout(data)
    if layout == "photos":
        groups = photos.folder_groups(data)
        return photo_synthesizer(groups, size, seed, flips=False), {"data": f"photos in {data}", "groups": len(groups)}
    if layout == "matting":
        pairs = readers.read_matting_set(data)
        return matting_synthesizer(pairs, size, seed, flips=False), {"data": f"matting set in {data}", "images": len(pairs)}
    raise readers.DataError(f"{data} is an iHarmony4 folder: evaluation needs complete backgrounds, which iHarmony4 lacks")


def _mean(values: list[torch.Tensor]) -> float:
    return round(float(torch.cat(values).mean()), 3)


def colour_transfer(composite: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The classical baseline, called like a harmonizer: Reinhard transfer of the foreground (inside
    ``mask``) toward the complete background's Lab statistics."""
    return linear_composite(reinhard_transfer(composite, background, image_weights=mask), mask, composite)


def colour_transfer_baseline(batch: TrainingBatch) -> torch.Tensor:
    """``colour_transfer`` on a batch's harmonization input."""
    return colour_transfer(batch.harmonization_input, batch.alpha, batch.background)


@torch.no_grad()
def evaluate_blending(blending: nn.Module, batches: list[TrainingBatch]) -> dict:
    """Table 1: boundary-band PSNR/SSIM of learned vs linear blending, same imperfect matte.

    Also outside the band (``outside_psnr``, ``linear_outside_psnr``, ``outside_loss_db``): there
    linear blending is already right, and learned blending must not damage it (its colour residual
    is not gated to the band).
    """
    scores: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        learned = blending(batch.source, batch.imperfect_alpha, batch.background)
        for name, output in (("boundary", learned), ("linear_boundary", batch.linear_blend())):
            scores.setdefault(f"{name}_psnr", []).append(psnr(output, batch.target, batch.band))
            scores.setdefault(f"{name}_ssim", []).append(ssim(output, batch.target, batch.band))
        for name, output in (("outside", learned), ("linear_outside", batch.linear_blend())):
            scores.setdefault(f"{name}_psnr", []).append(psnr(output, batch.target, 1.0 - batch.band))
    result = {key: _mean(values) for key, values in scores.items()}
    result["gain_db"] = round(result["boundary_psnr"] - result["linear_boundary_psnr"], 3)
    result["outside_loss_db"] = round(result["linear_outside_psnr"] - result["outside_psnr"], 3)
    return result


@torch.no_grad()
def evaluate_harmonization(harmonizers: Harmonizers, batches: list[TrainingBatch]) -> dict:
    """Table 2: PSNR/SSIM (whole image) and foreground PSNR of each harmonizer and the baselines."""
    scores: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        inputs = (batch.harmonization_input, batch.alpha, batch.background)
        outputs = {
            "": harmonizers.complete(*inputs),
            "copy_paste_": batch.harmonization_input,
            "colour_transfer_": colour_transfer_baseline(batch),
        }
        if harmonizers.partial is not None:
            outputs["partial_cue_"] = harmonizers.partial(*inputs)
        if harmonizers.paper is not None:
            outputs["paper_net_"] = harmonizers.paper(*inputs)
        for prefix, output in outputs.items():
            scores.setdefault(f"{prefix}psnr", []).append(psnr(output, batch.target))
            scores.setdefault(f"{prefix}ssim", []).append(ssim(output, batch.target))
            scores.setdefault(f"{prefix}foreground_psnr", []).append(psnr(output, batch.target, batch.alpha))
    return {key: _mean(values) for key, values in scores.items()}


def _shift(images: torch.Tensor, dx: int) -> torch.Tensor:
    """Translate right by ``dx`` pixels, filling with zeros."""
    if dx == 0:
        return images
    shifted = torch.zeros_like(images)
    shifted[..., dx:] = images[..., :-dx]
    return shifted


@torch.no_grad()
def flicker(harmonizer: nn.Module, batch: TrainingBatch, frames: int = 8, step_px: int | None = None) -> float:
    """Mean absolute frame-to-frame change (8-bit levels) where the input did not change.

    Each sample's harmonization foreground (colour-shifted ``F`` under ``A``) slides ``step_px``
    pixels right per frame over its static complete background. Frame ``t+1`` is compared with
    frame ``t`` shifted by the motion, over pixels inside the (eroded) matte in both frames, where
    the input is identical after the shift.
    """
    size = batch.alpha.shape[-1]
    step_px = step_px or max(1, size // 32)
    alpha, shifted_foreground = batch.alpha, batch.shifted_foreground
    outputs, mattes = [], []
    for t in range(frames):
        matte = _shift(alpha, t * step_px)
        composite = linear_composite(_shift(shifted_foreground, t * step_px), matte, batch.background)
        outputs.append(harmonizer(composite, matte, batch.background))
        mattes.append(matte)
    changes, weights = [], []
    for t in range(frames - 1):
        # Pixels fully inside the object in both frames (eroded, so edge pixels, where the input
        # mixes with a background that does change, are excluded).
        inside = (erode(mattes[t + 1], 2) >= 1.0) & (erode(_shift(mattes[t], step_px), 2) >= 1.0)
        inside[..., : (t + 1) * step_px + 2] = False  # left edge filled by the shift
        difference = (outputs[t + 1] - _shift(outputs[t], step_px)).abs() * inside
        changes.append(difference.sum())
        weights.append(inside.sum() * 3)
    return round(float(sum(changes) / max(sum(weights), 1) * 255.0), 4)


def evaluate_video(harmonizers: Harmonizers, batches: list[TrainingBatch], clips: int = 8) -> dict:
    """Flicker of each harmonizer (and the colour-transfer baseline) on ``clips`` moving-foreground clips."""
    candidates = {"flicker": harmonizers.complete, "colour_transfer_flicker": colour_transfer}
    if harmonizers.partial is not None:
        candidates["partial_cue_flicker"] = harmonizers.partial
    samples = [(batch, i) for batch in batches for i in range(len(batch))][:clips]
    result = {}
    for name, harmonizer in candidates.items():
        values = [flicker(harmonizer, batch.select(i)) for batch, i in samples]
        result[name] = round(float(np.mean(values)), 4)
    result["clips"], result["frames_per_clip"] = len(samples), 8
    return result


def evaluate(blending: nn.Module, harmonizers: Harmonizers, batches: list[TrainingBatch], clips: int = 8) -> dict:
    """Every table: ``{"blending": ..., "harmonization": ..., "video": ...}``."""
    for module in (blending, harmonizers.complete, harmonizers.partial, harmonizers.paper):
        if module is not None:
            module.eval()
    return {
        "blending": evaluate_blending(blending, batches),
        "harmonization": evaluate_harmonization(harmonizers, batches),
        "video": evaluate_video(harmonizers, batches, clips),
    }


@torch.no_grad()
def example_figure(blending: nn.Module, harmonizers: Harmonizers, batch: TrainingBatch, rows: int = 3) -> np.ndarray:
    """Rows of held-out examples: blending (source, linear, learned, target) then harmonization
    (input, colour transfer, partial cue, ours, target), as one uint8 image."""
    from compositor.figures import comparison_strip, stack_rows

    def image(tensor: torch.Tensor) -> np.ndarray:
        return (tensor.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    strips = []
    for index in range(min(rows, len(batch))):
        sample = batch.select(index)
        panels = [
            ("source photo", image(sample.source[0])),
            ("linear blend", image(sample.linear_blend()[0])),
            ("learned blend", image(blending(sample.source, sample.imperfect_alpha, sample.background)[0])),
            ("harmonization input", image(sample.harmonization_input[0])),
            ("colour transfer", image(colour_transfer_baseline(sample)[0])),
        ]
        inputs = (sample.harmonization_input, sample.alpha, sample.background)
        if harmonizers.partial is not None:
            panels.append(("partial cue", image(harmonizers.partial(*inputs)[0])))
        panels += [("ours (complete cue)", image(harmonizers.complete(*inputs)[0])), ("target", image(sample.target[0]))]
        strips.append(comparison_strip(panels, panel_height=sample.target.shape[-2]))
    return stack_rows(strips)
