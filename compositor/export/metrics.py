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
    """Error of one output tensor against its reference."""

    max_abs_error: float
    mean_abs_error: float
    psnr_db: float
    finite: bool

    def as_dict(self) -> dict:
        # JSON has no infinity: identical outputs report a PSNR of null, and a non-finite
        # candidate null errors (``finite`` says which).
        return {
            "max_abs_error": self.max_abs_error if math.isfinite(self.max_abs_error) else None,
            "mean_abs_error": self.mean_abs_error if math.isfinite(self.mean_abs_error) else None,
            "psnr_db": self.psnr_db if math.isfinite(self.psnr_db) else None,
            "finite": self.finite,
        }



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
    return OutputComparison(
        max_abs_error=float(np.max(difference)) if finite else math.inf,
        mean_abs_error=float(np.mean(difference)) if finite else math.inf,
        psnr_db=psnr_db(reference, candidate),
        finite=finite,
    )


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
