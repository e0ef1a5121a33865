"""Training and held-out data from ``--synthetic`` or ``--data DIR``, as batch synthesizers.

* ``--synthetic``: the package-shipped photos (``photos.synthetic_groups``), split by photo;
* ``--data DIR`` of photos (PPR10K-style groups or a flat folder): the same synthesis on them;
* ``--data DIR`` holding a matting set (``image/`` + ``alpha/``): real mattes instead of synthetic
  ones, each image its own foreground;
* ``--data DIR`` holding iHarmony4: its composite/mask/real triplets for harmonization. iHarmony4
  has no complete backgrounds, so the background input is the real image outside the mask (the
  partial cue) and the paper's complete-background comparison cannot be made on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compositor.training import photos, readers
from compositor.training.synthesis import CompositeSynthesizer, TrainingBatch, band_radius, boundary_band, imperfect_mattes

log = logging.getLogger(__name__)


@dataclass
class DataSplit:
    """Batch sources for training and validation, and a description for logs and provenance."""

    train: object  # has .batch(n) -> TrainingBatch
    validation: object
    description: dict


def build_data(synthetic: bool, data: Path | None, size: int, seed: int, task: str) -> DataSplit:
    """Train/validation synthesizers for ``task`` ("blending" or "harmonization")."""
    if synthetic == (data is not None):
        raise ValueError("give exactly one of --synthetic or --data DIR")
    # Photos are kept at 1.25x the training side so random crops (half to all of the short side)
    # are rarely upscaled.
    short_side = int(size * 1.25)
    if synthetic:
        train, validation = photos.split_groups(photos.synthetic_groups())
        return _photo_split(train, validation, size, short_side, seed, {"data": "synthetic (package-shipped photos)"})
    data = Path(data)
    layout = readers.detect_layout(data)
    if layout == "photos":
        train, validation = photos.split_groups(photos.folder_groups(data))
        return _photo_split(train, validation, size, short_side, seed, {"data": f"photos in {data}"})
    if layout == "matting":
        return _matting_split(data, size, short_side, seed)
    if task != "harmonization":
        raise ValueError(f"{data} is an iHarmony4 folder: it has no mattes for blending; train blending on photos or a matting set")
    return DataSplit(
        TripletBatches(readers.read_iharmony4(data, "train"), size, seed),
        TripletBatches(readers.read_iharmony4(data, "test"), size, seed + 1),
        {"data": f"iHarmony4 in {data}", "background_cue_note": "iHarmony4 has no complete backgrounds"},
    )


def _photo_split(train, validation, size, short_side, seed, description) -> DataSplit:
    description = {
        **description,
        "train_groups": [g.name for g in train],
        "validation_groups": [g.name for g in validation],
    }
    log.info("photos: %d train groups, %d validation groups", len(train), len(validation))
    if len(validation) < 2:
        # Synthesis needs a second group for the original background; borrow from train for that only.
        raise ValueError(f"validation split has {len(validation)} photo group(s); at least 10 groups in all are needed")
    return DataSplit(
        CompositeSynthesizer(photos.load_groups(train, short_side), size, seed=seed),
        CompositeSynthesizer(photos.load_groups(validation, short_side), size, seed=seed + 1, flips=False),
        description,
    )


def _matting_split(data: Path, size: int, short_side: int, seed: int) -> DataSplit:
    pairs = readers.read_matting_set(data)
    groups = [photos.PhotoGroup(image.stem, (image, alpha)) for image, alpha in pairs]
    train, validation = photos.split_groups(groups)

    def synthesizer(split, split_seed, flips):
        images = [[readers.load_image(g.paths[0], short_side=short_side)] for g in split]
        mattes = [[_matte_like(readers.load_image(g.paths[1], mode="L"), image[0])] for g, image in zip(split, images)]
        return CompositeSynthesizer(images, size, mattes=mattes, seed=split_seed, flips=flips)

    return DataSplit(
        synthesizer(train, seed, True),
        synthesizer(validation, seed + 1, False),
        {"data": f"matting set in {data}", "train_images": len(train), "validation_images": len(validation)},
    )


def _matte_like(matte: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Resize a matte to its (downscaled) image's size."""
    if matte.shape[:2] == image.shape[:2]:
        return matte
    from PIL import Image

    return np.asarray(Image.fromarray(matte).resize((image.shape[1], image.shape[0]), Image.BILINEAR))


class TripletBatches:
    """iHarmony4 composite/mask/real triplets as ``TrainingBatch``es (harmonization only), in order."""

    def __init__(self, triplets: list[readers.HarmonyTriplet], size: int, seed: int):
        if not triplets:
            raise ValueError("no iHarmony4 triplets listed")
        self.triplets, self.size = triplets, size
        self.order = np.random.default_rng(seed).permutation(len(triplets))
        self.position = 0
        self.generator = torch.Generator().manual_seed(seed)

    def _load(self, path: Path, mode: str) -> torch.Tensor:
        image = readers.load_image(path, short_side=self.size, mode=mode)
        image = image[..., None] if image.ndim == 2 else image
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / 255.0
        return F.interpolate(tensor, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)[0]

    def batch(self, batch_size: int) -> TrainingBatch:
        chosen = [self.triplets[self.order[(self.position + i) % len(self.triplets)]] for i in range(batch_size)]
        self.position += batch_size
        composite = torch.stack([self._load(t.composite, "RGB") for t in chosen])
        mask = torch.stack([self._load(t.mask, "L") for t in chosen])
        real = torch.stack([self._load(t.real, "RGB") for t in chosen])
        background = real * (1.0 - mask)
        return TrainingBatch(
            foreground=real, background=background, alpha=mask, source=real,
            imperfect_alpha=imperfect_mattes(mask, self.generator),
            band=boundary_band(mask, band_radius(self.size)), shifted_foreground=composite,
            harmonization_input=composite, target=real,
        )
