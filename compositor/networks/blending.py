"""Blending U-Net: replaces linear alpha blending with a learned, seamless composite.

Linear blending of a photo onto a new background with an imperfect matte leaves colour fringes
(the old background shining through hair and lace). The net sees the source, the imperfect alpha
and the complete new background and predicts a residual over the linear composite; its last layer
starts at zero, so an untrained net is exactly linear blending.

With ``refine_alpha=True`` a second zero-initialised head corrects the matte itself before the
linear composite: most of what an imperfect matte gets wrong is *where* the edge is (eroded or
dilated), which a correction of alpha expresses directly, while the colour residual handles what
no alpha can (the old background's colour inside soft edges). On synthetic data the true matte in
place of the imperfect one gains about 8 dB in the boundary band, so this is where the error is.
"""

from __future__ import annotations

import torch
from torch import nn

from compositor.networks.layers import (
    ConvBlock,
    UNetEncoder,
    decoder_pairs,
    dilate,
    erode,
    linear_composite,
    short_side,
    unet_widths,
    upsample_to,
    zero_initialised_conv,
)


EDGE_FRACTION = 1 / 32
"""The matte correction acts within this fraction of the image's short side of the given matte's edge."""


def edge_region(alpha: torch.Tensor) -> torch.Tensor:
    """1 within ``EDGE_FRACTION`` of the short side from any edge of ``alpha`` (dilation minus erosion), else 0.

    A matting network's errors sit at the matte's edge; far inside the subject or the background the
    matte is right, and a correction there could only wash the subject out (seen at 512 pixels with
    a net trained at 256 before this gate existed).
    """
    # The short side, not the width: the same radius at every aspect bucket of a deployment, which
    # is what the ONNX export bakes in (see ``short_side``); unchanged for square inputs.
    radius = max(1, int(short_side(alpha) * EDGE_FRACTION))
    dilated, eroded = dilate(alpha, radius), erode(alpha, radius)
    # A steep ramp: 1 wherever dilation and erosion differ by 0.01 or more; plain float arithmetic
    # (Mul, Clip) in every runtime, no BOOL tensor in the graph.
    return ((dilated - eroded) * 100.0).clamp(0.0, 1.0)


class BlendingUNet(nn.Module):
    """Shallow U-Net over (source RGB, alpha, background RGB) predicting a composite residual.

    Args:
        base_channels: channels at full resolution; doubled at each of the ``levels - 1`` poolings.
        levels: encoder levels (4 by default: full, 1/2, 1/4, 1/8 resolution).
        refine_alpha: add the zero-initialised matte-correction head (off: the paper's net).
    """

    def __init__(self, base_channels: int = 16, levels: int = 4, refine_alpha: bool = False):
        super().__init__()
        # Recorded so saved weights can rebuild the architecture (networks/weights.py).
        self.hyperparameters = {"base_channels": base_channels, "levels": levels}
        if refine_alpha:
            self.hyperparameters["refine_alpha"] = True
        widths = unet_widths(base_channels, levels)
        self.encoders = UNetEncoder(7, widths)
        self.decoders = nn.ModuleList(ConvBlock(deep + skip, skip) for deep, skip in decoder_pairs(widths))
        self.residual_head = zero_initialised_conv(widths[0], 3)
        self.alpha_head = zero_initialised_conv(widths[0], 1) if refine_alpha else None

    def forward(self, source: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """Blend ``source`` onto ``background`` (all [B, C, H, W] in [0, 1]); returns [B, 3, H, W]."""
        return self.blend(source, alpha, background)[0]

    def blend(
        self, source: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The composite [B, 3, H, W] and the matte it was made with [B, 1, H, W] (``alpha`` corrected
        at its edge with ``refine_alpha``, else ``alpha`` itself): what the chain hands on."""
        skips = self.encoders(torch.cat([source, alpha, background], dim=1))
        features = skips[-1]
        for decoder, skip in zip(self.decoders, reversed(skips[:-1])):
            features = decoder(torch.cat([upsample_to(features, skip), skip], dim=1))
        residual = self.residual_head(features)
        if self.alpha_head is not None:
            alpha = (alpha + edge_region(alpha) * self.alpha_head(features)).clamp(0.0, 1.0)
        return (linear_composite(source, alpha, background) + residual).clamp(0.0, 1.0), alpha
