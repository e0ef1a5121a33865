"""The tensor contract: names, dtypes, shapes, dynamic axes and TensorRT profiles, defined once.

Export, model-repository generation, the Python-backend models and the client all import this
module, so a tensor name is never typed twice. Shapes use ``-1`` for a dynamic dimension, as
Triton's ``config.pbtxt`` does; the batch dimension is always first and always dynamic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

DEFAULT_RESOLUTION = (512, 512)
"""Network resolution (height, width) of a deployment; requests of any size are resized to it."""

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
            ``"H"``/``"W"`` mark the network resolution, fixed per deployment.
    """

    name: str
    dtype: str
    shape: tuple

    def resolved_shape(self, resolution: tuple[int, int]) -> tuple[int, ...]:
        """Shape without batch, with ``H``/``W`` replaced by the network resolution."""
        height, width = resolution
        return tuple(height if d == "H" else width if d == "W" else d for d in self.shape)


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


def parse_resolution(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """Parse ``"512"``, ``"256x384"`` (height x width), an int or a tuple into (height, width).

    Raises:
        ValueError: if the text is malformed or a side is not a positive multiple of 32.
    """
    if isinstance(text, tuple):
        height, width = text
    elif isinstance(text, int):
        height = width = text
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
        if not match:
            raise ValueError(f"resolution {text!r} is not N or HxW (e.g. 512 or 256x384)")
        height = int(match.group(1))
        width = int(match.group(2)) if match.group(2) else height
    for side in (height, width):
        if side <= 0 or side % RESOLUTION_MULTIPLE:
            raise ValueError(
                f"resolution {height}x{width}: each side must be a positive multiple of "
                f"{RESOLUTION_MULTIPLE} (the networks downsample by 32)"
            )
    return int(height), int(width)


def format_resolution(resolution: tuple[int, int]) -> str:
    """``(256, 384)`` -> ``"256x384"``."""
    return f"{resolution[0]}x{resolution[1]}"


def dynamic_axes(model: ModelSpec) -> dict[str, dict[int, str]]:
    """ONNX ``dynamic_axes``: the batch dimension of every input and output, nothing else."""
    return {t.name: {0: "batch"} for t in model.inputs + model.outputs}


@dataclass(frozen=True)
class Profile:
    """A TensorRT optimisation profile for one input: full shapes including batch."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def optimal_batch(max_batch: int) -> int:
    """Batch size the TensorRT profile optimises for: what the dynamic batcher forms under load."""
    return max(1, min(max_batch, 4))


def tensorrt_profiles(
    model: ModelSpec, resolution: tuple[int, int], max_batch: int = DEFAULT_MAX_BATCH
) -> dict[str, Profile]:
    """Optimisation profile per input of a network: batch 1..max_batch, the spatial size fixed."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    profiles = {}
    for tensor in model.inputs:
        shape = tensor.resolved_shape(resolution)
        profiles[tensor.name] = Profile(
            min=(1, *shape), opt=(optimal_batch(max_batch), *shape), max=(max_batch, *shape)
        )
    return profiles
