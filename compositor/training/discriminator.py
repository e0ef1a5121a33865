"""A DoveNet-style discriminator (Cong et al., CVPR 2020) for adversarial harmonization training.

Two verdicts from one shared feature extractor over (image, mask):

* global: is this a real photo? (patch scores, averaged);
* domain verification: do the foreground and the background look like the same capture? The
  mask-pooled foreground and background features are compared by an inner product, high when they
  match: a composite whose foreground keeps a foreign colour cast scores low even if both regions
  look like photos on their own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True))


class DomainDiscriminator(nn.Module):
    """Shared encoder, a global patch head and a domain-verification score.

    Args:
        channels: width of the first layer, doubled twice.
    """

    def __init__(self, channels: int = 32):
        super().__init__()
        widths = [channels, channels * 2, channels * 4, channels * 4]
        self.features = nn.Sequential(*(_down(c_in, c_out) for c_in, c_out in zip([4, *widths[:-1]], widths)))
        self.global_head = nn.Conv2d(widths[-1], 1, 3, padding=1)
        self.domain_projection = nn.Conv2d(widths[-1], widths[-1], 1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global score, domain score), each [B]: image [B, 3, H, W] in [0, 1], mask [B, 1, H, W]."""
        features = self.features(torch.cat([image * 2.0 - 1.0, mask], dim=1))
        global_score = self.global_head(features).mean(dim=(1, 2, 3))
        small_mask = F.interpolate(mask, size=features.shape[-2:], mode="area")
        projected = self.domain_projection(features)

        def pooled(weights: torch.Tensor) -> torch.Tensor:
            return (projected * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp(min=1e-3)

        foreground, background = pooled(small_mask), pooled(1.0 - small_mask)
        domain_score = (foreground * background).sum(dim=1) / foreground.shape[1] ** 0.5
        return global_score, domain_score
