"""Small building blocks shared by the blending and harmonization U-Nets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU (BatchNorm folds away at export)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def upsample_to(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``features`` to the spatial size of ``reference``.

    An explicit size (not a scale factor) keeps the ONNX Resize node shape-exact for every
    resolution that is a multiple of 32.
    """
    return F.interpolate(features, size=reference.shape[-2:], mode="bilinear", align_corners=False)


def zero_initialised_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 residual head whose weights and bias start at zero, so an untrained net adds nothing."""
    head = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def linear_composite(source: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Classic alpha blending ``alpha * source + (1 - alpha) * background``."""
    return alpha * source + (1.0 - alpha) * background
