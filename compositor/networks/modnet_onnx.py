"""MODNet weights from an ONNX export of it: the published photographic portrait model, for one.

The published ONNX (``modnet.onnx``, exported by MODNet's own ``onnx/export_onnx.py`` with PyTorch
1.7) holds the same parameters as the official checkpoint, with one difference: the exporter folded
each BatchNorm of the MobileNetV2 encoder into the convolution before it, so those convolutions
carry a bias and their initializers lost their names (``1013``, ``1014``, ...). Everything after
the encoder keeps MODNet's parameter names (IBNorm's BatchNorm follows a channel split, so nothing
was folded there).

So the conversion takes every named initializer by name, and gives the encoder's convolutions, in
the order the graph runs them (which is the order of ``backbone.model.features``), their folded
weights, with an identity BatchNorm carrying the folded bias:
``BN(x) = (x - 0) / sqrt((1 - eps) + eps) * 1 + bias = x + bias``. The squeeze-and-excitation
block's two ``Linear`` layers appear as ``MatMul`` (weight transposed) or ``Gemm`` nodes.

The semantic and detail heads (``lr_branch.conv_lr``, ``hr_branch.conv_hr``) serve training only and
are not in an inference export; they keep MODNet's initialisation, which the matte never reads.

Example:
    >>> model = modnet_from_onnx("modnet.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor

from compositor.networks.modnet import MODNet
from compositor.networks.weights import WeightsError, check_file

__all__ = ["modnet_from_onnx", "modnet_state_dict_from_onnx", "TRAINING_ONLY_PREFIXES"]

log = logging.getLogger(__name__)

ENCODER_PREFIX = "backbone."
ENCODER_ALIAS_PREFIX = "lr_branch.backbone."
SE_WEIGHTS = ("lr_branch.se_block.fc.0.weight", "lr_branch.se_block.fc.2.weight")
TRAINING_ONLY_PREFIXES = ("lr_branch.conv_lr.", "hr_branch.conv_hr.")
"""Heads an inference export leaves out; the matte does not depend on them."""


def modnet_state_dict_from_onnx(model_proto: onnx.ModelProto, reference: MODNet | None = None) -> dict[str, Tensor]:
    """Rebuild MODNet's state dict (plain keys, encoder listed once) from an ONNX export of it.

    Args:
        model_proto: the loaded ONNX model.
        reference: the MODNet whose keys, shapes and training-only heads to use (default: ``MODNet()``).

    Returns:
        Every key of ``reference.state_dict()`` except the ``lr_branch.backbone.*`` aliases.

    Raises:
        WeightsError: the graph is not a MODNet export: encoder convolutions missing or of other
            shapes, named parameters missing or mis-shaped.
    """
    reference = reference if reference is not None else MODNet()
    expected = {key: value for key, value in reference.state_dict().items() if not key.startswith(ENCODER_ALIAS_PREFIX)}
    initializers = {tensor.name: tensor for tensor in model_proto.graph.initializer}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name])

    state: dict[str, Tensor] = {}
    named = [key for key in expected if not key.startswith(ENCODER_PREFIX) and key not in SE_WEIGHTS]
    for key in named:
        if key in initializers:
            state[key] = torch.from_numpy(array(key).copy())
        elif key.startswith(TRAINING_ONLY_PREFIXES) or key.endswith("num_batches_tracked"):
            state[key] = expected[key].clone()
    missing = [key for key in named if key not in state]
    if missing:
        raise WeightsError(f"not a MODNet export: {len(missing)} named parameters missing, e.g. {missing[:3]}")

    state.update(_encoder(model_proto, initializers, expected, set(named)))
    state.update(_squeeze_excitation(model_proto, initializers))
    wrong = [f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}" for key in expected
             if key in state and state[key].shape != expected[key].shape]
    if wrong or set(state) != set(expected):
        raise WeightsError(f"not a MODNet export: {wrong[:3] or sorted(set(expected) - set(state))[:3]}")
    return {key: state[key].to(expected[key].dtype) for key in expected}


def _encoder(model_proto: onnx.ModelProto, initializers: dict, expected: dict[str, Tensor], named: set[str]) -> dict[str, Tensor]:
    """The encoder's convolutions (folded weight and bias, in graph order) with identity BatchNorms."""
    folded = [
        node for node in model_proto.graph.node
        if node.op_type == "Conv" and node.input[1] in initializers and node.input[1] not in named
    ]
    conv_keys = [key for key, value in expected.items() if key.startswith(ENCODER_PREFIX) and value.dim() == 4]
    if len(folded) != len(conv_keys):
        raise WeightsError(f"not a MODNet export: {len(folded)} unnamed convolutions, the encoder has {len(conv_keys)}")
    state = {}
    for node, conv_key in zip(folded, conv_keys):
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if tuple(weight.shape) != tuple(expected[conv_key].shape):
            raise WeightsError(f"not a MODNet export: convolution {node.name or node.input[1]} has shape "
                               f"{tuple(weight.shape)} where {conv_key} needs {tuple(expected[conv_key].shape)}")
        channels = weight.shape[0]
        bias = (numpy_helper.to_array(initializers[node.input[2]]) if len(node.input) > 2 and node.input[2]
                else np.zeros(channels, dtype=np.float32))
        # In backbone.model.features, each convolution's BatchNorm is the next module: index + 1.
        prefix, index, _ = conv_key.rsplit(".", 2)
        norm = f"{prefix}.{int(index) + 1}."
        eps = 1e-5  # nn.BatchNorm2d's default, which MobileNetV2 uses
        state[conv_key] = torch.from_numpy(weight.copy())
        state[norm + "weight"] = torch.ones(channels)
        state[norm + "bias"] = torch.from_numpy(bias.copy())
        state[norm + "running_mean"] = torch.zeros(channels)
        state[norm + "running_var"] = torch.full((channels,), 1.0 - eps)
        state[norm + "num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return state


def _squeeze_excitation(model_proto: onnx.ModelProto, initializers: dict) -> dict[str, Tensor]:
    """The two ``Linear`` weights of the SE block, from ``MatMul`` (x @ W^T) or ``Gemm`` nodes."""
    weights = []
    for node in model_proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in initializers:
            continue
        matrix = numpy_helper.to_array(initializers[node.input[1]])
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        weights.append(matrix if node.op_type == "Gemm" and trans_b else matrix.T)
    if len(weights) != len(SE_WEIGHTS):
        raise WeightsError(f"not a MODNet export: {len(weights)} matrix products, the SE block has {len(SE_WEIGHTS)}")
    return {key: torch.from_numpy(np.ascontiguousarray(weight)) for key, weight in zip(SE_WEIGHTS, weights)}


def modnet_from_onnx(path: str | PathLike[str]) -> MODNet:
    """A :class:`MODNet` in eval mode with the weights of the ONNX export at ``path``.

    Raises:
        WeightsNotFoundError: no such file.
        WeightsError: not an ONNX file, or not a MODNet export.
    """
    path = Path(path)
    check_file(path, "MODNet ONNX file")
    try:
        model_proto = onnx.load(str(path))
    except Exception as error:  # onnx raises DecodeError, ValueError, ... for a file that is not ONNX
        raise WeightsError(f"{path} is not an ONNX model ({type(error).__name__}: {error})") from error
    model = MODNet()
    state = modnet_state_dict_from_onnx(model_proto, model)
    for key in list(model.state_dict()):
        if key.startswith(ENCODER_ALIAS_PREFIX):
            state[key] = state[ENCODER_PREFIX + key[len(ENCODER_ALIAS_PREFIX):]]
    model.load_state_dict(state, strict=True)
    log.info("converted MODNet weights from %s", path)
    return model.eval()
