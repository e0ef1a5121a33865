"""The benchmark header: what machine, which threads, which versions, and its measured compute peak.

The peak is the reference of every "achieved / peak" ratio, so it must be the fastest dense matrix
product this machine can do, not one library's: numpy's BLAS can be slowed by its environment (an
``OPENBLAS_CORETYPE`` that picks older kernels gave 67 GFLOP/s where PyTorch's GEMM gave 149 on one
machine), which would flatter every ratio. ``gemm_peaks`` measures both PyTorch and numpy and the
header reports both and uses the higher. On CUDA, ``gpu_machine_info`` measures PyTorch's GEMM in
FP32 (TF32 off) and FP16. PyTorch and numpy are imported inside the functions that measure.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GEMM_SIZE = 2048
"""Side of the square FP32 matrices of the CPU peak measurement (large enough to be compute bound)."""


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def best_seconds(call: Callable[[], object], repeats: int, warmup: int = 3, synchronize: Callable[[], None] = lambda: None) -> float:
    """The shortest of ``repeats`` timed calls, after ``warmup`` untimed ones (thread pools, caches, clocks)."""
    for _ in range(warmup):
        call()
    best = math.inf
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        call()
        synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def gemm_peaks(size: int = GEMM_SIZE, repeats: int = 10) -> dict[str, float]:
    """Measured FP32 GFLOP/s of a ``size`` x ``size`` matrix product: ``{"torch": ..., "numpy": ...}``.

    PyTorch runs with the thread count the benchmarks use (``torch.get_num_threads()``); numpy with
    its BLAS's own (``numpy_blas`` in the header names it).
    """
    import torch

    flops = 2 * size**3
    a, b = torch.rand(size, size), torch.rand(size, size)
    peaks = {"torch": flops / best_seconds(lambda: torch.mm(a, b), repeats) / 1e9}
    a_np, b_np = a.numpy(), b.numpy()
    peaks["numpy"] = flops / best_seconds(lambda: a_np @ b_np, repeats) / 1e9
    return peaks


def peak_gflops(size: int = GEMM_SIZE, repeats: int = 10) -> float:
    """Measured FP32 peak of this machine: the faster of PyTorch's and numpy's matrix products."""
    return max(gemm_peaks(size, repeats).values())


def machine_header(threads: int) -> dict:
    """Everything a reader needs to reproduce or compare a CPU run.

    ``peak_gflops`` is the higher of ``peak_gflops_by_gemm``'s values; ``peak_gemm`` says whose.
    """
    peaks = gemm_peaks()
    fastest = max(peaks, key=peaks.get)
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "threads": threads,
        "gpu": "none",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            name: package_version(name)
            for name in ("torch", "onnxruntime", "numpy", "tritonclient", "nvidia-pytriton", "compositor")
        },
        "peak_gflops": round(peaks[fastest], 1),
        "peak_gemm": fastest,
        "peak_gflops_by_gemm": {name: round(value, 1) for name, value in peaks.items()},
        "numpy_blas": _numpy_blas(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
    }


def _numpy_blas() -> str:
    import numpy as np

    try:
        config = np.show_config(mode="dicts")
        return config["Build Dependencies"]["blas"]["name"]
    except Exception:  # noqa: BLE001 - numpy's config layout differs between versions; informational only
        return "unknown"


# --- GPU ------------------------------------------------------------------------------------------


def cuda_unavailable_reason() -> str | None:
    """Why ``--device cuda`` cannot run here, or None if it can."""
    import torch

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
    """Measured dense matmul peak of PyTorch in ``dtype``: the best of ``repeats`` square products.

    The reference for the GPU benchmark's ``fraction_of_peak`` (FP32 rows against the FP32 peak
    with TF32 off, FP16 rows against the FP16 peak). Small on the CPU, where it only exercises the code.
    """
    import torch

    size = 8192 if device.type == "cuda" else 256
    a = torch.rand(size, size, device=device, dtype=dtype)
    b = torch.rand(size, size, device=device, dtype=dtype)
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b), repeats, synchronize=synchronize) / 1e12


def gpu_machine_info(device: torch.device) -> dict:
    """The GPU benchmark's header: GPU, driver, CUDA, versions, host, measured peaks."""
    import torch

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
        "versions": {
            name: package_version(name)
            for name in ("numpy", "onnx", "onnxruntime", "onnxscript", "polygraphy", "safetensors", "tensorrt", "triton")
        },
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
    # Four significant digits: a CPU dry run's peak is a few GFLOP/s, which rounding to 1e-3 TFLOP/s would zero.
    info["peak_tflops"] = {
        "fp32": float(f"{peak_tflops(device, torch.float32):.4g}"),
        "fp16": float(f"{peak_tflops(device, torch.float16):.4g}"),
    }
    return info
