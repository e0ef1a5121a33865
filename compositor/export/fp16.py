"""FP16 mixed precision: FP16 compute, FP32 I/O, normalisation statistics kept in FP32.

Why not ``onnxconverter_common.float16.convert_float_to_float16``: with a ``node_block_list`` it
still rounds the *weights* of blocked nodes to FP16 (it rewires their inputs to casts before it
decides which initializers to keep) and with ``keep_io_types`` it rounds the FP32 inputs before a
blocked first node sees them. A node "kept in FP32" must see exactly the FP32 values it would see
in the FP32 graph, so this module has its own small pass with one rule per tensor:

* every node computing floats runs in FP16, unless the precision policy keeps it in FP32;
* an input slot of an FP16 node becomes FP16 when the operator schema types it like the output
  (``T`` in ``Conv(X: T, W: T) -> T``); slots typed otherwise stay FP32 (Resize's ``scales`` is
  ``tensor(float)`` by definition); BatchNormalization's parameters follow its input;
* a tensor is cast at most once per precision and only where a consumer needs the other one;
  FP32 initializers consumed in FP16 are stored converted (no runtime cast);
* graph inputs and outputs stay FP32 (Triton, the client and TensorRT I/O bindings see FP32).

The resulting graph is what TensorRT builds as a strongly typed network: every layer runs in the
precision its tensors carry, nothing is left to the builder's discretion.

Which nodes stay FP32 is a ``PrecisionPolicy``; ``precision_ladder`` lists the policies tried for a
network, least FP32 first (the export takes the first that passes its checks and reports every
attempt). ``headroom.check_fp16_headroom`` verifies that what a policy leaves in FP16 fits FP16's
range, which ONNX Runtime's CPU provider cannot show (see that module).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compositor.errors import CompositorError
from compositor.atomic_files import atomic_path
from compositor.networks.harmonization import MaskedAdaIN, ToneTransform
from compositor.networks.modnet import MobileNetV2Backbone

log = logging.getLogger(__name__)

FP16_MAX = float(np.finfo(np.float16).max)

# Operators whose *statistics* (a mean and a variance over a whole feature map) stay in FP32: a sum
# over a 256x256 map of values around 1 already exceeds FP16's 65504, a sum of squares far sooner,
# and a variance computed in FP16 loses the small differences that normalisation divides by.
STATISTICS_OPS = frozenset({"InstanceNormalization", "LayerNormalization", "GroupNormalization"})


class PrecisionError(CompositorError, RuntimeError):
    """The mixed-precision conversion cannot represent the model faithfully."""


@dataclass(frozen=True)
class PrecisionPolicy:
    """Which nodes stay FP32 in the mixed-precision graph.

    Attributes:
        name: short label for logs and the report.
        fp32_op_types: operator types always kept in FP32 (normalisation statistics).
        fp32_scopes: module scopes (last attribute name, e.g. ``adain``) whose nodes are all kept in
            FP32; the legacy ONNX exporter names nodes ``/<scope path>/<Op>_<n>`` and numbers
            repeated calls of one module ``adain``, ``adain_1``, ...
        reasons: why each scope or op type is kept, for the export report.
    """

    name: str
    fp32_op_types: frozenset[str] = STATISTICS_OPS
    fp32_scopes: tuple[str, ...] = ()
    reasons: dict[str, str] = field(default_factory=dict)

    def keeps_fp32(self, node: onnx.NodeProto) -> bool:
        """True if ``node`` must run in FP32."""
        if node.op_type in self.fp32_op_types:
            return True
        if not self.fp32_scopes:
            return False
        segments = node.name.split("/")[:-1]  # the last segment is the node's own name
        return any(_SCOPE_CALL.sub("", segment) in self.fp32_scopes for segment in segments)

    def describe(self) -> dict:
        """JSON-ready summary for the export report."""
        return {
            "name": self.name,
            "fp32_op_types": sorted(self.fp32_op_types),
            "fp32_scopes": list(self.fp32_scopes),
            "reasons": dict(self.reasons),
        }


# ``adain_3`` (fourth call of the module ``adain``) -> ``adain``.
_SCOPE_CALL = re.compile(r"_\d+$")


NAIVE_POLICY = PrecisionPolicy(name="naive", fp32_op_types=frozenset(), fp32_scopes=(), reasons={})
"""Everything in FP16 (the graph I/O excepted): what a plain conversion does. Tests use it to show
what the kept-FP32 statistics protect against."""


@dataclass
class ConversionSummary:
    """What the conversion did, for logs and the report."""

    fp16_nodes: int = 0
    fp32_nodes: int = 0
    casts_inserted: int = 0
    fp32_op_types: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "fp16_nodes": self.fp16_nodes,
            "fp32_nodes": self.fp32_nodes,
            "fp32_op_types": dict(sorted(self.fp32_op_types.items())),
            "casts_inserted": self.casts_inserted,
        }


def convert_to_mixed_precision(
    model: onnx.ModelProto, policy: PrecisionPolicy
) -> tuple[onnx.ModelProto, ConversionSummary]:
    """Return an FP16 copy of an FP32 model with FP32 I/O and the policy's nodes in FP32.

    Args:
        model: an FP32 model (not modified).
        policy: which nodes stay FP32.

    Returns:
        ``(model, summary)``; the model passes ``onnx.checker`` (full check) and strict shape
        inference.

    Raises:
        PrecisionError: if a weight does not fit FP16's range, or the model is already FP16.
    """
    source = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = source.graph
    opset = next(o.version for o in source.opset_import if o.domain in ("", "ai.onnx"))

    elem_type: dict[str, int] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        elem_type[value.name] = value.type.tensor_type.elem_type
    initializers = {init.name: init for init in graph.initializer}
    for name, init in initializers.items():
        elem_type[name] = init.data_type
    if any(t == TensorProto.FLOAT16 for t in elem_type.values()):
        raise PrecisionError("the model already holds FP16 tensors; convert the FP32 model")
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            # Not needed by these networks, so not implemented: fail rather than convert wrongly.
            raise PrecisionError(f"node {node.name!r} ({node.domain or 'ai.onnx'}::{node.op_type}): custom domains and subgraphs are not supported")

    # Precision each float tensor has in the new graph (before any cast).
    home: dict[str, int] = {name: TensorProto.FLOAT for name, t in elem_type.items() if t == TensorProto.FLOAT}
    new_nodes: list[onnx.NodeProto] = []
    new_initializers: list[onnx.TensorProto] = []
    converted: dict[tuple[str, int], str] = {}
    summary = ConversionSummary()

    def in_precision(name: str, precision: int) -> str:
        """Name of tensor ``name`` in ``precision``, adding a cast or a converted weight once."""
        if home[name] == precision:
            return name
        key = (name, precision)
        if key not in converted:
            suffix = "fp16" if precision == TensorProto.FLOAT16 else "fp32"
            new_name = f"{name}_{suffix}"
            if name in initializers:
                new_initializers.append(_convert_initializer(initializers[name], new_name, precision))
            else:
                new_nodes.append(helper.make_node("Cast", [name], [new_name], name=f"{new_name}_cast", to=precision))
                summary.casts_inserted += 1
            converted[key] = new_name
        return converted[key]

    for original in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        float_outputs = [o for o in node.output if elem_type.get(o) == TensorProto.FLOAT]
        if not float_outputs:
            # Shape, Gather on int64 shapes, ...: no float compute, accept inputs as they come;
            # but inputs the schema types alike (Greater(A: T, B: T) -> BOOL) must agree.
            _align_alike_inputs(node, opset, home, in_precision, policy)
            new_nodes.append(node)
            continue
        precision = TensorProto.FLOAT if policy.keeps_fp32(node) else TensorProto.FLOAT16
        if precision == TensorProto.FLOAT:
            summary.fp32_nodes += 1
            summary.fp32_op_types[node.op_type] = summary.fp32_op_types.get(node.op_type, 0) + 1
        else:
            summary.fp16_nodes += 1
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        compute_type = schema.outputs[0].type_str
        for index, name in enumerate(node.input):
            if not name or elem_type.get(name) != TensorProto.FLOAT:
                continue
            slot = schema.inputs[min(index, len(schema.inputs) - 1)]  # variadic inputs repeat the last
            follows = slot.type_str == compute_type or node.op_type == "BatchNormalization"
            node.input[index] = in_precision(name, precision if follows else TensorProto.FLOAT)
        if node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = precision
        if node.op_type == "Constant" and precision == TensorProto.FLOAT16:
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                    attribute.t.CopyFrom(_convert_initializer(attribute.t, attribute.t.name, precision))
        for name in float_outputs:
            home[name] = precision
        new_nodes.append(node)

    # FP32 graph outputs: an FP16 producer writes <name>_fp16, a final cast restores the name.
    renamed = {}
    for output in graph.output:
        if home.get(output.name) == TensorProto.FLOAT16:
            renamed[output.name] = f"{output.name}_fp16"
    for node in new_nodes:
        for index, name in enumerate(node.input):
            node.input[index] = renamed.get(name, name)
        for index, name in enumerate(node.output):
            node.output[index] = renamed.get(name, name)
    for name, internal in renamed.items():
        new_nodes.append(helper.make_node("Cast", [internal], [name], name=f"{name}_cast_fp32", to=TensorProto.FLOAT))
        summary.casts_inserted += 1

    used = {name for node in new_nodes for name in node.input}
    kept_initializers = [init for init in graph.initializer if init.name in used]
    kept_initializers += [init for init in new_initializers if init.name in used]
    result = helper.make_model(
        helper.make_graph(
            new_nodes, graph.name, list(graph.input), list(graph.output), kept_initializers
        ),
        opset_imports=list(source.opset_import),
        producer_name=source.producer_name,
        producer_version=source.producer_version,
        ir_version=source.ir_version,
    )
    onnx.helper.set_model_props(result, {"compositor.fp16_policy": policy.name})
    result = onnx.shape_inference.infer_shapes(result, strict_mode=True)
    onnx.checker.check_model(result, full_check=True)
    return result, summary


def _align_alike_inputs(node: onnx.NodeProto, opset: int, home: dict[str, int], in_precision, policy: PrecisionPolicy) -> None:
    """Give a non-float node's float inputs of one schema type (a comparison's two sides) one precision.

    A comparison of an FP16 activation with an FP32 constant is a type error; the constant side is
    converted (free for a weight), or both stay FP32 where the policy keeps the node in FP32.
    """
    floats = [index for index, name in enumerate(node.input) if name in home]
    if len(floats) < 2 or len({home[node.input[index]] for index in floats}) == 1:
        return
    schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    if len({schema.inputs[min(index, len(schema.inputs) - 1)].type_str for index in floats}) != 1:
        return
    precision = TensorProto.FLOAT if policy.keeps_fp32(node) else TensorProto.FLOAT16
    for index in floats:
        node.input[index] = in_precision(node.input[index], precision)


def _convert_initializer(tensor: onnx.TensorProto, name: str, precision: int) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    if precision == TensorProto.FLOAT16:
        finite = values[np.isfinite(values)]
        if finite.size and np.abs(finite).max() > FP16_MAX:
            raise PrecisionError(
                f"weight {tensor.name!r} holds {np.abs(finite).max():.4g}, beyond FP16's {FP16_MAX:g}; "
                "keep its node in FP32"
            )
        return numpy_helper.from_array(values.astype(np.float16), name)
    return numpy_helper.from_array(values.astype(np.float32), name)


def precision_ladder(model: nn.Module) -> list[PrecisionPolicy]:
    """The FP32 policies to try for one network, least FP32 first.

    Rung 1, always: the normalisation statistics (``STATISTICS_OPS``, every ``MaskedAdaIN`` and
    ``ToneTransform``).
    Rung 2, only for networks with a MobileNetV2 encoder (MODNet): the encoder too. A *trained*
    encoder is expected to pass at rung 1. The seeded, untrained MODNet does not: its random encoder
    amplifies any perturbation (scaling the input by 1 + 1e-4 moves the matte by 0.012), so FP16's
    rounding of its input and weights alone moves the matte by about 0.05, over the 0.02 tolerance,
    while the decoder branches in FP16 cost under 0.003. The export takes the first rung that passes
    the FP16 parity check and records every rung it tried in the report; if none passes, it fails.

    Args:
        model: the contract model (its module classes decide the scopes).
    """
    adain_scopes = _scopes(model, MaskedAdaIN)
    transfer_scopes = _scopes(model, ToneTransform)
    statistics = PrecisionPolicy(
        name="statistics",
        fp32_op_types=STATISTICS_OPS,
        fp32_scopes=adain_scopes + transfer_scopes,
        reasons={
            "InstanceNormalization": "per-image mean/variance over a whole feature map (MODNet's IBNorm)",
            **{
                scope: "MaskedAdaIN: mask-weighted mean/variance sums over a whole feature map overflow FP16"
                for scope in adain_scopes
            },
            **{
                scope: "ToneTransform: Lab statistics and histograms over the whole image overflow FP16, and Lab's "
                "cube root near black is sensitive to FP16 rounding"
                for scope in transfer_scopes
            },
        },
    )
    ladder = [statistics]
    encoder_scopes = _scopes(model, MobileNetV2Backbone)
    if encoder_scopes:
        ladder.append(
            PrecisionPolicy(
                name="statistics+encoder",
                fp32_op_types=statistics.fp32_op_types,
                fp32_scopes=statistics.fp32_scopes + encoder_scopes,
                reasons={
                    **statistics.reasons,
                    **{
                        scope: "MobileNetV2 encoder: too sensitive for FP16 (the published MODNet's matte moved by "
                        "0.12 with it in FP16 on ONNX Runtime CPU, tolerance 0.02; untrained weights too)"
                        for scope in encoder_scopes
                    },
                },
            )
        )
    return ladder


def _scopes(model: nn.Module, module_class: type[nn.Module]) -> tuple[str, ...]:
    """ONNX scope names of ``model``'s submodules of ``module_class``: their attribute names."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and isinstance(module, module_class)}
    return tuple(sorted(names))


def save_mixed_precision(source: str | Path, target: str | Path, policy: PrecisionPolicy) -> ConversionSummary:
    """Convert the FP32 model file ``source`` and write the result to ``target`` atomically.

    Raises:
        PrecisionError: see ``convert_to_mixed_precision``.
    """
    log.info("fp16 %s -> %s (policy %s: FP32 kept for %s)", source, target, policy.name, ", ".join(policy.reasons) or "nothing")
    model, summary = convert_to_mixed_precision(onnx.load(str(source)), policy)
    with atomic_path(target) as temporary:
        onnx.save(model, str(temporary))
    log.info(
        "fp16 %s: %d nodes FP16, %d FP32, %d casts", Path(target).name, summary.fp16_nodes, summary.fp32_nodes, summary.casts_inserted
    )
    return summary
