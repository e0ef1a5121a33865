"""What a benchmark times: the full chain or one network, on each runtime, as a no-argument call.

Inputs are real photos (scikit-image's astronaut as the source, coffee as the background), made once
per workload, so every runtime does the same work on the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import skimage.data
import torch

from compositor import imaging
from compositor.pipeline import EagerPipeline, OnnxRuntimePipeline, Pipeline
from compositor.spec import NETWORKS, network_feeds

CHAIN = "chain"
WORKLOADS = (CHAIN, *NETWORKS)


def sample_frames(batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of (source, background) uint8 NHWC frames: astronaut (512x512) onto coffee (400x600)."""
    source = np.stack([skimage.data.astronaut()] * batch)
    background = np.stack([skimage.data.coffee()] * batch)
    return source, background


def network_inputs(pipeline: Pipeline, batch: int) -> dict[str, list[np.ndarray]]:
    """Realistic float32 NCHW inputs of each network: the chain's own intermediate tensors."""
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
    if mode == "eager":
        return EagerPipeline(networks, resolution)
    if mode == "onnxruntime":
        return OnnxRuntimePipeline(onnx_dir, resolution)
    raise ValueError(f"unknown in-process mode {mode!r}")


def torch_threads() -> int:
    return torch.get_num_threads()
