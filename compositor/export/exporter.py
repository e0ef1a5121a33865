"""The whole export: three networks -> FP32 ONNX -> FP16 ONNX -> (TensorRT engines) -> report.

``export_network`` runs one network's chain; each step raises on failure and logs one progress line:

1. FP32 ONNX: ``onnx_export.export_fp32`` (spec names, dynamic batch, height and width),
   ``parity.check_fp32_parity`` (ONNX Runtime against eager PyTorch on photos and random inputs,
   at the square and the widest aspect bucket),
   ``readiness.check_tensorrt_readiness``;
2. FP16 ONNX: walk ``fp16.precision_ladder`` until a rung passes ``parity.check_fp16_parity`` and
   ``headroom.check_fp16_headroom``; then ``readiness.check_tensorrt_readiness``;
3. the optimisation profile against the Triton config of the ``tensorrt`` flavour, whose dims and
   ``max_batch_size`` come from the same spec, and against every bucket
   (``readiness.check_profile_against_triton``);
4. with ``engine``: ``tensorrt.build_engine`` (strongly typed, shared timing cache), then the engine
   against ONNX Runtime FP32 with the FP16 tolerances (``parity.check_against_fp32_onnx`` with a
   ``TrtRunner``).

``export_all`` runs it for the three networks and writes the report; the GPU benchmark calls
``export_network`` for its engines. Every file is written to a temporary name and renamed once its
checks passed, so the export directory never holds a half-written or unchecked model.
``export_report.json`` is removed first and written last: a directory without it holds an
unfinished export. File names: ``compositor.export.layout``.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from compositor.contract import spec
from compositor.export import fp16, headroom, parity, readiness, tensorrt
from compositor.export.engine_check import write_check_case
from compositor.export.layout import REPORT_FILE, TIMING_CACHE_FILE, check_file, fp16_file, fp32_file, plan_file, resolution_report
from compositor.export.onnx_export import export_fp32
from compositor.atomic_files import atomic_path, write_json
from compositor.networks.contract import contract_models
from compositor.networks.factory import Networks

log = logging.getLogger(__name__)

Feeds = dict[str, dict[str, dict[str, np.ndarray]]]
"""``{case: {network: {input name: array}}}`` (``parity.parity_feeds``)."""


class Progress:
    """One log line when a step starts and one when it ends: ``[k/N] network: step (seconds)``."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        started = time.perf_counter()
        log.info("[%d/%d] %s ...", self.done + 1, self.total, label)
        try:
            yield
        except BaseException as error:
            log.error("[%d/%d] %s: FAILED after %.1f s: %s", self.done + 1, self.total, label, time.perf_counter() - started, error)
            raise
        self.done += 1
        log.info("[%d/%d] %s: done in %.1f s", self.done, self.total, label, time.perf_counter() - started)


@dataclass
class ExportResult:
    """What ``export_all`` wrote: the report (also on disk) and the file paths."""

    report: dict
    files: list[Path] = field(default_factory=list)


def steps_per_network(engine: bool) -> int:
    """Progress steps ``export_network`` reports: FP32, FP16, profile check (+ engine)."""
    return 4 if engine else 3


def export_network(
    name: str,
    model: nn.Module,
    out_dir: Path,
    feeds: Feeds,
    resolution: spec.Resolution,
    max_batch: int,
    engine: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Export, check and (with ``engine``) build one network into ``out_dir``.

    Args:
        name: network name (a key of ``spec.NETWORKS``).
        model: its contract model (``networks.contract.contract_models``), on the CPU.
        out_dir: where ``layout.fp32_file(name)``, ``fp16_file`` and ``plan_file`` go (must exist).
        feeds: from ``parity.parity_feeds`` (all three networks' inputs, per case).
        resolution: the deployment's ``spec.Resolution``: the graphs are traced at its reference
            bucket and take any; the engine profile covers every bucket.
        max_batch: largest batch (TensorRT profile max, Triton ``max_batch_size``).
        engine: also build ``<name>.plan`` with TensorRT (which must be available) and check it.
        progress: where the steps are counted (a private one if None).

    Returns:
        the network's entry of ``export_report.json``.

    Raises:
        ExportError, ParityError, PrecisionError, ReadinessError: a check failed (the file it
            checked is not left in ``out_dir``).
        TensorRTUnavailableError, EngineBuildError: ``engine`` without TensorRT, or TensorRT failed.
    """
    progress = progress or Progress(steps_per_network(engine))
    resolution = spec.parse_resolution(resolution)
    entry = _network_entry(name, resolution, max_batch)
    fp32_path, fp16_path = out_dir / fp32_file(name), out_dir / fp16_file(name)

    with progress.step(f"{name}: FP32 ONNX: export, parity against eager, TensorRT readiness"):
        with atomic_path(fp32_path) as staging:
            export_fp32(model, name, staging, resolution)
            entry["fp32_parity"] = parity.check_fp32_parity(name, model, staging, feeds).as_dict()
            fp32_model = onnx.load(str(staging))
            entry["tensorrt_readiness"] = {"fp32": readiness.check_tensorrt_readiness(fp32_model, name)}

    with progress.step(f"{name}: FP16 ONNX: mixed precision, parity, headroom, TensorRT readiness"):
        entry["fp16"], entry["tensorrt_readiness"]["fp16"] = export_fp16_with_ladder(
            name, model, fp32_model, fp32_path, fp16_path, feeds
        )

    # The case an engine built elsewhere (the GPU image, `compositor engines`) is checked on before
    # it is served: the photo inputs at the square bucket, up to max_batch images, and the FP32 outputs.
    inputs = {k: v[:max_batch] for k, v in feeds["photos"][name].items()}
    write_check_case(out_dir / check_file(name), inputs, parity.run_onnx(parity.onnxruntime_session(fp32_path), inputs))
    entry["files"]["check"] = check_file(name)

    with progress.step(f"{name}: TensorRT profile against the Triton config"):
        profiles = spec.tensorrt_profiles(spec.NETWORKS[name], resolution, max_batch)
        # The tensorrt flavour's config takes its dims and max_batch_size from the same spec
        # (compositor.serving.configs); tests/test_export.py checks that the generated config agrees.
        dims = readiness.spec_triton_dims(name)
        readiness.check_profile_against_triton(profiles, dims, max_batch, resolution)
        entry["tensorrt_readiness"]["triton_profile_check"] = {
            "passed": True,
            "triton_dims": dims,
            "triton_max_batch_size": max_batch,
            "buckets_covered": [list(bucket) for bucket in resolution.buckets],
        }

    if engine:
        plan_path = out_dir / plan_file(name)
        with progress.step(f"{name}: TensorRT engine: build, parity against ONNX Runtime FP32"):
            entry["tensorrt"]["engine"] = tensorrt.build_engine(
                fp16_path, plan_path, name, profiles, out_dir / TIMING_CACHE_FILE
            )
            entry["files"]["plan"] = plan_file(name)
            # The profile's batch range: every case cut to at most max_batch images.
            engine_feeds = {case: {n: {k: v[:max_batch] for k, v in f.items()} for n, f in by.items()} for case, by in feeds.items()}
            runner = tensorrt.engine_runner(plan_path, "TensorRT engine (FP16 ONNX, strongly typed)")
            entry["tensorrt"]["parity"] = parity.check_against_fp32_onnx(name, fp32_path, runner, engine_feeds).as_dict()
    return entry


def export_all(
    out_dir: str | Path,
    networks: Networks,
    resolution: spec.Resolution | str | int | tuple[int, int] = spec.DEFAULT_RESOLUTION,
    max_batch: int = spec.DEFAULT_MAX_BATCH,
    engines: bool = False,
    weights: dict | None = None,
) -> ExportResult:
    """Export, check and report the three networks.

    Args:
        out_dir: export directory (created).
        networks: from ``compositor.networks.factory.load_networks`` (the eager pipeline's weights).
        resolution: the network resolution (``spec.Resolution``; ``spec.parse_resolution`` takes
            ``512`` for aspect buckets, ``(256, 384)`` for one fixed size).
        max_batch: largest batch (TensorRT profile max, Triton ``max_batch_size``).
        engines: also build ``<name>.plan`` with TensorRT.
        weights: more on where the weights came from, recorded in the report (e.g. checkpoint
            paths); the provenance of each network comes from ``networks.provenance``.

    Returns:
        ``ExportResult`` with the report dict (as written to ``export_report.json``).

    Raises:
        ExportError, ParityError, PrecisionError, ReadinessError: a check failed (nothing unchecked
            is left in ``out_dir``; no report is written).
        TensorRTUnavailableError: ``engines`` without TensorRT on this machine; raised *after* the
            ONNX files and the report (which records it and carries the trtexec lines) are written.
        EngineBuildError: TensorRT failed.
    """
    started = time.perf_counter()
    resolution = spec.parse_resolution(resolution)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    models = contract_models(networks)
    tensorrt_missing = tensorrt.unavailable_reason() if engines else None
    build_engines = engines and tensorrt_missing is None
    progress = Progress(1 + steps_per_network(build_engines) * len(models))
    log.info(
        "export to %s: %s at %s, batch 1..%d, engines %s",
        out_dir, ", ".join(models), resolution.describe(), max_batch,
        "yes" if build_engines else ("requested, TensorRT unavailable" if engines else "no"),
    )  # fmt: skip

    _remove_stale_outputs(out_dir, remove_plans=not build_engines)

    with progress.step("parity inputs (scikit-image photos through the eager pipeline, random; square and widest bucket)"):
        feeds = parity.parity_feeds(models, resolution)

    report_networks, files, timings = {}, [], {}
    for name, model in models.items():
        network_started = time.perf_counter()
        entry = report_networks[name] = export_network(name, model, out_dir, feeds, resolution, max_batch, build_engines, progress)
        files += [out_dir / entry["files"][kind] for kind in ("fp32", "fp16", "plan") if entry["files"][kind]]
        timings[name] = round(time.perf_counter() - network_started, 2)

    report = {
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **resolution_report(resolution),
        "max_batch": max_batch,
        "opset": spec.ONNX_OPSET,
        "weights": weights_report(networks, weights),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "tensorrt": {
            "engines_requested": engines,
            "engines_built": build_engines,
            "available": tensorrt_missing is None if engines else tensorrt.is_available(),
            "reason_unavailable": tensorrt_missing if engines else tensorrt.unavailable_reason(),
            "how_to_build": tensorrt.CONTAINER_HINT,
        },
        "networks": report_networks,
        "seconds": {**timings, "total": round(time.perf_counter() - started, 2)},
    }
    files.append(write_json(out_dir / REPORT_FILE, report))
    log.info("export report: %s (%.1f s in all)", out_dir / REPORT_FILE, report["seconds"]["total"])
    if engines and tensorrt_missing:
        raise tensorrt.TensorRTUnavailableError(missing_tensorrt_message(report, out_dir))
    return ExportResult(report=report, files=files)


def weights_report(networks: Networks, weights: dict | None = None) -> dict:
    """The report's ``weights`` section: which networks are untrained, where each one's weights came
    from (``sources``), their provenance records (kind, file name, SHA-256, note; the repository
    generator copies them into the network configs) and the caller's extra entries (``weights``)."""
    return {
        "untrained": list(networks.untrained),
        "sources": dict(networks.sources),
        "provenance": {name: dict(record) for name, record in networks.provenance.items()},
        **(weights or {}),
    }


def missing_tensorrt_message(report: dict, out_dir: Path) -> str:
    """The error for ``--engines`` without TensorRT: why, and the trtexec lines that do the same."""
    lines = [
        f"no TensorRT engine was built: {report['tensorrt']['reason_unavailable']}.",
        f"The ONNX models and {REPORT_FILE} are in {out_dir}. These trtexec commands build the same engines "
        "(strongly typed, same shapes, same timing cache):",
        *(f"  {entry['tensorrt']['trtexec']}" for entry in report["networks"].values()),
        f"{tensorrt.CONTAINER_HINT[0].upper()}{tensorrt.CONTAINER_HINT[1:]}.",
        f"{REPORT_FILE} also lists the polygraphy commands that compare each engine with ONNX Runtime.",
    ]
    return "\n".join(lines)


def _network_entry(name: str, resolution: spec.Resolution, max_batch: int) -> dict:
    model_spec = spec.NETWORKS[name]
    profiles = spec.tensorrt_profiles(model_spec, resolution, max_batch)
    tolerances = tensorrt.polygraphy_tolerances({t.name: parity.FP16_TOLERANCES[t.name] for t in model_spec.outputs})
    return {
        "files": {"fp32": fp32_file(name), "fp16": fp16_file(name), "plan": None},
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": [-1, *t.dynamic_shape()]} for t in model_spec.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": [-1, *t.dynamic_shape()]} for t in model_spec.outputs],
        "tensorrt": {
            "profile": {k: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for k, p in profiles.items()},
            "trtexec": tensorrt.trtexec_command(fp16_file(name), plan_file(name), profiles),
            "polygraphy": tensorrt.polygraphy_command(fp16_file(name), profiles, tolerances),
            "polygraphy_engine": tensorrt.polygraphy_engine_commands(fp32_file(name), plan_file(name), profiles, tolerances),
            "engine": None,
        },
    }


def export_fp16_with_ladder(name, model, fp32_model, fp32_path: Path, fp16_path: Path, feeds) -> tuple[dict, dict]:
    """Walk the precision ladder; write ``fp16_path`` with the first rung that passes every check.

    Returns:
        ``(fp16 report entry, TensorRT readiness of the FP16 graph)``.
    """
    attempts = []
    headroom_feeds = [feeds[case][name] for case in feeds]
    for policy in fp16.precision_ladder(model):
        attempt = {"policy": policy.describe()}
        attempts.append(attempt)
        try:
            with atomic_path(fp16_path) as staging:
                attempt["conversion"] = fp16.save_mixed_precision(fp32_path, staging, policy).as_dict()
                attempt["parity"] = parity.check_fp16_parity(name, fp32_path, staging, feeds).as_dict()
                attempt["headroom"] = headroom.check_fp16_headroom(fp32_model, policy, headroom_feeds).as_dict()
                # Not a reason to try the next rung: a graph TensorRT cannot take fails the export.
                ready = readiness.check_tensorrt_readiness(onnx.load(str(staging)), name)
        except (parity.ParityError, fp16.PrecisionError) as error:
            attempt["failure"] = str(error)
            log.warning("%s: FP16 policy %r rejected: %s", name, policy.name, error)
            continue
        if len(attempts) > 1:
            log.warning(
                "%s: FP16 needed policy %r (%s); see 'fp16.attempts' in the report",
                name, policy.name, "; ".join(f"{k}: {v}" for k, v in policy.reasons.items() if k not in fp16.STATISTICS_OPS),
            )  # fmt: skip
        entry = {"policy": policy.name, "attempts": attempts, **{k: attempt[k] for k in ("conversion", "parity", "headroom")}}
        return entry, ready
    raise parity.ParityError(
        f"{name}: no FP16 precision policy passes: " + " | ".join(f"{a['policy']['name']}: {a['failure']}" for a in attempts)
    )


def _remove_stale_outputs(out_dir: Path, remove_plans: bool) -> None:
    """Remove outputs of an earlier export that this one would not replace but would contradict.

    The report goes first: it is written last, so a directory without one holds an unfinished
    export. Engines go when none are built this time (they would not match the new ONNX files).
    """
    stale = [out_dir / REPORT_FILE]
    if remove_plans:
        stale += [out_dir / plan_file(name) for name in spec.NETWORKS]
    for path in stale:
        if path.exists():
            log.warning("removing %s from an earlier export (it would not match this one)", path)
            path.unlink()
