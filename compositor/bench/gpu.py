"""GPU benchmark: eager FP32 vs eager FP16 (autocast) vs torch.compile vs TensorRT, on each network and the chain.

Workloads are each network alone and the network chain (matting -> blending -> harmonization on
device tensors at the network resolution: what the GPU does per request; the CPU pre/post-processing
is not part of it). Tensors between networks are FP32, as in the Triton ensemble and the TensorRT
engines' I/O. Modes:

  eager_fp32    PyTorch eager, true FP32 (TF32 disabled: FP32 is the accuracy reference);
  eager_fp16    PyTorch eager under torch.autocast(float16);
  compile_fp16  torch.compile of each network (the chain reuses them), under the same autocast;
                compilation is timed separately (first_call_s / compile_s);
  tensorrt      strongly typed engines from the export chain's FP16 ONNX, when TensorRT is installed
                (otherwise recorded in "skipped" with the reason; never faked).

Every row has perf_analyzer field names: perf_throughput (images/s), perf_latency_avg and
perf_latency_p50/p90/p95/p99 (ms, one synchronised iteration each), plus achieved TFLOP/s, peak
memory and, for every mode but eager_fp32, the output difference against eager FP32 on the same
inputs (max abs error, PSNR): no speed without its accuracy. Each mode starts with a first call
(compilation, cuDNN autotuning), then --warmup untimed and --iterations timed iterations. Work that
would start after --budget-s is recorded as skipped, so the default run fits in 8 minutes on an H100.
The JSON is rewritten (atomically) after every mode, so an interrupted run keeps what it measured.
With TensorRT installed, its export checks and engine builds take minutes: give the tensorrt mode a
run of its own (--modes tensorrt) or a larger --budget-s.

With --device cpu (a dry run of the plumbing) eager_fp16 still uses float16 autocast, which PyTorch
supports on the CPU (slowly: the timings mean nothing there, the accuracy columns still do);
compile_fp16 needs --compile-backend eager there (dynamo only), and tensorrt is skipped.

Exit status: 0; 1 if a measurement failed (recorded under "errors"); 2 on bad options or no CUDA.

Example (GPU machine, repository root; benchmarks/gpu.sh wraps this):
  PYTHONPATH="$PWD" python3 -m compositor.bench.gpu --out benchmarks/results/gpu.json
  PYTHONPATH="$PWD" python3 -m compositor.bench.gpu --out gpu.json --batches 1,4,8 --modes eager_fp16,compile_fp16

CPU dry run of the plumbing (seconds; what the tests run):
  python -m compositor.bench.gpu --device cpu --resolution 64 --batches 1 --iterations 2 --warmup 1 \\
      --modes eager_fp32,eager_fp16 --out /tmp/gpu-dry-run.json
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compositor.errors import CompositorError
from compositor import spec
from compositor.bench.machine import cpu_model, package_version
from compositor.cli.options import add_network_options
from compositor.files import write_json
from compositor.networks.contract import contract_models
from compositor.networks.complexity import count_flops, example_inputs
from compositor.networks.factory import Networks, load_networks

log = logging.getLogger(__name__)

MODES = ("eager_fp32", "eager_fp16", "compile_fp16", "tensorrt")
CHAIN = "chain"  # the name compositor.bench.workloads uses (not imported: it needs scikit-image)
WORKLOADS = (*spec.NETWORKS, CHAIN)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
DEFAULT_BUDGET_S = 360.0
"""No new measurement starts after this; one torch.compile started just before can take ~1-2 min more."""

PRECISION = {
    "eager_fp32": "fp32 (TF32 off)",
    "eager_fp16": "fp16 autocast",
    "compile_fp16": "fp16 autocast, torch.compile",
    "tensorrt": "fp16 ONNX, strongly typed engine",
}

Forward = Callable[..., torch.Tensor]
"""A network as the benchmark calls it: the spec's FP32 inputs in order -> its FP32 output."""
Workload = Callable[..., dict[str, torch.Tensor]]
"""A timed call: inputs -> named FP32 outputs (one for a network, three for the chain)."""


class CudaUnavailableError(CompositorError, RuntimeError):
    """``--device cuda`` on a machine where PyTorch sees no CUDA device."""


@dataclass
class GpuBenchSettings:
    """What to measure and for how long (see the module docstring)."""

    device: str = "cuda"
    resolution: tuple[int, int] = spec.DEFAULT_RESOLUTION
    batches: tuple[int, ...] = (1, 8)
    iterations: int = 50
    warmup: int = 10
    modes: tuple[str, ...] = MODES
    workloads: tuple[str, ...] = WORKLOADS
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    budget_s: float = DEFAULT_BUDGET_S
    checkpoints: dict[str, str | None] = field(default_factory=dict)


# --- Machine ---------------------------------------------------------------------------------------


def cuda_unavailable_reason() -> str | None:
    """Why ``--device cuda`` cannot run here, or None if it can."""
    if torch.cuda.is_available():
        return None
    return (
        f"CUDA is not available to PyTorch here: torch.cuda.is_available() is False "
        f"(torch {torch.__version__}, torch.version.cuda={torch.version.cuda}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
        "run on a GPU machine with a CUDA build of PyTorch, or use --device cpu for a dry run"
    )


def nvidia_smi_driver() -> str:
    """The NVIDIA driver version (PyTorch's device properties do not carry it)."""
    if shutil.which("nvidia-smi") is None:
        return "unknown (no nvidia-smi)"
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({error})"
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else "unknown"


def peak_tflops(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """Measured dense matmul peak in ``dtype``: the best of ``repeats`` square products.

    The reference for ``fraction_of_peak`` (FP32 rows against the FP32 peak with TF32 off, FP16 rows
    against the FP16 peak). Small on the CPU, where it only exercises the code.
    """
    size = 8192 if device.type == "cuda" else 256
    a = torch.rand(size, size, device=device, dtype=dtype)
    b = torch.rand(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e12


def machine_info(device: torch.device) -> dict:
    """The header of the results: GPU, driver, CUDA, versions, host, measured peaks."""
    info = {
        "device": device.type,
        "gpu": "none",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "versions": {name: package_version(name) for name in ("numpy", "onnx", "onnxruntime", "onnxscript", "tensorrt", "triton")},
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=properties.name,
            gpu_memory_gb=round(properties.total_memory / 1e9, 1),
            compute_capability=f"{properties.major}.{properties.minor}",
            multiprocessors=properties.multi_processor_count,
            gpu_count=torch.cuda.device_count(),
            driver=nvidia_smi_driver(),
            cudnn=torch.backends.cudnn.version(),
        )
    info["peak_tflops"] = {
        "fp32": round(peak_tflops(device, torch.float32), 3),
        "fp16": round(peak_tflops(device, torch.float16), 3),
    }
    return info


@contextlib.contextmanager
def backend_flags(device: torch.device) -> Iterator[dict]:
    """Set PyTorch's CUDA backend flags for the run, restore them on exit; yields what the results record.

    TF32 off: FP32 rows are true FP32, the reference of the accuracy columns (TF32 would be a third
    precision). cuDNN autotuning on: every mode gets the fastest kernels, and the first call and the
    warm-up absorb the search.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    try:
        on_cuda = device.type == "cuda"
        yield {
            "tf32": (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32) if on_cuda else False,
            "cudnn_benchmark": torch.backends.cudnn.benchmark if on_cuda else None,
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


# --- Timing and accuracy ---------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency_fields(latencies_s: list[float], batch: int) -> dict:
    """perf_analyzer fields from per-iteration latencies: images/s and ms percentiles."""
    latencies_ms = np.asarray(latencies_s) * 1e3
    requests_per_s = len(latencies_s) / float(np.sum(latencies_s))
    return {
        "perf_throughput": requests_per_s * batch,  # images/s (perf_analyzer: inferences/s)
        "requests_per_s": requests_per_s,
        "perf_latency_avg": float(latencies_ms.mean()),
        **{f"perf_latency_p{p}": float(np.percentile(latencies_ms, p)) for p in (50, 90, 95, 99)},
        "latency_min_ms": float(latencies_ms.min()),
        "latency_max_ms": float(latencies_ms.max()),
    }


@torch.inference_mode()
def measure(call: Workload, inputs: list[torch.Tensor], iterations: int, warmup: int, device: torch.device) -> dict:
    """First call, ``warmup`` untimed calls, ``iterations`` calls each synchronised and timed.

    Returns:
        ``first_call_s``, ``latencies_s``, ``outputs`` (of the last call) and ``peak_memory_bytes``
        (PyTorch's allocator on CUDA, since the first call; None on the CPU).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _synchronize(device)
    started = time.perf_counter()
    outputs = call(*inputs)
    _synchronize(device)
    first_call_s = time.perf_counter() - started
    for _ in range(warmup):
        call(*inputs)
    latencies_s = []
    for _ in range(iterations):
        _synchronize(device)
        started = time.perf_counter()
        outputs = call(*inputs)
        _synchronize(device)
        latencies_s.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"first_call_s": first_call_s, "latencies_s": latencies_s, "outputs": outputs, "peak_memory_bytes": peak}


@torch.inference_mode()
def compare(reference: torch.Tensor, candidate: torch.Tensor) -> dict:
    """Difference of a [0, 1] image output from its FP32 reference.

    ``psnr_db`` is None when the outputs are identical (infinite PSNR: strict JSON has no inf) or
    when the candidate is not finite (then ``finite`` is False and ``max_abs_error`` None too).
    """
    finite = bool(torch.isfinite(candidate).all())
    if not finite:
        return {"max_abs_error": None, "psnr_db": None, "finite": False}
    difference = candidate.double() - reference.double()
    mse = float(difference.square().mean())
    return {
        "max_abs_error": float(difference.abs().max()),
        "psnr_db": None if mse == 0.0 else 10.0 * math.log10(1.0 / mse),
        "finite": True,
    }


# --- Modes -----------------------------------------------------------------------------------------


def autocast_forward(forward: Forward, device: torch.device) -> Forward:
    """``forward`` under FP16 autocast, its output cast back to FP32 (the contract's I/O).

    Autocast runs convolutions and matrix products in FP16 and promotes the ops on its FP32 list
    (``pow``, ``sum``, ``rsqrt``, ``layer_norm``, ``group_norm``, ...) to FP32; instance and batch
    norm take FP16 activations but accumulate their statistics in FP32. So the normalisation
    statistics, and MaskedAdaIN's sums of squares that would overflow FP16, are computed in FP32:
    what the project's FP16 policy requires (compositor.export.fp16). It is close to, not identical
    with, the FP16 ONNX (which keeps whole MaskedAdaIN modules in FP32); the accuracy columns
    measure the result against FP32 either way.
    """

    def call(*inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.float16):
            output = forward(*inputs)
        return output.float()

    return call


def compile_skip_reason(settings: GpuBenchSettings) -> str | None:
    """Why compile_fp16 is not measured with these settings, or None."""
    if settings.device == "cpu" and settings.compile_backend == "inductor":
        return (
            "torch.compile with inductor on --device cpu is skipped: its C++ code generation takes minutes per "
            "network on a CPU machine (it is measured on CUDA); --compile-backend eager dry-runs the dynamo plumbing"
        )
    return None


def compiled_forwards(models: dict[str, nn.Module], settings: GpuBenchSettings) -> dict[str, Forward]:
    """``torch.compile`` of each network (lazy: each compiles on its first call per batch size).

    ``dynamic=False``: one static graph per batch size, the fastest kernels, and no dynamic-shape
    guards; the chain reuses these compiled networks with FP32 tensors between them, so it adds no
    compilation. The default mode keeps the whole run within its budget (max-autotune benchmarks
    Triton kernels for minutes per network).
    """
    mode = None if settings.compile_mode == "default" else settings.compile_mode
    return {name: torch.compile(model, mode=mode, backend=settings.compile_backend, dynamic=False) for name, model in models.items()}


def tensorrt_skip_reason(settings: GpuBenchSettings) -> str | None:
    """Why tensorrt is not measured here, or None (imports TensorRT lazily)."""
    # A light import: the module imports TensorRT itself only inside unavailable_reason().
    from compositor.export import tensorrt

    reason = tensorrt.unavailable_reason()
    if reason is not None:
        return f"TensorRT not installed: {reason}"
    if settings.device != "cuda":
        return "TensorRT engines run on CUDA only (--device cpu)"
    return None


class TensorRTForward:
    """Runs one deserialised engine on PyTorch CUDA tensors (FP32 I/O, on the current stream)."""

    def __init__(self, trt, engine_bytes: bytes, name: str, device: torch.device):
        from compositor.export.tensorrt import EngineBuildError

        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise EngineBuildError(f"{name}: the engine does not deserialize")
        self.context = self.engine.create_execution_context()
        self.model_spec = spec.NETWORKS[name]
        self.device = device

    def device_memory_bytes(self) -> int | None:
        """Activation memory TensorRT allocates itself (outside PyTorch's allocator)."""
        for attribute in ("device_memory_size_v2", "device_memory_size"):
            if hasattr(self.engine, attribute):
                return int(getattr(self.engine, attribute))
        return None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        inputs = [tensor.contiguous() for tensor in inputs]  # engines read dense FP32 buffers
        for tensor_spec, tensor in zip(self.model_spec.inputs, inputs):
            self.context.set_input_shape(tensor_spec.name, tuple(tensor.shape))
            self.context.set_tensor_address(tensor_spec.name, tensor.data_ptr())
        output_name = self.model_spec.outputs[0].name
        output = torch.empty(tuple(self.context.get_tensor_shape(output_name)), dtype=torch.float32, device=self.device)
        self.context.set_tensor_address(output_name, output.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"{self.model_spec.name}: TensorRT execute_async_v3 failed")
        return output


def tensorrt_forwards(settings: GpuBenchSettings, device: torch.device, work_dir: Path) -> tuple[dict[str, Forward], dict]:
    """Build an engine per network through the export chain and wrap each as a ``Forward``.

    The export's own steps: ``export_fp32``, the FP16 precision ladder with its parity and headroom
    checks, then ``tensorrt.build_engine`` (strongly typed, the deployment's profile, batch 1..max).
    These need onnx, onnxruntime and onnxscript, imported here only.

    Returns:
        the forwards and, per network, the engine build information.
    """
    # The pipeline's ladder walk is reused rather than rewritten; export_all itself is not called
    # because it also generates the Triton config, which needs tritonclient.
    import onnx

    from compositor.export import parity, tensorrt
    from compositor.export.onnx_export import export_fp32
    from compositor.export.pipeline import (
        export_fp16_with_ladder,
        fp16_file,
        fp32_file,
        plan_file,
    )

    trt = tensorrt.import_tensorrt()
    models = contract_models(_load(settings))  # CPU models: ONNX export traces on the CPU
    feeds = parity.parity_feeds(models, settings.resolution)
    max_batch = max(spec.DEFAULT_MAX_BATCH, *settings.batches)
    forwards, builds = {}, {}
    for name, model in models.items():
        started = time.perf_counter()
        fp32_path, fp16_path, plan_path = work_dir / fp32_file(name), work_dir / fp16_file(name), work_dir / plan_file(name)
        export_fp32(model, name, fp32_path, settings.resolution)
        fp16_entry, _ = export_fp16_with_ladder(name, model, onnx.load(str(fp32_path)), fp32_path, fp16_path, feeds, settings.resolution)
        profiles = spec.tensorrt_profiles(spec.NETWORKS[name], settings.resolution, max_batch)
        build = tensorrt.build_engine(fp16_path, plan_path, name, profiles, work_dir / tensorrt.TIMING_CACHE_FILE)
        forwards[name] = TensorRTForward(trt, plan_path.read_bytes(), name, device)
        builds[name] = {
            **build,
            "fp16_policy": fp16_entry["policy"],
            "max_batch": max_batch,
            "device_memory_bytes": forwards[name].device_memory_bytes(),
            "export_and_build_s": round(time.perf_counter() - started, 2),
        }
        log.info("tensorrt: %s engine built in %.1f s (FP16 policy %s)", name, builds[name]["export_and_build_s"], fp16_entry["policy"])
    return forwards, builds


# --- Workloads -------------------------------------------------------------------------------------


def network_workload(name: str, forward: Forward) -> Workload:
    output_name = spec.NETWORKS[name].outputs[0].name
    return lambda *inputs: {output_name: forward(*inputs)}


def chain_workload(forwards: dict[str, Forward]) -> Workload:
    """matting -> blending -> harmonization, FP32 tensors between networks (the ensemble's contract)."""

    def call(source: torch.Tensor, background: torch.Tensor) -> dict[str, torch.Tensor]:
        alpha = forwards["matting"](source)
        blended = forwards["blending"](source, alpha, background)
        harmonized = forwards["harmonization"](blended, alpha, background)
        return {"alpha": alpha, "blended": blended, "harmonized": harmonized}

    return call


def workload_inputs(workload: str, resolution: tuple[int, int], batch: int, device: torch.device) -> list[torch.Tensor]:
    """Seeded [0, 1] inputs in the spec's order; the chain takes blending's source and background.

    Made as inference tensors, like the chain's intermediate tensors, so a network compiled on
    these inputs sees the same kind of tensor inside the chain (no recompilation).
    """
    tensors = example_inputs("blending" if workload == CHAIN else workload, resolution, batch)
    if workload == CHAIN:
        tensors = [tensors[0], tensors[2]]  # source, background
    with torch.inference_mode():
        return [tensor.to(device, copy=True) for tensor in tensors]


def workloads_of(forwards: dict[str, Forward], names: tuple[str, ...]) -> dict[str, Workload]:
    return {name: chain_workload(forwards) if name == CHAIN else network_workload(name, forwards[name]) for name in names}


# --- The run ---------------------------------------------------------------------------------------


def _load(settings: GpuBenchSettings) -> Networks:
    return load_networks(
        settings.checkpoints.get("modnet_checkpoint"),
        settings.checkpoints.get("blending_checkpoint"),
        settings.checkpoints.get("harmonization_checkpoint"),
    )


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
    for mode in settings.modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes are {', '.join(MODES)}")
    for workload in settings.workloads:
        if workload not in WORKLOADS:
            raise ValueError(f"unknown workload {workload!r}; workloads are {', '.join(WORKLOADS)}")
    if settings.device == "cuda" and (reason := cuda_unavailable_reason()):
        raise CudaUnavailableError(reason)
    device = torch.device(settings.device)

    with backend_flags(device) as flags, tempfile.TemporaryDirectory(prefix="compositor-gpu-bench-") as work_dir:
        report = {
            "machine": machine_info(device),
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
                "inputs": "seeded uniform [0, 1] tensors (compositor.networks.complexity.example_inputs); the chain "
                "feeds its own intermediate tensors",
                "latency": "one iteration, synchronised before and after (torch.cuda.synchronize), wall clock",
                "accuracy": "each mode against eager FP32 on the same inputs; the export's FP16 tolerances "
                "(compositor.export.parity.FP16_TOLERANCES) are set on photos, not on these random inputs",
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

        skip_reasons = {"compile_fp16": compile_skip_reason, "tensorrt": tensorrt_skip_reason}
        runnable = []
        for mode in settings.modes:
            reason = skip_reasons[mode](settings) if mode in skip_reasons else None
            if reason:
                report["skipped"].append({"mode": mode, "workload": None, "batch": None, "reason": reason})
                clock.log("%s: skipped: %s", mode, reason)
            else:
                runnable.append(mode)

        if runnable:
            networks = _load(settings)
            report["settings"]["weights"] = {"untrained": list(networks.untrained), **settings.checkpoints}
            models = {name: model.to(device) for name, model in contract_models(networks).items()}
            flops = _flops_per_image(models, settings.resolution, device)
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


def _flops_per_image(models: dict[str, nn.Module], resolution: tuple[int, int], device: torch.device) -> dict[str, int]:
    flops = {name: count_flops(model, workload_inputs(name, resolution, 1, device)) for name, model in models.items()}
    flops[CHAIN] = sum(flops.values())
    return flops


def _run_mode(mode, models, flops, references, settings: GpuBenchSettings, device, work_dir: Path, report: dict, clock: _Clock) -> None:
    """Prepare ``mode``'s forwards, then time each batch x workload; failures go to ``errors``."""
    if clock.elapsed_s() > settings.budget_s:
        _skip_budget(report, mode, None, None, settings, clock)
        return
    builds = None
    try:
        if mode == "eager_fp32":
            forwards = dict(models)
        elif mode == "eager_fp16":
            forwards = {name: autocast_forward(model, device) for name, model in models.items()}
        elif mode == "compile_fp16":
            forwards = {name: autocast_forward(f, device) for name, f in compiled_forwards(models, settings).items()}
        else:
            clock.log("tensorrt: exporting and building engines")
            forwards, builds = tensorrt_forwards(settings, device, work_dir)
            report.setdefault("tensorrt_engines", builds)
    except Exception as error:  # recorded and reported (exit status 1); the other modes still run
        log.exception("%s: preparation failed", mode)
        report["errors"].append({"mode": mode, "workload": None, "batch": None, "error": f"{type(error).__name__}: {error}"})
        return
    workloads = workloads_of(forwards, settings.workloads)
    # Networks before the chain: torch.compile compiles each network on its first call per batch,
    # so the compile time lands in the network's row and the chain reuses the compiled graphs.
    for batch in settings.batches:
        for name, call in workloads.items():
            if clock.elapsed_s() > settings.budget_s:
                _skip_budget(report, mode, name, batch, settings, clock)
                continue
            try:
                row = _measure_row(mode, name, call, batch, models, flops, references, settings, device, report["machine"])
            except Exception as error:  # recorded and reported (exit status 1); the rest still runs
                log.exception("%s %s batch %d failed", mode, name, batch)
                report["errors"].append({"mode": mode, "workload": name, "batch": batch, "error": f"{type(error).__name__}: {error}"})
                continue
            if builds is not None:
                row["tensorrt_device_memory_mb"] = _engine_memory_mb(builds, name)
            report["results"].append(row)
            clock.log(
                "%-12s %-13s batch %-3d %9.1f img/s  p50 %8.2f ms  p99 %8.2f ms  first call %.1f s%s",
                mode, name, batch, row["perf_throughput"], row["perf_latency_p50"], row["perf_latency_p99"],
                row["first_call_s"], _accuracy_text(row),
            )  # fmt: skip


def _skip_budget(report: dict, mode: str, workload: str | None, batch: int | None, settings: GpuBenchSettings, clock: _Clock) -> None:
    reason = f"time budget: {clock.elapsed_s():.0f} s elapsed of --budget-s {settings.budget_s:.0f}"
    report["skipped"].append({"mode": mode, "workload": workload, "batch": batch, "reason": reason})
    clock.log("%s %s batch %s: skipped: %s", mode, workload or "(all)", batch if batch is not None else "(all)", reason)


def _engine_memory_mb(builds: dict, workload: str) -> float | None:
    names = spec.NETWORKS if workload == CHAIN else (workload,)
    sizes = [builds[name]["device_memory_bytes"] for name in names]
    return None if None in sizes else sum(sizes) / 2**20


def _measure_row(mode, workload, call, batch, models, flops, references, settings: GpuBenchSettings, device, machine: dict) -> dict:
    inputs = workload_inputs(workload, settings.resolution, batch, device)
    measured = measure(call, inputs, settings.iterations, settings.warmup, device)
    # References wait on the CPU, so that they do not count in later rows' peak device memory.
    key = (workload, batch)
    if mode == "eager_fp32":
        references[key] = {output: value.cpu() for output, value in measured["outputs"].items()}
        accuracy = None
    else:
        if key not in references:
            reference_outputs = measure(workloads_of(models, (workload,))[workload], inputs, 0, 0, device)["outputs"]
            references[key] = {output: value.cpu() for output, value in reference_outputs.items()}
        accuracy = {output: compare(references[key][output], value.cpu()) for output, value in measured["outputs"].items()}
    row = {
        "mode": mode,
        "workload": workload,
        "batch": batch,
        "resolution": spec.format_resolution(settings.resolution),
        "precision": PRECISION[mode],
        "iterations": settings.iterations,
        "warmup": settings.warmup,
        **latency_fields(measured["latencies_s"], batch),
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


def _accuracy_text(row: dict) -> str:
    accuracy = row["accuracy_vs_eager_fp32"]
    if accuracy is None:
        return ""
    if not all(a["finite"] for a in accuracy.values()):
        return "  NOT FINITE"
    worst_abs = max(a["max_abs_error"] for a in accuracy.values())
    psnrs = [a["psnr_db"] for a in accuracy.values() if a["psnr_db"] is not None]
    return f"  max|d| {worst_abs:.2e}  PSNR {min(psnrs):.1f} dB" if psnrs else f"  max|d| {worst_abs:.2e}  identical"


def table(report: dict) -> str:
    """The results as a compact fixed-width table (what the command prints)."""
    header = f"{'mode':<13}{'workload':<14}{'batch':>5}{'img/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'TFLOP/s':>9}{'peak MB':>9}{'first s':>9}  accuracy vs FP32"
    lines = [header, "-" * len(header)]
    for row in report["results"]:
        memory = "-" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}"
        lines.append(
            f"{row['mode']:<13}{row['workload']:<14}{row['batch']:>5}{row['perf_throughput']:>10.1f}"
            f"{row['perf_latency_p50']:>9.2f}{row['perf_latency_p99']:>9.2f}{row['achieved_tflops']:>9.2f}"
            f"{memory:>9}{row['first_call_s']:>9.1f}{_accuracy_text(row) or '  (reference)'}"
        )
    for skipped in report["skipped"]:
        where = " ".join(str(skipped[k]) for k in ("workload", "batch") if skipped.get(k) is not None)
        lines.append(f"skipped {skipped['mode']}{' ' + where if where else ''}: {skipped['reason']}")
    for error in report["errors"]:
        lines.append(f"ERROR {error['mode']} {error['workload'] or ''} {error['batch'] or ''}: {error['error']}")
    machine = report["machine"]
    lines.append(
        f"{machine['gpu']} | torch {machine['torch']} CUDA {machine['torch_cuda']} | driver {machine.get('driver', '-')} | "
        f"peak {machine['peak_tflops']['fp32']:.1f} (fp32) / {machine['peak_tflops']['fp16']:.1f} (fp16) TFLOP/s | "
        f"{report['wall_time_s']:.0f} s"
    )
    return "\n".join(lines)


# --- Command line ----------------------------------------------------------------------------------


def _choices(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [v for v in values if v not in allowed]
        if not values or unknown:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated subset of {','.join(allowed)}")
        return values

    return parse


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers separated by commas, e.g. 1,8")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compositor.bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="results JSON (written atomically)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default), or cpu for a dry run")
    parser.add_argument("--batches", type=_batches, default=(1, 8), help="batch sizes (default 1,8)")
    parser.add_argument("--iterations", type=int, default=50, help="timed iterations per measurement (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations after the first call (default 10)")
    parser.add_argument("--modes", type=_choices(MODES), default=MODES, help=f"subset of {','.join(MODES)} (default all)")
    parser.add_argument("--workloads", type=_choices(WORKLOADS), default=WORKLOADS, help=f"subset of {','.join(WORKLOADS)} (default all)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default", help="torch.compile mode (default: default)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor; eager: dynamo only)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"start no measurement after this many seconds (default {DEFAULT_BUDGET_S:.0f})")  # fmt: skip
    add_network_options(parser)  # --resolution (spec.parse_resolution) and the checkpoints
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, check CUDA, run, write the JSON, print the table; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.iterations < 1 or args.warmup < 0:
        print("error: --iterations must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    if args.device == "cuda" and (reason := cuda_unavailable_reason()):
        print(f"error: --device cuda: {reason}", file=sys.stderr)
        return 2
    settings = GpuBenchSettings(
        device=args.device,
        resolution=args.resolution,
        batches=args.batches,
        iterations=args.iterations,
        warmup=args.warmup,
        modes=args.modes,
        workloads=args.workloads,
        compile_mode=args.compile_mode,
        compile_backend=args.compile_backend,
        budget_s=args.budget_s,
        checkpoints={
            "modnet_checkpoint": args.modnet_checkpoint,
            "blending_checkpoint": args.blending_checkpoint,
            "harmonization_checkpoint": args.harmonization_checkpoint,
        },
    )
    report = run_gpu_benchmark(settings, out=args.out)
    print(table(report))
    print(f"results: {args.out}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
