"""Parity checks: ONNX Runtime against eager PyTorch (FP32) and FP16 ONNX against FP32 ONNX.

Every check runs two input cases per network:

* ``photos``: real photographs shipped with scikit-image (astronaut and chelsea as sources, coffee
  and rocket as backgrounds) brought to network resolution by the very preprocessing the pipeline
  uses; blending and harmonization get the matte and composite the eager upstream networks produce,
  exactly as in the eager pipeline;
* ``random``: uniform [0, 1] noise, with a batch size other than the traced one (the batch axis must
  really be dynamic).

Errors are measured per output tensor: max and mean absolute error, PSNR (peak 1.0, images are in
[0, 1]) and whether everything is finite. A check collects every miss, then raises ``ParityError``
naming them all.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from compositor.errors import CompositorError
from compositor import imaging, spec
from compositor.onnx_runtime import create_session

log = logging.getLogger(__name__)

FP32_MAX_ABS_ERROR = 1e-4
"""ONNX Runtime FP32 against eager PyTorch, every output, every case."""

FP16_TOLERANCES: dict[str, dict[str, float]] = {
    "alpha": {"max_abs_error": 0.02},
    "blended": {"psnr_db": 40.0},
    "harmonized": {"psnr_db": 40.0},
}
"""FP16 ONNX against FP32 ONNX on ONNX Runtime CPU, on the ``photos`` case (all cases must be finite)."""

PHOTO_SOURCES = ("astronaut", "chelsea")
PHOTO_BACKGROUNDS = ("coffee", "rocket")
RANDOM_BATCH = 3
RANDOM_SEED = 0


class ParityError(CompositorError, RuntimeError):
    """An exported model misses a parity tolerance."""


@dataclass
class OutputComparison:
    """Error of one output tensor against its reference."""

    max_abs_error: float
    mean_abs_error: float
    psnr_db: float
    finite: bool

    def as_dict(self) -> dict:
        return {
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
            # JSON has no infinity: identical outputs report a PSNR of null.
            "psnr_db": self.psnr_db if math.isfinite(self.psnr_db) else None,
            "finite": self.finite,
        }


@dataclass
class ParityReport:
    """All comparisons of one check, and the tolerances they were held to."""

    network: str
    reference: str
    candidate: str
    tolerances: dict
    cases: dict[str, dict[str, OutputComparison]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "tolerances": self.tolerances,
            "passed": self.passed,
            "failures": list(self.failures),
            "cases": {
                case: {output: comparison.as_dict() for output, comparison in outputs.items()}
                for case, outputs in self.cases.items()
            },
        }

    def raise_on_failure(self) -> ParityReport:
        """Return ``self`` if every tolerance holds.

        Raises:
            ParityError: listing every miss.
        """
        if self.failures:
            raise ParityError(
                f"{self.network}: {self.candidate} vs {self.reference}: " + "; ".join(self.failures)
            )
        return self


# --- Inputs ---------------------------------------------------------------------------------------


def _photo(name: str) -> np.ndarray:
    from skimage import data  # heavy import, needed only here

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3]


def photo_feeds(models: dict[str, nn.Module], resolution: tuple[int, int]) -> dict[str, dict[str, np.ndarray]]:
    """Network inputs made from real photos, per network, in the spec's names.

    The sources and backgrounds have different sizes, so they go through ``imaging.preprocess``
    one pair at a time (exactly as single requests would) and are stacked into a batch.
    """
    sources, backgrounds = [], []
    for source_name, background_name in zip(PHOTO_SOURCES, PHOTO_BACKGROUNDS):
        prepared = imaging.preprocess(_photo(source_name)[None], _photo(background_name)[None], resolution)
        sources.append(prepared.source)
        backgrounds.append(prepared.background)
    chain = {"source": np.concatenate(sources), "background": np.concatenate(backgrounds)}
    with torch.no_grad():
        chain = spec.run_chain(lambda name, *inputs: models[name](*map(torch.from_numpy, inputs)).numpy(), chain)
    return spec.network_feeds(chain)


def random_feeds(resolution: tuple[int, int], batch: int = RANDOM_BATCH, seed: int = RANDOM_SEED) -> dict[str, dict[str, np.ndarray]]:
    """Uniform [0, 1] inputs per network, in the spec's names."""
    rng = np.random.default_rng(seed)
    return {
        name: {
            tensor.name: rng.random((batch, *tensor.resolved_shape(resolution)), dtype=np.float32)
            for tensor in model_spec.inputs
        }
        for name, model_spec in spec.NETWORKS.items()
    }


def parity_feeds(models: dict[str, nn.Module], resolution: tuple[int, int]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``{case: {network: {input name: array}}}`` for the ``photos`` and ``random`` cases."""
    return {"photos": photo_feeds(models, resolution), "random": random_feeds(resolution)}


# --- Running --------------------------------------------------------------------------------------


def onnxruntime_session(path: str | Path) -> ort.InferenceSession:
    """A CPU session for ``path``; raises if ONNX Runtime cannot load the model."""
    return create_session(path, quiet=True)


def run_onnx(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a session; returns outputs by name."""
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def run_eager(model: nn.Module, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a contract model on named inputs; returns its single output by its spec name."""
    model_spec = spec.NETWORKS[name]
    with torch.no_grad():
        output = model(*(torch.from_numpy(feeds[t.name]) for t in model_spec.inputs))
    return {model_spec.outputs[0].name: output.numpy()}


# --- Comparing ------------------------------------------------------------------------------------


def psnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """PSNR for images in [0, 1]; ``inf`` when identical, ``nan`` if the candidate is not finite."""
    if not np.all(np.isfinite(candidate)):
        return math.nan
    mse = float(np.mean((reference.astype(np.float64) - candidate.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def compare(reference: np.ndarray, candidate: np.ndarray) -> OutputComparison:
    """Errors of ``candidate`` against ``reference`` (same shape)."""
    if reference.shape != candidate.shape:
        raise ParityError(f"shape {candidate.shape} differs from the reference's {reference.shape}")
    finite = bool(np.all(np.isfinite(candidate)))
    difference = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return OutputComparison(
        max_abs_error=float(np.max(difference)) if finite else math.inf,
        mean_abs_error=float(np.mean(difference)) if finite else math.inf,
        psnr_db=psnr_db(reference, candidate),
        finite=finite,
    )


def check_fp32_parity(
    name: str,
    model: nn.Module,
    onnx_path: str | Path,
    feeds: dict[str, dict[str, dict[str, np.ndarray]]],
    tolerance: float | None = None,
) -> ParityReport:
    """ONNX Runtime (FP32 ONNX) against eager PyTorch, every case, every output.

    Args:
        name: network name.
        model: the contract model that was exported.
        onnx_path: the exported FP32 model.
        feeds: from ``parity_feeds``.
        tolerance: max abs error allowed (default ``FP32_MAX_ABS_ERROR``).

    Returns:
        the report (passed).

    Raises:
        ParityError: if an output is not finite or exceeds ``tolerance``.
    """
    tolerance = FP32_MAX_ABS_ERROR if tolerance is None else tolerance
    session = onnxruntime_session(onnx_path)
    report = ParityReport(name, "eager PyTorch FP32", "ONNX Runtime CPU, FP32 ONNX", {"max_abs_error": tolerance})
    for case, by_network in feeds.items():
        expected = run_eager(model, name, by_network[name])
        actual = run_onnx(session, by_network[name])
        report.cases[case] = {}
        for output, reference in expected.items():
            comparison = compare(reference, actual[output])
            report.cases[case][output] = comparison
            if not comparison.finite or comparison.max_abs_error > tolerance:
                report.failures.append(
                    f"{case}/{output}: max abs error {comparison.max_abs_error:.3g} > {tolerance:g}"
                )
    _log(report)
    return report.raise_on_failure()


def check_fp16_parity(
    name: str,
    fp32_path: str | Path,
    fp16_path: str | Path,
    feeds: dict[str, dict[str, dict[str, np.ndarray]]],
    tolerances: dict[str, dict[str, float]] | None = None,
    toleranced_case: str = "photos",
) -> ParityReport:
    """FP16 ONNX against FP32 ONNX, both on ONNX Runtime CPU.

    Every output of every case must be finite; on ``toleranced_case`` each output must also meet
    its entry of ``tolerances`` (``max_abs_error`` at most, ``psnr_db`` at least). The other cases
    are measured and reported.

    Raises:
        ParityError: listing every miss.
    """
    tolerances = FP16_TOLERANCES if tolerances is None else tolerances
    reference_session = onnxruntime_session(fp32_path)
    session = onnxruntime_session(fp16_path)
    report = ParityReport(
        name,
        "ONNX Runtime CPU, FP32 ONNX",
        "ONNX Runtime CPU, FP16 ONNX",
        {"toleranced_case": toleranced_case, "all_cases": {"finite": True}, **tolerances},
    )
    for case, by_network in feeds.items():
        expected = run_onnx(reference_session, by_network[name])
        actual = run_onnx(session, by_network[name])
        report.cases[case] = {}
        for output, reference in expected.items():
            comparison = compare(reference, actual[output])
            report.cases[case][output] = comparison
            if not comparison.finite:
                report.failures.append(f"{case}/{output}: not finite (inf or nan)")
                continue
            if case != toleranced_case:
                continue
            limits = tolerances.get(output, {})
            if "max_abs_error" in limits and comparison.max_abs_error > limits["max_abs_error"]:
                report.failures.append(
                    f"{case}/{output}: max abs error {comparison.max_abs_error:.4g} > {limits['max_abs_error']:g}"
                )
            if "psnr_db" in limits and not comparison.psnr_db >= limits["psnr_db"]:
                report.failures.append(f"{case}/{output}: PSNR {comparison.psnr_db:.2f} dB < {limits['psnr_db']:g} dB")
    _log(report)
    return report.raise_on_failure()


def _log(report: ParityReport) -> None:
    for case, outputs in report.cases.items():
        for output, c in outputs.items():
            log.info(
                "parity %s %s/%s (%s vs %s): max abs %.3g, mean abs %.3g, PSNR %s, finite %s",
                report.network,
                case,
                output,
                report.candidate,
                report.reference,
                c.max_abs_error,
                c.mean_abs_error,
                f"{c.psnr_db:.1f} dB" if math.isfinite(c.psnr_db) else ("inf" if c.psnr_db > 0 else "nan"),
                c.finite,
            )
