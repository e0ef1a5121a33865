"""What a composite returns, whichever runtime made it: a light module the client imports too."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CompositeResult:
    """uint8 NHWC outputs on the source canvas: ``alpha`` [B,H,W,1], ``blended``/``harmonized`` [B,H,W,3].

    Without a batch axis when the request had none. ``alpha`` is the client's own matte when it
    brought one.
    """

    alpha: np.ndarray
    blended: np.ndarray
    harmonized: np.ndarray
