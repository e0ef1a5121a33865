"""CIE Lab colour space and masked colour statistics, in torch ops that export to plain ONNX.

Reinhard et al.'s colour transfer (2001) moves an image's per-channel mean and standard deviation
in a decorrelated colour space to those of a reference. Data synthesis, the classical baseline and
the harmonizer's image-scale transfer all use these functions, so the baseline the network is
measured against is exactly the transfer it starts from.

Only elementwise ops, ``Where`` and ``Pow`` (sRGB gamma, the cube root of Lab), so the graph exports
to ONNX and TensorRT as is. The FP16 export keeps the module that calls them in FP32 (its sums over
an image overflow FP16, and Lab's cube root near zero is sensitive to rounding).
"""

from __future__ import annotations

import torch

# sRGB (D65) -> XYZ, rows X, Y, Z; columns R, G, B (IEC 61966-2-1).
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_XYZ_TO_RGB = (
    (3.240479, -1.537150, -0.498535),
    (-0.969256, 1.875992, 0.041556),
    (0.055648, -0.204043, 1.057311),
)
_WHITE_D65 = (0.950456, 1.0, 1.088754)
_DELTA = 6.0 / 29.0
STATISTICS_EPS = 1e-5


def _mix(image: torch.Tensor, matrix) -> torch.Tensor:
    """Per-pixel 3x3 colour matrix on [B, 3, H, W], as three weighted sums (exports as Mul/Add)."""
    r, g, b = image[:, 0:1], image[:, 1:2], image[:, 2:3]
    return torch.cat([row[0] * r + row[1] * g + row[2] * b for row in matrix], dim=1)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], [B, 3, H, W] -> CIE Lab (L in [0, 100], a/b roughly [-128, 127])."""
    rgb = rgb.clamp(0.0, 1.0)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).clamp(min=0.0) ** 2.4, rgb / 12.92)
    xyz = _mix(linear, _RGB_TO_XYZ)
    xyz = torch.cat([xyz[:, i : i + 1] / _WHITE_D65[i] for i in range(3)], dim=1)
    f = torch.where(xyz > _DELTA**3, xyz.clamp(min=_DELTA**3) ** (1.0 / 3.0), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab [B, 3, H, W] -> sRGB clamped to [0, 1]."""
    fy = (lab[:, 0:1] + 16.0) / 116.0
    f = torch.cat([fy + lab[:, 1:2] / 500.0, fy, fy - lab[:, 2:3] / 200.0], dim=1)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
    xyz = torch.cat([xyz[:, i : i + 1] * _WHITE_D65[i] for i in range(3)], dim=1)
    linear = _mix(xyz, _XYZ_TO_RGB).clamp(0.0, 1.0)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308) ** (1.0 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0.0, 1.0)


def masked_statistics(values: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over H, W, weighted by ``weights`` [B, 1, H, W].

    Returns two [B, C, 1, 1] tensors. Without weights every pixel counts equally.
    """
    if weights is None:
        mean = _sum_over_image(values) / (values.shape[2] * values.shape[3])
        variance = _sum_over_image((values - mean) ** 2) / (values.shape[2] * values.shape[3])
    else:
        area = _sum_over_image(weights) + STATISTICS_EPS
        mean = _sum_over_image(values * weights) / area
        variance = _sum_over_image((values - mean) ** 2 * weights) / area
    return mean, torch.sqrt(variance + STATISTICS_EPS)


def _sum_over_image(values: torch.Tensor) -> torch.Tensor:
    """Sum over H and W as two reductions, rows first: each adds up hundreds of terms, not a whole
    image's. ONNX Runtime accumulates a reduction in FP32 one term after another; over the 458k
    pixels of a 512x896 bucket that drifted by 6.5e-4 from eager PyTorch in the harmonizer's output
    (PyTorch sums pairwise); two short reductions bring it back under the 1e-4 parity tolerance."""
    return values.sum(dim=3, keepdim=True).sum(dim=2, keepdim=True)


def transfer_statistics(
    values: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    target_mean: torch.Tensor,
    target_std: torch.Tensor,
) -> torch.Tensor:
    """Move ``values`` from (``mean``, ``std``) to (``target_mean``, ``target_std``) per channel."""
    return (values - mean) / std * target_std + target_mean


def reinhard_transfer(
    image: torch.Tensor,
    reference: torch.Tensor,
    image_weights: torch.Tensor | None = None,
    reference_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reinhard colour transfer in Lab: ``image``'s statistics (weighted) become ``reference``'s.

    Args:
        image: sRGB [B, 3, H, W] in [0, 1].
        reference: sRGB [B, 3, H', W'] in [0, 1] whose statistics are the target.
        image_weights: optional [B, 1, H, W] weights of the pixels whose statistics are moved
            (a foreground matte); every pixel of ``image`` is transformed either way.
        reference_weights: optional [B, 1, H', W'] weights of the reference's pixels.

    Returns:
        sRGB [B, 3, H, W] in [0, 1].
    """
    lab = rgb_to_lab(image)
    mean, std = masked_statistics(lab, image_weights)
    target_mean, target_std = masked_statistics(rgb_to_lab(reference), reference_weights)
    return lab_to_rgb(transfer_statistics(lab, mean, std, target_mean, target_std))
