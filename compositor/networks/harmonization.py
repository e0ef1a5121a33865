"""Harmonization U-Net with complete-background cues (after Xing et al., ACM MM 2022).

Given a composite and its foreground mask, the net adjusts the foreground's appearance to the new
background. Unlike harmonizers that only see the background *around* the pasted object, it encodes
the *complete* background (before anything was pasted) at every decoder scale and moves the
foreground's feature statistics to the background's (mask-weighted, region-aware AdaIN). Attention
gates on the three outer skip connections let the decoder choose between encoder detail and
decoder context. The residual head is zero-initialised and masked: an untrained net returns its
input, and the background is never altered.

Two options beyond the paper's net, both stored in the weights file's hyperparameters:

* ``image_transfer=True`` carries the paper's idea one scale further: before the U-Net, the
  foreground's Lab colour statistics are moved to the complete background's (Reinhard transfer as
  masked AdaIN at the image scale), with the target statistics corrected by a small learned head
  that sees both images. Its correction starts at zero, so an untrained net *is* the classical
  colour transfer, and training learns what statistics alone miss instead of the whole colour shift.
* ``background_cue="partial"`` is the paper's ablation: the net sees only the background outside
  the mask (the composite's own surroundings), as harmonizers without a complete background do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compositor.networks.colour import lab_to_rgb, masked_statistics, rgb_to_lab, transfer_statistics
from compositor.networks.layers import (
    ConvBlock,
    UNetEncoder,
    decoder_pairs,
    dilate,
    short_side,
    unet_widths,
    upsample_to,
    zero_initialised_conv,
)

BACKGROUND_CUES = ("complete", "partial")


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

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor,
        background_features: torch.Tensor,
        background_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Restyle ``features`` inside ``mask``; ``background_weights`` limits the background's statistics
        to part of it (the partial-cue ablation), by default every background pixel counts."""
        fg_mean, fg_std = masked_statistics(features, mask)
        bg_mean, bg_std = masked_statistics(background_features, background_weights)
        restyled = transfer_statistics(features, fg_mean, fg_std, bg_mean, bg_std)
        return mask * restyled + (1.0 - mask) * features


class StatisticsEncoder(nn.Sequential):
    """Two stride-2 3x3 convolutions + ReLU: a coarse summary of an image for the statistics head."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels // 2, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels // 2, out_channels, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )


class ImageColourTransfer(nn.Module):
    """Masked AdaIN at the image scale, in Lab, toward learned corrections of the background's statistics.

    The foreground's mask-weighted Lab mean/std move to a target built from the background:

    * a per-channel mix of the whole background's statistics and those of the *region* the object
      stands in: behind the object for the complete cue (what only a complete background shows),
      the object's surroundings for the partial cue. The object usually shares the lighting and
      tone of the place it stands in more than those of the whole frame;
    * plus a correction (mean shift, log-std scale per Lab channel, and a per-image change of the
      mix) from a small head over the Lab statistics and pooled features of both images.

    The mix starts at the whole background and the head's last layer at zero, so an untrained
    module is exactly Reinhard colour transfer toward the complete background. The FP16 export keeps
    this module in FP32.

    Args:
        feature_channels: channels of each statistics encoder.
        hidden_channels: width of the correction head.
        input_scale: the encoders see the images average-pooled by this factor.
    """

    # Lab units per unit of the head's mean output: keeps the head's weights near 1e-2 for shifts
    # of a few L/a/b units, the scale Adam's steps suit.
    mean_scale = 10.0
    # The partial cue's region: the surroundings within this fraction of the image's short side.
    surround_fraction = 1 / 8

    def __init__(self, feature_channels: int = 32, hidden_channels: int = 64, input_scale: int = 4):
        super().__init__()
        self.input_scale = input_scale
        self.background_encoder = StatisticsEncoder(3, feature_channels)
        self.foreground_encoder = StatisticsEncoder(4, feature_channels)
        self.correction = nn.Sequential(
            nn.Conv2d(18 + 4 * feature_channels, hidden_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, 12, 1),
        )
        nn.init.zeros_(self.correction[-1].weight)
        nn.init.zeros_(self.correction[-1].bias)
        # How far each target statistic (3 means, 3 stds) moves from the whole background toward the
        # region's; 0 at the start.
        self.region_mix = nn.Parameter(torch.zeros(1, 6, 1, 1))

    def region_weights(self, mask: torch.Tensor, background_weights: torch.Tensor | None) -> torch.Tensor:
        """Where the object stands: behind it (complete cue) or, when the background behind it is
        unknown (partial cue), its visible surroundings."""
        if background_weights is None:
            return mask
        radius = max(1, int(short_side(mask) * self.surround_fraction) // 2)  # see short_side
        near = dilate(mask, radius)
        return near * background_weights

    def forward(
        self,
        composite: torch.Tensor,
        mask: torch.Tensor,
        background: torch.Tensor,
        background_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        lab = rgb_to_lab(composite)
        background_lab = rgb_to_lab(background)
        fg_mean, fg_std = masked_statistics(lab, mask)
        bg_mean, bg_std = masked_statistics(background_lab, background_weights)
        region_mean, region_std = masked_statistics(background_lab, self.region_weights(mask, background_weights))

        pooled_mask = F.avg_pool2d(mask, self.input_scale)
        pooled_weights = None if background_weights is None else F.avg_pool2d(background_weights, self.input_scale)
        bg_features = self.background_encoder(F.avg_pool2d(background, self.input_scale))
        fg_features = self.foreground_encoder(torch.cat([F.avg_pool2d(composite, self.input_scale), pooled_mask], dim=1))
        feature_mask = F.avg_pool2d(pooled_mask, 4)
        feature_weights = None if pooled_weights is None else F.avg_pool2d(pooled_weights, 4)
        summary = torch.cat(
            [
                # Lab statistics scaled to about unit range (L spans 0..100, a/b about -100..100).
                fg_mean / 50.0, fg_std / 50.0, bg_mean / 50.0, bg_std / 50.0, region_mean / 50.0, region_std / 50.0,
                *masked_statistics(bg_features, feature_weights),
                *masked_statistics(fg_features, feature_mask),
            ],
            dim=1,
        )
        correction = self.correction(summary)
        toward_region = (self.region_mix + correction[:, 6:]).clamp(0.0, 1.0)
        target_mean = torch.lerp(bg_mean, region_mean, toward_region[:, :3]) + self.mean_scale * correction[:, :3]
        target_std = torch.lerp(bg_std, region_std, toward_region[:, 3:]) * torch.exp(correction[:, 3:6])
        transferred = lab_to_rgb(transfer_statistics(lab, fg_mean, fg_std, target_mean, target_std))
        return mask * transferred + (1.0 - mask) * composite


class HarmonizationUNet(nn.Module):
    """U-Net on (composite RGB, mask) with background-conditioned decoder statistics.

    Args:
        base_channels: channels at full resolution, doubled at each pooling.
        levels: encoder levels (5: full .. 1/16); the decoder has ``levels - 1``, the outer three of
            which carry attention gates.
        image_transfer: run ``ImageColourTransfer`` before the U-Net (off: the paper's exact net).
        background_cue: ``"complete"`` (the paper's net) or ``"partial"`` (the ablation that sees only
            the background outside the mask).
    """

    attention_levels = 3

    def __init__(self, base_channels: int = 16, levels: int = 5, image_transfer: bool = False, background_cue: str = "complete"):
        super().__init__()
        if background_cue not in BACKGROUND_CUES:
            raise ValueError(f"background_cue must be one of {BACKGROUND_CUES}, got {background_cue!r}")
        # Recorded so saved weights can rebuild the architecture (networks/weights.py).
        self.hyperparameters = {"base_channels": base_channels, "levels": levels}
        if image_transfer or background_cue != "complete":
            # Only non-default options are recorded, so files of the paper's net keep their metadata.
            self.hyperparameters.update(image_transfer=image_transfer, background_cue=background_cue)
        self.background_cue = background_cue
        self.image_transfer = ImageColourTransfer() if image_transfer else None
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
        background_weights = None
        if self.background_cue == "partial":
            # The ablation: only the composite's own surroundings are known, not what the object hides.
            background_weights = 1.0 - mask
            background = background * background_weights
        if self.image_transfer is not None:
            composite = self.image_transfer(composite, mask, background, background_weights)
        skips = self.encoders(torch.cat([composite, mask], dim=1))
        features = skips[-1]
        decoder_stages = zip(self.decoders, self.attention_gates, self.background_encoders, reversed(skips[:-1]))
        for decoder, gate, background_encoder, skip in decoder_stages:
            features = decoder(gate(torch.cat([upsample_to(features, skip), skip], dim=1)))
            factor = composite.shape[-1] // skip.shape[-1]
            scale_mask = F.avg_pool2d(mask, factor) if factor > 1 else mask
            scale_background = F.avg_pool2d(background, factor) if factor > 1 else background
            scale_weights = None if background_weights is None else 1.0 - scale_mask
            features = self.adain(features, scale_mask, background_encoder(scale_background), scale_weights)
        residual = mask * self.residual_head(features)
        return (composite + residual).clamp(0.0, 1.0)
