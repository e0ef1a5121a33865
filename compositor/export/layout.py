"""The export folder's file names, in one place, and reading its report (a light module: json only).

``compositor export --out DIR`` writes, per network ``<name>`` (``matting``, ``blending``,
``harmonization``): ``<name>.onnx`` (FP32), ``<name>.fp16.onnx`` (FP16 mixed precision),
``<name>.plan`` (TensorRT, with ``--engines``), plus ``timing.cache`` and ``export_report.json``.
Everything that reads or writes that folder (the export itself, the ONNX Runtime pipeline, the
model-repository generator, the benchmarks) names the files through this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from compositor.errors import CompositorError
from compositor.contract.spec import RESOLUTION_MULTIPLE, Resolution, parse_resolution

REPORT_FILE = "export_report.json"
TIMING_CACHE_FILE = "timing.cache"

PRECISIONS = ("fp32", "fp16")


def fp32_file(name: str) -> str:
    """``matting`` -> ``matting.onnx``."""
    return f"{name}.onnx"


def fp16_file(name: str) -> str:
    """``matting`` -> ``matting.fp16.onnx``."""
    return f"{name}.fp16.onnx"


def check_file(name: str) -> str:
    """A stored check case of network ``name``: photo inputs and the FP32 ONNX outputs on them
    (``compositor.export.engine_check``), shipped with the export so an engine built elsewhere is
    checked before it is served."""
    return f"{name}.check.npz"


def plan_file(name: str) -> str:
    """``matting`` -> ``matting.plan``."""
    return f"{name}.plan"


def onnx_file(name: str, precision: str) -> str:
    """The ONNX file of ``name`` in ``precision`` (``fp32`` or ``fp16``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return fp32_file(name) if precision == "fp32" else fp16_file(name)


class ExportReportError(CompositorError, ValueError):
    """An export folder has no readable ``export_report.json``."""


def read_report(export_dir: str | Path) -> dict:
    """The ``export_report.json`` of ``export_dir``.

    Raises:
        ExportReportError: missing or not JSON, naming the file and what to run.
    """
    path = Path(export_dir) / REPORT_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportReportError(
            f"{path} not found: is {export_dir} a 'compositor export --out DIR' folder?"
        ) from None
    except (OSError, json.JSONDecodeError) as error:
        raise ExportReportError(f"{path} is not readable JSON ({error}); export again") from None


def resolution_report(resolution: Resolution) -> dict:
    """The resolution fields of ``export_report.json`` (and of the engine cache's manifest).

    ``network_resolution`` is what ``--resolution`` took (``"512"``: aspect buckets with short
    side 512; ``"256x384"``: one fixed size) and what readers of the report use
    (``layout.report_shape``); ``buckets`` lists every (height, width) the networks run at, with
    how preprocessing picks one; ``resolution`` is the reference (square) bucket as [height, width],
    the field reports had before buckets, kept for readers that know only it.
    """
    return {
        "network_resolution": str(resolution),
        "buckets": [list(bucket) for bucket in resolution.buckets],
        "bucket_choice": (
            "one fixed size: every frame is resized to it" if resolution.fixed else
            "the bucket nearest the source frame's aspect ratio (log ratio); short side "
            f"{min(resolution.reference)}, long sides floored to multiples of {RESOLUTION_MULTIPLE}"
        ),
        "resolution": list(resolution.reference),
    }


def report_shape(export_dir: str | Path) -> tuple[Resolution, int]:
    """The network resolution and max batch the export was made at (its report's).

    The resolution is the report's ``network_resolution`` (``"512"``: aspect buckets, ``"256x384"``:
    one fixed size); a report from before aspect buckets has only ``resolution`` ([height, width]),
    the one fixed size its graphs were exported at.

    Raises:
        ExportReportError: no readable report, or one without a valid resolution or max batch.
    """
    report = read_report(export_dir)
    try:
        if "network_resolution" in report:
            resolution = parse_resolution(str(report["network_resolution"]))
        else:
            resolution = parse_resolution(tuple(report["resolution"]))
        return resolution, int(report["max_batch"])
    except (KeyError, TypeError, ValueError) as error:
        raise ExportReportError(
            f"{Path(export_dir) / REPORT_FILE} has no valid resolution and max_batch ({type(error).__name__}: "
            f"{error}); export again"
        ) from None
