"""A small MODNet ONNX made like the published one: the shared fixture's weights, encoder BatchNorm folded.

The published ``modnet.onnx`` was exported with each MobileNetV2 BatchNorm folded into the
convolution before it (so those convolutions carry a bias and lost their parameter names), while
everything after the encoder keeps MODNet's names. This builds the same kind of file from
``tests/data/modnet`` (the shared fixture: seeded random weights, randomised BatchNorm statistics), so the
conversion is tested without the download.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from compositor.networks.modnet import MODNet
from compositor.networks.modnet_checkpoint import load_modnet_checkpoint

FIXTURE = Path(__file__).resolve().parent / "data" / "modnet"
CHECKPOINT = FIXTURE / "modnet_official_format_random.ckpt"


class _MatteOnly(MODNet):
    """MODNet returning its inference matte alone; a subclass, so parameter names stay MODNet's."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return super().forward(image, inference=True)[2]


def fold_encoder_batchnorm(model: MODNet) -> MODNet:
    """A copy of ``model`` whose encoder convolutions absorbed the BatchNorm after them."""
    folded = copy.deepcopy(model).eval()
    for sequential in folded.backbone.modules():
        if not isinstance(sequential, nn.Sequential):
            continue
        for index in range(len(sequential) - 1):
            conv, norm = sequential[index], sequential[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sequential[index], sequential[index + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return folded


def fixture_modnet() -> MODNet:
    """The fixture's MODNet with every bias and norm parameter nudged by seeded noise.

    The fixture's biases are zeros and its norm scales ones, and the ONNX exporter stores equal
    tensors once under one name; nudged, every parameter keeps a name of its own (as in the
    published file) and the test sees that each lands in its own place.
    """
    model = load_modnet_checkpoint(CHECKPOINT)
    generator = torch.Generator().manual_seed(17)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.startswith("backbone.") or not key.endswith(("bias", "weight")) or tensor.dim() != 1:
                continue
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


def export_fixture_modnet_onnx(path: Path, model: MODNet) -> Path:
    """Write ``model`` as an inference ONNX (opset 11, like the published file), encoder BatchNorm folded."""
    matte_only = _MatteOnly()
    matte_only.load_state_dict(model.state_dict())
    torch.onnx.export(
        fold_encoder_batchnorm(matte_only), torch.zeros(1, 3, 64, 64), str(path), dynamo=False, opset_version=11,
        input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "height", 3: "width"}},
    )
    return path
