"""The reference pipelines: eager PyTorch, and the exported ONNX models on ONNX Runtime in-process.

``preprocess`` -> matting -> blending -> harmonization -> ``postprocess``. Both pipelines use the very
same numpy pre/post-processing (``compositor.imaging``) that the Triton Python models import; the
eager one runs the same contract wrappers (``compositor.networks.contract``) that are exported to
ONNX. Every runtime is compared with ``EagerPipeline``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compositor import imaging
from compositor.export.layout import onnx_file
from compositor.onnx_runtime import create_session
from compositor.results import CompositeResult
from compositor.contract.spec import DEFAULT_RESOLUTION, NETWORKS, Resolution, parse_resolution, run_chain

if TYPE_CHECKING:  # PyTorch is imported by the eager pipeline only: the ONNX Runtime one runs without it
    from compositor.networks.factory import Networks


class Pipeline(ABC):
    """Shared pre/post-processing around a runtime's ``run_network(name, *inputs)``."""

    resolution: Resolution

    @abstractmethod
    def run_network(self, name: str, *inputs: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run network ``name`` on float32 NCHW inputs in spec order; returns its output, or its
        outputs in spec order where it has several."""

    def run_networks(self, prepared: imaging.Prepared) -> dict[str, np.ndarray]:
        """Network-resolution stage (``spec.CHAIN``): float32 NCHW chain tensors by name.

        Matting is skipped when ``prepared`` carries the client's matte.
        """
        given = {"source": prepared.source, "background": prepared.background}
        if prepared.alpha is not None:
            given["alpha"] = prepared.alpha
        return run_chain(self.run_network, given)

    def __call__(self, source: np.ndarray, background: np.ndarray, alpha: np.ndarray | None = None) -> CompositeResult:
        """Composite ``source`` onto ``background``.

        Args:
            source: uint8 ``[H, W, 3]`` or a batch ``[B, H, W, 3]``.
            background: uint8 ``[Hb, Wb, 3]`` or ``[B, Hb, Wb, 3]``, any size.
            alpha: optional uint8 matte ``[H, W, 1]`` / ``[B, H, W, 1]`` replacing MODNet's.

        Returns:
            ``CompositeResult`` with the same batch layout as ``source`` (no batch axis if none given).
        """
        single = isinstance(source, np.ndarray) and source.ndim == 3
        if single:
            source = source[None]
            background = background[None] if isinstance(background, np.ndarray) and background.ndim == 3 else background
            alpha = alpha[None] if alpha is not None and alpha.ndim == 3 else alpha
        prepared = imaging.preprocess(source, background, self.resolution, alpha)
        outputs = self.run_networks(prepared)
        final = imaging.postprocess(
            source,
            prepared.background_full,
            prepared.source,
            prepared.background,
            outputs["alpha"],
            outputs["refined_alpha"],
            outputs["blended"],
            outputs["harmonized"],
            alpha=alpha,
        )
        result = CompositeResult(**final)
        if single:
            result = CompositeResult(result.alpha[0], result.blended[0], result.harmonized[0])
        return result


class EagerPipeline(Pipeline):
    """The three networks in PyTorch eager mode (FP32, CPU).

    Args:
        networks: from ``compositor.networks.factory.load_networks``.
        resolution: the network resolution (``spec.Resolution``, or anything ``spec.parse_resolution``
            takes): aspect buckets by default.
    """

    def __init__(self, networks: Networks, resolution: Resolution | str | int | tuple[int, int] = DEFAULT_RESOLUTION):
        from compositor.networks.contract import contract_models

        self.resolution = parse_resolution(resolution)
        self.models = contract_models(networks)

    def run_network(self, name: str, *inputs: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        import torch

        with torch.inference_mode():
            outputs = self.models[name](*(torch.from_numpy(x) for x in inputs))
        return tuple(output.numpy() for output in outputs) if isinstance(outputs, tuple) else outputs.numpy()


class OnnxRuntimePipeline(Pipeline):
    """The exported ONNX models on ONNX Runtime, in-process.

    Args:
        onnx_dir: a ``compositor export`` output folder (``matting.onnx`` ...).
        resolution: the network resolution the models were exported at (their graphs take any
            bucket; blending's edge band is sized for this resolution's short side).
        precision: ``"fp32"`` (``<name>.onnx``) or ``"fp16"`` (``<name>.fp16.onnx``).
        intra_op_threads: ONNX Runtime threads per session (0: ONNX Runtime's default).
    """

    def __init__(
        self,
        onnx_dir: str | Path,
        resolution: Resolution | str | int | tuple[int, int] = DEFAULT_RESOLUTION,
        precision: str = "fp32",
        intra_op_threads: int = 0,
    ):
        self.resolution = parse_resolution(resolution)
        self.sessions = {
            name: create_session(Path(onnx_dir) / onnx_file(name, precision), intra_op_threads) for name in NETWORKS
        }

    def run_network(self, name: str, *inputs: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        spec = NETWORKS[name]
        outputs = self.sessions[name].run(spec.output_names(), dict(zip(spec.input_names(), inputs)))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
