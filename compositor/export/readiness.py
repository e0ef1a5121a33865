"""TensorRT readiness, checked on a CPU-only machine before any engine is built.

* every operator (and the type it computes in) is on TensorRT's documented ONNX list;
* Resize nodes use only modes TensorRT implements;
* no dynamic dimension other than the batch (``onnx_export.check_contract``);
* the optimisation profile agrees with the Triton config that will serve the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from compositor.errors import CompositorError
from compositor import spec
from compositor.export.onnx_export import ExportError, check_contract
from compositor.export.trt_ops import check_operators

# From the Resize row of TensorRT's operator list (data/tensorrt_onnx_ops.txt's source).
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDINATE_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)


class ReadinessError(CompositorError, RuntimeError):
    """A graph or profile that TensorRT or Triton would reject."""


def check_tensorrt_readiness(model: onnx.ModelProto, name: str, resolution: tuple[int, int]) -> dict:
    """All graph-level TensorRT checks for one exported network (FP32 or FP16 graph).

    Returns:
        a JSON-ready summary (operators used and the list version they were checked against).

    Raises:
        ReadinessError: naming unsupported operators or types, unsupported Resize modes, or a
            dynamic dimension other than the batch.
    """
    operators = check_operators(model)
    problems = [f"operator {op} is not on TensorRT's list" for op in operators.unsupported]
    problems += [f"TensorRT does not support {op}" for op in operators.unsupported_types]
    problems += _resize_problems(model)
    try:
        check_contract(model, spec.NETWORKS[name], resolution)
    except ExportError as error:
        problems.append(str(error))
    if problems:
        raise ReadinessError(f"{name}: not ready for TensorRT: " + "; ".join(problems))
    return {**operators.as_dict(), "dynamic_dimensions": ["batch"], "resize_modes_supported": True}


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
) -> None:
    """Static shape check of a TensorRT optimisation profile against a Triton model config.

    Triton (``max_batch_size > 0``) sends batches of 1 .. ``max_batch_size`` of tensors shaped
    ``dims``; the engine must accept exactly those: same input names, ``min`` = ``[1, *dims]``,
    ``max`` = ``[max_batch_size, *dims]``, ``opt`` within them, and no wildcard in ``dims`` (the
    network resolution is fixed).

    Args:
        profiles: input name -> ``spec.Profile`` (``spec.tensorrt_profiles``).
        triton_dims: input name -> the config's ``dims`` (without the batch dimension).
        max_batch: the config's ``max_batch_size``.

    Raises:
        ReadinessError: listing every mismatch.
    """
    problems = []
    if max_batch < 1:
        problems.append(f"Triton max_batch_size {max_batch}: batching must be on (>= 1) for a batch-dynamic engine")
    if set(profiles) != set(triton_dims):
        problems.append(f"profile inputs {sorted(profiles)} != Triton inputs {sorted(triton_dims)}")
    for name in sorted(set(profiles) & set(triton_dims)):
        profile, dims = profiles[name], tuple(int(d) for d in triton_dims[name])
        if any(d < 1 for d in dims):
            problems.append(f"{name}: Triton dims {list(dims)} have a wildcard; the engine's spatial size is fixed")
        if tuple(profile.min) != (1, *dims):
            problems.append(f"{name}: profile min {list(profile.min)} != [1, *dims] = {[1, *dims]}")
        if tuple(profile.max) != (max_batch, *dims):
            problems.append(f"{name}: profile max {list(profile.max)} != [max_batch_size, *dims] = {[max_batch, *dims]}")
        if tuple(profile.opt[1:]) != dims or not 1 <= profile.opt[0] <= max_batch:
            problems.append(f"{name}: profile opt {list(profile.opt)} outside [1 .. {max_batch}] x {list(dims)}")
    if problems:
        raise ReadinessError("TensorRT profile does not match the Triton config: " + "; ".join(problems))


def spec_triton_dims(name: str, resolution: tuple[int, int]) -> dict[str, list[int]]:
    """Triton ``dims`` of a network's inputs as the spec defines them (without batch)."""
    return {t.name: list(t.resolved_shape(resolution)) for t in spec.NETWORKS[name].inputs}
