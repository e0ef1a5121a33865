"""TensorRT readiness, checked on a CPU-only machine before any engine is built.

* every operator (and the type it computes in) is on TensorRT's documented ONNX list;
* Resize nodes use only modes TensorRT implements;
* dynamic batch, height and width only, static channels (``onnx_export.check_contract``);
* the optimisation profile agrees with the Triton config that will serve the engine and covers
  every aspect bucket the deployment's preprocessing produces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from compositor.errors import CompositorError
from compositor.contract import spec
from compositor.export.onnx_export import DYNAMIC_AXES, ExportError, check_contract
from compositor.export.trt_ops import check_operators

# From the Resize row of TensorRT's operator list (data/tensorrt_onnx_ops.txt's source).
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDINATE_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)


class ReadinessError(CompositorError, RuntimeError):
    """A graph or profile that TensorRT or Triton would reject."""


def check_tensorrt_readiness(model: onnx.ModelProto, name: str) -> dict:
    """All graph-level TensorRT checks for one exported network (FP32 or FP16 graph).

    Returns:
        a JSON-ready summary (operators used and the list version they were checked against).

    Raises:
        ReadinessError: naming unsupported operators or types, unsupported Resize modes, or I/O
            shapes other than the contract's (dynamic batch, height and width only).
    """
    operators = check_operators(model)
    problems = [f"operator {op} is not on TensorRT's list" for op in operators.unsupported]
    problems += [f"TensorRT does not support {op}" for op in operators.unsupported_types]
    problems += _resize_problems(model)
    try:
        check_contract(model, spec.NETWORKS[name])
    except ExportError as error:
        problems.append(str(error))
    if problems:
        raise ReadinessError(f"{name}: not ready for TensorRT: " + "; ".join(problems))
    return {**operators.as_dict(), "dynamic_dimensions": list(DYNAMIC_AXES), "resize_modes_supported": True}


def _resize_problems(model: onnx.ModelProto) -> list[str]:
    problems = []
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        mode = attributes.get("mode", b"nearest").decode()
        coordinates = attributes.get("coordinate_transformation_mode", b"half_pixel").decode()
        if mode not in RESIZE_MODES:
            problems.append(f"{node.name}: Resize mode {mode!r}")
        if coordinates not in RESIZE_COORDINATE_MODES:
            problems.append(f"{node.name}: Resize coordinate_transformation_mode {coordinates!r}")
        if attributes.get("antialias", 0):
            problems.append(f"{node.name}: antialiased Resize")
    return problems


def check_profile_against_triton(
    profiles: Mapping[str, spec.Profile],
    triton_dims: Mapping[str, Sequence[int]],
    max_batch: int,
    resolution: spec.Resolution | str | int | tuple[int, int],
) -> None:
    """Static shape check of a TensorRT optimisation profile against a Triton model config.

    Triton (``max_batch_size > 0``) sends batches of 1 .. ``max_batch_size`` of tensors shaped
    ``dims``, whose ``-1`` (height and width) preprocessing fills with one of the buckets of
    ``resolution``; the engine must accept exactly those: same input names, the static ``dims``
    (channels) in ``min``, ``opt`` and ``max``, batch 1 in ``min`` and ``max_batch_size`` in
    ``max``, ``opt`` within them, and every bucket within ``min`` .. ``max``.

    Raises:
        ReadinessError: listing every mismatch.
    """
    resolution = spec.parse_resolution(resolution)
    problems = []
    if max_batch < 1:
        problems.append(f"Triton max_batch_size {max_batch}: batching must be on (>= 1) for a batch-dynamic engine")
    if set(profiles) != set(triton_dims):
        problems.append(f"profile inputs {sorted(profiles)} != Triton inputs {sorted(triton_dims)}")
    for name in sorted(set(profiles) & set(triton_dims)):
        profile, dims = profiles[name], [int(d) for d in triton_dims[name]]
        shapes = {"min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)}
        if any(len(shape) != len(dims) + 1 for shape in shapes.values()):
            problems.append(f"{name}: profile {shapes} and Triton dims {dims} differ in rank")
            continue
        for which, shape in shapes.items():
            if any(d >= 0 and d != s for d, s in zip(dims, shape[1:])):
                problems.append(f"{name}: profile {which} {shape} != Triton dims {dims} where they are fixed")
        if shapes["min"][0] != 1 or shapes["max"][0] != max_batch:
            problems.append(
                f"{name}: profile batch {shapes['min'][0]}..{shapes['max'][0]} != 1..max_batch_size = 1..{max_batch}"
            )
        if not all(low <= o <= high for low, o, high in zip(profile.min, profile.opt, profile.max)):
            problems.append(f"{name}: profile opt {shapes['opt']} outside min {shapes['min']} .. max {shapes['max']}")
        # NCHW: height and width are the last two axes of every network input.
        low, high = tuple(profile.min[-2:]), tuple(profile.max[-2:])
        for bucket in resolution.buckets:
            if not all(lo <= side <= hi for lo, side, hi in zip(low, bucket, high)):
                problems.append(
                    f"{name}: bucket {spec.format_size(bucket)} is outside the profile's "
                    f"{spec.format_size(low)} .. {spec.format_size(high)}"
                )
    if problems:
        raise ReadinessError("TensorRT profile does not match the Triton config: " + "; ".join(problems))


def spec_triton_dims(name: str) -> dict[str, list[int]]:
    """Triton ``dims`` of a network's inputs as the spec defines them (without batch; -1 height and width)."""
    return {t.name: list(t.dynamic_shape()) for t in spec.NETWORKS[name].inputs}
