"""Losses and image metrics of the two trained networks (Xing et al., ACM MM 2022).

* blending: L1 on the composite plus L1 inside the boundary band (the paper's eq. 1), where the
  imperfect matte's errors live and a whole-image L1 would dilute them;
* harmonization: L1 plus lambda times an adversarial loss from a DoveNet-style discriminator
  (``discriminator.py``); least-squares GAN targets, which train stably at small batch sizes.

PSNR and SSIM are computed in [0, 1] over a region (the band, the foreground, or everything).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_l1(output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the pixels ``weights`` [B, 1, H, W] selects (weighted)."""
    area = weights.sum() * output.shape[1]
    return ((output - target).abs() * weights).sum() / area.clamp(min=1.0)


def blending_loss(output: torch.Tensor, target: torch.Tensor, band: torch.Tensor, band_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The paper's eq. 1: ``L1(output, target) + band_weight * L1 inside the boundary band``."""
    whole = F.l1_loss(output, target)
    in_band = masked_l1(output, target, band)
    return {"loss": whole + band_weight * in_band, "l1": whole, "band_l1": in_band}


def lsgan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss pushing ``scores`` to 1 (real) or 0 (fake)."""
    return ((scores - (1.0 if real else 0.0)) ** 2).mean()


def psnr(output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB per image ([B]), images in [0, 1]; with ``weights`` only over the region they select."""
    error = (output - target) ** 2
    if weights is None:
        mse = error.mean(dim=(1, 2, 3))
    else:
        mse = (error * weights).sum(dim=(1, 2, 3)) / (weights.sum(dim=(1, 2, 3)) * output.shape[1]).clamp(min=1.0)
    return 10.0 * torch.log10(1.0 / mse.clamp(min=1e-10))


def _gaussian_window(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    axis = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(axis**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return (kernel[:, None] * kernel[None, :])[None, None]


def ssim(output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """SSIM per image ([B]) (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03, range 1),
    averaged over channels and over the pixels ``weights`` selects (all pixels without)."""
    channels = output.shape[1]
    window = _gaussian_window().to(output).expand(channels, 1, -1, -1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, padding=window.shape[-1] // 2, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(output), blur(target)
    var_x = blur(output * output) - mu_x**2
    var_y = blur(target * target) - mu_y**2
    cov = blur(output * target) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    if weights is None:
        return ssim_map.mean(dim=(1, 2, 3))
    return (ssim_map * weights).sum(dim=(1, 2, 3)) / (weights.sum(dim=(1, 2, 3)) * channels).clamp(min=1.0)


HARMONY_CAP_DB = 40.0
"""Validation caps each input kind's PSNR here: above it an output is as good as identical, and an
already harmonious input, copied through unchanged, would otherwise outweigh every other kind."""
DISHARMONY_LAB = 2.0
"""Lab units (mean absolute change of the foreground's Lab mean and std) above which an input counts
as needing a change: the gate's label."""


def harmonization_loss(parts: dict[str, torch.Tensor], batch, harmonious_weight: float = 3.0, gate_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The harmonizer's loss on a ``TrainingBatch``: the paper's L1 plus what the synthesis knows.

    * L1 over the image plus L1 inside the foreground, per sample, with an already harmonious input
      weighted ``harmonious_weight`` times (harm to it is what a user sees first);
    * with a tone transform (``parts`` holds its ``mean``, ``std``, ``gate_logit``): L1 of the predicted
      Lab mean/std of the foreground against the target's (in units of 50 Lab), and a binary
      cross-entropy teaching the gate whether the input's foreground is off the target's statistics
      by more than ``DISHARMONY_LAB``.
    """
    from compositor.networks.colour import masked_statistics, rgb_to_lab
    from compositor.training.synthesis import KINDS

    output, target, alpha = parts["harmonized"], batch.target, batch.alpha
    weights = torch.ones(len(target), device=target.device)
    if batch.kind is not None:
        weights = torch.where(batch.kind == KINDS.index("harmonious"), torch.full_like(weights, harmonious_weight), weights)
    error = (output - target).abs()
    image = error.mean(dim=(1, 2, 3))
    foreground = (error * alpha).sum(dim=(1, 2, 3)) / (alpha.sum(dim=(1, 2, 3)) * 3).clamp(min=1.0)
    l1 = (weights * (image + foreground)).sum() / weights.sum()
    losses = {"l1": l1}
    loss = l1
    if "mean" in parts:
        statistics_weights = alpha * (alpha >= 0.1).to(alpha.dtype)
        target_mean, target_std = masked_statistics(rgb_to_lab(batch.foreground), statistics_weights)
        input_mean, input_std = masked_statistics(rgb_to_lab(batch.shifted_foreground), statistics_weights)
        statistics = ((parts["mean"] - target_mean).abs() + (parts["std"] - target_std).abs()).mean() / 50.0
        distance = ((input_mean - target_mean).abs() + (input_std - target_std).abs()).mean(dim=(1, 2, 3)) / 2
        label = (distance > DISHARMONY_LAB).to(target.dtype)
        gate = F.binary_cross_entropy_with_logits(parts["gate_logit"].flatten(), label)
        losses.update(statistics=statistics, gate=gate)
        loss = loss + statistics + gate_weight * gate
    losses["loss"] = loss
    return losses
