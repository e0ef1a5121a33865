"""Harmonization U-Net with complete-background cues (after Xing et al., ACM MM 2022).

Given a composite and its foreground mask, the net adjusts the foreground's appearance to the new
background. Unlike harmonizers that only see the background *around* the pasted object, it encodes
the *complete* background (before anything was pasted) at every decoder scale and moves the
foreground's feature statistics to the background's (mask-weighted, region-aware AdaIN). Attention
gates on the three outer skip connections let the decoder choose between encoder detail and
decoder context. The residual head is zero-initialised and masked: an untrained net returns its
input, and the background is never altered.

Two options beyond the paper's net, both stored in the weights file's hyperparameters:

* ``tone_transform=True`` puts a ``ToneTransform`` in front of the U-Net: from global cues of the
  foreground (un-premultiplied with the complete background) and of the background it predicts the
  foreground's harmonious Lab statistics and a gate saying whether to act at all, and applies that
  colour transform to every foreground pixel; the gate also scales the U-Net's residual. It starts
  as the identity, and a harmonious input is meant to pass through it unchanged.
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
    """Two stride-2 3x3 convolutions + ReLU: a coarse summary of an image for the tone head."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels // 2, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels // 2, out_channels, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )


def unpremultiply(composite: torch.Tensor, mask: torch.Tensor, background: torch.Tensor, min_alpha: float) -> torch.Tensor:
    """The foreground's own colours ``F = (C - (1 - alpha) B) / alpha`` where alpha >= ``min_alpha``
    (the composite elsewhere: there the background dominates and the division amplifies noise)."""
    safe = mask.clamp(min=min_alpha)
    foreground = ((composite - (1.0 - safe) * background) / safe).clamp(0.0, 1.0)
    return torch.where(mask >= min_alpha, foreground, composite)


def soft_histogram(values: torch.Tensor, weights: torch.Tensor | None, centres: tuple[float, ...], width: float) -> torch.Tensor:
    """Per-channel weighted histograms with triangular bins, [B, C * len(centres), 1, 1], each summing to ~1.

    Position-independent, like the mean and standard deviation, but it also sees the shape of a
    distribution (a face's skin tones, a sky's gradient)."""
    if weights is None:
        weights = torch.ones_like(values[:, :1])
    area = weights.sum(dim=(2, 3), keepdim=True) + 1e-5
    bins = [(F.relu(1.0 - (values - centre).abs() / width) * weights).sum(dim=(2, 3), keepdim=True) / area for centre in centres]
    return torch.cat(bins, dim=1)


class ToneTransform(nn.Module):
    """Predicts the foreground's harmonious colour statistics, and whether to act at all; applies them per pixel.

    Harmony is a shared tone: a person keeps the colours of skin and clothes, so the target is not
    the background's statistics but what *this* foreground looks like in the background's tone.
    From global, position-independent cues only (Lab mean/std and histograms of the un-premultiplied
    foreground and of the complete background, and masked mean/std of small CNN features over the
    *normalised* foreground, whose content survives any colour shift, and over the background), a
    head predicts

    * the foreground's target Lab mean and std, as a change on its own (``mean_scale`` Lab units per
      unit output, a log-scale on the std), and
    * a gate in (0, 1): how much of that change to apply. Trained to recognise an already
      harmonious input, it keeps such an input as it is;

    the Lab affine map from the foreground's statistics to ``own + gate * change`` is applied to
    every foreground pixel. With the complete background known, the foreground is un-premultiplied
    first (``unpremultiply``), so statistics and mapping see its own colours and a soft edge keeps no
    rim of the original colour. The head's last layer starts at zero: an untrained module returns its
    input (the gate only scales a change that is zero), never classical colour transfer.

    Args:
        feature_channels: channels of each statistics encoder.
        hidden_channels: width of the head.
        input_scale: the encoders see the images average-pooled by this factor.
    """

    mean_scale = 10.0
    min_alpha = 0.1
    histogram_centres = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
    histogram_width = 0.5

    def __init__(self, feature_channels: int = 32, hidden_channels: int = 96, input_scale: int = 4):
        super().__init__()
        self.input_scale = input_scale
        self.foreground_encoder = StatisticsEncoder(7, feature_channels)
        self.background_encoder = StatisticsEncoder(3, feature_channels)
        summary = 12 + 2 * 3 * len(self.histogram_centres) + 4 * feature_channels
        self.head = nn.Sequential(
            nn.Conv2d(summary, hidden_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, 7, 1),
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(
        self,
        composite: torch.Tensor,
        mask: torch.Tensor,
        background: torch.Tensor,
        background_weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Returns ``composite`` (the re-toned composite), ``gate`` [B, 1, 1, 1] in (0, 1), ``gate_logit``, and
        the ungated prediction of the foreground's Lab ``mean`` and ``std`` ([B, 3, 1, 1] each)."""
        if background_weights is None:
            foreground = unpremultiply(composite, mask, background, self.min_alpha)
        else:
            # The partial cue does not know what lies behind the object's soft edge.
            foreground = composite
        weights = mask * (mask >= self.min_alpha).to(mask.dtype)
        lab = rgb_to_lab(foreground)
        background_lab = rgb_to_lab(background)
        fg_mean, fg_std = masked_statistics(lab, weights)
        bg_mean, bg_std = masked_statistics(background_lab, background_weights)
        normalised = (lab - fg_mean) / fg_std
        bg_normalised = (background_lab - bg_mean) / bg_std

        pooled_mask = F.avg_pool2d(weights, self.input_scale)
        pooled_weights = None if background_weights is None else F.avg_pool2d(background_weights, self.input_scale)
        # The normalised foreground carries its content whatever its colours; its absolute Lab colours
        # say whether those look like a person's skin and clothes in this light.
        fg_input = torch.cat([F.avg_pool2d(normalised.clamp(-3.0, 3.0) / 3.0 * weights, self.input_scale),
                              F.avg_pool2d(lab / 50.0 * weights, self.input_scale), pooled_mask], dim=1)
        fg_features = self.foreground_encoder(fg_input)
        bg_features = self.background_encoder(F.avg_pool2d(background_lab / 50.0, self.input_scale))
        feature_mask = F.avg_pool2d(pooled_mask, 4)
        feature_weights = None if pooled_weights is None else F.avg_pool2d(pooled_weights, 4)
        centres, width = self.histogram_centres, self.histogram_width
        summary = torch.cat(
            [
                # Lab statistics scaled to about unit range (L spans 0..100, a/b about -100..100).
                fg_mean / 50.0, fg_std / 50.0, bg_mean / 50.0, bg_std / 50.0,
                soft_histogram(normalised, weights, centres, width),
                soft_histogram(bg_normalised, background_weights, centres, width),
                *masked_statistics(fg_features, feature_mask),
                *masked_statistics(bg_features, feature_weights),
            ],
            dim=1,
        )
        out = self.head(summary)
        change_mean, change_log_std, gate_logit = out[:, 0:3], out[:, 3:6], out[:, 6:7]
        gate = torch.sigmoid(gate_logit)
        target_mean = fg_mean + gate * self.mean_scale * change_mean
        target_std = fg_std * torch.exp(gate * change_log_std)
        toned = lab_to_rgb(transfer_statistics(lab, fg_mean, fg_std, target_mean, target_std))
        return {
            "composite": composite + mask * (toned - foreground),
            "gate": gate,
            "gate_logit": gate_logit,
            "mean": fg_mean + self.mean_scale * change_mean,
            "std": fg_std * torch.exp(change_log_std),
        }


class HarmonizationUNet(nn.Module):
    """U-Net on (composite RGB, mask) with background-conditioned decoder statistics.

    Args:
        base_channels: channels at full resolution, doubled at each pooling.
        levels: encoder levels (5: full .. 1/16); the decoder has ``levels - 1``, the outer three of
            which carry attention gates.
        tone_transform: run ``ToneTransform`` before the U-Net and gate its residual (off: the paper's exact net).
        background_cue: ``"complete"`` (the paper's net) or ``"partial"`` (the ablation that sees only
            the background outside the mask).
    """

    attention_levels = 3

    def __init__(self, base_channels: int = 16, levels: int = 5, tone_transform: bool = False, background_cue: str = "complete"):
        super().__init__()
        if background_cue not in BACKGROUND_CUES:
            raise ValueError(f"background_cue must be one of {BACKGROUND_CUES}, got {background_cue!r}")
        # Recorded so saved weights can rebuild the architecture (networks/weights.py).
        self.hyperparameters = {"base_channels": base_channels, "levels": levels}
        if tone_transform or background_cue != "complete":
            # Only non-default options are recorded, so files of the paper's net keep their metadata.
            self.hyperparameters.update(tone_transform=tone_transform, background_cue=background_cue)
        self.background_cue = background_cue
        self.tone = ToneTransform() if tone_transform else None
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
        return self.forward_parts(composite, mask, background)["harmonized"]

    def forward_parts(self, composite: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forward``'s output as ``harmonized``, with the tone transform's parts (its ``gate``,
        ``gate_logit`` and predicted foreground ``mean``/``std``, see ``ToneTransform``) where it has one:
        what training supervises besides the image."""
        background_weights = None
        if self.background_cue == "partial":
            # The ablation: only the composite's own surroundings are known, not what the object hides.
            background_weights = 1.0 - mask
            background = background * background_weights
        parts: dict[str, torch.Tensor] = {}
        gate = None
        if self.tone is not None:
            parts = self.tone(composite, mask, background, background_weights)
            composite, gate = parts["composite"], parts["gate"]
        skips = self.encoders(torch.cat([composite, mask], dim=1))
        features = skips[-1]
        decoder_stages = zip(self.decoders, self.attention_gates, self.background_encoders, reversed(skips[:-1]))
        for decoder, attention, background_encoder, skip in decoder_stages:
            features = decoder(attention(torch.cat([upsample_to(features, skip), skip], dim=1)))
            factor = composite.shape[-1] // skip.shape[-1]
            scale_mask = F.avg_pool2d(mask, factor) if factor > 1 else mask
            scale_background = F.avg_pool2d(background, factor) if factor > 1 else background
            scale_weights = None if background_weights is None else 1.0 - scale_mask
            features = self.adain(features, scale_mask, background_encoder(scale_background), scale_weights)
        residual = mask * self.residual_head(features)
        if gate is not None:
            # The U-Net's local correction is part of acting too: off where the input is harmonious.
            residual = gate * residual
        return {**parts, "harmonized": (composite + residual).clamp(0.0, 1.0)}
