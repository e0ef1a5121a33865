"""FP16 headroom: do the values a precision policy puts in FP16 fit FP16's range?

Why this check exists next to the ONNX Runtime parity check: ONNX Runtime's CPU provider has no FP16
kernel for most operators (Mul, Pow, ReduceSum, ...). It runs them in FP32 and removes the FP16
round trips between them, so an FP16 graph whose sums of squares would overflow on a GPU comes out
finite on the CPU. The parity check therefore measures weight and input rounding, not range.

This check measures range directly: it runs the FP32 graph (on ONNX Runtime, where FP32 is exact)
with probes on every node that the policy computes in FP16 and records

* the largest ``|value|`` of each of its float outputs, and
* for reductions (ReduceSum, ReduceMean, ReduceSumSquare, GlobalAveragePool), the largest sum of
  ``|input|`` over the reduced axes: a bound on the running sum an FP16 accumulator would hold.

Every one must stay below FP16's largest finite value (65504). Convolution and matrix-multiply
accumulators are not probed (TensorRT's FP16 kernels accumulate them in FP32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from compositor.export.fp16 import FP16_MAX, PrecisionError, PrecisionPolicy

log = logging.getLogger(__name__)

_REDUCTIONS = {"ReduceSum", "ReduceMean", "ReduceSumSquare", "GlobalAveragePool"}
_WORST_LISTED = 5


@dataclass
class HeadroomReport:
    """Largest magnitudes found among the FP16 tensors and accumulators of one graph."""

    policy: str
    fp16_limit: float = FP16_MAX
    largest: float = 0.0
    worst: list[dict] = field(default_factory=list)
    probes: int = 0

    @property
    def passed(self) -> bool:
        return self.largest < self.fp16_limit

    def as_dict(self) -> dict:
        return {
            "policy": self.policy,
            "fp16_limit": self.fp16_limit,
            "largest_fp16_magnitude": self.largest,
            "headroom": (self.fp16_limit / self.largest) if self.largest else None,
            "passed": self.passed,
            "probes": self.probes,
            "worst": self.worst,
        }


def check_fp16_headroom(
    model: onnx.ModelProto,
    policy: PrecisionPolicy,
    feeds: list[dict[str, np.ndarray]],
) -> HeadroomReport:
    """Measure, on FP32 activations, every value ``policy`` would compute in FP16.

    Args:
        model: the FP32 model.
        policy: the precision policy to judge.
        feeds: input batches (by input name) to measure on.

    Returns:
        the report (passed).

    Raises:
        PrecisionError: if a value or an accumulator exceeds FP16's range, naming the worst nodes.
    """
    probed, labels = _with_probes(model, policy)
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    session = ort.InferenceSession(probed.SerializeToString(), session_options, providers=["CPUExecutionProvider"])
    maxima = np.zeros(len(labels))
    for feed in feeds:
        values = session.run(list(labels), feed)
        maxima = np.maximum(maxima, [float(np.max(v)) if np.size(v) else 0.0 for v in values])
    report = HeadroomReport(policy=policy.name, probes=len(labels))
    names = list(labels)
    order = np.argsort(-maxima)
    report.largest = float(maxima[order[0]]) if len(order) else 0.0
    report.worst = [
        {"node": labels[names[i]][0], "quantity": labels[names[i]][1], "max_abs": float(maxima[i])}
        for i in order[:_WORST_LISTED]
    ]
    log.info(
        "fp16 headroom (%s): largest FP16 magnitude %.4g (%s) against %g",
        policy.name,
        report.largest,
        report.worst[0]["node"] if report.worst else "-",
        FP16_MAX,
    )
    if not report.passed:
        over = [w for w in report.worst if w["max_abs"] >= FP16_MAX]
        raise PrecisionError(
            f"policy {policy.name!r} computes values beyond FP16's {FP16_MAX:g} in FP16: "
            + ", ".join(f"{w['node']} {w['quantity']} {w['max_abs']:.4g}" for w in over)
        )
    return report


def _with_probes(model: onnx.ModelProto, policy: PrecisionPolicy) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]]]:
    """Copy of ``model`` with a scalar output per probed quantity; returns it and the labels."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    elem_type = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.input, *graph.value_info, *graph.output)}
    initializers = {init.name: init for init in graph.initializer}

    probe_nodes, probe_outputs, labels = [], [], {}

    def probe(tensor: str, node_name: str, quantity: str, axes: list[int] | None = None) -> None:
        index = len(labels)
        absolute = f"headroom_{index}_abs"
        probe_nodes.append(helper.make_node("Abs", [tensor], [absolute]))
        source = absolute
        if axes is not None:
            summed = f"headroom_{index}_sum"
            axes_name = f"headroom_{index}_axes"
            probe_nodes.append(helper.make_node("Constant", [], [axes_name], value=helper.make_tensor(axes_name, TensorProto.INT64, [len(axes)], axes)))
            probe_nodes.append(helper.make_node("ReduceSum", [absolute, axes_name], [summed], keepdims=0))
            source = summed
        output = f"headroom_{index}"
        probe_nodes.append(helper.make_node("ReduceMax", [source], [output], keepdims=0))
        probe_outputs.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, []))
        labels[output] = (node_name, quantity)

    for node in graph.node:
        float_outputs = [o for o in node.output if elem_type.get(o) == TensorProto.FLOAT]
        if not float_outputs or policy.keeps_fp32(node):
            continue
        for output in float_outputs:
            probe(output, node.name, f"output {output}")
        if node.op_type in _REDUCTIONS and node.input and elem_type.get(node.input[0]) == TensorProto.FLOAT:
            axes = _reduced_axes(node, rank.get(node.input[0], 0), initializers)
            probe(node.input[0], node.name, "accumulator (sum of |input| over the reduced axes)", axes)

    probed = onnx.ModelProto()
    probed.CopyFrom(inferred)
    probed.graph.node.extend(probe_nodes)
    probed.graph.output.extend(probe_outputs)
    return probed, labels


def _reduced_axes(node: onnx.NodeProto, rank: int, initializers: dict[str, onnx.TensorProto]) -> list[int]:
    if node.op_type == "GlobalAveragePool":
        return list(range(2, rank))
    axes = None
    for attribute in node.attribute:
        if attribute.name == "axes":
            axes = list(attribute.ints)
    if axes is None and len(node.input) > 1 and node.input[1] in initializers:
        axes = [int(a) for a in onnx.numpy_helper.to_array(initializers[node.input[1]])]
    if axes is None:  # no axes: reduce everything (ONNX default)
        axes = list(range(rank))
    return [a % rank for a in axes]
