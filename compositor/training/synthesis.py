"""Training data synthesis after Xing et al. (ACM MM 2022, section 4.1), on batches in torch.

From any photo groups, one sample is:

* foreground ``F`` and complete background ``B``: two different crops of one photo (or two photos
  of one group): same tone, so their composite ``A*F + (1-A)*B`` is harmonious. It is the target
  of both networks;
* a portrait-like soft matte ``A`` (head, neck and shoulders with a wavy outline and soft, hair-like
  edges on top), or a real matte where the data has one;
* the *source photo*: ``F`` under ``A`` over a crop ``O`` of *another* photo (its original
  background), so the source shows a real object boundary;
* the blending input: the source with an *imperfect* matte (``A`` eroded or dilated, blurred and
  noised), and the boundary band (dilation minus erosion of ``A``) where blending is judged;
* the harmonization input: ``F`` after Reinhard colour transfer toward a random other photo,
  composited onto ``B`` with the true matte.

Crops are cut in numpy (cheap slicing); resizing, mattes, morphology and colour transfer run on the
whole batch in torch, so synthesis costs a small fraction of a training step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from compositor.networks.colour import reinhard_transfer
from compositor.networks.layers import dilate, erode, linear_composite
from compositor.training.readers import DataError

CROP_SCALE = (0.5, 1.0)
"""Side of a square crop, as a fraction of the photo's short side."""


@dataclass
class TrainingBatch:
    """One synthesised batch: float32 NCHW in [0, 1], all at the training size."""

    foreground: torch.Tensor  # F
    background: torch.Tensor  # B, the complete background
    alpha: torch.Tensor  # A, the true matte
    source: torch.Tensor  # A*F + (1-A)*O: the photo as taken
    imperfect_alpha: torch.Tensor  # A degraded as a matting network would
    band: torch.Tensor  # 1 in the boundary band, 0 elsewhere
    shifted_foreground: torch.Tensor  # transfer(F): F with another photo's colour statistics
    harmonization_input: torch.Tensor  # A*transfer(F) + (1-A)*B
    target: torch.Tensor  # A*F + (1-A)*B

    def map(self, function) -> TrainingBatch:
        """A batch with ``function`` applied to every field's tensor."""
        return TrainingBatch(**{f.name: function(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: str | torch.device) -> TrainingBatch:
        return self.map(lambda tensor: tensor.to(device))

    def select(self, index: int) -> TrainingBatch:
        """Sample ``index`` as a batch of one."""
        return self.map(lambda tensor: tensor[index : index + 1])

    def linear_blend(self) -> torch.Tensor:
        """Linear blending of the source with the imperfect matte: what the blending net improves on."""
        return linear_composite(self.source, self.imperfect_alpha, self.background)

    def __len__(self) -> int:
        return self.target.shape[0]


def to_tensor(crop: np.ndarray, size: int) -> torch.Tensor:
    """uint8 HxWxC crop -> float [C, size, size], resized with antialiasing."""
    tensor = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div_(255.0)[None]
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return tensor[0].clamp_(0.0, 1.0)


def random_box(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int, int]:
    """(top, left, side) of a random square crop of an image of ``shape``."""
    short = min(shape[:2])
    side = max(1, int(round(short * rng.uniform(*CROP_SCALE))))
    return int(rng.integers(0, shape[0] - side + 1)), int(rng.integers(0, shape[1] - side + 1)), side


def crop(image: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    top, left, side = box
    return image[top : top + side, left : left + side]


def _smooth_noise(batch: int, size: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    """Band-limited noise [B, 1, size, size] with about ``cells`` bumps across, unit-ish amplitude."""
    coarse = torch.randn(batch, 1, cells, cells, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def portrait_mattes(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Soft portrait-like mattes [B, 1, size, size]: head, neck and shoulders, hair-like soft top.

    Each shape is a union of ellipses as an approximate signed distance, its outline made wavy by
    smooth noise; the edge is a sigmoid whose width is a pixel or two on the body and several
    pixels with strand-like noise on the upper head, where real mattes hold hair.
    """

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(batch, 1, 1, 1, generator=generator))

    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = axis.view(1, 1, size, 1), axis.view(1, 1, 1, size)

    def ellipse_distance(cx, cy, rx, ry):
        radius = torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return (radius - 1.0) * torch.minimum(rx, ry)

    head_x, head_y = uniform(0.35, 0.65), uniform(0.22, 0.42)
    head_rx = uniform(0.11, 0.19)
    head_ry = head_rx * uniform(1.15, 1.4)
    body_rx, body_ry = uniform(0.28, 0.48), uniform(0.3, 0.45)
    body_x = head_x + uniform(-0.06, 0.06)
    body_y = head_y + head_ry + body_ry * uniform(0.75, 0.95)
    neck = ellipse_distance(head_x, head_y + head_ry, head_rx * 0.55, head_ry * 0.6)
    distance = torch.minimum(torch.minimum(ellipse_distance(head_x, head_y, head_rx, head_ry), neck),
                             ellipse_distance(body_x, body_y, body_rx, body_ry))
    distance = distance + 0.015 * _smooth_noise(batch, size, 6, generator)

    # Hair: the upper half of the head gets wide, strand-textured edges (noise stretched vertically).
    hair = torch.sigmoid((head_y - y) / 0.03) * torch.exp(-((x - head_x) / (head_rx * 1.3)) ** 2)
    strands = F.interpolate(torch.randn(batch, 1, max(2, size // 32), max(2, size // 3), generator=generator),
                            size=(size, size), mode="bicubic", align_corners=False)
    hair_px = uniform(2.0, 8.0) * size / 256
    distance = distance + hair * strands * hair_px / size
    edge_px = uniform(0.5, 1.5) * size / 256 + hair * hair_px
    alpha = torch.sigmoid(-distance * size / edge_px * 2.0)
    # Exact 0 and 1 away from the edge, as real mattes have.
    return torch.where(alpha < 0.01, torch.zeros_like(alpha), torch.where(alpha > 0.99, torch.ones_like(alpha), alpha))


def boundary_band(alpha: torch.Tensor, radius: int) -> torch.Tensor:
    """1 where dilation and erosion of ``alpha`` by ``radius`` pixels differ (the unknown region)."""
    return ((dilate(alpha, radius) - erode(alpha, radius)) > 0.01).float()


def band_radius(size: int) -> int:
    """Boundary-band radius in pixels: 1/32 of the side (8 px at 256, 16 px at 512)."""
    return max(1, size // 32)


def imperfect_mattes(alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Degrade true mattes as a matting network errs: eroded or dilated, blurred, noised at the edge."""
    size = alpha.shape[-1]
    max_radius = max(1, size // 64)
    degraded = []
    for index in range(alpha.shape[0]):
        matte = alpha[index : index + 1]
        radius = int(torch.randint(1, max_radius + 1, (1,), generator=generator))
        matte = dilate(matte, radius) if torch.rand(1, generator=generator) < 0.5 else erode(matte, radius)
        blur = int(torch.randint(0, max_radius + 1, (1,), generator=generator))
        if blur:
            matte = F.avg_pool2d(matte, 2 * blur + 1, stride=1, padding=blur, count_include_pad=False)
        degraded.append(matte)
    matte = torch.cat(degraded)
    edge = boundary_band(alpha, 2 * max_radius)
    noise = 0.08 * torch.rand(alpha.shape[0], 1, 1, 1, generator=generator) * _smooth_noise(alpha.shape[0], size, 16, generator)
    return (matte + edge * noise).clamp(0.0, 1.0)


class CompositeSynthesizer:
    """Synthesises ``TrainingBatch``es from photo groups (and optionally real mattes).

    Args:
        groups: photos per group, uint8 HxWx3, at least two groups.
        size: training side in pixels (square crops), a multiple of 32.
        mattes: optional real mattes, one uint8 HxW per photo of ``groups`` (a matting set: the photo
            is the foreground ``F`` and its matte ``A``); without them mattes are synthesised.
        seed: seeds both the numpy crop choices and the torch generator.
        flips: random horizontal flips of the foreground (with its matte) and of the background.
    """

    def __init__(
        self,
        groups: list[list[np.ndarray]],
        size: int,
        mattes: list[list[np.ndarray]] | None = None,
        seed: int = 0,
        flips: bool = True,
    ):
        if len(groups) < 2:
            raise DataError(f"synthesis needs at least 2 photo groups (foreground and another background), got {len(groups)}")
        if size % 32:
            raise ValueError(f"training size must be a multiple of 32, got {size}")
        self.groups, self.mattes, self.size, self.flips = groups, mattes, size, flips
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def _other_group(self, group: int) -> list[np.ndarray]:
        other = int(self.rng.integers(0, len(self.groups) - 1))
        return self.groups[other + (other >= group)]

    def _pick(self, photos: list[np.ndarray]) -> np.ndarray:
        return photos[int(self.rng.integers(0, len(photos)))]

    def _sample_crops(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(F, B, O, colour reference, real matte or None) for one sample."""
        group = int(self.rng.integers(0, len(self.groups)))
        photos = self.groups[group]
        index = int(self.rng.integers(0, len(photos)))
        # F and B from two photos of the group when it has several, else two crops of one photo.
        other_index = index if len(photos) == 1 else (index + 1 + int(self.rng.integers(0, len(photos) - 1))) % len(photos)
        foreground_box = random_box(photos[index].shape, self.rng)
        foreground = to_tensor(crop(photos[index], foreground_box), self.size)
        matte = None
        if self.mattes is not None:
            matte = to_tensor(crop(self.mattes[group][index][..., None], foreground_box), self.size)
        background = to_tensor(crop(photos[other_index], random_box(photos[other_index].shape, self.rng)), self.size)
        original = self._pick(self._other_group(group))
        original = to_tensor(crop(original, random_box(original.shape, self.rng)), self.size)
        reference = self._pick(self._other_group(group))
        reference = to_tensor(crop(reference, random_box(reference.shape, self.rng)), self.size)
        return foreground, background, original, reference, matte

    def batch(self, batch_size: int) -> TrainingBatch:
        """The next ``batch_size`` samples."""
        samples = [self._sample_crops() for _ in range(batch_size)]
        foreground, background, original, reference = (torch.stack([s[i] for s in samples]) for i in range(4))
        if self.mattes is not None:
            alpha = torch.stack([s[4] for s in samples])
        else:
            alpha = portrait_mattes(batch_size, self.size, self.generator)
        if self.flips:
            flip = torch.rand(batch_size, generator=self.generator) < 0.5
            foreground[flip], alpha[flip] = foreground[flip].flip(-1), alpha[flip].flip(-1)
            flip = torch.rand(batch_size, generator=self.generator) < 0.5
            background[flip] = background[flip].flip(-1)
        return compose_batch(foreground, background, original, reference, alpha, self.generator)


def compose_batch(
    foreground: torch.Tensor,
    background: torch.Tensor,
    original: torch.Tensor,
    reference: torch.Tensor,
    alpha: torch.Tensor,
    generator: torch.Generator,
) -> TrainingBatch:
    """Build every network input and target from F, B, O, a colour reference and the true matte."""
    size = alpha.shape[-1]
    shifted = reinhard_transfer(foreground, reference, image_weights=alpha)
    return TrainingBatch(
        foreground=foreground,
        background=background,
        alpha=alpha,
        source=linear_composite(foreground, alpha, original),
        imperfect_alpha=imperfect_mattes(alpha, generator),
        band=boundary_band(alpha, band_radius(size)),
        shifted_foreground=shifted,
        harmonization_input=linear_composite(shifted, alpha, background),
        target=linear_composite(foreground, alpha, background),
    )


def crop_around_band(batch: TrainingBatch, crop: int, generator: torch.Generator) -> TrainingBatch:
    """A ``crop`` x ``crop`` window of every sample, centred on a random pixel of its boundary band.

    Blending only changes pixels near the matte's edge; training on windows around it spends the
    compute where the loss is, at the same pixel scale as the full synthesised image.
    """
    size = batch.target.shape[-1]
    if crop >= size:
        return batch
    windows = []
    for index in range(len(batch)):
        band = batch.band[index, 0].flatten()
        weights = band if band.sum() > 0 else torch.ones_like(band)
        centre = int(torch.multinomial(weights, 1, generator=generator))
        row, column = divmod(centre, size)
        top = min(max(row - crop // 2, 0), size - crop)
        left = min(max(column - crop // 2, 0), size - crop)
        windows.append((top, left))
    return batch.map(lambda tensor: torch.stack([tensor[i, :, t : t + crop, l : l + crop] for i, (t, l) in enumerate(windows)]))


def fixed_batches(synthesizer: CompositeSynthesizer, count: int, batch_size: int) -> list[TrainingBatch]:
    """``count`` samples drawn once (validation and evaluation sets: the same every time for one seed)."""
    batches, left = [], count
    while left > 0:
        batches.append(synthesizer.batch(min(batch_size, left)))
        left -= batch_size
    return batches
