"""Step 1 of the export chain: a contract model (``networks.contract.contract_models``) -> FP32 ONNX.

The graph gets the spec's tensor names and dynamic batch, height and width axes (``spec.dynamic_axes``):
one graph serves every aspect bucket of the deployment (``spec.Resolution``), as one TensorRT
profile and one Triton config do. It is traced at the reference (square) bucket. A shape the trace
turns into a constant must be the same at every bucket: radii in pixels follow the short side,
which the buckets share (``networks.layers.short_side``); the export's parity checks run the graph
at a second bucket (the widest) to catch any other.

Exporter choice: the TorchScript exporter (``dynamo=False``). On these networks it produces opset
17 graphs whose node names carry the module scope (``/adain_2/ReduceSum``), which is how the
FP16 conversion finds the nodes to keep in FP32, and it exports in a fraction of the time of the
``torch.export`` exporter (which also insists on opset 18). Its output is then cleaned with the
onnxscript constant folder: shared weights appear as ``Identity`` nodes and constants as ``Constant``
nodes, which folding turns into plain initializers without renaming the compute nodes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import onnx_ir.passes.common as ir_passes
import torch
from onnxscript import ir
from onnxscript.optimizer import _constant_folding as constant_folding
from torch import nn

from compositor.errors import CompositorError
from compositor.contract import spec
from compositor.atomic_files import atomic_path

log = logging.getLogger(__name__)

BATCH_AXIS_NAME = "batch"

# The example batch traced at export. Not 1, so a batch size of 1 cannot be baked into the graph
# (the parity checks then run other batch sizes).
EXAMPLE_BATCH = 2


class ExportError(CompositorError, RuntimeError):
    """An exported graph does not honour the tensor contract (names, shapes, opset)."""


def example_inputs(model_spec: spec.ModelSpec, size: tuple[int, int], batch: int = EXAMPLE_BATCH) -> tuple[torch.Tensor, ...]:
    """Deterministic [0, 1] tensors at ``size`` (one bucket) in the spec's input order, for tracing."""
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.rand((batch, *tensor.resolved_shape(size)), generator=generator) for tensor in model_spec.inputs)


def export_fp32(
    model: nn.Module,
    name: str,
    path: str | Path,
    resolution: spec.Resolution | str | int | tuple[int, int],
    opset: int = spec.ONNX_OPSET,
) -> Path:
    """Export ``model`` (a contract model) to an FP32 ONNX file with the spec's names.

    Args:
        model: module whose ``forward`` takes the spec's inputs of network ``name`` in order.
        name: network name in ``compositor.contract.spec.NETWORKS``.
        path: output ``.onnx`` file, written atomically.
        resolution: the deployment's ``spec.Resolution`` (``spec.parse_resolution`` takes the rest):
            the graph is traced at its reference bucket and takes every bucket.
        opset: ONNX opset, at least ``spec.ONNX_OPSET``.

    Returns:
        ``path``.

    Raises:
        ExportError: if the graph does not match the contract (see ``check_contract``).
    """
    model_spec = spec.NETWORKS[name]
    path = Path(path)
    resolution = spec.parse_resolution(resolution)
    if opset < spec.ONNX_OPSET:
        raise ExportError(f"opset {opset} is below the project's minimum {spec.ONNX_OPSET}")
    log.info(
        "export %s -> %s (FP32, opset %d, traced at %s, batch, height and width dynamic)",
        name, path, opset, spec.format_size(resolution.reference),
    )  # fmt: skip
    model = model.eval()
    with atomic_path(path) as traced_path, torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python-level shape checks (MODNet's input validation: multiples of
        # 32, true of every bucket) and radii from the short side (the same in every bucket), so
        # those constants hold for every input the deployment sends.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*feature will be removed.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*instance_norm.*", category=UserWarning)
        torch.onnx.export(
            model,
            example_inputs(model_spec, resolution.reference),
            str(traced_path),
            input_names=model_spec.input_names(),
            output_names=model_spec.output_names(),
            dynamic_axes=spec.dynamic_axes(model_spec),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
        proto = clean_graph(onnx.load(str(traced_path)))
        check_contract(proto, model_spec, opset)
        onnx.save(proto, str(traced_path))
    log.info("export %s: %d nodes, %.1f MB", name, len(proto.graph.node), path.stat().st_size / 1e6)
    return path


def clean_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants and shape arithmetic, drop dead nodes, lift constants to initializers.

    Node names of compute nodes are kept (the FP16 policy matches on them); onnxscript's full
    ``optimize`` would also run rewrite rules that rename them.
    """
    model_ir = ir.serde.deserialize_model(model)
    with _quiet("onnxscript", "onnx_ir"):
        ir.passes.Sequential(
            constant_folding.FoldConstantsPass(
                shape_inference=True,
                input_size_limit=constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                output_size_limit=constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
            ),
            ir_passes.RemoveUnusedNodesPass(),
            ir_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            ir_passes.RemoveUnusedNodesPass(),
        )(model_ir)
    return ir.serde.serialize_model(model_ir)


@contextmanager
def _quiet(*logger_names: str) -> Iterator[None]:
    """Silence the INFO chatter of the ONNX tooling (one line per folded node) for a block."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def tensor_shape(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """Dims of a value: ints for static dims, the symbol for named ones, None for unknown."""
    dims = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


DYNAMIC_AXES = (BATCH_AXIS_NAME, spec.HEIGHT_AXIS, spec.WIDTH_AXIS)
"""The only symbolic dimensions the graph I/O may have."""


def check_contract(model: onnx.ModelProto, model_spec: spec.ModelSpec, min_opset: int = spec.ONNX_OPSET) -> None:
    """Check an exported graph against the spec.

    Checks: ``onnx.checker`` (full), opset, input/output names in spec order, FP32 I/O, the I/O
    shapes ``[batch, C, height, width]`` (``spec.dynamic_axes``: symbolic batch and spatial axes,
    static channels), and that strict shape inference (with data propagation) leaves the channels
    of every 4-D float tensor in the graph static (only batch and spatial extent may vary).

    Raises:
        ExportError: naming the first mismatch found.
    """
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{model_spec.name}: onnx.checker failed: {error}") from error
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < min_opset:
        raise ExportError(f"{model_spec.name}: opset {opset} < {min_opset}")

    graph = model.graph
    for kind, values, expected in (
        ("inputs", graph.input, model_spec.inputs),
        ("outputs", graph.output, model_spec.outputs),
    ):
        names = [v.name for v in values]
        if names != [t.name for t in expected]:
            raise ExportError(f"{model_spec.name}: graph {kind} {names} != spec {[t.name for t in expected]}")
        for value, tensor in zip(values, expected):
            elem_type = value.type.tensor_type.elem_type
            if elem_type != onnx.TensorProto.FLOAT:
                raise ExportError(
                    f"{model_spec.name}: {tensor.name} is {onnx.TensorProto.DataType.Name(elem_type)}, spec says float32"
                )
            dims = tensor_shape(value)
            wanted = [BATCH_AXIS_NAME, *tensor.resolved_shape((spec.HEIGHT_AXIS, spec.WIDTH_AXIS))]
            if dims != wanted:
                raise ExportError(f"{model_spec.name}: {tensor.name} has shape {dims}, spec says {wanted}")

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    for value in (*inferred.graph.value_info, *inferred.graph.output):
        dims = tensor_shape(value)
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or not dims:
            continue  # shape arithmetic (int64) and scalars
        if len(dims) == 4 and not isinstance(dims[1], int):
            raise ExportError(
                f"{model_spec.name}: tensor {value.name!r} has shape {dims}: its channels are not static"
            )
