"""The GPU benchmark's measurement loop: every mode x batch x workload, timed, with its accuracy.

Workloads are each network alone and the network chain (``spec.run_chain`` on device tensors at the
network resolution: what the GPU does per request; the CPU pre/post-processing is not part of it).
Tensors between networks are FP32, as in the Triton ensemble and the TensorRT engines' I/O. The
modes are in ``compositor.bench.gpu_modes``; the command line is ``compositor bench-gpu``
(``compositor.cli.bench_gpu``, whose help says what every field means).

Each measurement starts with a first call (compilation, cuDNN autotuning), then ``warmup`` untimed
and ``iterations`` timed calls, each synchronised. Rows carry perf_analyzer's field names, achieved
TFLOP/s against the measured peak, peak memory and, for every mode but eager_fp32, the error of
each output against eager FP32 on the same inputs (``compositor.export.metrics.compare``). Work
that would start after ``budget_s`` is recorded as skipped; failures are recorded under "errors".
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compositor.contract import spec
from compositor.bench.gpu_modes import (
    DEFAULT_BUDGET_S,
    MODES,
    PRECISION,
    WORKLOADS,
    backend_flags,
    compile_skip_reason,
    mode_forwards,
    tensorrt_skip_reason,
)
from compositor.bench.load import latency_fields, time_iterations
from compositor.bench.machine import cuda_unavailable_reason, gpu_machine_info
from compositor.bench.report import gpu_accuracy_text
from compositor.bench.workloads import CHAIN, device_workload_inputs, device_workloads
from compositor.errors import CompositorError
from compositor.export.metrics import compare
from compositor.atomic_files import write_json
from compositor.networks.complexity import count_flops
from compositor.networks.contract import contract_models
from compositor.networks.factory import Networks, load_networks

log = logging.getLogger(__name__)


class CudaUnavailableError(CompositorError, RuntimeError):
    """``--device cuda`` on a machine where PyTorch sees no CUDA device."""


@dataclass
class GpuBenchSettings:
    """What to measure and for how long (``compositor bench-gpu --help``)."""

    device: str = "cuda"
    resolution: spec.Resolution = spec.DEFAULT_RESOLUTION
    batches: tuple[int, ...] = (1, 8)
    iterations: int = 50
    warmup: int = 10
    modes: tuple[str, ...] = MODES
    workloads: tuple[str, ...] = WORKLOADS
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    budget_s: float = DEFAULT_BUDGET_S
    checkpoints: dict[str, str | None] = field(default_factory=dict)
    trained_defaults: bool = True
    """False (``--untrained``): seeded initialisations where no checkpoint is given, not weights/."""

    def __post_init__(self) -> None:
        self.resolution = spec.parse_resolution(self.resolution)


# --- The run ---------------------------------------------------------------------------------------


def _load(settings: GpuBenchSettings) -> Networks:
    checkpoints = (settings.checkpoints.get(f"{k}_checkpoint") for k in ("modnet", "blending", "harmonization"))
    return load_networks(*checkpoints, trained_defaults=settings.trained_defaults)


class _Clock:
    def __init__(self):
        self.started = time.perf_counter()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def log(self, message: str, *args) -> None:
        log.info("[%6.1f s] " + message, self.elapsed_s(), *args)


def run_gpu_benchmark(settings: GpuBenchSettings, out: Path | None = None) -> dict:
    """Measure every mode x batch x workload; returns the results dict (also written to ``out``).

    ``out`` is rewritten atomically after each mode, with ``"complete": false`` until the end.

    Raises:
        CudaUnavailableError: ``settings.device == "cuda"`` without a CUDA device.
        ValueError: an unknown mode or workload.
    """
    clock = _Clock()
    for kind, values, allowed in (("mode", settings.modes, MODES), ("workload", settings.workloads, WORKLOADS)):
        for value in values:
            if value not in allowed:
                raise ValueError(f"unknown {kind} {value!r}; {kind}s are {', '.join(allowed)}")
    if settings.device == "cuda" and (reason := cuda_unavailable_reason()):
        raise CudaUnavailableError(reason)
    device = torch.device(settings.device)

    with backend_flags(device) as flags, tempfile.TemporaryDirectory(prefix="compositor-gpu-bench-") as work_dir:
        report = {
            "machine": gpu_machine_info(device),
            "settings": {
                "device": settings.device,
                "resolution": spec.format_resolution(settings.resolution),
                "batches": list(settings.batches),
                "iterations": settings.iterations,
                "warmup": settings.warmup,
                "modes": list(settings.modes),
                "workloads": list(settings.workloads),
                "precision": {mode: PRECISION[mode] for mode in settings.modes},
                "compile_mode": settings.compile_mode,
                "compile_backend": settings.compile_backend,
                "budget_s": settings.budget_s,
                **flags,
                "inputs": "seeded uniform [0, 1] tensors (compositor.networks.complexity.example_inputs, "
                "example_chain_inputs); the chain feeds its own intermediate tensors (compositor.contract.spec.run_chain)",
                "latency": "one iteration, synchronised before and after (torch.cuda.synchronize), wall clock",
                "accuracy": "each mode against eager FP32 on the same inputs (compositor.export.metrics.compare); the "
                "export's FP16 tolerances (compositor.export.parity.FP16_TOLERANCES) are set on photos, not on these",
                "flops": "convolutions and matrix products (compositor.networks.complexity.count_flops), per image",
                "peak_memory": "torch.cuda.max_memory_allocated during a measurement: the three networks' weights, "
                "inputs, activations and outputs (TensorRT's own memory: tensorrt_device_memory_mb)",
            },
            "results": [],
            "skipped": [],
            "errors": [],
            "complete": False,
        }
        clock.log("machine: %s, torch %s (CUDA %s)", report["machine"]["gpu"], torch.__version__, torch.version.cuda)

        skip_reasons = {
            "compile_fp16": lambda: compile_skip_reason(settings.device, settings.compile_backend),
            "tensorrt": lambda: tensorrt_skip_reason(settings.device),
        }
        runnable = []
        for mode in settings.modes:
            reason = skip_reasons[mode]() if mode in skip_reasons else None
            if reason:
                report["skipped"].append({"mode": mode, "workload": None, "batch": None, "reason": reason})
                clock.log("%s: skipped: %s", mode, reason)
            else:
                runnable.append(mode)

        if runnable:
            networks = _load(settings)
            report["settings"]["weights"] = {"untrained": list(networks.untrained), **settings.checkpoints}
            models = {name: model.to(device) for name, model in contract_models(networks).items()}
            flops = {name: count_flops(model, device_workload_inputs(name, settings.resolution.reference, 1, device)) for name, model in models.items()}
            flops[CHAIN] = sum(flops.values())
            report["settings"]["gflops_per_image"] = {name: round(value / 1e9, 3) for name, value in flops.items()}
            references: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
            for mode in runnable:
                _run_mode(mode, models, flops, references, settings, device, Path(work_dir), report, clock)
                if out is not None:
                    write_json(out, _finish(report, clock, complete=False))
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    report = _finish(report, clock, complete=True)
    if out is not None:
        write_json(out, report)
    return report


def _finish(report: dict, clock: _Clock, complete: bool) -> dict:
    return {**report, "complete": complete, "wall_time_s": round(clock.elapsed_s(), 1)}


def _run_mode(mode, models, flops, references, settings: GpuBenchSettings, device, work_dir: Path, report: dict, clock: _Clock) -> None:
    """Prepare ``mode``'s forwards, then time each batch x workload; failures go to ``errors``."""
    if clock.elapsed_s() > settings.budget_s:
        _skip_budget(report, mode, None, None, settings, clock)
        return
    try:
        if mode == "tensorrt":
            clock.log("tensorrt: exporting, checking and building engines")
        forwards, builds = mode_forwards(mode, models, settings, device, work_dir, lambda: contract_models(_load(settings)))
        if builds is not None:
            report.setdefault("tensorrt_engines", builds)
    except Exception as error:  # recorded and reported (exit status 1); the other modes still run
        log.exception("%s: preparation failed", mode)
        report["errors"].append({"mode": mode, "workload": None, "batch": None, "error": f"{type(error).__name__}: {error}"})
        return
    try:
        _time_mode(mode, forwards, builds, models, flops, references, settings, device, report, clock)
    finally:
        for forward in forwards.values():  # TensorRT runners hold engines and device buffers
            if hasattr(forward, "close"):
                forward.close()


def _time_mode(mode, forwards, builds, models, flops, references, settings: GpuBenchSettings, device, report: dict, clock: _Clock) -> None:
    workloads = device_workloads(forwards, settings.workloads)
    # Networks before the chain: torch.compile compiles each network on its first call per batch,
    # so the compile time lands in the network's row and the chain reuses the compiled graphs.
    for batch in settings.batches:
        for name, call in workloads.items():
            if clock.elapsed_s() > settings.budget_s:
                _skip_budget(report, mode, name, batch, settings, clock)
                continue
            try:
                row = _time_row(mode, name, call, batch, models, flops, references, settings, device, report["machine"])
            except Exception as error:  # recorded and reported (exit status 1); the rest still runs
                log.exception("%s %s batch %d failed", mode, name, batch)
                report["errors"].append({"mode": mode, "workload": name, "batch": batch, "error": f"{type(error).__name__}: {error}"})
                continue
            if builds is not None:
                sizes = [builds[network]["device_memory_bytes"] for network in (spec.NETWORKS if name == CHAIN else (name,))]
                row["tensorrt_device_memory_mb"] = None if None in sizes else sum(sizes) / 2**20
            report["results"].append(row)
            clock.log(
                "%-12s %-13s batch %-3d %9.1f img/s  p50 %8.2f ms  p99 %8.2f ms  first call %.1f s%s",
                mode, name, batch, row["perf_throughput"], row["perf_latency_p50"], row["perf_latency_p99"],
                row["first_call_s"], gpu_accuracy_text(row),
            )  # fmt: skip


def _skip_budget(report: dict, mode: str, workload: str | None, batch: int | None, settings: GpuBenchSettings, clock: _Clock) -> None:
    reason = f"time budget: {clock.elapsed_s():.0f} s elapsed of --budget-s {settings.budget_s:.0f}"
    report["skipped"].append({"mode": mode, "workload": workload, "batch": batch, "reason": reason})
    clock.log("%s %s batch %s: skipped: %s", mode, workload or "(all)", batch if batch is not None else "(all)", reason)


def _time_row(mode, workload, call, batch, models, flops, references, settings: GpuBenchSettings, device, machine: dict) -> dict:
    inputs = device_workload_inputs(workload, settings.resolution.reference, batch, device)
    measured = time_iterations(call, inputs, settings.iterations, settings.warmup, device)
    # References wait on the CPU, so that they do not count in later rows' peak device memory.
    key = (workload, batch)
    if mode == "eager_fp32":
        references[key] = {output: value.cpu() for output, value in measured["outputs"].items()}
        accuracy = None
    else:
        if key not in references:
            reference_outputs = time_iterations(device_workloads(models, (workload,))[workload], inputs, 0, 0, device)["outputs"]
            references[key] = {output: value.cpu() for output, value in reference_outputs.items()}
        accuracy = {
            output: compare(references[key][output].numpy(), value.float().cpu().numpy()).as_dict()
            for output, value in measured["outputs"].items()
        }
    requests_per_s = len(measured["latencies_s"]) / sum(measured["latencies_s"])
    row = {
        "mode": mode,
        "workload": workload,
        "batch": batch,
        "resolution": spec.format_resolution(settings.resolution),
        "precision": PRECISION[mode],
        "iterations": settings.iterations,
        "warmup": settings.warmup,
        "perf_throughput": requests_per_s * batch,  # images/s (perf_analyzer: inferences/s)
        "requests_per_s": requests_per_s,
        **latency_fields(measured["latencies_s"]),
        "first_call_s": round(measured["first_call_s"], 3),
        "gflops_per_image": flops[workload] / 1e9,
    }
    if mode == "compile_fp16":
        row["compile_s"] = row["first_call_s"]  # compilation happens on the first call (the chain: none)
    row["achieved_tflops"] = row["perf_throughput"] * flops[workload] / 1e12
    peak = machine["peak_tflops"]["fp32" if mode == "eager_fp32" else "fp16"]
    row["fraction_of_peak"] = row["achieved_tflops"] / peak if peak else None
    row["peak_memory_mb"] = None if measured["peak_memory_bytes"] is None else measured["peak_memory_bytes"] / 2**20
    row["accuracy_vs_eager_fp32"] = accuracy
    return row
