"""The GPU benchmark's modes: how each one turns the contract networks into timed forwards.

  eager_fp32    PyTorch eager, true FP32 (TF32 disabled: FP32 is the accuracy reference);
  eager_fp16    PyTorch eager under torch.autocast(float16);
  compile_fp16  torch.compile of each network (the chain reuses them), under the same autocast;
  tensorrt      engines built by the export chain itself (``compositor.export.exporter.export_network``:
                FP32 ONNX with its parity and readiness checks, the FP16 ladder, a strongly typed
                engine checked against ONNX Runtime), run through Polygraphy's ``TrtRunner``.

A forward takes the spec's FP32 inputs in order and returns the network's FP32 output. The names
and the skip reasons need no PyTorch (the command line reads them); the forwards import it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from compositor.contract import spec
from compositor.bench.workloads import CHAIN

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

MODES = ("eager_fp32", "eager_fp16", "compile_fp16", "tensorrt")
WORKLOADS = (*spec.NETWORKS, CHAIN)
DEFAULT_BUDGET_S = 360.0
"""No new measurement starts after this; one torch.compile started just before can take ~1-2 min more."""
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
PRECISION = {
    "eager_fp32": "fp32 (TF32 off)",
    "eager_fp16": "fp16 autocast",
    "compile_fp16": "fp16 autocast, torch.compile",
    "tensorrt": "fp16 ONNX, strongly typed engine",
}

EXPORT_MODULES = {
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxscript": "onnxscript",
    "polygraphy": "polygraphy",
    "skimage": "scikit-image",
    "PIL": "pillow",
}
"""Modules the tensorrt mode's export needs (import name -> package), beyond TensorRT itself."""

Forward = Callable[..., "torch.Tensor"]


@contextlib.contextmanager
def backend_flags(device: torch.device) -> Iterator[dict]:
    """Set PyTorch's CUDA backend flags for the run, restore them on exit; yields what the results record.

    TF32 off: FP32 rows are true FP32, the reference of the accuracy columns (TF32 would be a third
    precision). cuDNN autotuning on: every mode gets the fastest kernels, and the first call and the
    warm-up absorb the search.
    """
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    try:
        yield {
            "tf32": (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32) if on_cuda else False,
            "cudnn_benchmark": torch.backends.cudnn.benchmark if on_cuda else None,
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


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
    import torch

    def call(*inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        with torch.autocast(device.type, dtype=torch.float16):
            outputs = forward(*inputs)
        if isinstance(outputs, tuple):  # a network with several outputs (blending: blended, refined_alpha)
            return tuple(output.float() for output in outputs)
        return outputs.float()

    return call


def compile_skip_reason(device: str, compile_backend: str) -> str | None:
    """Why compile_fp16 is not measured with these settings, or None."""
    if device == "cpu" and compile_backend == "inductor":
        return (
            "torch.compile with inductor on --device cpu is skipped: its C++ code generation takes minutes per "
            "network on a CPU machine (it is measured on CUDA); --compile-backend eager dry-runs the dynamo plumbing"
        )
    return None


def compiled_forwards(models: dict[str, nn.Module], compile_mode: str, compile_backend: str) -> dict[str, Forward]:
    """``torch.compile`` of each network (lazy: each compiles on its first call per batch size).

    ``dynamic=False``: one static graph per batch size, the fastest kernels, and no dynamic-shape
    guards; the chain reuses these compiled networks with FP32 tensors between them, so it adds no
    compilation. The default mode keeps the whole run within its budget (max-autotune benchmarks
    Triton kernels for minutes per network).
    """
    import torch

    mode = None if compile_mode == "default" else compile_mode
    return {name: torch.compile(model, mode=mode, backend=compile_backend, dynamic=False) for name, model in models.items()}


def tensorrt_skip_reason(device: str) -> str | None:
    """Why tensorrt is not measured here, or None (TensorRT is imported lazily, to ask)."""
    from compositor.export import tensorrt  # a light module: TensorRT itself only inside unavailable_reason()

    reason = tensorrt.unavailable_reason()
    if reason is not None:
        return f"TensorRT not installed: {reason}"
    if device != "cuda":
        return "TensorRT engines run on CUDA only (--device cpu)"
    missing = [package for module, package in EXPORT_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        return f"the TensorRT export needs {', '.join(missing)} (pip install {' '.join(missing)})"
    return None


def tensorrt_forwards(
    models: dict[str, nn.Module], resolution: spec.Resolution, max_batch: int, work_dir: Path
) -> tuple[dict[str, Forward], dict]:
    """Export, check and build an engine per network with the export's own per-network function.

    Args:
        models: contract models on the CPU (ONNX export traces on the CPU).
        resolution: the network resolution (the engines' profiles cover its buckets).
        max_batch: the engines' profile max (at least the largest benchmarked batch).
        work_dir: where the ONNX files and plans go.

    Returns:
        a ``tensorrt.TensorRTForward`` per network and, per network, the engine's build information
        with the FP16 policy, its parity against ONNX Runtime FP32 and its device memory.
    """
    import time

    from compositor.export import parity, tensorrt
    from compositor.export.exporter import export_network

    feeds = parity.parity_feeds(models, resolution)
    forwards, builds = {}, {}
    for name, model in models.items():
        started = time.perf_counter()
        entry = export_network(name, model, work_dir, feeds, resolution, max_batch, engine=True)
        forwards[name] = tensorrt.TensorRTForward(work_dir / entry["files"]["plan"], name)
        builds[name] = {
            **entry["tensorrt"]["engine"],
            "fp16_policy": entry["fp16"]["policy"],
            "parity_vs_onnxruntime_fp32": entry["tensorrt"]["parity"],
            "max_batch": max_batch,
            "export_and_build_s": round(time.perf_counter() - started, 2),
        }
        log.info("tensorrt: %s engine exported, checked and built in %.1f s", name, builds[name]["export_and_build_s"])
    return forwards, builds


def mode_forwards(
    mode: str, models: dict[str, nn.Module], settings, device: torch.device, work_dir: Path, cpu_models: Callable[[], dict[str, nn.Module]]
) -> tuple[dict[str, Forward], dict | None]:
    """The forwards of ``mode`` for ``models`` (on ``device``), and for tensorrt the engine builds.

    ``settings`` is a ``compositor.bench.gpu.GpuBenchSettings``; ``cpu_models`` loads the contract
    models afresh on the CPU, where the tensorrt mode's ONNX export traces them.
    """
    if mode == "eager_fp32":
        return dict(models), None
    if mode == "eager_fp16":
        return {name: autocast_forward(model, device) for name, model in models.items()}, None
    if mode == "compile_fp16":
        compiled = compiled_forwards(models, settings.compile_mode, settings.compile_backend)
        return {name: autocast_forward(forward, device) for name, forward in compiled.items()}, None
    if mode == "tensorrt":
        return tensorrt_forwards(cpu_models(), settings.resolution, max(spec.DEFAULT_MAX_BATCH, *settings.batches), work_dir)
    raise ValueError(f"unknown mode {mode!r}; modes are {', '.join(MODES)}")
