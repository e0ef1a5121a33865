"""TensorRT's documented ONNX operator support, as shipped in ``data/tensorrt_onnx_ops.txt``.

The list is a transcription of onnx-tensorrt's ``docs/operators.md`` (source, release and how to
update it are in the file's header). It lets a CPU-only machine tell whether TensorRT's ONNX parser
accepts an exported graph before anyone builds an engine.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import onnx
from onnx import TensorProto

OPS_FILE = "tensorrt_onnx_ops.txt"

# ONNX element type -> the type names the operator list uses.
_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
}


@dataclass(frozen=True)
class OperatorList:
    """TensorRT's supported ONNX operators and, per operator, the data types it supports."""

    version: str
    types: dict[str, frozenset[str]]

    def __contains__(self, op_type: str) -> bool:
        return op_type in self.types


@lru_cache(maxsize=1)
def tensorrt_operators() -> OperatorList:
    """Parse the shipped operator list.

    Raises:
        ValueError: if the file is malformed (no version line, or a line that is not
            ``<Operator> <TYPE,TYPE,...>``).
    """
    text = resources.files("compositor.export").joinpath("data", OPS_FILE).read_text()
    version, types = None, {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if fields[0] == "version":
            version = " ".join(fields[1:])
            continue
        if len(fields) != 2:
            raise ValueError(f"{OPS_FILE}:{number}: expected '<Operator> <TYPES>', got {line!r}")
        types[fields[0]] = frozenset(fields[1].split(","))
    if not version:
        raise ValueError(f"{OPS_FILE}: no 'version' line")
    return OperatorList(version=version, types=types)


@dataclass
class OperatorCheck:
    """Operators of one graph against TensorRT's list."""

    operators: dict[str, int]
    unsupported: list[str]
    unsupported_types: list[str]
    list_version: str

    @property
    def passed(self) -> bool:
        return not self.unsupported and not self.unsupported_types

    def as_dict(self) -> dict:
        return {
            "tensorrt_operator_list": self.list_version,
            "operators": self.operators,
            "unsupported": self.unsupported,
            "unsupported_types": self.unsupported_types,
            "passed": self.passed,
        }


COMPARISONS = frozenset({"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"})


def check_operators(model: onnx.ModelProto) -> OperatorCheck:
    """Compare every node's operator, and the float type it computes in, with TensorRT's list.

    The type checked for a node is the element type of its first output (``Cast`` is checked on
    its input and output, comparisons on their input: their output is always BOOL, and the list
    names the types they compare); non-default domains are unsupported by definition (no plugins).
    """
    operators = tensorrt_operators()
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    elem_type = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    elem_type.update({init.name: init.data_type for init in graph.initializer})

    counts = Counter()
    unsupported, unsupported_types = set(), set()
    for node in graph.node:
        qualified = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[qualified] += 1
        if qualified not in operators:
            unsupported.add(qualified)
            continue
        if node.op_type in COMPARISONS:
            tensors = [node.input[0]]
        else:
            tensors = [node.output[0]] + ([node.input[0]] if node.op_type == "Cast" else [])
        for tensor in tensors:
            type_name = _TYPE_NAMES.get(elem_type.get(tensor))
            if type_name and type_name not in operators.types[qualified]:
                unsupported_types.add(f"{qualified}({type_name})")
    return OperatorCheck(
        operators=dict(sorted(counts.items())),
        unsupported=sorted(unsupported),
        unsupported_types=sorted(unsupported_types),
        list_version=operators.version,
    )
