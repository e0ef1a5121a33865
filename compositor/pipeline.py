"""The eager PyTorch reference pipeline: every other runtime is compared with this one.

``preprocess`` -> matting -> blending -> harmonization -> ``postprocess``, with the very same
numpy pre/post-processing (``compositor.imaging``) that the Triton Python models import, and the
same contract wrappers (``compositor.export.wrappers``) that are exported to ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from compositor import imaging
from compositor.export.wrappers import contract_models
from compositor.networks.factory import Networks
from compositor.spec import DEFAULT_RESOLUTION


@dataclass
class CompositeResult:
    """uint8 NHWC outputs on the source canvas: ``alpha`` [B,H,W,1], ``blended``/``harmonized`` [B,H,W,3]."""

    alpha: np.ndarray
    blended: np.ndarray
    harmonized: np.ndarray


class EagerPipeline:
    """Runs the three networks in PyTorch eager mode between the shared pre/post-processing.

    Args:
        networks: from ``compositor.networks.factory.load_networks``.
        resolution: network (height, width), multiples of 32.
    """

    def __init__(self, networks: Networks, resolution: tuple[int, int] = DEFAULT_RESOLUTION):
        self.resolution = tuple(resolution)
        self.models = contract_models(networks)

    @torch.inference_mode()
    def run_networks(self, prepared: imaging.Prepared) -> dict[str, np.ndarray]:
        """Network-resolution stage: returns float32 NCHW ``alpha``, ``blended``, ``harmonized``."""
        source = torch.from_numpy(prepared.source)
        background = torch.from_numpy(prepared.background)
        if prepared.alpha is None:
            alpha = self.models["matting"](source)
        else:
            alpha = torch.from_numpy(prepared.alpha)
        blended = self.models["blending"](source, alpha, background)
        harmonized = self.models["harmonization"](blended, alpha, background)
        return {"alpha": alpha.numpy(), "blended": blended.numpy(), "harmonized": harmonized.numpy()}

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
            source, background = source[None], background[None] if background.ndim == 3 else background
            alpha = alpha[None] if alpha is not None and alpha.ndim == 3 else alpha
        prepared = imaging.preprocess(source, background, self.resolution, alpha)
        outputs = self.run_networks(prepared)
        final = imaging.postprocess(
            source,
            prepared.background_full,
            prepared.source,
            prepared.background,
            outputs["alpha"],
            outputs["blended"],
            outputs["harmonized"],
            alpha=alpha,
        )
        result = CompositeResult(**final)
        if single:
            result = CompositeResult(result.alpha[0], result.blended[0], result.harmonized[0])
        return result
