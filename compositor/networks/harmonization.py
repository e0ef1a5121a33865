"""Harmonization U-Net with complete-background cues (after Xing et al., ACM MM 2022).

Given a composite and its foreground mask, the net adjusts the foreground's appearance to the new
background. Unlike harmonizers that only see the background *around* the pasted object, it encodes
the *complete* background (before anything was pasted) at every decoder scale and moves the
foreground's feature statistics to the background's (mask-weighted, region-aware AdaIN). Attention
gates on the three outer skip connections let the decoder choose between encoder detail and
decoder context. The residual head is zero-initialised and masked: an untrained net returns its
input, and the background is never altered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compositor.networks.layers import (
    ConvBlock,
    UNetEncoder,
    decoder_pairs,
    unet_widths,
    upsample_to,
    zero_initialised_conv,
)

STATISTICS_EPS = 1e-5


class AttentionGate(nn.Module):
    """1x1 convolution + sigmoid over a skip concatenation, multiplied back onto it."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Conv2d(channels, channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * torch.sigmoid(self.gate(features))


class BackgroundEncoder(nn.Sequential):
    """Two 3x3 conv + ReLU over the complete background, resized to one decoder scale."""

    def __init__(self, out_channels: int):
        super().__init__(
            nn.Conv2d(3, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )


class MaskedAdaIN(nn.Module):
    """Region-aware AdaIN: the foreground's channel mean/std become the background's.

    Foreground statistics are mask-weighted; background statistics come from the complete
    background's features. The FP16 export keeps this module in FP32 (its sums of squares over a
    whole feature map overflow FP16's 65504), which is why it is a module of its own: its ONNX
    nodes are found by name.
    """

    def forward(self, features: torch.Tensor, mask: torch.Tensor, background_features: torch.Tensor) -> torch.Tensor:
        mask_area = mask.sum(dim=(2, 3), keepdim=True) + STATISTICS_EPS
        fg_mean = (features * mask).sum(dim=(2, 3), keepdim=True) / mask_area
        fg_var = ((features - fg_mean) ** 2 * mask).sum(dim=(2, 3), keepdim=True) / mask_area
        bg_mean = background_features.mean(dim=(2, 3), keepdim=True)
        bg_var = ((background_features - bg_mean) ** 2).mean(dim=(2, 3), keepdim=True)
        normalised = (features - fg_mean) * torch.rsqrt(fg_var + STATISTICS_EPS)
        restyled = normalised * torch.sqrt(bg_var + STATISTICS_EPS) + bg_mean
        return mask * restyled + (1.0 - mask) * features


class HarmonizationUNet(nn.Module):
    """U-Net on (composite RGB, mask) with background-conditioned decoder statistics.

    Args:
        base_channels: channels at full resolution, doubled at each pooling.
        levels: encoder levels (5: full .. 1/16); the decoder has ``levels - 1``, the outer three of
            which carry attention gates.
    """

    attention_levels = 3

    def __init__(self, base_channels: int = 16, levels: int = 5):
        super().__init__()
        # Recorded so saved weights can rebuild the architecture (networks/weights.py).
        self.hyperparameters = {"base_channels": base_channels, "levels": levels}
        widths = unet_widths(base_channels, levels)
        self.encoders = UNetEncoder(4, widths)
        pairs = decoder_pairs(widths)
        first_gated = len(pairs) - self.attention_levels
        self.attention_gates = nn.ModuleList(
            AttentionGate(deep + skip) if index >= first_gated else nn.Identity()
            for index, (deep, skip) in enumerate(pairs)
        )
        self.decoders = nn.ModuleList(ConvBlock(deep + skip, skip) for deep, skip in pairs)
        self.background_encoders = nn.ModuleList(BackgroundEncoder(skip) for _, skip in pairs)
        self.adain = MaskedAdaIN()
        self.residual_head = zero_initialised_conv(widths[0], 3)

    def forward(self, composite: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """Harmonize ``composite`` inside ``mask`` using the complete ``background``.

        All inputs are [B, C, H, W] in [0, 1]; H and W divisible by 2**(levels - 1).
        Returns the harmonized composite, [B, 3, H, W] in [0, 1].
        """
        skips = self.encoders(torch.cat([composite, mask], dim=1))
        features = skips[-1]
        decoder_stages = zip(self.decoders, self.attention_gates, self.background_encoders, reversed(skips[:-1]))
        for decoder, gate, background_encoder, skip in decoder_stages:
            features = decoder(gate(torch.cat([upsample_to(features, skip), skip], dim=1)))
            factor = composite.shape[-1] // skip.shape[-1]
            scale_mask = F.avg_pool2d(mask, factor) if factor > 1 else mask
            scale_background = F.avg_pool2d(background, factor) if factor > 1 else background
            features = self.adain(features, scale_mask, background_encoder(scale_background))
        residual = mask * self.residual_head(features)
        return (composite + residual).clamp(0.0, 1.0)
