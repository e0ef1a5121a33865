"""Parity checks: ONNX Runtime against eager PyTorch (FP32), FP16 ONNX against FP32 ONNX, and (where
TensorRT exists) an engine against ONNX Runtime: one comparison, through Polygraphy.

Every check runs two input cases per network at the reference (square) bucket, and again at the
widest bucket (``photos_wide``, ``random_wide``) when the resolution has more than one: the graphs
are traced at the square bucket, so a shape baked into the trace shows up at the other:

* ``photos``: real photographs shipped with scikit-image (astronaut and chelsea as sources, coffee
  and rocket as backgrounds) brought to the bucket by the very preprocessing the pipeline uses;
  blending and harmonization get the matte and composite the eager upstream networks produce,
  exactly as in the eager pipeline;
* ``random``: uniform [0, 1] noise, with a batch size other than the traced one (the batch axis must
  really be dynamic).

What Polygraphy does: ``compare_runners`` runs both sides with ``polygraphy.comparator.Comparator``
(one iteration per case) on Polygraphy runners (``OnnxrtRunner`` for ONNX Runtime, ``TrtRunner``
from ``compositor.export.tensorrt`` for engines) and checks each output with ``SimpleCompareFunc``
(``CompareFunc.simple``'s replacement in Polygraphy 0.53) with per-output ``check_error_stat``,
``atol`` and ``rtol=0``; the max and mean absolute errors in the report are Polygraphy's.

What stays our own, and why:

* ``EagerRunner``: Polygraphy's ``PytRunner`` moves inputs to CUDA unconditionally and treats the
  model's output as a sequence of outputs, so it cannot run our single-output contract models on a
  CPU machine; ``EagerRunner`` is a small ``BaseRunner`` that can;
* PSNR (``metrics.psnr_db``, re-exported here with ``compare``): Polygraphy's ``PsnrCompareFunc`` takes the reference's maximum as the peak,
  so its PSNR depends on image content; our images live in [0, 1] and the FP16 tolerances are set
  with the fixed peak 1.0. A PSNR tolerance is checked on our PSNR, and also handed to Polygraphy
  as the bound it implies on the mean absolute error (mean abs <= RMSE = 10^(-PSNR/20));
* finiteness, which is reported per output and required of every case, toleranced or not;
* the input cases (``parity_feeds``).

A check collects every miss, then raises ``ParityError`` naming them all.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER
from torch import nn

from compositor import imaging
from compositor.contract import spec
from compositor.errors import CompositorError
from compositor.export.metrics import FP16_TOLERANCES, OutputComparison, compare, error_bounds, psnr_db, with_band_errors  # noqa: F401 - compare: re-exported
from compositor.onnx_runtime import create_session

log = logging.getLogger(__name__)

FP32_MAX_ABS_ERROR = 1e-4
"""ONNX Runtime FP32 against eager PyTorch, every output, every case."""


PHOTO_SOURCES = ("astronaut", "chelsea")
PHOTO_BACKGROUNDS = ("coffee", "rocket")
RANDOM_BATCH = 3
RANDOM_SEED = 0
WIDE_SUFFIX = "_wide"
"""Cases at the widest bucket are named ``photos_wide``, ``random_wide``."""


class ParityError(CompositorError, RuntimeError):
    """An exported model misses a parity tolerance."""


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


def photo_feeds(models: dict[str, nn.Module], size: tuple[int, int]) -> dict[str, dict[str, np.ndarray]]:
    """Network inputs made from real photos at ``size`` (one bucket), per network, in the spec's names.

    The sources and backgrounds have different sizes, so they go through ``imaging.preprocess``
    (at the fixed ``size``, whatever bucket their proportions would pick) one pair at a time,
    exactly as single requests would, and are stacked into a batch.
    """
    sources, backgrounds = [], []
    for source_name, background_name in zip(PHOTO_SOURCES, PHOTO_BACKGROUNDS):
        prepared = imaging.preprocess(_photo(source_name)[None], _photo(background_name)[None], spec.fixed_resolution(*size))
        sources.append(prepared.source)
        backgrounds.append(prepared.background)
    chain = {"source": np.concatenate(sources), "background": np.concatenate(backgrounds)}
    with torch.no_grad():
        chain = spec.run_chain(lambda name, *inputs: _numpy(models[name](*map(torch.from_numpy, inputs))), chain)
    return spec.network_feeds(chain)


def _numpy(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> np.ndarray | tuple[np.ndarray, ...]:
    return tuple(output.numpy() for output in outputs) if isinstance(outputs, tuple) else outputs.numpy()


def random_feeds(size: tuple[int, int], batch: int = RANDOM_BATCH, seed: int = RANDOM_SEED) -> dict[str, dict[str, np.ndarray]]:
    """Uniform [0, 1] inputs at ``size`` (one bucket) per network, in the spec's names."""
    rng = np.random.default_rng(seed)
    return {
        name: {tensor.name: rng.random((batch, *tensor.resolved_shape(size)), dtype=np.float32) for tensor in model_spec.inputs}
        for name, model_spec in spec.NETWORKS.items()
    }


def parity_buckets(resolution: spec.Resolution | str | int | tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Case-name suffix -> bucket the checks run at: the reference, and the widest if it differs."""
    resolution = spec.parse_resolution(resolution)
    buckets = {"": resolution.reference}
    if resolution.widest != resolution.reference:
        buckets[WIDE_SUFFIX] = resolution.widest
    return buckets


def parity_feeds(
    models: dict[str, nn.Module], resolution: spec.Resolution | str | int | tuple[int, int]
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``{case: {network: {input name: array}}}``: ``photos`` and ``random`` per ``parity_buckets``."""
    feeds = {}
    for suffix, size in parity_buckets(resolution).items():
        feeds[f"photos{suffix}"] = photo_feeds(models, size)
        feeds[f"random{suffix}"] = random_feeds(size)
    return feeds


def photo_cases(feeds: dict) -> tuple[str, ...]:
    """The cases of ``feeds`` made from photos: those the FP16 tolerances apply to."""
    return tuple(case for case in feeds if case.startswith("photos"))


# --- Runners --------------------------------------------------------------------------------------


class EagerRunner(BaseRunner):
    """A Polygraphy runner for a contract model in eager PyTorch on the CPU (FP32 in, FP32 out).

    Polygraphy's own ``PytRunner`` cannot stand in: it moves every input to CUDA and iterates the
    model's return value as a sequence of outputs (a single tensor would be split along its batch).
    """

    def __init__(self, model: nn.Module, name: str, runner_name: str = "eager PyTorch FP32"):
        super().__init__(name=runner_name)
        self.model = model
        self.model_spec = spec.NETWORKS[name]

    def get_input_metadata_impl(self) -> TensorMetadata:
        metadata = TensorMetadata()
        for tensor in self.model_spec.inputs:
            metadata.add(tensor.name, dtype=np.float32, shape=(None, *tensor.resolved_shape((None, None))))
        return metadata

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = run_eager(self.model, self.model_spec.name, feed_dict)
        self.inference_time = time.perf_counter() - started
        return outputs


def onnxruntime_runner(path: str | Path, runner_name: str) -> OnnxrtRunner:
    """A Polygraphy runner on our CPU session for ``path`` (``compositor.onnx_runtime.create_session``)."""
    return OnnxrtRunner(lambda: onnxruntime_session(path), name=runner_name)


def onnxruntime_session(path: str | Path) -> ort.InferenceSession:
    """A CPU session for ``path``; raises if ONNX Runtime cannot load the model."""
    return create_session(path, quiet=True)


def run_onnx(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a session; returns outputs by name."""
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def run_eager(model: nn.Module, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a contract model on named inputs; returns its outputs by their spec names."""
    model_spec = spec.NETWORKS[name]
    with torch.no_grad():
        outputs = model(*(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in model_spec.inputs))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return {tensor.name: output.numpy() for tensor, output in zip(model_spec.outputs, outputs)}


# --- Comparing ------------------------------------------------------------------------------------


def simple_compare_func(tolerances: dict[str, dict[str, float]]) -> SimpleCompareFunc:
    """Polygraphy's comparison for ``tolerances``: per-output statistic and ``atol``, ``rtol`` 0."""
    bounds = error_bounds(tolerances)
    return SimpleCompareFunc(
        check_error_stat={output: stat for output, (stat, _) in bounds.items()},
        atol={output: bound for output, (_, bound) in bounds.items()},
        rtol=0.0,  # an absolute bound only: images in [0, 1], where relative errors near 0 mean nothing
    )


def compare_runners(
    network: str,
    reference: BaseRunner,
    candidate: BaseRunner,
    feeds: dict[str, dict[str, dict[str, np.ndarray]]],
    tolerances: dict[str, dict[str, float]],
    toleranced_cases: tuple[str, ...] | None = None,
) -> ParityReport:
    """Run both runners on every case of ``feeds`` with Polygraphy's comparator and hold them to ``tolerances``.

    Args:
        network: network name (its inputs are ``feeds[case][network]``).
        reference, candidate: Polygraphy runners (not yet activated).
        feeds: from ``parity_feeds``.
        tolerances: output -> ``{"max_abs_error": e}`` (at most) or ``{"psnr_db": P}`` (at least).
        toleranced_cases: the cases held to ``tolerances`` (default: all); every case must be finite.

    Returns:
        the report; call ``raise_on_failure`` on it (the ``check_*`` functions do).
    """
    if reference.name == candidate.name:
        raise ValueError(f"the runners need distinct names (Polygraphy keys results by name), both are {reference.name!r}")
    cases = list(feeds)
    toleranced_cases = tuple(cases) if toleranced_cases is None else toleranced_cases
    compare_func = simple_compare_func(tolerances)
    bounds = error_bounds(tolerances)
    # Polygraphy logs every step to stdout; our own log lines (``_log``) say what matters.
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        run_results = Comparator.run([reference, candidate], data_loader=[feeds[case][network] for case in cases])
        (accuracy,) = Comparator.compare_accuracy(run_results, compare_func=compare_func)
    (_, expected_iterations), (_, actual_iterations) = run_results.items()
    verdicts = accuracy[(reference.name, candidate.name)]
    report = ParityReport(network, reference.name, candidate.name, tolerances)
    for index, case in enumerate(cases):
        report.cases[case] = {}
        for output, expected in expected_iterations[index].items():
            actual = actual_iterations[index][output]
            polygraphy = verdicts[index][output]
            finite = bool(np.all(np.isfinite(actual)))
            comparison = with_band_errors(OutputComparison(
                max_abs_error=polygraphy.max_absdiff if finite else math.inf,
                mean_abs_error=polygraphy.mean_absdiff if finite else math.inf,
                psnr_db=psnr_db(expected, actual),
                finite=finite,
            ), expected, actual)
            report.cases[case][output] = comparison
            if not finite:
                report.failures.append(f"{case}/{output}: not finite (inf or nan)")
                continue
            if case not in toleranced_cases:
                continue
            if output in bounds and not polygraphy:
                stat, bound = bounds[output]
                value = comparison.max_abs_error if stat == "max" else comparison.mean_abs_error
                report.failures.append(f"{case}/{output}: {stat} abs error {value:.4g} > {bound:g}")
            limit = tolerances.get(output, {}).get("psnr_db")
            if limit is not None and not comparison.psnr_db >= limit:
                report.failures.append(f"{case}/{output}: PSNR {comparison.psnr_db:.2f} dB < {limit:g} dB")
    _log(report)
    return report


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
    tolerances = {output: {"max_abs_error": tolerance} for output in spec.NETWORKS[name].output_names()}
    report = compare_runners(
        name, EagerRunner(model, name), onnxruntime_runner(onnx_path, "ONNX Runtime CPU, FP32 ONNX"), feeds, tolerances
    )
    report.tolerances = {"max_abs_error": tolerance}
    return report.raise_on_failure()


def check_fp16_parity(
    name: str,
    fp32_path: str | Path,
    fp16_path: str | Path,
    feeds: dict[str, dict[str, dict[str, np.ndarray]]],
    tolerances: dict[str, dict[str, float]] | None = None,
    toleranced_cases: tuple[str, ...] | None = None,
) -> ParityReport:
    """FP16 ONNX against FP32 ONNX, both on ONNX Runtime CPU.

    Every output of every case must be finite; on ``toleranced_cases`` (default: the photo cases,
    ``photo_cases``) each output must also meet its entry of ``tolerances`` (``max_abs_error`` at
    most, ``psnr_db`` at least). The other cases are measured and reported.

    Raises:
        ParityError: listing every miss.
    """
    return check_against_fp32_onnx(
        name, fp32_path, onnxruntime_runner(fp16_path, "ONNX Runtime CPU, FP16 ONNX"), feeds, tolerances, toleranced_cases
    )


def check_against_fp32_onnx(
    name: str,
    fp32_path: str | Path,
    candidate: BaseRunner,
    feeds: dict[str, dict[str, dict[str, np.ndarray]]],
    tolerances: dict[str, dict[str, float]] | None = None,
    toleranced_cases: tuple[str, ...] | None = None,
) -> ParityReport:
    """Any FP16 runner (ONNX Runtime on the FP16 ONNX, a TensorRT engine) against ONNX Runtime FP32.

    The FP16 tolerances (default ``FP16_TOLERANCES``) on ``toleranced_cases`` (default: the photo
    cases, at every bucket checked); finite everywhere.

    Raises:
        ParityError: listing every miss.
    """
    tolerances = FP16_TOLERANCES if tolerances is None else tolerances
    outputs = spec.NETWORKS[name].output_names()
    tolerances = {output: tolerances[output] for output in outputs if output in tolerances}
    reference = onnxruntime_runner(fp32_path, "ONNX Runtime CPU, FP32 ONNX")
    toleranced_cases = photo_cases(feeds) if toleranced_cases is None else tuple(toleranced_cases)
    report = compare_runners(name, reference, candidate, feeds, tolerances, toleranced_cases)
    report.tolerances = {"toleranced_cases": list(toleranced_cases), "all_cases": {"finite": True}, **tolerances}
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
