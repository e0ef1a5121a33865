"""What a benchmark times: the full chain or one network, on each runtime.

``compositor bench`` times no-argument calls of the in-process pipelines and Triton on photos;
``compositor bench-gpu`` times device workloads (``device_workloads``) on seeded tensors.

Inputs are real photos (scikit-image's astronaut as the source, coffee as the background), made once
per workload, so every runtime does the same work on the same pixels. scikit-image, PyTorch and the
pipelines are imported where they are used: the workload names are read by light modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from compositor.contract import spec
from compositor.contract.spec import NETWORKS, network_feeds

if TYPE_CHECKING:
    import torch

    from compositor.runtimes import Pipeline

CHAIN = "chain"
WORKLOADS = (CHAIN, *NETWORKS)


def sample_frames(batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of (source, background) uint8 NHWC frames: astronaut (512x512) onto coffee (400x600)."""
    import skimage.data

    source = np.stack([skimage.data.astronaut()] * batch)
    background = np.stack([skimage.data.coffee()] * batch)
    return source, background


def network_inputs(pipeline: Pipeline, batch: int) -> dict[str, list[np.ndarray]]:
    """Realistic float32 NCHW inputs of each network: the chain's own intermediate tensors."""
    from compositor import imaging

    source, background = sample_frames(batch)
    prepared = imaging.preprocess(source, background, pipeline.resolution)
    feeds = network_feeds(pipeline.run_networks(prepared))
    return {name: list(inputs.values()) for name, inputs in feeds.items()}


@dataclass
class Workload:
    """One timed call: ``mode`` x ``workload`` at ``batch`` images per request."""

    mode: str
    workload: str
    batch: int
    call: Callable[[], object]


def in_process_workloads(mode: str, pipeline: Pipeline, batch: int, workloads: tuple[str, ...]) -> list[Workload]:
    """Workloads of an in-process pipeline (``eager`` or ``onnxruntime``)."""
    source, background = sample_frames(batch)
    inputs = network_inputs(pipeline, batch)
    result = []
    for name in workloads:
        if name == CHAIN:
            call = lambda: pipeline(source, background)  # noqa: E731 - a closure per workload
        else:
            call = lambda name=name: pipeline.run_network(name, *inputs[name])  # noqa: E731
        result.append(Workload(mode, name, batch, call))
    return result


def make_pipeline(mode: str, networks, resolution: tuple[int, int], onnx_dir=None) -> Pipeline:
    """The in-process pipeline of ``mode``: ``eager`` (PyTorch) or ``onnxruntime`` (exported FP32 ONNX)."""
    from compositor.runtimes import EagerPipeline, OnnxRuntimePipeline

    if mode == "eager":
        return EagerPipeline(networks, resolution)
    if mode == "onnxruntime":
        return OnnxRuntimePipeline(onnx_dir, resolution)
    raise ValueError(f"unknown in-process mode {mode!r}")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# --- The GPU benchmark's workloads: tensors on the device, the chain as the spec declares it ------


def device_workloads(forwards: dict[str, Callable], names: tuple[str, ...]) -> dict[str, Callable[..., dict]]:
    """Each network alone (its spec output name) and the chain (``spec.run_chain``: every step's output).

    ``forwards[name](*inputs)`` runs a network on the spec's inputs in order; a workload returns its
    outputs by name.
    """

    def network(name: str) -> Callable[..., dict]:
        outputs = spec.NETWORKS[name].output_names()

        def run(*inputs) -> dict:
            results = forwards[name](*inputs)
            return dict(zip(outputs, results if isinstance(results, (tuple, list)) else (results,)))

        return run

    def chain(*inputs) -> dict:
        values = spec.run_chain(lambda name, *tensors: forwards[name](*tensors), dict(zip(spec.CHAIN_INPUTS, inputs)))
        return {output: values[output] for step in spec.CHAIN for output in step.outputs}

    return {name: chain if name == CHAIN else network(name) for name in names}


def device_workload_inputs(workload: str, size: tuple[int, int], batch: int, device: torch.device) -> list[torch.Tensor]:
    """Seeded [0, 1] inputs at ``size`` (one bucket) in the spec's order; the chain takes ``spec.CHAIN_INPUTS``.

    Made as inference tensors, like the chain's intermediate tensors, so a network compiled on
    these inputs sees the same kind of tensor inside the chain (no recompilation).
    """
    import torch

    from compositor.networks.complexity import example_chain_inputs, example_inputs

    tensors = example_chain_inputs(size, batch) if workload == CHAIN else example_inputs(workload, size, batch)
    with torch.inference_mode():
        return [tensor.to(device, copy=True) for tensor in tensors]
