"""Training and held-out data from ``--synthetic`` or ``--data DIR``, as batch synthesizers.

* ``--synthetic``: the package-shipped photos (``photos.synthetic_groups``), split by photo; the
  photos of people among them are foregrounds with the published MODNet's matte (``people``);
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

from compositor.imaging import resize
from compositor.training import people, photos, readers
from compositor.training.synthesis import (
    KINDS,
    CompositeSynthesizer,
    TrainingBatch,
    band_radius,
    boundary_band,
    imperfect_mattes,
    to_tensor,
)

log = logging.getLogger(__name__)

EQUAL_KIND_SHARES = tuple(1.0 / len(KINDS) for _ in KINDS)
TRAIN_PEOPLE_SHARE = 0.7
"""Share of training foregrounds that are people (where the split has any): what the harmonizer
serves is portraits, and only a person's colours tell a harmonious input from another tone."""


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
    if synthetic:
        splits = photos.split_groups(photos.synthetic_groups())
        return _photo_split(splits, size, seed, {"data": "synthetic (package-shipped photos)"})
    data = Path(data)
    layout = readers.detect_layout(data)
    if layout == "photos":
        return _photo_split(photos.split_groups(photos.folder_groups(data)), size, seed, {"data": f"photos in {data}"})
    if layout == "matting":
        return _matting_split(data, size, seed)
    if task != "harmonization":
        raise readers.DataError(f"{data} is an iHarmony4 folder: it has no mattes for blending; train blending on photos or a matting set")
    return DataSplit(
        TripletBatches(readers.read_iharmony4(data, "train"), size, seed),
        TripletBatches(readers.read_iharmony4(data, "test"), size, seed + 1),
        {"data": f"iHarmony4 in {data}", "background_cue_note": "iHarmony4 has no complete backgrounds"},
    )


def photo_short_side(size: int) -> int:
    """Photos are kept at 1.25x the training side, so random crops (half to all of the short side)
    are rarely upscaled."""
    return int(size * 1.25)


def photo_synthesizer(groups: list[photos.PhotoGroup], size: int, seed: int, flips: bool, **options) -> CompositeSynthesizer:
    """Synthesis over photo groups, loaded at ``photo_short_side(size)``; the groups of people are
    also foregrounds with their published-MODNet matte. ``options`` go to ``CompositeSynthesizer``."""
    loaded = photos.load_groups(groups, photo_short_side(size))
    # People are matted at (up to) MODNet's reference size, then scaled down with their matte.
    portraits = [readers.load_image(path, short_side=max(512, photo_short_side(size))) for group in groups if group.person
                 for path in group.paths]
    cut_outs = people.cut_out(portraits, short_side=photo_short_side(size)) if portraits else None
    return CompositeSynthesizer(loaded, size, seed=seed, flips=flips, people=cut_outs, **options)


def matting_synthesizer(pairs: list[tuple[Path, Path]], size: int, seed: int, flips: bool) -> CompositeSynthesizer:
    """Synthesis with real mattes: each (image, alpha) pair is a foreground and its matte."""
    images = [readers.load_image(image, short_side=photo_short_side(size)) for image, _ in pairs]
    mattes = [resize(readers.load_image(alpha, mode="L")[..., None], image.shape[:2])[..., 0] for (_, alpha), image in zip(pairs, images)]
    return CompositeSynthesizer([[image] for image in images], size, mattes=[[matte] for matte in mattes], seed=seed, flips=flips)


def _photo_split(splits: photos.Splits, size, seed, description) -> DataSplit:
    """Train and validation synthesizers; the test split's groups are named in the description only
    (``compositor evaluate`` reports on them, training never loads them)."""
    description = {
        **description,
        "train_groups": [g.name for g in splits.train],
        "validation_groups": [g.name for g in splits.validation],
        "test_groups": [g.name for g in splits.test],
        "train_people": [g.name for g in splits.train if g.person],
        "validation_people": [g.name for g in splits.validation if g.person],
    }
    log.info("photos: %d train, %d validation, %d test groups", len(splits.train), len(splits.validation), len(splits.test))
    if len(splits.validation) < 2:
        # Synthesis draws the background from a second group of the same split.
        raise readers.DataError(f"{description['data']}: the validation split has {len(splits.validation)} photo group(s); at least 15 groups in all are needed")
    return DataSplit(
        photo_synthesizer(splits.train, size, seed, flips=True, people_share=TRAIN_PEOPLE_SHARE),
        # Validation weighs the three input kinds alike: checkpoints are chosen on all of them.
        photo_synthesizer(splits.validation, size, seed + 1, flips=False, kind_shares=EQUAL_KIND_SHARES, people_share=0.5),
        description,
    )


def _matting_split(data: Path, size: int, seed: int) -> DataSplit:
    pairs = readers.read_matting_set(data)
    groups = [photos.PhotoGroup(image.stem, (image, alpha)) for image, alpha in pairs]
    splits = photos.split_groups(groups)
    return DataSplit(
        matting_synthesizer([g.paths for g in splits.train], size, seed, flips=True),
        matting_synthesizer([g.paths for g in splits.validation], size, seed + 1, flips=False),
        {"data": f"matting set in {data}", "train_images": len(splits.train), "validation_images": len(splits.validation),
         "test_images": len(splits.test)},
    )


class TripletBatches:
    """iHarmony4 composite/mask/real triplets as ``TrainingBatch``es (harmonization only), in order."""

    def __init__(self, triplets: list[readers.HarmonyTriplet], size: int, seed: int):
        if not triplets:
            raise readers.DataError("no iHarmony4 triplets listed (check the folder's *_train.txt / *_test.txt lists)")
        self.triplets, self.size = triplets, size
        self.order = np.random.default_rng(seed).permutation(len(triplets))
        self.position = 0
        self.generator = torch.Generator().manual_seed(seed)

    def _load(self, path: Path, mode: str) -> torch.Tensor:
        image = readers.load_image(path, short_side=self.size, mode=mode)
        return to_tensor(image[..., None] if image.ndim == 2 else image, self.size)

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
