"""Where the default weights are: the trained files in ``weights/``, the published MODNet, the user's checkpoint.

No torch import here: command-line parsers use these paths for their defaults and must stay quick.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_DIR_VARIABLE = "COMPOSITOR_WEIGHTS_DIR"
MODNET_CHECKPOINT_VARIABLE = "MODNET_CHECKPOINT"
MODNET_WEIGHTS_VARIABLE = "COMPOSITOR_MODNET_WEIGHTS"
PUBLISHED_MODNET_FILE = "modnet_photographic_portrait_matting.safetensors"
"""The published MODNet converted by set-up (``compositor.published_modnet``); not committed."""
TRAINED_NETWORKS = ("blending", "harmonization")


def weights_dir() -> Path:
    """``$COMPOSITOR_WEIGHTS_DIR``, else the package's ``weights`` folder.

    In a checkout (and an editable install) ``compositor/weights`` is a link to the repository's
    ``weights/``; a wheel carries the trained files there as package data (``pyproject.toml``), so
    an installed package finds them wherever it lives.
    """
    configured = os.environ.get(WEIGHTS_DIR_VARIABLE)
    return Path(configured) if configured else Path(__file__).resolve().parents[1] / "weights"


def default_weights(name: str) -> Path:
    """The weights file ``weights/<name>.safetensors`` (it may not exist)."""
    return weights_dir() / f"{name}.safetensors"


def published_modnet_weights() -> Path:
    """``$COMPOSITOR_MODNET_WEIGHTS``, else ``weights/modnet_photographic_portrait_matting.safetensors``.

    Set-up writes the published MODNet there; it may not exist (set-up was offline).
    """
    configured = os.environ.get(MODNET_WEIGHTS_VARIABLE)
    return Path(configured) if configured else weights_dir() / PUBLISHED_MODNET_FILE


def modnet_checkpoint_from_environment() -> Path | None:
    """``$MODNET_CHECKPOINT`` when set: the published MODNet checkpoint the user brings."""
    value = os.environ.get(MODNET_CHECKPOINT_VARIABLE)
    return Path(value) if value else None
