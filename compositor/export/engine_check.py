"""An engine is checked before it is served: against a stored case from the export.

``compositor export`` writes ``<name>.check.npz`` beside each network's ONNX files: the photo inputs
of its parity check at the square bucket (as many images as the largest batch allows) and what the
FP32 ONNX returns for them on ONNX Runtime. ``compositor engines`` (the GPU image at start) runs each
new engine on those inputs and holds its outputs to the FP16 tolerances (``metrics.FP16_TOLERANCES``),
before the cache folder is published: TensorRT's FP16 kernels differ from ONNX Runtime's CPU
emulation, against which the tolerances were set, and a miss must stop the deployment, not reach
users. Light: numpy and the metrics only (the GPU image has neither PyTorch nor ONNX Runtime).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compositor.atomic_files import atomic_path
from compositor.contract import spec
from compositor.errors import CompositorError
from compositor.export.metrics import FP16_TOLERANCES, compare

EngineRun = Callable[[Path, dict[str, np.ndarray]], dict[str, np.ndarray]]
"""Runs a plan on inputs by name and returns its outputs by name (``tensorrt_run`` on a GPU)."""


class EngineCheckError(CompositorError, RuntimeError):
    """An engine's outputs miss the FP16 tolerances against the stored FP32 outputs."""


def write_check_case(path: str | Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> Path:
    """Store ``inputs`` and the FP32 ``outputs`` on them, atomically, as one ``.npz``."""
    arrays = {f"input/{k}": np.asarray(v) for k, v in inputs.items()} | {f"output/{k}": np.asarray(v) for k, v in outputs.items()}
    with atomic_path(path) as staging:
        with open(staging, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return Path(path)


def read_check_case(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(inputs, outputs)`` of a stored case. Raises ``EngineCheckError`` when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            inputs = {k.split("/", 1)[1]: stored[k] for k in stored.files if k.startswith("input/")}
            outputs = {k.split("/", 1)[1]: stored[k] for k in stored.files if k.startswith("output/")}
    except (OSError, ValueError) as error:
        raise EngineCheckError(
            f"{path}: no readable stored check case ({error}); export again with this version of compositor, "
            "which ships one per network so that engines are checked before they are served"
        ) from None
    return inputs, outputs


def check_outputs(name: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                  tolerances: dict[str, dict[str, float]] | None = None) -> dict[str, dict]:
    """Hold ``candidate`` to ``tolerances`` against ``reference``, output by output; returns the comparisons.

    Raises:
        EngineCheckError: naming the network, each output, the metric, its value and the tolerance.
    """
    tolerances = FP16_TOLERANCES if tolerances is None else tolerances
    failures, report = [], {}
    for output in spec.NETWORKS[name].output_names():
        if output not in candidate:
            failures.append(f"{output}: missing from the engine's outputs")
            continue
        got = np.asarray(candidate[output], dtype=np.float32)
        want = np.asarray(reference[output], dtype=np.float32)
        if got.shape != want.shape:
            failures.append(f"{output}: shape {list(got.shape)}, the FP32 ONNX gave {list(want.shape)}")
            continue
        comparison = compare(want, got)
        report[output] = comparison.as_dict()
        if not comparison.finite:
            failures.append(f"{output}: not finite")
        limit = tolerances.get(output, {})
        if "max_abs_error" in limit and not comparison.max_abs_error <= limit["max_abs_error"]:
            failures.append(f"{output}: max_abs_error {comparison.max_abs_error:.3g} > tolerance {limit['max_abs_error']:g}")
        if "psnr_db" in limit and not (comparison.psnr_db >= limit["psnr_db"] or math.isinf(comparison.psnr_db)):
            failures.append(f"{output}: psnr_db {comparison.psnr_db:.1f} dB < tolerance {limit['psnr_db']:g} dB")
    if failures:
        raise EngineCheckError(f"{name}: the engine misses the FP16 tolerances against the stored FP32 outputs: " + "; ".join(failures))
    return report


def check_engine(name: str, plan_path: str | Path, case_path: str | Path, run: EngineRun) -> dict[str, dict]:
    """Run the plan on the stored inputs with ``run`` and ``check_outputs`` against the stored outputs."""
    inputs, outputs = read_check_case(case_path)
    return check_outputs(name, outputs, run(Path(plan_path), inputs))


def tensorrt_run(plan_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a ``.plan`` with Polygraphy's ``TrtRunner`` (TensorRT on the GPU)."""
    from compositor.export.tensorrt import engine_runner

    with engine_runner(plan_path) as runner:
        return {k: np.asarray(v) for k, v in runner.infer(inputs).items()}
