"""The whole export: three networks -> FP32 ONNX -> FP16 ONNX -> (TensorRT engines) -> report.

Per network, each step raises on failure and logs one progress line:

1. FP32 ONNX: ``onnx_export.export_fp32`` (spec names, dynamic batch, fixed spatial size),
   ``parity.check_fp32_parity`` (ONNX Runtime against eager PyTorch on photos and random inputs),
   ``readiness.check_tensorrt_readiness``;
2. FP16 ONNX: walk ``fp16.precision_ladder`` until a rung passes ``parity.check_fp16_parity`` and
   ``headroom.check_fp16_headroom``; then ``readiness.check_tensorrt_readiness``;
3. the optimisation profile against the Triton config that ``compositor repository`` generates
   for the ``tensorrt`` flavour (``readiness.check_profile_against_triton``);
4. with ``engines``: ``tensorrt.build_engine`` (strongly typed, shared timing cache).

Every file is written to a temporary name and renamed once its checks passed, so the export
directory never holds a half-written or unchecked model. ``export_report.json`` is removed first
and written last: a directory without it holds an unfinished export.

Files (``<name>`` is ``matting``, ``blending``, ``harmonization``): ``<name>.onnx`` (FP32),
``<name>.fp16.onnx``, ``<name>.plan`` (with ``engines``), ``timing.cache``, ``export_report.json``.
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

import onnx
import onnxruntime
import torch

from compositor import spec
from compositor.export import fp16, headroom, parity, readiness, tensorrt
from compositor.files import atomic_path, write_json
from compositor.export.layout import REPORT_FILE, fp16_file, fp32_file, plan_file
from compositor.export.onnx_export import export_fp32
from compositor.networks.contract import contract_models
from compositor.networks.factory import Networks

log = logging.getLogger(__name__)

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


def triton_config_dims(name: str, resolution: tuple[int, int], max_batch: int) -> tuple[dict[str, list[int]], int]:
    """Input ``dims`` and ``max_batch_size`` of the Triton config generated for the TensorRT engine."""
    from compositor.serving.configs import RepositoryOptions, network_config  # serving depends on tritonclient

    config = network_config(spec.NETWORKS[name], RepositoryOptions(flavor="tensorrt", resolution=resolution, max_batch=max_batch))
    return {entry["name"]: list(entry["dims"]) for entry in config["input"]}, int(config["max_batch_size"])


def export_all(
    out_dir: str | Path,
    networks: Networks,
    resolution: tuple[int, int] = spec.DEFAULT_RESOLUTION,
    max_batch: int = spec.DEFAULT_MAX_BATCH,
    engines: bool = False,
    weights: dict | None = None,
) -> ExportResult:
    """Export, check and report the three networks.

    Args:
        out_dir: export directory (created).
        networks: from ``compositor.networks.factory.load_networks`` (the eager pipeline's weights).
        resolution: network (height, width), multiples of 32, fixed in every graph and engine.
        max_batch: largest batch (TensorRT profile max, Triton ``max_batch_size``).
        engines: also build ``<name>.plan`` with TensorRT.
        weights: where the weights came from, recorded in the report (e.g. checkpoint paths).

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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolution = spec.parse_resolution(resolution)
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    models = contract_models(networks)
    tensorrt_missing = tensorrt.unavailable_reason() if engines else None
    build_engines = engines and tensorrt_missing is None
    steps_per_network = 3 + (1 if build_engines else 0)
    progress = Progress(1 + steps_per_network * len(models))
    log.info(
        "export to %s: %s at %s, batch 1..%d, engines %s",
        out_dir, ", ".join(models), spec.format_resolution(resolution), max_batch,
        "yes" if build_engines else ("requested, TensorRT unavailable" if engines else "no"),
    )  # fmt: skip

    _remove_stale_outputs(out_dir, remove_plans=not build_engines)

    with progress.step("parity inputs (scikit-image photos through the eager pipeline, random)"):
        feeds = parity.parity_feeds(models, resolution)

    report_networks, files, timings = {}, [], {}
    for name, model in models.items():
        network_started = time.perf_counter()
        entry = report_networks[name] = _network_entry(name, resolution, max_batch)
        fp32_path, fp16_path = out_dir / fp32_file(name), out_dir / fp16_file(name)

        with progress.step(f"{name}: FP32 ONNX: export, parity against eager, TensorRT readiness"):
            with atomic_path(fp32_path) as staging:
                export_fp32(model, name, staging, resolution)
                entry["fp32_parity"] = parity.check_fp32_parity(name, model, staging, feeds).as_dict()
                fp32_model = onnx.load(str(staging))
                entry["tensorrt_readiness"] = {"fp32": readiness.check_tensorrt_readiness(fp32_model, name, resolution)}
        files.append(fp32_path)

        with progress.step(f"{name}: FP16 ONNX: mixed precision, parity, headroom, TensorRT readiness"):
            entry["fp16"], entry["tensorrt_readiness"]["fp16"] = export_fp16_with_ladder(
                name, model, fp32_model, fp32_path, fp16_path, feeds, resolution
            )
        files.append(fp16_path)

        with progress.step(f"{name}: TensorRT profile against the Triton config"):
            profiles = spec.tensorrt_profiles(spec.NETWORKS[name], resolution, max_batch)
            dims, config_max_batch = triton_config_dims(name, resolution, max_batch)
            readiness.check_profile_against_triton(profiles, dims, config_max_batch)
            entry["tensorrt_readiness"]["triton_profile_check"] = {
                "passed": True,
                "triton_dims": dims,
                "triton_max_batch_size": config_max_batch,
            }

        if build_engines:
            with progress.step(f"{name}: TensorRT engine"):
                entry["tensorrt"]["engine"] = tensorrt.build_engine(
                    fp16_path, out_dir / plan_file(name), name, profiles, out_dir / tensorrt.TIMING_CACHE_FILE
                )
            entry["files"]["plan"] = plan_file(name)
            files.append(out_dir / plan_file(name))
        timings[name] = round(time.perf_counter() - network_started, 2)

    report = {
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "resolution": list(resolution),
        "max_batch": max_batch,
        "opset": spec.ONNX_OPSET,
        "weights": {"untrained": list(networks.untrained), "sources": dict(networks.sources), **(weights or {})},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "tensorrt": {
            "engines_requested": engines,
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


def missing_tensorrt_message(report: dict, out_dir: Path) -> str:
    """The error for ``--engines`` without TensorRT: why, and the trtexec lines that do the same."""
    lines = [
        f"cannot build TensorRT engines here: {report['tensorrt']['reason_unavailable']}.",
        f"The ONNX models and {REPORT_FILE} are in {out_dir}. These trtexec commands build the same engines "
        "(strongly typed, same shapes, same timing cache):",
        *(f"  {entry['tensorrt']['trtexec']}" for entry in report["networks"].values()),
        f"{tensorrt.CONTAINER_HINT[0].upper()}{tensorrt.CONTAINER_HINT[1:]}.",
        f"{REPORT_FILE} also lists the polygraphy commands that compare each engine with ONNX Runtime.",
    ]
    return "\n".join(lines)


def _network_entry(name: str, resolution: tuple[int, int], max_batch: int) -> dict:
    model_spec = spec.NETWORKS[name]
    profiles = spec.tensorrt_profiles(model_spec, resolution, max_batch)
    tolerances = tensorrt.polygraphy_tolerances({t.name: parity.FP16_TOLERANCES[t.name] for t in model_spec.outputs})
    return {
        "files": {"fp32": fp32_file(name), "fp16": fp16_file(name), "plan": None},
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": [-1, *t.resolved_shape(resolution)]} for t in model_spec.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": [-1, *t.resolved_shape(resolution)]} for t in model_spec.outputs],
        "tensorrt": {
            "profile": {k: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for k, p in profiles.items()},
            "trtexec": tensorrt.trtexec_command(fp16_file(name), plan_file(name), profiles),
            "polygraphy": tensorrt.polygraphy_command(fp16_file(name), profiles, tolerances),
            "polygraphy_engine": tensorrt.polygraphy_engine_commands(fp32_file(name), plan_file(name), profiles, tolerances),
            "engine": None,
        },
    }


def export_fp16_with_ladder(name, model, fp32_model, fp32_path: Path, fp16_path: Path, feeds, resolution) -> tuple[dict, dict]:
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
                ready = readiness.check_tensorrt_readiness(onnx.load(str(staging)), name, resolution)
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
