"""The benchmark header: what machine, which threads, which versions, and its measured peak."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

import numpy as np
import torch


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


def peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Measured FP32 peak of this machine: the best of ``repeats`` ``size``x``size`` matrix products.

    The same thread count as the benchmarks (PyTorch's), so achieved/peak compares like with like.
    """
    a = torch.rand(size, size)
    b = torch.rand(size, size)
    for _ in range(3):  # warm-up: thread pool, caches, CPU frequency
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def machine_header(threads: int) -> dict:
    """Everything a reader needs to reproduce or compare a run."""
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
        "peak_gflops": round(peak_gflops(), 1),
        "numpy_blas": _numpy_blas(),
    }


def _numpy_blas() -> str:
    try:
        config = np.show_config(mode="dicts")
        return config["Build Dependencies"]["blas"]["name"]
    except Exception:  # noqa: BLE001 - numpy's config layout differs between versions; informational only
        return "unknown"
