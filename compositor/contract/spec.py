"""The tensor contract: names, dtypes, shapes, dynamic axes and TensorRT profiles, defined once.

Export, model-repository generation, the Python-backend models and the client all import this
module, so a tensor name is never typed twice. Shapes use ``-1`` for a dynamic dimension, as
Triton's ``config.pbtxt`` does; the batch dimension is always first and always dynamic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

DEFAULT_SHORT_SIDE = 512
"""Short side of the default deployment's aspect buckets (``DEFAULT_RESOLUTION``): MODNet's reference size."""

DEFAULT_MAX_BATCH = 8
"""Largest batch the network models accept (Triton ``max_batch_size``, TensorRT profile max)."""

RESOLUTION_MULTIPLE = 32
"""Network resolutions must be multiples of this: MODNet and both U-Nets downsample 5 times."""

MAX_IMAGE_SIDE = 8192
"""Largest accepted source or background side in pixels (the image-size limit, enforced everywhere)."""


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor.

    Attributes:
        name: the tensor name in ONNX graphs, TensorRT engines, Triton configs and client requests.
        dtype: numpy dtype name (``float32``, ``uint8``).
        shape: shape without the batch dimension; ``-1`` marks a dynamic dimension and the strings
            ``"H"``/``"W"`` mark the network height and width: one of the deployment's aspect
            buckets (``Resolution``), dynamic in graphs and configs.
    """

    name: str
    dtype: str
    shape: tuple

    def resolved_shape(self, size: tuple[int, int]) -> tuple[int, ...]:
        """Shape without batch, with ``H``/``W`` replaced by ``size`` (height, width): one bucket."""
        height, width = size
        return tuple(height if d == "H" else width if d == "W" else d for d in self.shape)

    def dynamic_shape(self) -> tuple[int, ...]:
        """Shape without batch, ``H``/``W`` as ``-1``: what Triton configs declare (any bucket)."""
        return self.resolved_shape((-1, -1))

    def spatial_axes(self) -> dict[int, str]:
        """Axes (counting the batch as 0) that hold the network height and width, by ONNX axis name."""
        names = {"H": HEIGHT_AXIS, "W": WIDTH_AXIS}
        return {index + 1: names[d] for index, d in enumerate(self.shape) if d in names}


@dataclass(frozen=True)
class ModelSpec:
    """Inputs and outputs of one model (a network or a pipeline stage)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def _f32(name: str, channels: int) -> TensorSpec:
    return TensorSpec(name, "float32", (channels, "H", "W"))


# --- The three networks: FP32 NCHW images in [0, 1] at the network resolution. ---------------
MATTING = ModelSpec("matting", inputs=(_f32("image", 3),), outputs=(_f32("alpha", 1),))
BLENDING = ModelSpec(
    "blending",
    inputs=(_f32("source", 3), _f32("alpha", 1), _f32("background", 3)),
    outputs=(_f32("blended", 3), _f32("refined_alpha", 1)),
)
"""``refined_alpha`` is the matte the blending net actually composited with (its edge correction
applied; the input matte itself for a net without one): harmonization and post-processing use it."""
HARMONIZATION = ModelSpec(
    "harmonization",
    inputs=(_f32("composite", 3), _f32("mask", 1), _f32("background", 3)),
    outputs=(_f32("harmonized", 3),),
)
NETWORKS: dict[str, ModelSpec] = {m.name: m for m in (MATTING, BLENDING, HARMONIZATION)}

# --- The ensembles: UINT8 NHWC frames of any size, as a client sends and receives them. --------
COMPOSITE = ModelSpec(
    "composite",
    inputs=(
        TensorSpec("source", "uint8", (-1, -1, 3)),
        TensorSpec("background", "uint8", (-1, -1, 3)),
    ),
    outputs=(
        TensorSpec("alpha", "uint8", (-1, -1, 1)),
        TensorSpec("blended", "uint8", (-1, -1, 3)),
        TensorSpec("harmonized", "uint8", (-1, -1, 3)),
    ),
)
COMPOSITE_WITH_ALPHA = ModelSpec(
    "composite_with_alpha",
    inputs=COMPOSITE.inputs + (TensorSpec("alpha", "uint8", (-1, -1, 1)),),
    outputs=COMPOSITE.outputs[1:],
)
ENSEMBLES: dict[str, ModelSpec] = {m.name: m for m in (COMPOSITE, COMPOSITE_WITH_ALPHA)}


# --- The chain: which network feeds which input, declared once. ---------------------------------
# Chain tensors live at the network resolution: ``source`` and ``background`` come from
# preprocessing; every step adds its network's outputs under the chain names it declares. The eager and
# ONNX Runtime pipelines, the Triton ensembles, the export parity feeds and the benchmarks all walk
# this table; nothing else says which network feeds which.


@dataclass(frozen=True)
class ChainStep:
    """One network in the chain.

    Attributes:
        network: the network's name (a key of ``NETWORKS``).
        inputs: the network's input names, in spec order, mapped to the chain tensors they read.
        outputs: the chain tensors the network's outputs become, in the network's output order.
    """

    network: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[str, ...]

    def reads(self) -> tuple[str, ...]:
        """The chain tensors this step reads, in the network's input order."""
        return tuple(chain_tensor for _, chain_tensor in self.inputs)

    def writes(self) -> dict[str, str]:
        """The network's output names mapped to the chain tensors they become."""
        return dict(zip(NETWORKS[self.network].output_names(), self.outputs))


CHAIN_INPUTS = ("source", "background")
"""Chain tensors that preprocessing provides (``alpha`` too when the client brings a matte)."""

CHAIN: tuple[ChainStep, ...] = (
    ChainStep("matting", (("image", "source"),), ("alpha",)),
    ChainStep(
        "blending", (("source", "source"), ("alpha", "alpha"), ("background", "background")), ("blended", "refined_alpha")
    ),
    ChainStep(
        "harmonization",
        (("composite", "blended"), ("mask", "refined_alpha"), ("background", "background")),
        ("harmonized",),
    ),
)
"""matting -> blending -> harmonization. A step whose outputs are already given (a client's matte)
is skipped. Harmonization takes the matte blending corrected, the one its input was composited with."""


def chain_steps(given: Iterable[str] = CHAIN_INPUTS) -> tuple[ChainStep, ...]:
    """The steps that run when the chain tensors ``given`` are provided: those whose outputs are not."""
    given = set(given)
    return tuple(step for step in CHAIN if not given.issuperset(step.outputs))


def run_chain(run_network: Callable[..., T | tuple[T, ...]], tensors: Mapping[str, T]) -> dict[str, T]:
    """Walk the chain: ``run_network(name, *inputs)`` for each step whose outputs are not in ``tensors``.

    ``run_network`` returns a network's one output, or a tuple (list) of its outputs in spec order.
    Returns every chain tensor, the given ones included, by chain name.
    """
    values = dict(tensors)
    for step in chain_steps(values):
        result = run_network(step.network, *(values[name] for name in step.reads()))
        results = tuple(result) if isinstance(result, (tuple, list)) else (result,)
        if len(results) != len(step.outputs):
            raise ValueError(f"{step.network} returned {len(results)} outputs, the chain expects {step.outputs}")
        values.update(zip(step.outputs, results))
    return values


def network_feeds(tensors: Mapping[str, T]) -> dict[str, dict[str, T]]:
    """Each network's inputs, by its own input names, taken from the chain tensors (after ``run_chain``)."""
    return {step.network: {name: tensors[source] for name, source in step.inputs} for step in CHAIN}


ONNX_OPSET = 17
"""Lowest opset with LayerNormalization; TensorRT 10 and 11 parse it."""


# --- Network resolution: aspect buckets -------------------------------------------------------
# MODNet's reference inference keeps a photo's proportions (short side 512, both sides floored to
# multiples of 32); squashing a 3:2 frame into a square opens holes in the matte of dark clothes.
# Arbitrary sizes would keep the proportions exactly but defeat Triton's dynamic batcher (it only
# stacks requests of equal shapes) and TensorRT's tuning (one optimisation profile). So a
# deployment has a few buckets: its short side, and the long side of a few common aspect ratios.
# Preprocessing picks the bucket nearest a frame's aspect ratio; the batcher batches within one.

ASPECT_RATIOS = (1.0, 4 / 3, 3 / 2, 16 / 9)
"""Long side / short side of the aspect buckets (each ratio other than 1 landscape and portrait)."""

HEIGHT_AXIS = "height"
WIDTH_AXIS = "width"
"""ONNX names of the dynamic spatial axes of every network tensor (``dynamic_axes``)."""


def _floor_multiple(side: float) -> int:
    """``side`` floored to a multiple of ``RESOLUTION_MULTIPLE``, as MODNet's reference inference does."""
    return int(side) - int(side) % RESOLUTION_MULTIPLE


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(side) for side in size)
    for side in (height, width):
        if side <= 0 or side % RESOLUTION_MULTIPLE:
            raise ValueError(
                f"resolution {height}x{width}: each side must be a positive multiple of "
                f"{RESOLUTION_MULTIPLE} (the networks downsample by 32)"
            )
    return height, width


@dataclass(frozen=True)
class Resolution:
    """A deployment's network resolution: the bucket sizes the networks run at.

    Two kinds, as ``--resolution`` spells them (``parse_resolution``):

    * ``N`` (``aspect_buckets``): aspect buckets with short side ``N``: ``NxN`` and, landscape and
      portrait, each ratio of ``ASPECT_RATIOS`` with the long side ``N * ratio`` floored to a
      multiple of 32 (MODNet's reference sizing: at 512, 3:2 is 512x768 and 16:9 512x896).
      Buckets that coincide at a small ``N`` appear once.
    * ``HxW`` (``fixed_resolution``): one fixed size; every frame is resized to it whatever its
      proportions (the behaviour before aspect buckets, e.g. for a deployment tuned at one size).

    Attributes:
        buckets: (height, width) of every bucket, the reference first (see ``reference``).
        fixed: True for one explicit ``HxW``.
    """

    buckets: tuple[tuple[int, int], ...]
    fixed: bool = False

    def __post_init__(self) -> None:
        buckets = tuple(_check_size(size) for size in self.buckets)
        if not buckets or len(set(buckets)) != len(buckets):
            raise ValueError(f"a resolution needs distinct buckets, got {list(self.buckets)}")
        if self.fixed and len(buckets) != 1:
            raise ValueError(f"a fixed resolution has one size, got {list(buckets)}")
        object.__setattr__(self, "buckets", buckets)

    def __str__(self) -> str:
        """How ``--resolution`` spells it: ``"512"`` (aspect buckets) or ``"256x384"`` (fixed)."""
        return format_size(self.reference) if self.fixed else str(min(self.reference))

    @property
    def reference(self) -> tuple[int, int]:
        """The square bucket (or the fixed size): where FLOPs are counted and TensorRT optimises."""
        return self.buckets[0]

    @property
    def min_size(self) -> tuple[int, int]:
        """Smallest height and smallest width over the buckets (the TensorRT profile's min)."""
        return min(h for h, _ in self.buckets), min(w for _, w in self.buckets)

    @property
    def max_size(self) -> tuple[int, int]:
        """Largest height and largest width over the buckets (the TensorRT profile's max).

        Portrait and landscape buckets together make it square (896x896 at 512); a profile is a
        box, so it must reach the tallest and the widest bucket both.
        """
        return max(h for h, _ in self.buckets), max(w for _, w in self.buckets)

    @property
    def widest(self) -> tuple[int, int]:
        """The bucket with the largest width / height (checked besides ``reference`` at export)."""
        return max(self.buckets, key=lambda size: size[1] / size[0])

    def bucket_for(self, height: int, width: int) -> tuple[int, int]:
        """The bucket whose aspect ratio is nearest that of a ``height`` x ``width`` frame.

        Nearest in log ratio, so a 4:3 frame is as far from 1:1 as a 3:4 one, and 2:1 as far from
        16:9 as 16:9 from 1.58:1. On a tie the earlier bucket (the square first) wins.
        """
        if height <= 0 or width <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height} (width x height)")
        aspect = math.log(width / height)
        return min(self.buckets, key=lambda size: abs(math.log(size[1] / size[0]) - aspect))

    def describe(self) -> str:
        """For people: ``"512 (aspect buckets 512x512, 512x672, ...)"`` or ``"256x384 (fixed)"``."""
        if self.fixed:
            return f"{self} (fixed)"
        return f"{self} (aspect buckets {', '.join(map(format_size, self.buckets))})"


def aspect_buckets(short_side: int) -> Resolution:
    """Aspect buckets with short side ``short_side`` (see ``Resolution``): square first, then
    landscape and portrait per ratio of ``ASPECT_RATIOS``.

    Raises:
        ValueError: ``short_side`` is not a positive multiple of 32.
    """
    _check_size((short_side, short_side))
    buckets: list[tuple[int, int]] = []
    for ratio in ASPECT_RATIOS:
        long_side = _floor_multiple(short_side * ratio)
        for size in ((short_side, long_side), (long_side, short_side)):
            if size not in buckets:
                buckets.append(size)
    return Resolution(tuple(buckets))


def fixed_resolution(height: int, width: int) -> Resolution:
    """One fixed network size (height, width); every frame is resized to it."""
    return Resolution(((height, width),), fixed=True)


DEFAULT_RESOLUTION = aspect_buckets(DEFAULT_SHORT_SIDE)
"""The default deployment: aspect buckets with short side 512."""


def parse_resolution(text: str | int | tuple[int, int] | Resolution) -> Resolution:
    """``"512"`` or ``512`` -> aspect buckets with short side 512; ``"256x384"`` (height x width)
    or ``(256, 384)`` -> that one fixed size; a ``Resolution`` -> itself.

    Raises:
        ValueError: if the text is malformed or a side is not a positive multiple of 32.
    """
    if isinstance(text, Resolution):
        return text
    if isinstance(text, (tuple, list)):
        height, width = text
        return fixed_resolution(int(height), int(width))
    if isinstance(text, int):
        return aspect_buckets(text)
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
    if not match:
        raise ValueError(f"resolution {text!r} is not N or HxW (e.g. 512 or 256x384)")
    if match.group(2) is None:
        return aspect_buckets(int(match.group(1)))
    return fixed_resolution(int(match.group(1)), int(match.group(2)))


def format_resolution(resolution: str | int | tuple[int, int] | Resolution) -> str:
    """How ``--resolution`` spells a resolution: ``"512"`` (aspect buckets), ``"256x384"`` (fixed)."""
    return str(parse_resolution(resolution))


def format_size(size: tuple[int, int]) -> str:
    """``(256, 384)`` -> ``"256x384"`` (height x width, as tensors are)."""
    return f"{size[0]}x{size[1]}"


def format_buckets(resolution: Resolution) -> str:
    """``"512x512,512x672,..."``: every bucket, height x width, comma-separated."""
    return ",".join(format_size(bucket) for bucket in resolution.buckets)


def dynamic_axes(model: ModelSpec) -> dict[str, dict[int, str]]:
    """ONNX ``dynamic_axes``: the batch of every input and output, and the height and width of every
    network image (the bucket)."""
    return {t.name: {0: "batch", **t.spatial_axes()} for t in model.inputs + model.outputs}


@dataclass(frozen=True)
class Profile:
    """A TensorRT optimisation profile for one input: full shapes including batch."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def optimal_batch(max_batch: int) -> int:
    """Batch size the TensorRT profile optimises for: what the dynamic batcher forms under load."""
    return max(1, min(max_batch, 4))


def profile_shapes(profiles: dict[str, Profile], which: str) -> str:
    """``which`` (``min``, ``opt`` or ``max``) of every input as trtexec and ONNX Runtime's TensorRT
    provider spell it: ``name:1x3x512x512,other:1x1x512x512``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in getattr(profile, which))}" for name, profile in profiles.items())


def tensorrt_profiles(
    model: ModelSpec, resolution: Resolution | str | int | tuple[int, int], max_batch: int = DEFAULT_MAX_BATCH
) -> dict[str, Profile]:
    """Optimisation profile per input of a network, covering every bucket of ``resolution``.

    ``min``: batch 1 at the smallest height and width of the buckets; ``max``: ``max_batch`` at the
    largest; ``opt``: ``optimal_batch`` at the reference (square) bucket. TensorRT picks kernels
    for ``opt`` and runs every shape in the box with them; the square bucket sits between the
    landscape and portrait ones (the same channels throughout, only the extent differs) and is the
    size every deployment has, so no bucket is favoured far from the others.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    resolution = parse_resolution(resolution)
    return {
        tensor.name: Profile(
            min=(1, *tensor.resolved_shape(resolution.min_size)),
            opt=(optimal_batch(max_batch), *tensor.resolved_shape(resolution.reference)),
            max=(max_batch, *tensor.resolved_shape(resolution.max_size)),
        )
        for tensor in model.inputs
    }
