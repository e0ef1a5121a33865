"""Training data synthesis after Xing et al. (ACM MM 2022, section 4.1), on batches in torch.

Harmony is a shared *tone*, never shared content: the paper puts a person from one photo of a
PPR10K group over another photo of that group, harmonious because one retoucher gave the group one
tone. One sample here is:

* a foreground ``F`` and its matte ``A``: a person (a photo of people with the published MODNet's
  matte, augmented hard) or, where the photos hold no people, a portrait-shaped cut-out (head,
  neck, shoulders, soft hair-like top) of a photo; a real matte where the data is a matting set;
* a complete background ``B``: a crop of *another* photo, so the foreground keeps its own colours;
* one random photographic tone ``T`` (``random_tones``: exposure, white balance temperature and
  tint, gamma, contrast, saturation, split toning) given to both: the harmonious target is
  ``A*T(F) + (1-A)*T(B)``, the target of both networks;
* the *source photo* ``A*T(F) + (1-A)*O`` over a crop ``O`` of a third photo (a real object
  boundary), and the blending input: the source with an imperfect matte (``A`` eroded or
  dilated, blurred and noised), and the boundary band where blending is judged;
* the harmonization input ``A*F' + (1-A)*T(B)``, of one of three kinds (``KINDS``): the paper's
  shift (``F' =`` Reinhard transfer of ``T(F)`` toward a random other photo), another tone
  (``F' = T2(F)``, an independent random tone) or already harmonious (``F' = T(F)``: the input
  is its own target).

Crops are cut in numpy (cheap slicing); resizing, mattes, tones, morphology and colour transfer run
on the whole batch in torch, so synthesis costs a small fraction of a training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from compositor.networks.colour import reinhard_transfer
from compositor.networks.layers import dilate, erode, linear_composite
from compositor.training.readers import DataError

CROP_SCALE = (0.5, 1.0)
"""Side of a square crop, as a fraction of the photo's short side."""


KINDS = ("paper_shift", "another_tone", "harmonious")
"""The kinds of harmonization input, in the order of ``TrainingBatch.kind``'s codes."""
DEFAULT_KIND_SHARES = (0.4, 0.3, 0.3)
"""Shares of the kinds in training batches: a harmonizer must learn *when* to act, so a third of
its inputs need nothing done."""


@dataclass
class TrainingBatch:
    """One synthesised batch: float32 NCHW in [0, 1], all at the training size."""

    foreground: torch.Tensor  # T(F): the foreground in the harmonious tone
    background: torch.Tensor  # T(B), the complete background
    alpha: torch.Tensor  # A, the true matte
    source: torch.Tensor  # A*T(F) + (1-A)*O: the photo as taken
    imperfect_alpha: torch.Tensor  # A degraded as a matting network would
    band: torch.Tensor  # 1 in the boundary band, 0 elsewhere
    shifted_foreground: torch.Tensor  # F': the foreground as the harmonization input has it
    harmonization_input: torch.Tensor  # A*F' + (1-A)*T(B)
    target: torch.Tensor  # A*T(F) + (1-A)*T(B)
    kind: torch.Tensor | None = None  # [B] int64, an index into KINDS (None: unknown, e.g. iHarmony4)

    def map(self, function) -> TrainingBatch:
        """A batch with ``function`` applied to every field's tensor."""
        return TrainingBatch(**{f.name: None if getattr(self, f.name) is None else function(getattr(self, f.name)) for f in fields(self)})

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


# --- Tones ------------------------------------------------------------------------------------------

TONE_PARAMETERS = ("exposure", "temperature", "tint", "log_gamma", "log_contrast", "log_saturation",
                   "shadow_x", "shadow_y", "highlight_x", "highlight_y")
"""One tone per row of a [B, 10] tensor; all zeros is the identity."""
# Opponent colour axes of split toning (red-cyan, green-magenta), unit length in RGB.
_SPLIT_AXES = torch.tensor([[2.0, -1.0, -1.0], [0.0, 1.0, -1.0]]) / torch.tensor([[math.sqrt(6.0)], [math.sqrt(2.0)]])


def random_tones(batch: int, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random photographic tones, [B, 10] (``TONE_PARAMETERS``), as a retoucher's sliders would give.

    Exposure within +-0.6 stop, white balance temperature within +-0.3 and tint within +-0.12 (log
    gains), gamma and contrast within a factor exp(+-0.3), saturation within exp(-0.5 .. 0.4), split
    toning of shadows and highlights up to 0.08 of full scale in a random hue; ``strength`` scales all.
    """

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    def split_tone() -> list[torch.Tensor]:
        amount, hue = uniform(0.0, 0.08), uniform(0.0, 2 * math.pi)
        return [amount * torch.cos(hue), amount * torch.sin(hue)]

    columns = [uniform(-0.6, 0.6), uniform(-0.3, 0.3), uniform(-0.12, 0.12), uniform(-0.3, 0.3), uniform(-0.3, 0.3),
               uniform(-0.5, 0.4), *split_tone(), *split_tone()]
    return strength * torch.stack(columns, dim=1)


def apply_tone(images: torch.Tensor, tones: torch.Tensor) -> torch.Tensor:
    """Retouch sRGB ``images`` [B, 3, H, W] in [0, 1] with ``tones`` [B, 10], one per image.

    In the order a raw converter and a retoucher apply them: exposure and white balance as gains in
    linear light (highlights clip), then on the sRGB values a gamma, contrast about mid-grey,
    saturation about the luma, and split toning (a colour added to shadows and another to highlights).
    """
    t = tones.to(images)[:, :, None, None]
    linear = torch.where(images > 0.04045, ((images + 0.055) / 1.055) ** 2.4, images / 12.92)
    gains = torch.exp(torch.cat([t[:, 1:2], t[:, 2:3], -t[:, 1:2]], dim=1)) * torch.exp2(t[:, 0:1])
    linear = (linear * gains).clamp(0.0, 1.0)
    x = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, 12.92 * linear)
    x = x.clamp(min=1e-6) ** torch.exp(t[:, 3:4])
    x = 0.5 + (x - 0.5) * torch.exp(t[:, 4:5])
    luma = 0.2126 * x[:, 0:1] + 0.7152 * x[:, 1:2] + 0.0722 * x[:, 2:3]
    x = luma + (x - luma) * torch.exp(t[:, 5:6])
    axes = _SPLIT_AXES.to(images)
    shadow = (t[:, 6:7] * axes[0].view(1, 3, 1, 1) + t[:, 7:8] * axes[1].view(1, 3, 1, 1))
    highlight = (t[:, 8:9] * axes[0].view(1, 3, 1, 1) + t[:, 9:10] * axes[1].view(1, 3, 1, 1))
    luma = luma.clamp(0.0, 1.0)
    return (x + (1.0 - luma) * shadow + luma * highlight).clamp(0.0, 1.0)


def random_kinds(batch: int, generator: torch.Generator, shares: tuple[float, ...] = DEFAULT_KIND_SHARES) -> torch.Tensor:
    """[B] int64 codes of ``KINDS`` drawn with ``shares``."""
    return torch.multinomial(torch.tensor(shares, dtype=torch.float32), batch, replacement=True, generator=generator)


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


@dataclass
class RawSamples:
    """What one batch is made of before the kinds are chosen (evaluation composes all three from one)."""

    foreground: torch.Tensor  # F, in its photo's own tone
    background: torch.Tensor  # B, from another photo
    original: torch.Tensor  # O, the source photo's own background
    reference: torch.Tensor  # a crop of another photo: the paper's shift moves F's statistics to it
    alpha: torch.Tensor
    tone: torch.Tensor  # T, shared by the harmonious target's foreground and background
    other_tone: torch.Tensor  # T2, the "another tone" input's


class CompositeSynthesizer:
    """Synthesises ``TrainingBatch``es from photo groups, people cut-outs and (optionally) real mattes.

    Args:
        groups: photos per group, uint8 HxWx3, at least three groups (foreground, background, original).
        size: training side in pixels (square crops), a multiple of 32.
        mattes: optional real mattes, one uint8 HxW per photo of ``groups`` (a matting set: every
            foreground is a photo of it under its matte); without them foregrounds are ``people`` or
            portrait-shaped cut-outs.
        people: (photo, matte) pairs of people: foregrounds with a real matte, ``people_share`` of the time.
        people_share: probability that a foreground is one of ``people`` (when there are any).
        kind_shares: shares of ``KINDS`` among the harmonization inputs.
        seed: seeds both the numpy crop choices and the torch generator.
        flips: random horizontal flips and, for people, random zoom-outs and placement.
    """

    def __init__(
        self,
        groups: list[list[np.ndarray]],
        size: int,
        mattes: list[list[np.ndarray]] | None = None,
        seed: int = 0,
        flips: bool = True,
        people: list[tuple[np.ndarray, np.ndarray]] | None = None,
        people_share: float = 0.5,
        kind_shares: tuple[float, ...] = DEFAULT_KIND_SHARES,
    ):
        if len(groups) < 2:
            raise DataError(f"synthesis needs at least 2 photo groups (foreground and another background), got {len(groups)}")
        if size % 32:
            raise ValueError(f"training size must be a multiple of 32, got {size}")
        self.groups, self.mattes, self.size, self.flips = groups, mattes, size, flips
        self.people, self.people_share, self.kind_shares = people or [], people_share, kind_shares
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def _other_group(self, *groups: int) -> list[np.ndarray]:
        choices = [g for g in range(len(self.groups)) if g not in groups] or [g for g in range(len(self.groups)) if g != groups[0]]
        return self.groups[choices[int(self.rng.integers(0, len(choices)))]]

    def _pick(self, photos: list[np.ndarray]) -> np.ndarray:
        return photos[int(self.rng.integers(0, len(photos)))]

    def _crop(self, photos: list[np.ndarray]) -> torch.Tensor:
        photo = self._pick(photos)
        return to_tensor(crop(photo, random_box(photo.shape, self.rng)), self.size)

    def _person(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A person and their matte, cropped (70-100% of the short side), and with ``flips`` zoomed
        out to 60-100% of the frame at a random place, so few photos give many framings."""
        photo, matte = self.people[int(self.rng.integers(0, len(self.people)))]
        short = min(photo.shape[:2])
        side = int(round(short * self.rng.uniform(0.7, 1.0)))
        box = (int(self.rng.integers(0, photo.shape[0] - side + 1)), int(self.rng.integers(0, photo.shape[1] - side + 1)), side)
        scale = self.rng.uniform(0.6, 1.0) if self.flips else 1.0
        inner = max(32, int(round(self.size * scale)))
        foreground = to_tensor(crop(photo, box), inner)
        alpha = to_tensor(crop(matte[..., None], box), inner)
        if inner < self.size:
            top = self.size - inner  # standing on the frame's bottom edge, as portraits do
            left = int(self.rng.integers(0, self.size - inner + 1))
            pad = (left, self.size - inner - left, top, self.size - inner - top)
            foreground, alpha = F.pad(foreground, pad, mode="replicate"), F.pad(alpha, pad)
        return foreground, alpha

    def _sample_crops(self) -> tuple[torch.Tensor, ...]:
        """(F, B, O, colour reference, matte or None) for one sample: each from a different photo group."""
        group = int(self.rng.integers(0, len(self.groups)))
        matte = None
        if self.mattes is not None:
            index = int(self.rng.integers(0, len(self.groups[group])))
            photo = self.groups[group][index]
            box = random_box(photo.shape, self.rng)
            foreground = to_tensor(crop(photo, box), self.size)
            matte = to_tensor(crop(self.mattes[group][index][..., None], box), self.size)
        elif self.people and self.rng.uniform() < self.people_share:
            foreground, matte = self._person()
        else:
            foreground = self._crop(self.groups[group])
        background_group = self._other_group(group)
        background = self._crop(background_group)
        original = self._crop(self._other_group(group))
        reference = self._crop(self._other_group(group))
        return foreground, background, original, reference, matte

    def raw(self, batch_size: int) -> RawSamples:
        """The next ``batch_size`` samples before their kinds are chosen."""
        samples = [self._sample_crops() for _ in range(batch_size)]
        foreground, background, original, reference = (torch.stack([s[i] for s in samples]) for i in range(4))
        alpha = portrait_mattes(batch_size, self.size, self.generator)
        for index, sample in enumerate(samples):
            if sample[4] is not None:
                alpha[index] = sample[4]
        if self.flips:
            flip = torch.rand(batch_size, generator=self.generator) < 0.5
            foreground[flip], alpha[flip] = foreground[flip].flip(-1), alpha[flip].flip(-1)
            flip = torch.rand(batch_size, generator=self.generator) < 0.5
            background[flip] = background[flip].flip(-1)
        tone = random_tones(batch_size, self.generator)
        other_tone = random_tones(batch_size, self.generator)
        return RawSamples(foreground, background, original, reference, alpha, tone, other_tone)

    def batch(self, batch_size: int, kind: int | None = None) -> TrainingBatch:
        """The next ``batch_size`` samples, of input kinds drawn with ``kind_shares`` (or all ``kind``)."""
        raw = self.raw(batch_size)
        if kind is None:
            kinds = random_kinds(batch_size, self.generator, self.kind_shares)
        else:
            kinds = torch.full((batch_size,), kind, dtype=torch.int64)
        return compose_batch(raw, kinds, self.generator)


def harmonization_foregrounds(raw: RawSamples, kinds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T(F), F'): the harmonious foreground and the input's, per sample of ``kinds``."""
    toned = apply_tone(raw.foreground, raw.tone)
    shifted = toned.clone()
    paper = kinds == KINDS.index("paper_shift")
    if paper.any():
        shifted[paper] = reinhard_transfer(toned[paper], raw.reference[paper], image_weights=raw.alpha[paper])
    another = kinds == KINDS.index("another_tone")
    if another.any():
        shifted[another] = apply_tone(raw.foreground[another], raw.other_tone[another])
    return toned, shifted


def compose_batch(raw: RawSamples, kinds: torch.Tensor, generator: torch.Generator) -> TrainingBatch:
    """Build every network input and target of ``raw`` with harmonization inputs of ``kinds``."""
    alpha = raw.alpha
    size = alpha.shape[-1]
    foreground, shifted = harmonization_foregrounds(raw, kinds)
    background = apply_tone(raw.background, raw.tone)
    return TrainingBatch(
        foreground=foreground,
        background=background,
        alpha=alpha,
        source=linear_composite(foreground, alpha, raw.original),
        imperfect_alpha=imperfect_mattes(alpha, generator),
        band=boundary_band(alpha, band_radius(size)),
        shifted_foreground=shifted,
        harmonization_input=linear_composite(shifted, alpha, background),
        target=linear_composite(foreground, alpha, background),
        kind=kinds,
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
    return batch.map(lambda tensor: tensor if tensor.ndim < 4 else
                     torch.stack([tensor[i, :, t : t + crop, l : l + crop] for i, (t, l) in enumerate(windows)]))


def fixed_batches(synthesizer: CompositeSynthesizer, count: int, batch_size: int) -> list[TrainingBatch]:
    """``count`` samples drawn once (validation and evaluation sets: the same every time for one seed)."""
    batches, left = [], count
    while left > 0:
        batches.append(synthesizer.batch(min(batch_size, left)))
        left -= batch_size
    return batches
