"""Thin wrappers that give each network the tensor contract of ``compositor.contract.spec``.

Every network model takes FP32 NCHW images in [0, 1] and returns its named tensors in spec order. The wrappers
do the per-network normalisation inside the graph, so ONNX, TensorRT, Triton and the eager
pipeline all feed the same [0, 1] tensors. The eager pipeline runs these very wrappers.
"""

from __future__ import annotations

import torch
from torch import nn

from compositor.networks.blending import BlendingUNet
from compositor.networks.factory import Networks
from compositor.networks.modnet import MODNet


class MattingModel(nn.Module):
    """MODNet with [0, 1] input: applies MODNet's ``(x - 0.5) / 0.5`` and returns only the matte."""

    def __init__(self, modnet: MODNet):
        super().__init__()
        self.modnet = modnet

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _, _, matte = self.modnet((image - 0.5) / 0.5, inference=True)
        return matte


class BlendingModel(nn.Module):
    """The blending net returning both spec outputs: the composite and the matte it used."""

    def __init__(self, blending: BlendingUNet):
        super().__init__()
        self.blending = blending

    def forward(self, source: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.blending.blend(source, alpha, background)


def contract_models(networks: Networks) -> dict[str, nn.Module]:
    """Modules whose ``forward`` takes the spec's inputs (in order) and returns its outputs (in order):
    one tensor, or a tuple where the spec lists several.

    The harmonization net already takes [0, 1] images and returns one tensor.
    """
    return {
        "matting": MattingModel(networks.matting).eval(),
        "blending": BlendingModel(networks.blending).eval(),
        "harmonization": networks.harmonization.eval(),
    }
