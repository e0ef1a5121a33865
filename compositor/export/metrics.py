"""Error measures of an image output against its reference, and the error bounds a tolerance implies
(numpy only: the GPU benchmark and the command-line generators import this on machines that have no
ONNX tooling). ``compositor.export.parity`` re-exports them.

PSNR is our own: images live in [0, 1], so the peak is 1.0 (Polygraphy's ``PsnrCompareFunc`` takes
the reference's maximum instead, which makes the figure depend on the image's content).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class OutputComparison:
    """Error of one output tensor against its reference.

    For a matte (one channel) also inside its boundary band (``matte_band``), where hair is and
    where an error shows: over a whole frame, the flat 0 and 1 regions dilute it.
    """

    max_abs_error: float
    mean_abs_error: float
    psnr_db: float
    finite: bool
    band_max_abs_error: float | None = None
    band_psnr_db: float | None = None

    def as_dict(self) -> dict:
        # JSON has no infinity: identical outputs report a PSNR of null, and a non-finite
        # candidate null errors (``finite`` says which).
        record = {
            "max_abs_error": _finite_or_none(self.max_abs_error),
            "mean_abs_error": _finite_or_none(self.mean_abs_error),
            "psnr_db": _finite_or_none(self.psnr_db),
            "finite": self.finite,
        }
        if self.band_max_abs_error is not None:
            record.update(band_max_abs_error=_finite_or_none(self.band_max_abs_error),
                          band_psnr_db=_finite_or_none(self.band_psnr_db))
        return record


FP16_TOLERANCES: dict[str, dict[str, float]] = {
    "alpha": {"max_abs_error": 0.02},
    "refined_alpha": {"max_abs_error": 0.02},
    "blended": {"psnr_db": 40.0},
    "harmonized": {"psnr_db": 40.0},
}
"""FP16 (the FP16 ONNX on ONNX Runtime CPU, or a TensorRT engine) against FP32 ONNX, on the photo
cases (all cases must be finite). Here, in a module without PyTorch or ONNX Runtime, because the GPU
image checks its engines against them too (``compositor.export.engine_check``)."""


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


MATTE_BAND_STEP = 0.05
"""A pixel is in a matte's boundary band when the matte varies by more than this within the radius."""


def matte_band(matte: np.ndarray, radius: int | None = None) -> np.ndarray:
    """Boolean mask of the pixels within ``radius`` of where ``matte`` ([..., H, W]) changes.

    The band is where the matte's maximum and minimum over a (2r+1)^2 window differ by more than
    ``MATTE_BAND_STEP``: soft edges, hair, and a margin around hard edges. Default radius: 1/64 of
    the shorter side (8 pixels at 512).
    """
    radius = radius if radius is not None else max(1, min(matte.shape[-2:]) // 64)
    width = 2 * radius + 1
    padding = [(0, 0)] * (matte.ndim - 2) + [(radius, radius), (radius, radius)]
    padded = np.pad(matte.astype(np.float32), padding, mode="edge")
    # Separable: the window's max (min) is the max (min) over columns of the max (min) over rows.
    along_rows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    high = np.lib.stride_tricks.sliding_window_view(along_rows.max(axis=-1), width, axis=-2).max(axis=-1)
    low = np.lib.stride_tricks.sliding_window_view(along_rows.min(axis=-1), width, axis=-2).min(axis=-1)
    return (high - low) > MATTE_BAND_STEP



def psnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """PSNR for images in [0, 1] (peak 1.0); ``inf`` when identical, ``nan`` if the candidate is not finite."""
    if not np.all(np.isfinite(candidate)):
        return math.nan
    mse = float(np.mean((reference.astype(np.float64) - candidate.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def compare(reference: np.ndarray, candidate: np.ndarray) -> OutputComparison:
    """Errors of ``candidate`` against ``reference`` (same shape), without a tolerance.

    For a pair of arrays at hand (the GPU benchmark's accuracy columns); the export's checks run
    whole models through Polygraphy (``parity.compare_runners``).
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"shape {candidate.shape} differs from the reference's {reference.shape}")
    finite = bool(np.all(np.isfinite(candidate)))
    difference = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    comparison = OutputComparison(
        max_abs_error=float(np.max(difference)) if finite else math.inf,
        mean_abs_error=float(np.mean(difference)) if finite else math.inf,
        psnr_db=psnr_db(reference, candidate),
        finite=finite,
    )
    return with_band_errors(comparison, reference, candidate)


def with_band_errors(comparison: OutputComparison, reference: np.ndarray, candidate: np.ndarray) -> OutputComparison:
    """``comparison`` with its boundary-band errors filled in when the output is a matte ([B, 1, H, W])."""
    if reference.ndim != 4 or reference.shape[1] != 1 or not comparison.finite:
        return comparison
    band = matte_band(reference[:, 0])[:, None]
    if band.any():
        difference = np.abs(reference[band].astype(np.float64) - candidate[band].astype(np.float64))
        comparison.band_max_abs_error = float(np.max(difference))
        comparison.band_psnr_db = psnr_db(reference[band], candidate[band])
    return comparison


def error_bounds(tolerances: dict[str, dict[str, float]]) -> dict[str, tuple[str, float]]:
    """Per output, the Polygraphy error statistic and absolute bound that a tolerance implies.

    ``max_abs_error: e`` is ``("max", e)``. ``psnr_db: P`` (images in [0, 1], RMSE <= 10^(-P/20)) is
    ``("mean", 10^(-P/20))``: the mean absolute error never exceeds the RMSE, so this bound is
    necessary for the PSNR, which is checked on its own as well. ``polygraphy run`` command lines
    (``tensorrt.polygraphy_tolerances``) and ``parity.simple_compare_func`` both read this.
    """
    bounds = {}
    for output, limits in tolerances.items():
        if "max_abs_error" in limits:
            bounds[output] = ("max", float(limits["max_abs_error"]))
        elif "psnr_db" in limits:
            bounds[output] = ("mean", 10 ** (-limits["psnr_db"] / 20))
    return bounds
